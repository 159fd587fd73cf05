"""The AWS side of clawgate's end-to-end tests, driven by tests/aws.rs.

Real clients against real peers: boto3 and the AWS CLI as agents, moto's
server (authentication on) as STS, Secrets Manager and S3. Each subcommand
prints one JSON object on stdout; the Rust test asserts on it and on
clawgate's decision log.
"""

import argparse
import base64
import json
import os
import subprocess
import sys

import boto3
import botocore.config
import botocore.exceptions

REGION = "us-east-1"
# What an agent's SDK holds: nothing that works.
DUMMY = {"aws_access_key_id": "AKIADUMMYAGENTKEY000", "aws_secret_access_key": "dummy-agent-secret"}

# Every call setup makes before moto starts checking signatures; the test
# starts moto with INITIAL_NO_AUTH_ACTION_COUNT set to this.
SETUP_ACTIONS = 10


def client(service, endpoint, creds=None, verify=None, **config):
    creds = creds or DUMMY
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        verify=verify,
        config=botocore.config.Config(retries={"max_attempts": 1}, **config),
        **creds,
    )


def keys(resp):
    key = resp["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def setup(args):
    iam = client("iam", args.moto)
    iam.create_user(UserName="clawgate-broker")
    broker = keys(iam.create_access_key(UserName="clawgate-broker"))
    iam.put_user_policy(
        UserName="clawgate-broker",
        PolicyName="broker",
        PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Action": ["sts:AssumeRole", "sts:TagSession", "secretsmanager:GetSecretValue"],
                "Resource": "*",
            }],
        }),
    )
    iam.create_user(UserName="test-admin")
    admin = keys(iam.create_access_key(UserName="test-admin"))
    iam.put_user_policy(
        UserName="test-admin",
        PolicyName="admin",
        PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }),
    )
    role = iam.create_role(
        RoleName="agent-s3",
        AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": ["sts:AssumeRole", "sts:TagSession"],
            }],
        }),
    )["Role"]
    iam.put_role_policy(
        RoleName="agent-s3",
        PolicyName="s3",
        PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }),
    )
    client("s3", args.moto).create_bucket(Bucket="reports")
    client("secretsmanager", args.moto).create_secret(
        Name="echo-token", SecretString=json.dumps({"token": args.secret})
    )
    print(json.dumps({"broker": broker, "admin": admin, "role_arn": role["Arn"]}))


def agent_s3(args):
    """An agent's S3 client: dummy keys, clawgate as its endpoint."""
    extra = {"client_cert": (args.cert, args.key)} if args.cert else {}
    return client(
        "s3",
        args.endpoint,
        verify=args.ca,
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        **extra,
    )


def error_code(e):
    return e.response.get("Error", {}).get("Code") or str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def s3_calls(args):
    s3 = agent_s3(args)
    out = {}
    for op in args.ops.split(","):
        try:
            if op == "put":
                s3.put_object(Bucket="reports", Key="q1/summary.txt", Body=args.body.encode())
                out[op] = "ok"
            elif op == "get":
                out[op] = s3.get_object(Bucket="reports", Key="q1/summary.txt")["Body"].read().decode()
            elif op == "list":
                out[op] = [o["Key"] for o in s3.list_objects_v2(Bucket="reports").get("Contents", [])]
            elif op == "delete-bucket":
                s3.delete_bucket(Bucket="reports")
                out[op] = "ok"
        except botocore.exceptions.ClientError as e:
            out[op] = {"error": error_code(e), "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
    print(json.dumps(out))


def put_secret(args):
    creds = json.loads(args.creds)
    client("secretsmanager", args.moto, creds).put_secret_value(
        SecretId="echo-token", SecretString=json.dumps({"token": args.secret})
    )
    print(json.dumps({"ok": True}))


def vended(args):
    """boto3 and the AWS CLI with credentials from clawgate's vending endpoint."""
    env = dict(os.environ)
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"]:
        env.pop(name, None)
    env.update({
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": args.uri,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": args.token,
        "AWS_CA_BUNDLE": args.ca,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    })
    os.environ.clear()
    os.environ.update(env)
    session = boto3.session.Session(region_name=REGION)
    creds = session.get_credentials().get_frozen_credentials()
    expiry = session.get_credentials()._expiry_time.isoformat()
    s3 = session.client("s3", endpoint_url=args.moto)
    keys_seen = [o["Key"] for o in s3.list_objects_v2(Bucket="reports").get("Contents", [])]
    cli = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "aws"), "s3api", "list-objects-v2",
         "--bucket", "reports", "--endpoint-url", args.moto, "--output", "json"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    print(json.dumps({
        "access_key_id": creds.access_key,
        "expiration": expiry,
        "boto3_keys": keys_seen,
        "cli_exit": cli.returncode,
        "cli_stdout": cli.stdout,
        "cli_stderr": cli.stderr[-2000:],
    }))


def recorded_assume_roles(args):
    """How many AssumeRole calls moto received, by moto's own recording."""
    import urllib.request

    with urllib.request.urlopen(args.moto + "/moto-api/recorder/download-recording", timeout=10) as r:
        lines = [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]
    def body(rec):
        text = rec.get("body") or ""
        return base64.b64decode(text).decode(errors="replace") if rec.get("body_encoded") else text

    count = sum(1 for rec in lines if "Action=AssumeRole" in body(rec))
    print(json.dumps({"assume_role": count, "requests": len(lines)}))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--moto", required=True)
    p.add_argument("--secret", required=True)
    p.set_defaults(run=setup)
    p = sub.add_parser("s3")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--ops", required=True)
    p.add_argument("--body", default="quarterly numbers")
    p.set_defaults(run=s3_calls)
    p = sub.add_parser("put-secret")
    p.add_argument("--moto", required=True)
    p.add_argument("--creds", required=True)
    p.add_argument("--secret", required=True)
    p.set_defaults(run=put_secret)
    p = sub.add_parser("vended")
    p.add_argument("--uri", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--moto", required=True)
    p.set_defaults(run=vended)
    p = sub.add_parser("assume-roles")
    p.add_argument("--moto", required=True)
    p.set_defaults(run=recorded_assume_roles)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
