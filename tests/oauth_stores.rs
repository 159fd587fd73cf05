//! Where OAuth's long-lived grants are kept, end to end. Signing keys
//! (`private_key_jwt`, `jwt_bearer`) from Secrets Manager; and the
//! `refresh_token` grant: the real binary, `oidc-provider`
//! with refresh token rotation on (a reused refresh token revokes its
//! grant), a resource server that validates the access tokens, and moto's
//! Secrets Manager. A rotated refresh token must be stored where the old one
//! came from (a file, replaced atomically with mode 0600; a Secrets Manager
//! secret, by PutSecretValue) before the access token it came with is used,
//! and two scopes that share a refresh token must never refresh at once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;
#[path = "oauth/support.rs"]
mod support;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawgate::audit::DecisionRecord;
use common::{Harness, Options};
use support::{CLIENT_SECRET, RESOURCE, Script, assert_not_leaked, start_idp, tls_env};

const SA_EMAIL: &str = "clawgate-sa@example-project.iam.gserviceaccount.com";

/// moto's server (no authentication), killed on drop.
struct Moto {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Moto {
    fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = python().with_file_name("moto_server");
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Secrets Manager through boto3: `create ID VALUE` or `get ID`.
    fn secrets(&self, args: &[&str]) -> String {
        let script = r#"
import sys, boto3
sm = boto3.client("secretsmanager", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
if sys.argv[2] == "create":
    sm.create_secret(Name=sys.argv[3], SecretString=sys.argv[4])
else:
    print(sm.get_secret_value(SecretId=sys.argv[3])["SecretString"], end="")
"#;
        let out = Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(&self.url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("OAUTH_CLIENT_SECRET", CLIENT_SECRET),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    common::venv_python("moto[server] and boto3")
}

fn agent_and_scope(agent: &str, name: &str, port: u16, credential: &str) -> String {
    format!(
        r#"
[[agent]]
name = "{agent}"
identities = ["spiffe://clawgate.local/agent/{agent}"]
scopes = ["{name}"]

[[scope]]
name = "{name}"
upstream = "https://localhost:{port}"
route = "{name}"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1", "::1"]

[scope.credential]
kind = "oauth2"
client_id = "cg-refresh"
token_ca_file = "upstream-ca.pem"
token_allow_private = ["127.0.0.1", "::1"]
{credential}

[[scope.allow]]
id = "read"
methods = ["GET"]
paths = ["/v1/**"]
"#
    )
}

/// A refresh with `token`, straight to the provider: does it still work?
fn refresh_works(h: &Harness, idp_port: u16, token: &str) -> bool {
    let out = Command::new("curl")
        .args([
            "-s",
            "--cacert",
            h.policy.join("upstream-ca.pem").to_str().unwrap(),
            "-u",
            &format!("cg-refresh:{CLIENT_SECRET}"),
            "-d",
            "grant_type=refresh_token",
            "--data-urlencode",
            &format!("refresh_token={token}"),
            &format!("https://localhost:{idp_port}/token"),
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["access_token"].is_string()
}

fn mints(h: &Harness, scope: &str) -> Vec<DecisionRecord> {
    h.records()
        .into_iter()
        .filter(|r| r.kind == "mint" && r.scope.as_deref() == Some(scope))
        .collect()
}

fn rotations(h: &Harness, scope: &str) -> usize {
    mints(h, scope)
        .iter()
        .filter(|m| {
            m.detail
                .as_deref()
                .is_some_and(|d| d.contains("refresh token rotated"))
        })
        .count()
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn read_token(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim_end().to_owned()
}

/// A directory nothing can be created in, not even by root (mode 0555 and,
/// where the file system has it, the immutable attribute), until dropped.
struct Frozen(PathBuf);

impl Frozen {
    fn new(dir: &Path) -> Option<Frozen> {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let _ = Command::new("chattr").arg("+i").arg(dir).status();
        let frozen = Frozen(dir.to_path_buf());
        let probe = dir.join("probe");
        if std::fs::write(&probe, b"").is_ok() {
            let _ = std::fs::remove_file(&probe);
            return None;
        }
        Some(frozen)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

/// Calls until one is refused, which must be for the store, recorded so.
fn refusal_while_frozen(
    h: &Harness,
    call: &impl Fn(&Harness, &str, &str) -> common::Reply,
) -> common::Reply {
    let mut refused = None;
    wait("a refusal while the store is read-only", || {
        let r = call(h, "refresher", "api-refresh");
        if r.status == 200 {
            return false;
        }
        refused = Some(r);
        true
    });
    let refused = refused.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body_text());
    assert_eq!(refused.json()["reason"], "credential-store-failed");
    assert_eq!(
        h.decision(&refused.request_id()).reason,
        "credential-store-failed"
    );
    let failed = mints(h, "api-refresh")
        .into_iter()
        .find(|m| m.reason == "credential-store-failed")
        .unwrap();
    assert!(
        failed
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("could not be stored in `file:")),
        "{failed:?}"
    );
    refused
}

#[test]
fn rotated_refresh_tokens_are_stored_where_they_came_from_before_use() {
    let mut h = Harness::with(Options {
        agents: vec!["refresher", "sharer", "vaulted"],
        start: false,
        ..Options::default()
    });
    let state = h.path("oauth-state");
    std::fs::create_dir_all(&state).unwrap();
    // Fifteen-second access tokens: each scope refreshes every ten seconds.
    let idp = start_idp(&h, &state, 0, 15, "");
    let issuer = format!("https://localhost:{}", idp.port);
    let mut env = tls_env(&h, &state);
    env.extend([("ISSUER", issuer.clone()), ("SCOPE", "echo.read".into())]);
    let resource = Script::start("resource.mjs", &env);

    let tokens_dir = h.policy.join("tokens");
    std::fs::create_dir_all(&tokens_dir).unwrap();
    let file = tokens_dir.join("refresh.txt");
    let first_file_token = read_token(&state.join("refresh-file.txt"));
    std::fs::write(&file, format!("{first_file_token}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let moto = Moto::start();
    let first_sm_token = read_token(&state.join("refresh-sm.txt"));
    moto.secrets(&["create", "oauth/refresh", &first_sm_token]);
    moto.secrets(&["create", "oauth/client-secret", CLIENT_SECRET]);

    let endpoint = format!("token_endpoint = \"{issuer}/token\"");
    let from_file = format!(
        "{endpoint}\nrefresh_token_file = \"tokens/refresh.txt\"\nenv = \"OAUTH_CLIENT_SECRET\""
    );
    let policy = [
        agent_and_scope(
            "refresher",
            "api-refresh",
            resource.port,
            &format!("{from_file}\nscope = \"echo.read\""),
        ),
        // Another scope on the same refresh token (another cache entry):
        // its refreshes must wait for the first's, never race them.
        agent_and_scope(
            "sharer",
            "api-refresh-too",
            resource.port,
            &format!("{from_file}\nscope = \"offline_access echo.read\""),
        ),
        // Refresh token and client secret both in Secrets Manager.
        agent_and_scope(
            "vaulted",
            "api-refresh-sm",
            resource.port,
            &format!("{endpoint}\nrefresh_token_secrets_manager = \"oauth/refresh\"\nsecrets_manager = \"oauth/client-secret\"\nscope = \"echo.read\""),
        ),
    ]
    .concat();
    std::fs::write(h.policy.join("refresh.toml"), policy).unwrap();
    h.env = moto.env();
    h.serve(&["--aws-endpoint-url".to_owned(), moto.url.clone()]);

    let call = |h: &Harness, agent: &str, route: &str| {
        h.curl(
            Some(agent),
            &[
                "-H",
                "authorization: Bearer agent-held-token",
                &format!("{}/{route}/v1/items", h.base()),
            ],
        )
    };
    let mut replies = Vec::new();
    let routes = [
        ("refresher", "api-refresh"),
        ("sharer", "api-refresh-too"),
        ("vaulted", "api-refresh-sm"),
    ];
    wait("two rotations in each scope", || {
        // The three scopes call at once, so the two that share a refresh
        // token often refresh at the same moment.
        let batch: Vec<common::Reply> = std::thread::scope(|s| {
            let handles: Vec<_> = routes
                .iter()
                .map(|(agent, route)| s.spawn(|| call(&h, agent, route)))
                .collect();
            handles.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for r in &batch {
            assert_eq!(r.status, 200, "{}", r.body_text());
            assert_eq!(r.json()["client_id"], "cg-refresh");
            assert_eq!(r.json()["sub"], "user-1", "the user's token, by refresh");
        }
        replies.extend(batch);
        routes.iter().all(|(_, route)| rotations(&h, route) >= 2)
    });
    // Had a spent refresh token ever been presented, the provider would have
    // revoked the grant and said so.
    assert!(
        !state.join("grant-errors.txt").exists(),
        "{}",
        std::fs::read_to_string(state.join("grant-errors.txt")).unwrap_or_default()
    );
    for route in ["api-refresh", "api-refresh-too", "api-refresh-sm"] {
        // Secrets Manager fetches are `mint` records of kind `secret`.
        for m in mints(&h, route) {
            assert_eq!(m.reason, "allowed", "{m:?}");
            if m.credential_kind.as_deref() == Some("secret") {
                continue;
            }
            assert_eq!(m.credential_kind.as_deref(), Some("oauth2"));
            let detail = m.detail.clone().unwrap_or_default();
            assert!(
                detail.starts_with("refresh_token via client_secret_basic"),
                "{detail}"
            );
        }
    }
    let sm_rotation = mints(&h, "api-refresh-sm")
        .into_iter()
        .find_map(|m| m.detail.filter(|d| d.contains("rotated")))
        .unwrap();
    assert!(
        sm_rotation.contains("stored in `secretsmanager:oauth/refresh`"),
        "{sm_rotation}"
    );
    // The client secret was fetched from Secrets Manager, and recorded so.
    assert!(h.records().iter().any(|r| {
        r.kind == "mint"
            && r.credential_ref
                .as_deref()
                .is_some_and(|c| c.starts_with("secretsmanager:oauth/client-secret"))
    }));

    // What the stores hold now is the live refresh token (checked with the
    // provider last, since a check spends it), written 0600 in place.
    let file_token = read_token(&file);
    assert_ne!(file_token, first_file_token);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let entries: Vec<_> = std::fs::read_dir(&tokens_dir).unwrap().collect();
    assert_eq!(entries.len(), 1, "no temporary file is left behind");
    let sm_token = moto.secrets(&["get", "oauth/refresh"]);
    assert_ne!(sm_token, first_sm_token);

    // The file cannot be replaced: the rotated token is kept in memory, the
    // access token it came with is not used, and the call fails closed.
    let refused = match Frozen::new(&tokens_dir) {
        Some(frozen) => {
            let refused = refusal_while_frozen(&h, &call);
            // Writable again: the grant was never lost.
            drop(frozen);
            wait("calls succeeding again", || {
                call(&h, "refresher", "api-refresh").status == 200
            });
            assert!(!state.join("grant-errors.txt").exists());
            refused.body
        }
        None => {
            eprintln!("the directory cannot be made read-only here: store failure not checked");
            Vec::new()
        }
    };
    let file_token_now = read_token(&file);

    let mut tokens: Vec<String> = std::fs::read_to_string(state.join("tokens.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    tokens.extend([
        first_file_token,
        file_token,
        file_token_now.clone(),
        first_sm_token,
        sm_token.clone(),
    ]);
    let mut bytes: Vec<&[u8]> = replies.iter().map(|r| r.body.as_slice()).collect();
    bytes.push(&refused);
    assert_not_leaked(&h, &tokens, &bytes);

    // Stop clawgate first: from here on the provider is asked directly.
    h.stop();
    assert!(refresh_works(&h, idp.port, &file_token_now));
    assert!(refresh_works(&h, idp.port, &sm_token));
    drop(idp);
}

#[test]
fn signing_keys_from_secrets_manager() {
    let mut h = Harness::with(Options {
        agents: vec!["signer", "servicer"],
        start: false,
        ..Options::default()
    });
    let state = h.path("oauth-state");
    std::fs::create_dir_all(&state).unwrap();
    let idp = start_idp(&h, &state, 0, 300, "");
    let issuer = format!("https://localhost:{}", idp.port);
    let mut env = tls_env(&h, &state);
    env.extend([("ISSUER", issuer.clone()), ("SCOPE", "echo.read".into())]);
    let resource = Script::start("resource.mjs", &env);
    let moto = Moto::start();
    // The client's key as a PEM; the service account's as Google's key file.
    let client_pem = std::fs::read_to_string(state.join("client-key.pem")).unwrap();
    moto.secrets(&["create", "oauth/client-key", &client_pem]);
    let sa_json = serde_json::json!({
        "type": "service_account",
        "client_email": SA_EMAIL,
        "private_key_id": "sa-key",
        "private_key": std::fs::read_to_string(state.join("sa-key.pem")).unwrap(),
    });
    moto.secrets(&["create", "google/sa", &sa_json.to_string()]);
    let endpoint = format!("token_endpoint = \"{issuer}/token\"");
    let policy = [
        agent_and_scope(
            "signer",
            "api-jwt-sm",
            resource.port,
            &format!("{endpoint}\nclient_auth = \"private_key_jwt\"\nsecrets_manager = \"oauth/client-key\"\nscope = \"echo.read\"\nresource = [\"{RESOURCE}\"]"),
        )
        .replace("client_id = \"cg-refresh\"", "client_id = \"cg-jwt\""),
        agent_and_scope(
            "servicer",
            "api-sa-sm",
            resource.port,
            &format!("{endpoint}\nassertion_issuer = \"{SA_EMAIL}\"\nsecrets_manager = \"google/sa\"\njson_key = \"private_key\"\nscope = \"echo.read\""),
        )
        .replace("kind = \"oauth2\"", "kind = \"jwt_bearer\"")
        .replace("client_id = \"cg-refresh\"", "client_id = \"cg-sa\""),
    ]
    .concat();
    std::fs::write(h.policy.join("keys.toml"), policy).unwrap();
    h.env = moto.env();
    h.serve(&["--aws-endpoint-url".to_owned(), moto.url.clone()]);
    let mut replies = Vec::new();
    for (agent, route, client, kind) in [
        ("signer", "api-jwt-sm", "cg-jwt", "oauth2"),
        ("servicer", "api-sa-sm", "cg-sa", "jwt_bearer"),
    ] {
        let r = h.curl(Some(agent), &[&format!("{}/{route}/v1/items", h.base())]);
        assert_eq!(r.status, 200, "{route}: {}", r.body_text());
        assert_eq!(r.json()["client_id"], client);
        assert_eq!(r.json()["scope"], "echo.read");
        let minted = mints(&h, route);
        let key_fetch = minted
            .iter()
            .find(|m| m.credential_kind.as_deref() == Some("secret"))
            .unwrap();
        assert_eq!(key_fetch.reason, "allowed");
        let token = minted
            .iter()
            .find(|m| m.credential_kind.as_deref() == Some(kind))
            .unwrap();
        assert_eq!(token.reason, "allowed", "{token:?}");
        replies.push(r);
    }
    let tokens: Vec<String> = std::fs::read_to_string(state.join("tokens.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let bytes: Vec<&[u8]> = replies.iter().map(|r| r.body.as_slice()).collect();
    assert_not_leaked(&h, &tokens, &bytes);
    // Nor the keys themselves.
    for (place, text) in [("stdout", h.stdout()), ("stderr", h.stderr())] {
        assert!(!text.contains("PRIVATE KEY"), "a key is in {place}");
    }
    drop(idp);
}
