"""An AWS agent that knows nothing about clawgate: boto3 and the AWS CLI,
configured by the environment alone (the block `clawgate env` prints, plus
the S3 endpoint and region). Puts an object, reads it back and lists the
bucket with boto3, then lists it with the AWS CLI.

usage: env_agent.py KEY   (prints one JSON object)
"""
import json
import os
import subprocess
import sys

import boto3

key = sys.argv[1]
s3 = boto3.client("s3")
s3.put_object(Bucket="reports", Key=key, Body=b"quarterly numbers")
body = s3.get_object(Bucket="reports", Key=key)["Body"].read().decode()
creds = boto3.session.Session().get_credentials().get_frozen_credentials()
cli = subprocess.run(
    [os.path.join(os.path.dirname(sys.executable), "aws"), "s3api", "list-objects-v2",
     "--bucket", "reports", "--output", "json"],
    capture_output=True, text=True, timeout=60,
)
print(json.dumps({
    "body": body,
    "access_key_id": creds.access_key,
    "cli_exit": cli.returncode,
    "cli_keys": [o["Key"] for o in json.loads(cli.stdout or "{}").get("Contents", [])],
    "cli_stderr": cli.stderr[-2000:],
}))
