//! The credential broker end to end: the real binary, moto's server with
//! authentication on as STS, Secrets Manager and S3, and boto3, the AWS CLI
//! and curl as agents. Every test checks the decision log as well as what
//! the client saw.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{CANARY, Harness, Options, contains, files_with_prefix};

/// The Python with moto[server], boto3 and awscli (`.ci/run` makes it).
fn python() -> PathBuf {
    common::venv_python("moto[server], boto3 and awscli")
}

fn peer(args: &[&str]) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/aws/peer.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "peer.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "peer.py {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// moto's server on a loopback port, authentication on after setup.
struct Moto {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
    port: u16,
    role_arn: String,
    broker: (String, String),
    admin: serde_json::Value,
}

const FIRST_SECRET: &str = "sm-first-5d1c8e-do-not-leak";
const SECOND_SECRET: &str = "sm-second-9a7b2f-do-not-leak";

impl Moto {
    fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = python().with_file_name("moto_server");
        // Each moto records into a file of its own: tests run side by side.
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "10")
            // S3 reached by a name (`s3.test`) is path-style, not a bucket.
            .env("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")
            .env("MOTO_ENABLE_RECORDING", "True")
            .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let setup = peer(&["setup", "--moto", &url, "--secret", FIRST_SECRET]);
        for step in ["reset-recording", "start-recording"] {
            let status = Command::new("curl")
                .args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    "-X",
                    "POST",
                    &format!("{url}/moto-api/recorder/{step}"),
                ])
                .status()
                .unwrap();
            assert!(status.success(), "moto's recorder: {step} failed");
        }
        Moto {
            child,
            _dir: dir,
            url,
            port,
            role_arn: setup["role_arn"].as_str().unwrap().to_owned(),
            broker: (
                setup["broker"]["aws_access_key_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                setup["broker"]["aws_secret_access_key"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            admin: setup["admin"].clone(),
        }
    }

    /// AssumeRole calls moto received since setup, by its own recording.
    fn assume_roles(&self) -> u64 {
        peer(&["assume-roles", "--moto", &self.url])["assume_role"]
            .as_u64()
            .unwrap()
    }

    /// Requests moto received since setup whose method and path match.
    fn received(&self, method: &str, path: &str) -> usize {
        let out = Command::new("curl")
            .args([
                "-sf",
                &format!("{}/moto-api/recorder/download-recording", self.url),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| {
                r["method"] == method
                    && r["url"]
                        .as_str()
                        .is_some_and(|u| u.starts_with(&format!("{}{path}", self.url)))
            })
            .count()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The environment clawgate's own AWS access runs with.
    fn broker_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.broker.0.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.broker.1.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

const VEND_TOKEN: &str = "vend-token-0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c";

fn s3_policy(moto: &Moto, credential_extra: &str) -> String {
    format!(
        r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]

[[agent]]
name = "builder"
identities = ["spiffe://clawgate.local/agent/builder"]
scopes = ["s3-reports"]
vend_token_file = "builder.token"

[[scope]]
name = "s3-reports"
upstream = "http://127.0.0.1:{port}"
route = "s3"
allow_private = ["127.0.0.1"]

[scope.credential]
kind = "aws"
role_arn = "{role}"
duration_minutes = 15
service = "s3"
region = "us-east-1"
vend = true
{credential_extra}

[[scope.allow]]
id = "reports-rw"
actions = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"]
resources = ["arn:aws:s3:::reports", "arn:aws:s3:::reports/*"]
"#,
        port = moto.port,
        role = moto.role_arn,
    )
}

/// clawgate with the S3 scope, started once the vending token file exists.
fn s3_harness(moto: &Moto, credential_extra: &str, serve_args: &[&str]) -> Harness {
    let mut harness = Harness::with(Options {
        extra_policy: vec![("s3.toml", s3_policy(moto, credential_extra))],
        agents: vec!["builder", "ops"],
        start: false,
        env: moto.broker_env(),
        ..Options::default()
    });
    std::fs::write(harness.policy.join("builder.token"), VEND_TOKEN).unwrap();
    let mut args = vec!["--aws-endpoint-url".to_owned(), moto.url.clone()];
    args.extend(serve_args.iter().map(|s| (*s).to_owned()));
    harness.serve(&args);
    harness
}

fn agent_s3(harness: &Harness, ops: &str) -> serde_json::Value {
    let (cert, key) = harness.agent_cert("builder");
    peer(&[
        "s3",
        "--endpoint",
        &format!("https://localhost:{}/s3", harness.port),
        "--ca",
        harness.certs.join("ca.pem").to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--ops",
        ops,
    ])
}

fn records_of(harness: &Harness, kind: &str) -> Vec<clawgate::audit::DecisionRecord> {
    harness
        .records()
        .into_iter()
        .filter(|r| r.kind == kind)
        .collect()
}

#[test]
fn boto3_puts_and_gets_through_clawgate_with_minted_credentials() {
    let moto = Moto::start();
    let harness = s3_harness(&moto, "", &[]);

    let out = agent_s3(&harness, "put,get,list");
    assert_eq!(out["put"], "ok", "{out}");
    assert_eq!(out["get"], "quarterly numbers", "{out}");
    assert_eq!(out["list"][0], "q1/summary.txt", "{out}");

    // The same request straight to moto with the agent's dummy keys fails:
    // the signature moto accepted was clawgate's.
    let direct = peer(&["s3", "--endpoint", &moto.url, "--ops", "put"]);
    assert_eq!(direct["put"]["error"], "InvalidAccessKeyId", "{direct}");

    let decisions = records_of(&harness, "decision");
    let put = decisions
        .iter()
        .find(|r| r.action.as_deref() == Some("s3:PutObject"))
        .expect("a decision record for the put");
    assert_eq!(put.reason, "allowed");
    assert_eq!(put.rule.as_deref(), Some("reports-rw"));
    assert_eq!(put.credential_kind.as_deref(), Some("aws"));
    let key_id = put.credential_ref.clone().unwrap();
    assert!(key_id.starts_with("ASIA"), "{key_id}");
    assert!(
        decisions
            .iter()
            .any(|r| r.action.as_deref() == Some("s3:GetObject"))
    );
    assert!(
        decisions
            .iter()
            .any(|r| r.action.as_deref() == Some("s3:ListBucket"))
    );
    // One mint, recorded with the same access key id and never the secret.
    let mints = records_of(&harness, "mint");
    assert_eq!(mints.len(), 1, "{mints:?}");
    assert_eq!(mints[0].credential_ref.as_deref(), Some(key_id.as_str()));
    assert_eq!(mints[0].agent.as_deref(), Some("builder"));
    assert_eq!(moto.assume_roles(), 1);
}

#[test]
fn an_action_outside_the_scope_is_refused_and_never_reaches_moto() {
    let moto = Moto::start();
    let harness = s3_harness(&moto, "", &[]);
    let before = moto.received("DELETE", "/reports");
    let out = agent_s3(&harness, "delete-bucket");
    assert_eq!(out["delete-bucket"]["status"], 403, "{out}");
    let refused = records_of(&harness, "decision")
        .into_iter()
        .find(|r| r.method.as_deref() == Some("DELETE"))
        .unwrap();
    assert_eq!(refused.reason, "no-matching-rule");
    assert_eq!(refused.action.as_deref(), Some("s3:DeleteBucket"));
    assert_eq!(refused.decision.as_deref(), Some("deny"));
    assert_eq!(moto.received("DELETE", "/reports"), before);
    // Nothing was minted for a refused call.
    assert_eq!(moto.assume_roles(), 0);
    // The recording does see what clawgate forwards, so the count above means something.
    let listed = moto.received("GET", "/reports");
    assert_eq!(agent_s3(&harness, "list")["list"], serde_json::json!([]));
    assert_eq!(moto.received("GET", "/reports"), listed + 1);
}

#[test]
fn fifty_concurrent_first_calls_make_one_assume_role() {
    let moto = Moto::start();
    let harness = s3_harness(&moto, "", &[]);
    let url = format!("{}/s3/reports?list-type=2", harness.base());
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| s.spawn(|| harness.curl(Some("builder"), &[&url]).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        moto.assume_roles(),
        1,
        "moto's own count of AssumeRole calls"
    );
    assert_eq!(records_of(&harness, "mint").len(), 1);
    let allowed = records_of(&harness, "decision")
        .into_iter()
        .filter(|r| r.reason == "allowed" && r.action.as_deref() == Some("s3:ListBucket"))
        .count();
    assert_eq!(allowed, 50);
}

#[test]
fn a_refresh_margin_past_the_duration_mints_for_every_call() {
    let moto = Moto::start();
    let harness = s3_harness(&moto, "refresh_margin = \"20m\"", &[]);
    let url = format!("{}/s3/reports?list-type=2", harness.base());
    for _ in 0..4 {
        assert_eq!(harness.curl(Some("builder"), &[&url]).status, 200);
        // Let the background refresh each call starts finish.
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while records_of(&harness, "mint")
        .iter()
        .filter(|r| r.reason == "allowed")
        .count()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "not a mint per call: {:?}",
            records_of(&harness, "mint")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(moto.assume_roles() >= 4);
}

#[test]
fn sts_unavailable_with_nothing_cached_is_credential_unavailable() {
    let mut moto = Moto::start();
    let harness = s3_harness(&moto, "", &[]);
    moto.stop();
    let reply = harness.curl(
        Some("builder"),
        &[&format!("{}/s3/reports/q1/summary.txt", harness.base())],
    );
    assert_eq!(reply.status, 503, "{}", reply.body_text());
    assert_eq!(reply.json()["reason"], "credential-unavailable");
    let decision = harness.decision(&reply.request_id());
    assert_eq!(decision.reason, "credential-unavailable");
    assert_eq!(decision.action.as_deref(), Some("s3:GetObject"));
    // Every attempt is a record of its own, retried with back-off.
    let failed: Vec<_> = records_of(&harness, "mint")
        .into_iter()
        .filter(|r| r.reason == "credential-unavailable")
        .collect();
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|r| r.credential_ref.as_deref() == Some(moto.role_arn.as_str()))
    );
}

#[test]
fn vended_credentials_work_in_boto3_and_the_aws_cli() {
    let moto = Moto::start();
    let harness = s3_harness(&moto, "", &["--vend-listen", "127.0.0.1:0"]);
    let vend_port = harness.vend_port.expect("vending listener");
    let uri = format!("http://127.0.0.1:{vend_port}/v1/credentials/aws/s3-reports");
    let started = std::time::SystemTime::now();
    let out = peer(&[
        "vended",
        "--uri",
        &uri,
        "--token",
        VEND_TOKEN,
        "--ca",
        harness.certs.join("ca.pem").to_str().unwrap(),
        "--moto",
        &moto.url,
    ]);
    assert_eq!(out["cli_exit"], 0, "{out}");
    assert!(out["boto3_keys"].is_array(), "{out}");
    let key_id = out["access_key_id"].as_str().unwrap().to_owned();
    assert!(key_id.starts_with("ASIA"));
    let expiration = time::OffsetDateTime::parse(
        out["expiration"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let latest = time::OffsetDateTime::from(started) + Duration::from_secs(15 * 60 + 5);
    assert!(
        expiration <= latest,
        "expiration {expiration} past the scope's 15 minutes"
    );

    let vends: Vec<_> = records_of(&harness, "decision")
        .into_iter()
        .filter(|r| r.mode.as_deref() == Some("vend"))
        .collect();
    assert!(vends.len() >= 2, "boto3 and the CLI each asked: {vends:?}");
    assert!(
        vends
            .iter()
            .all(|r| r.reason == "allowed" && r.agent.as_deref() == Some("builder"))
    );
    assert!(
        vends
            .iter()
            .any(|r| r.credential_ref.as_deref() == Some(key_id.as_str()))
    );

    // A run token works in place of the vending token, names its run in
    // the record, and only narrows: one for another scope gets nothing.
    let certs = harness.certs.to_str().unwrap().to_owned();
    let issue = |scopes: &str| {
        let out = common::clawgate(&[
            "token", "issue", "--agent", "builder", "--ttl", "5m", "--run", "run-77", "--scopes",
            scopes, "--certs", &certs,
        ]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let by_run_token = common::curl(&[
        "-H".into(),
        format!("Authorization: Bearer {}", issue("s3-reports")),
        uri.clone(),
    ]);
    assert_eq!(by_run_token.status, 200, "{}", by_run_token.body_text());
    let record = harness.decision(&by_run_token.request_id());
    assert_eq!(record.run_id.as_deref(), Some("run-77"));
    assert_eq!(record.agent.as_deref(), Some("builder"));
    let narrowed = common::curl(&[
        "-H".into(),
        format!("Authorization: {}", issue("some-other-scope")),
        uri.clone(),
    ]);
    assert_eq!(narrowed.status, 403);
    assert_eq!(
        harness.decision(&narrowed.request_id()).reason,
        "run-token-scope"
    );

    // A wrong token gets nothing, and that is recorded too.
    let wrong = common::curl(&[
        "-H".into(),
        "Authorization: not-the-token".into(),
        uri.clone(),
    ]);
    assert_eq!(wrong.status, 403);
    assert_eq!(
        harness.decision(&wrong.request_id()).reason,
        "run-token-invalid"
    );

    // On the agent listener, the client certificate is the caller's identity.
    let reply = harness.curl(
        Some("builder"),
        &[&format!("{}/v1/credentials/aws/s3-reports", harness.base())],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["AccessKeyId"], key_id.as_str());
    // An absolute-form request for another host's `/v1/credentials/…` is
    // proxied like any call (here refused: no scope), never answered with keys.
    let elsewhere = harness.curl_via_proxy(
        "builder",
        &["http://evil.example/v1/credentials/aws/s3-reports"],
    );
    assert_eq!(elsewhere.status, 403);
    assert!(!elsewhere.body_text().contains("SecretAccessKey"));
    assert_eq!(
        harness.decision(&elsewhere.request_id()).mode.as_deref(),
        Some("forward")
    );
    let other = harness.curl(
        Some("research"),
        &[&format!("{}/v1/credentials/aws/s3-reports", harness.base())],
    );
    assert_eq!(other.status, 403);
    assert_eq!(
        harness.decision(&other.request_id()).reason,
        "no-matching-scope"
    );

    // An isolated agent gets no new credentials, by certificate or by token.
    let isolate =
        r#"{"kind":"isolate-agent","target":"builder","reason":"incident 12","expires_in":"1h"}"#;
    let created = harness.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            isolate,
            "/v1/overrides",
        ],
    );
    assert!(
        created.status == 200 || created.status == 201,
        "{created:?}"
    );
    let mints_before = records_of(&harness, "mint").len();
    let refused = harness.curl(
        Some("builder"),
        &[&format!("{}/v1/credentials/aws/s3-reports", harness.base())],
    );
    assert_eq!(refused.status, 403);
    assert!(!refused.body_text().contains("SecretAccessKey"));
    assert_eq!(
        harness.decision(&refused.request_id()).reason,
        "agent-isolated"
    );
    let by_token = common::curl(&[
        "-H".into(),
        format!("Authorization: {VEND_TOKEN}"),
        uri.clone(),
    ]);
    assert_eq!(by_token.status, 403);
    assert_eq!(
        harness.decision(&by_token.request_id()).reason,
        "agent-isolated"
    );
    assert_eq!(
        records_of(&harness, "mint").len(),
        mints_before,
        "nothing was minted"
    );
}

fn secret_policy() -> String {
    r#"
[[agent]]
name = "keeper"
identities = ["spiffe://clawgate.local/agent/keeper"]
scopes = ["sm-echo"]

[[scope]]
name = "sm-echo"
upstream = "https://{echo}"
route = "sm-echo"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]

[scope.credential]
kind = "secret"
secrets_manager = "echo-token"
json_key = "token"
ttl = "2s"
header = "authorization"
format = "Bearer {}"

[[scope.allow]]
paths = ["/**"]
"#
    .to_owned()
}

#[test]
fn a_secrets_manager_value_is_injected_and_its_rotation_picked_up() {
    let moto = Moto::start();
    let mut harness = Harness::with(Options {
        extra_policy: vec![("sm.toml", secret_policy())],
        agents: vec!["keeper"],
        serve_args: vec!["--aws-endpoint-url".into(), moto.url.clone()],
        env: moto.broker_env(),
        ..Options::default()
    });
    let url = format!("{}/sm-echo/v1/items", harness.base());
    let authorization = |h: &Harness| {
        let seen = h.seen();
        let last = seen.last().unwrap();
        last.headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(harness.curl(Some("keeper"), &[&url]).status, 200);
    assert_eq!(
        authorization(&harness),
        Some(format!("Bearer {FIRST_SECRET}"))
    );

    peer(&[
        "put-secret",
        "--moto",
        &moto.url,
        "--creds",
        &moto.admin.to_string(),
        "--secret",
        SECOND_SECRET,
    ]);
    std::thread::sleep(Duration::from_millis(2500));
    let reply = harness.curl(Some("keeper"), &[&url]);
    assert_eq!(reply.status, 200);
    assert_eq!(
        authorization(&harness),
        Some(format!("Bearer {SECOND_SECRET}"))
    );
    let decision = harness.decision(&reply.request_id());
    assert_eq!(
        decision.credential_ref.as_deref(),
        Some("secretsmanager:echo-token#token")
    );
    let fetches = records_of(&harness, "mint");
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert!(
        fetches
            .iter()
            .all(|r| r.credential_kind.as_deref() == Some("secret"))
    );

    harness.stop();
    for (path, bytes) in files_with_prefix(harness.dir.path(), "audit.db")
        .into_iter()
        .chain([
            (harness.path("stdout.log"), harness.stdout().into_bytes()),
            (harness.path("stderr.log"), harness.stderr().into_bytes()),
        ])
    {
        for secret in [FIRST_SECRET, SECOND_SECRET, CANARY] {
            assert!(
                !contains(&bytes, secret),
                "{secret} leaked into {}",
                path.display()
            );
        }
    }
}

const PLACEHOLDER: &str = "clawgate-sentinel-6b2e0f4a9c8d7e1f3a5b7c9d0e2f4a6b";
const SENTINEL_VALUE: &str = "sentinel-real-41d7-do-not-leak";

#[test]
fn a_sentinel_reaches_its_bound_host_and_nowhere_else() {
    let policy = format!(
        r#"
[[agent]]
name = "sender"
identities = ["spiffe://clawgate.local/agent/sender"]
scopes = ["bound", "elsewhere"]

[[scope]]
name = "bound"
upstream = "https://{{echo}}"
route = "bound"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]
[[scope.allow]]
paths = ["/**"]

[[scope]]
name = "elsewhere"
upstream = "https://localhost:{{echo_port}}"
route = "elsewhere"
ca_file = "upstream-ca.pem"
allow_private = ["localhost"]
[[scope.allow]]
paths = ["/**"]

[[sentinel]]
name = "echo-key"
placeholder = "{PLACEHOLDER}"
hosts = ["127.0.0.1"]
env = "SENTINEL_REAL"
"#
    );
    let mut harness = Harness::with(Options {
        extra_policy: vec![("sentinel.toml", policy)],
        agents: vec!["sender"],
        env: vec![("SENTINEL_REAL".into(), SENTINEL_VALUE.into())],
        ..Options::default()
    });
    let body = format!("{{\"key\":\"{PLACEHOLDER}\"}}");
    let reply = harness.curl(
        Some("sender"),
        &[
            "-H",
            &format!("x-api-key: {PLACEHOLDER}"),
            "--data-binary",
            &body,
            &format!("{}/bound/v1/items?key={PLACEHOLDER}", harness.base()),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body_text());
    let seen = harness.seen();
    let last = seen.last().unwrap();
    let header = last.headers.iter().find(|(k, _)| k == "x-api-key").unwrap();
    assert_eq!(header.1, SENTINEL_VALUE);
    assert_eq!(
        last.query.as_deref(),
        Some(format!("key={SENTINEL_VALUE}").as_str())
    );
    let expected_body = body.replace(PLACEHOLDER, SENTINEL_VALUE);
    assert_eq!(last.body_bytes, expected_body.len() as u64);
    let decision = harness.decision(&reply.request_id());
    assert_eq!(decision.reason, "allowed");
    assert_eq!(decision.detail.as_deref(), Some("sentinels: echo-key"));

    let before = harness.seen().len();
    let misdirected = harness.curl(
        Some("sender"),
        &[
            "-H",
            &format!("authorization: Bearer {PLACEHOLDER}"),
            &format!("{}/elsewhere/v1/items", harness.base()),
        ],
    );
    assert_eq!(misdirected.status, 403);
    assert_eq!(misdirected.json()["reason"], "sentinel-misdirected");
    assert_eq!(harness.seen().len(), before, "nothing was forwarded");
    let decision = harness.decision(&misdirected.request_id());
    assert_eq!(decision.reason, "sentinel-misdirected");
    assert_eq!(decision.scope.as_deref(), Some("elsewhere"));
    // The same placeholder hidden in a body is caught too.
    let in_body = harness.curl(
        Some("sender"),
        &[
            "--data-binary",
            &body,
            &format!("{}/elsewhere/v1/items", harness.base()),
        ],
    );
    assert_eq!(in_body.status, 403);
    assert_eq!(harness.seen().len(), before);

    harness.stop();
    for (path, bytes) in files_with_prefix(harness.dir.path(), "audit.db")
        .into_iter()
        .chain([(harness.path("stderr.log"), harness.stderr().into_bytes())])
    {
        assert!(
            !contains(&bytes, SENTINEL_VALUE),
            "leaked into {}",
            path.display()
        );
    }
}

/// A loopback TCP relay to `target` that holds each connection's first
/// bytes for `delay` before passing them on: a slow network hop.
fn slow_relay(target: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            std::thread::spawn(move || {
                let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                let (mut up_read, mut client_write) =
                    (upstream.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_read, &mut client_write);
                });
                std::thread::sleep(delay);
                let (mut client_read, mut up_write) = (client, upstream);
                let _ = std::io::copy(&mut client_read, &mut up_write);
                let _ = up_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn a_call_cancelled_or_stopped_during_a_slow_sts_mint_leaves_exactly_one_decision_record() {
    let moto = Moto::start();
    let relay = slow_relay(moto.port, Duration::from_secs(4));
    // clawgate reaches STS only through the slow hop.
    let mut harness = Harness::with(Options {
        extra_policy: vec![("s3.toml", s3_policy(&moto, ""))],
        agents: vec!["builder", "ops"],
        start: false,
        env: moto.broker_env(),
        ..Options::default()
    });
    std::fs::write(harness.policy.join("builder.token"), VEND_TOKEN).unwrap();
    harness.serve(&[
        "--aws-endpoint-url".into(),
        format!("http://127.0.0.1:{relay}"),
        "--vend-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    let vend_port = harness.vend_port.unwrap();

    // Two agents give up after a second, while the mint is on its way; a
    // third waits, and clawgate is stopped under it.
    let (gateway, vend, stopped) = std::thread::scope(|s| {
        let stopped = s.spawn(|| {
            common::curl(&[
                "--max-time".into(),
                "20".into(),
                "-H".into(),
                format!("Authorization: {VEND_TOKEN}"),
                "-H".into(),
                "x-test: stopped".into(),
                format!("http://127.0.0.1:{vend_port}/v1/credentials/aws/s3-reports"),
            ])
        });
        let gateway = s.spawn(|| {
            harness.curl(
                Some("builder"),
                &[
                    "--max-time",
                    "1",
                    &format!("{}/s3/reports/q1/summary.txt", harness.base()),
                ],
            )
        });
        let vend = s.spawn(|| {
            common::curl(&[
                "--max-time".into(),
                "1".into(),
                "-H".into(),
                format!("Authorization: {VEND_TOKEN}"),
                format!("http://127.0.0.1:{vend_port}/v1/credentials/aws/s3-reports"),
            ])
        });
        let (gateway, vend) = (gateway.join().unwrap(), vend.join().unwrap());
        // The cancelled two are recorded at once, before any shutdown.
        let deadline = Instant::now() + Duration::from_secs(10);
        while records_of(&harness, "decision")
            .iter()
            .filter(|r| r.reason == "client-cancelled")
            .count()
            < 2
        {
            assert!(Instant::now() < deadline, "{:#?}", harness.records());
            std::thread::sleep(Duration::from_millis(50));
        }
        harness.signal("TERM");
        (gateway, vend, stopped.join().unwrap())
    });
    assert_eq!(gateway.status, 0, "the agent gave up: {gateway:?}");
    assert_eq!(vend.status, 0, "the agent gave up: {vend:?}");
    assert_ne!(stopped.status, 200, "{stopped:?}");

    // Each cancelled call has its one decision record, written when it was
    // cancelled, not when the mint came back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let decisions = loop {
        let cancelled: Vec<_> = records_of(&harness, "decision")
            .into_iter()
            .filter(|r| r.reason == "client-cancelled")
            .collect();
        if cancelled.len() >= 2 {
            break cancelled;
        }
        assert!(Instant::now() < deadline, "cancelled: {cancelled:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let gateway = decisions
        .iter()
        .find(|r| r.mode.as_deref() == Some("gateway"))
        .expect("the gateway call's decision");
    assert_eq!(gateway.reason, "client-cancelled");
    assert_eq!(gateway.decision.as_deref(), Some("deny"));
    assert_eq!(gateway.agent.as_deref(), Some("builder"));
    assert_eq!(gateway.scope.as_deref(), Some("s3-reports"));
    assert_eq!(gateway.action.as_deref(), Some("s3:GetObject"));
    assert_eq!(gateway.credential_kind.as_deref(), Some("aws"));
    let vend = decisions
        .iter()
        .find(|r| r.mode.as_deref() == Some("vend"))
        .expect("the vend's decision");
    assert_eq!(vend.reason, "client-cancelled");
    assert_eq!(vend.agent.as_deref(), Some("builder"));
    assert_eq!(vend.scope.as_deref(), Some("s3-reports"));

    // The third call, ended by the shutdown before its mint came back, is
    // recorded as such.
    harness.stop();
    let records = harness.records();
    let shutdown: Vec<_> = records
        .iter()
        .filter(|r| r.kind == "decision" && r.reason == "shutdown")
        .collect();
    assert_eq!(shutdown.len(), 1, "{records:#?}");
    assert_eq!(shutdown[0].mode.as_deref(), Some("vend"));
    assert_eq!(shutdown[0].agent.as_deref(), Some("builder"));
    assert_eq!(shutdown[0].scope.as_deref(), Some("s3-reports"));
    // Still one decision per call, and no outcome for calls that never
    // went upstream.
    for id in [&gateway.request_id, &vend.request_id] {
        let decisions = records
            .iter()
            .filter(|r| r.request_id == *id && r.kind == "decision")
            .count();
        assert_eq!(decisions, 1, "{id}: {records:#?}");
        assert!(
            !records
                .iter()
                .any(|r| r.request_id == *id && r.kind == "outcome")
        );
    }
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind == "decision" && r.agent.as_deref() == Some("builder"))
            .count(),
        3,
        "{records:#?}"
    );
    let out = common::clawgate(&[
        "audit",
        "verify",
        "--audit",
        harness.audit.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_vend_paths_refuse_each_bad_run_token_with_its_own_reason_and_record_its_run() {
    let moto = Moto::start();
    let harness = s3_harness(&moto, "", &["--vend-listen", "127.0.0.1:0"]);
    let vend_port = harness.vend_port.unwrap();
    let on_vend_listener = format!("http://127.0.0.1:{vend_port}/v1/credentials/aws/s3-reports");
    let on_agent_listener = format!("{}/v1/credentials/aws/s3-reports", harness.base());
    let certs = harness.certs.to_str().unwrap().to_owned();
    let issue = |agent: &str, run: &str, ttl: &str, scopes: Option<&str>| {
        let mut args = vec![
            "token", "issue", "--agent", agent, "--ttl", ttl, "--run", run, "--certs", &certs,
        ];
        if let Some(scopes) = scopes {
            args.extend(["--scopes", scopes]);
        }
        let out = common::clawgate(&args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let expired = issue("builder", "run-expired", "1s", None);
    let others = issue("research", "run-other", "5m", None);
    let narrowed = issue("builder", "run-narrow", "5m", Some("some-other-scope"));
    let good = issue("builder", "run-good", "5m", None);
    // Past the token's second and the verifier's leeway.
    std::thread::sleep(Duration::from_secs(7));

    let by_cert = |token: &str| {
        harness.curl(
            Some("builder"),
            &[
                "-H",
                &format!("x-clawgate-run-token: {token}"),
                &on_agent_listener,
            ],
        )
    };
    let check = |reply: &common::Reply, status: u16, reason: &str, run: Option<&str>| {
        assert_eq!(reply.status, status, "{reason}: {reply:?}");
        if status != 200 {
            assert!(!reply.body_text().contains("SecretAccessKey"));
            assert_eq!(reply.json()["reason"], reason);
        }
        let record = harness.decision(&reply.request_id());
        assert_eq!(record.reason, reason);
        assert_eq!(record.mode.as_deref(), Some("vend"));
        assert_eq!(record.run_id.as_deref(), run, "{reason}: {record:?}");
        assert_eq!(
            record.path.as_deref(),
            Some("/v1/credentials/aws/s3-reports")
        );
        record
    };

    // The agent listener: the certificate names the agent, the run token
    // is verified exactly as on a gateway call.
    let record = check(&by_cert("garbage"), 403, "run-token-invalid", None);
    assert_eq!(record.agent.as_deref(), Some("builder"));
    check(
        &by_cert(&expired),
        403,
        "run-token-expired",
        Some("run-expired"),
    );
    check(
        &by_cert(&others),
        403,
        "run-token-wrong-agent",
        Some("run-other"),
    );
    let record = check(
        &by_cert(&narrowed),
        403,
        "run-token-scope",
        Some("run-narrow"),
    );
    assert_eq!(record.scope.as_deref(), Some("s3-reports"));
    let mints_before = records_of(&harness, "mint").len();
    assert_eq!(mints_before, 0, "no refused vend minted anything");
    let record = check(&by_cert(&good), 200, "allowed", Some("run-good"));
    assert!(record.credential_ref.unwrap().starts_with("ASIA"));

    // The vending listener: every way a token fails is its own reason.
    let by_header = |header: Option<String>, extra: Option<String>| {
        let mut args = Vec::new();
        if let Some(header) = header {
            args.extend(["-H".to_owned(), header]);
        }
        if let Some(extra) = extra {
            args.extend(["-H".to_owned(), extra]);
        }
        args.push(on_vend_listener.clone());
        common::curl(&args)
    };
    let missing = by_header(None, None);
    check(&missing, 401, "run-token-missing", None);
    assert_eq!(
        missing.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"clawgate\"")
    );
    check(
        &by_header(Some("Authorization: garbage".into()), None),
        403,
        "run-token-invalid",
        None,
    );
    check(
        &by_header(Some(format!("Authorization: Bearer {expired}")), None),
        403,
        "run-token-expired",
        Some("run-expired"),
    );
    // The vending token names builder; a run token beside it must too.
    check(
        &by_header(
            Some(format!("Authorization: {VEND_TOKEN}")),
            Some(format!("x-clawgate-run-token: {others}")),
        ),
        403,
        "run-token-wrong-agent",
        Some("run-other"),
    );
    check(
        &by_header(Some(format!("Authorization: Bearer {narrowed}")), None),
        403,
        "run-token-scope",
        Some("run-narrow"),
    );
    check(
        &by_header(Some(format!("Authorization: Bearer {good}")), None),
        200,
        "allowed",
        Some("run-good"),
    );
    // A path that names no scope is refused and recorded too.
    let elsewhere = common::curl(&[
        "-H".into(),
        format!("Authorization: {VEND_TOKEN}"),
        format!("http://127.0.0.1:{vend_port}/latest/meta-data/"),
    ]);
    assert_eq!(elsewhere.status, 403);
    let record = harness.decision(&elsewhere.request_id());
    assert_eq!(record.reason, "no-matching-scope");
    assert_eq!(record.agent.as_deref(), Some("builder"));
    assert_eq!(record.mode.as_deref(), Some("vend"));
}

/// boto3 and the AWS CLI, configured by `clawgate env` and nothing else:
/// through the token listener (dummy keys, clawgate re-signs) and with
/// credentials vended for the agent's proxy key.
#[test]
fn boto3_and_the_aws_cli_work_from_the_environment_alone_by_proxy_and_by_vending() {
    let moto = Moto::start();
    let mut harness = Harness::with(Options {
        start: false,
        env: moto.broker_env(),
        ..Options::default()
    });
    let certs = harness.certs.to_str().unwrap().to_owned();
    let out = common::clawgate(&[
        "proxy-key",
        "new",
        "--agent",
        "keyed",
        "--id",
        "keyed-aws",
        "--certs",
        &certs,
    ]);
    assert!(out.status.success(), "{out:?}");
    let entry = String::from_utf8(out.stdout).unwrap();
    harness.write_policy(
        "s3-env.toml",
        &format!(
            r#"
[[agent]]
name = "keyed"
identities = ["spiffe://clawgate.local/agent/keyed"]
scopes = ["s3-env"]
{entry}
[[scope]]
name = "s3-env"
upstream = "http://s3.test:{port}"
allow_private = ["127.0.0.1"]

[scope.credential]
kind = "aws"
role_arn = "{role}"
duration_minutes = 15
service = "s3"
region = "us-east-1"
vend = true

[[scope.allow]]
id = "reports-rw"
actions = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"]
resources = ["arn:aws:s3:::reports", "arn:aws:s3:::reports/*"]
"#,
            port = moto.port,
            role = moto.role_arn,
        ),
    );
    harness.serve(&[
        "--aws-endpoint-url".into(),
        moto.url.clone(),
        "--token-listen".into(),
        "127.0.0.1:0".into(),
        "--vend-listen".into(),
        "127.0.0.1:0".into(),
        "--resolve".into(),
        "s3.test=127.0.0.1".into(),
    ]);
    let token_port = harness
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("clawgate: token proxy on https://"))
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let env_block = |extra: &[&str]| {
        let mut args = vec![
            "env".to_owned(),
            "--agent".into(),
            "keyed".into(),
            "--certs".into(),
            certs.clone(),
            "--token-proxy".into(),
            format!("https://127.0.0.1:{token_port}"),
            "--policy".into(),
            harness.policy.display().to_string(),
            "--system-roots".into(),
            harness.policy.join("upstream-ca.pem").display().to_string(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = common::clawgate(&args);
        assert!(out.status.success(), "{out:?}");
        let mut vars: std::collections::HashMap<String, String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        // What any AWS agent names besides: its region, and no stray files.
        for (k, v) in [
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            vars.insert(k.into(), v.into());
        }
        vars
    };
    let agent = |vars: &std::collections::HashMap<String, String>, key: &str| {
        let out = Command::new(python())
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/aws/env_agent.py"))
            .arg(key)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };

    // By proxy: the SDK signs with keys that open nothing; clawgate re-signs
    // with minted credentials on the way to S3.
    let mut vars = env_block(&[]);
    vars.insert(
        "AWS_ENDPOINT_URL_S3".into(),
        format!("http://s3.test:{}", moto.port),
    );
    vars.insert("AWS_ACCESS_KEY_ID".into(), "AKIADUMMYAGENTKEY000".into());
    vars.insert("AWS_SECRET_ACCESS_KEY".into(), "dummy-agent-secret".into());
    let got = agent(&vars, "by-proxy.txt");
    assert_eq!(got["body"], "quarterly numbers", "{got}");
    assert_eq!(got["cli_exit"], 0, "{got}");
    assert!(
        got["cli_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "by-proxy.txt")
    );
    let puts: Vec<_> = records_of(&harness, "decision")
        .into_iter()
        .filter(|r| r.action.as_deref() == Some("s3:PutObject"))
        .collect();
    assert_eq!(puts.len(), 1, "{puts:#?}");
    assert_eq!(puts[0].reason, "allowed");
    assert_eq!(puts[0].agent.as_deref(), Some("keyed"));
    assert_eq!(puts[0].cert_fp.as_deref(), Some("proxy-key:keyed-aws"));
    assert_eq!(puts[0].host.as_deref(), Some("s3.test"));
    assert!(moto.assume_roles() >= 1);

    // By vending: the container provider fetches credentials with the same
    // proxy key, and the SDK calls S3 itself (loopback, outside the proxy).
    let vend_port = harness.vend_port.unwrap();
    let mut vars = env_block(&["--vend", &format!("http://127.0.0.1:{vend_port}")]);
    assert!(
        vars["AWS_CONTAINER_CREDENTIALS_FULL_URI"].ends_with("/v1/credentials/aws/s3-env"),
        "{vars:?}"
    );
    vars.insert("AWS_ENDPOINT_URL_S3".into(), moto.url.clone());
    let got = agent(&vars, "by-vending.txt");
    assert_eq!(got["body"], "quarterly numbers", "{got}");
    assert_eq!(got["cli_exit"], 0, "{got}");
    assert_ne!(got["access_key_id"], "AKIADUMMYAGENTKEY000");
    let vends: Vec<_> = records_of(&harness, "decision")
        .into_iter()
        .filter(|r| r.mode.as_deref() == Some("vend"))
        .collect();
    assert!(!vends.is_empty(), "no vend record");
    assert!(
        vends
            .iter()
            .all(|r| r.agent.as_deref() == Some("keyed") && r.reason == "allowed")
    );
    assert_eq!(
        vends[0].credential_ref.as_deref(),
        got["access_key_id"].as_str(),
        "{vends:#?}"
    );
}

/// An STS refusal reaches the operator whole: the service's error code,
/// message and HTTP status, in stderr and in each `mint` record.
#[test]
fn an_sts_refusal_names_its_code_message_and_status_in_stderr_and_the_mint_record() {
    let moto = Moto::start();
    let mut env = moto.broker_env();
    // The broker's key is right, its secret wrong: STS refuses to sign it.
    for (name, value) in &mut env {
        if name == "AWS_SECRET_ACCESS_KEY" {
            *value = "not-the-broker-secret".into();
        }
    }
    let mut harness = Harness::with(Options {
        extra_policy: vec![("s3.toml", s3_policy(&moto, ""))],
        agents: vec!["builder"],
        start: false,
        env,
        ..Options::default()
    });
    std::fs::write(harness.policy.join("builder.token"), VEND_TOKEN).unwrap();
    harness.serve(&["--aws-endpoint-url".into(), moto.url.clone()]);
    let reply = harness.curl(
        Some("builder"),
        &[&format!("{}/s3/reports/q1/summary.txt", harness.base())],
    );
    assert_eq!(reply.status, 503, "{}", reply.body_text());
    let mints = records_of(&harness, "mint");
    assert!(!mints.is_empty());
    for mint in &mints {
        let detail = mint.detail.as_deref().unwrap_or_default();
        assert!(detail.contains("(HTTP 403"), "{detail}");
        assert!(
            detail.contains("SignatureDoesNotMatch") || detail.contains("InvalidClientTokenId"),
            "{detail}"
        );
        assert!(!detail.contains("no message"), "{detail}");
    }
    let stderr = harness.stderr();
    assert!(stderr.contains("(HTTP 403"), "{stderr}");
    assert!(!stderr.contains("not-the-broker-secret"));
}
