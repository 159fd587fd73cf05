//! Minted OAuth 2.0 credentials end to end: the real binary, a real OAuth /
//! OpenID provider (npm `oidc-provider`) over HTTPS, and a resource server
//! that accepts only tokens the provider signed, for its audience, with the
//! scope it needs. The agent (curl) holds no token. Every test checks the
//! decision log as well as what the client saw, and that no minted token
//! reaches a log, a record or a reply.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;
#[path = "oauth/support.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clawgate::audit::DecisionRecord;
use common::{Harness, Options};
use support::{CLIENT_SECRET, RESOURCE, Script, assert_not_leaked, start_idp, tls_env};

const AGENTS: [(&str, &str); 4] = [
    ("builder", "api-basic"),
    ("poster", "api-post"),
    ("signer", "api-jwt"),
    ("servicer", "api-sa"),
];
const SA_EMAIL: &str = "clawgate-sa@example-project.iam.gserviceaccount.com";
const ROLES: &str = r#"
[roles]
auditors = ["spiffe://clawgate.local/agent/watcher"]
"#;

/// The provider, the resource server and clawgate, wired together.
struct World {
    h: Harness,
    state: PathBuf,
    idp: Option<Script>,
    idp_port: u16,
    _resource: Script,
}

/// A scope on the resource server whose credential is `credential`.
fn scope(name: &str, resource_port: u16, credential: &str) -> String {
    let kind = if credential.contains("kind = ") {
        ""
    } else {
        "kind = \"oauth2\""
    };
    format!(
        r#"
[[scope]]
name = "{name}"
upstream = "https://localhost:{resource_port}"
route = "{name}"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1", "::1"]

[scope.credential]
{kind}
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

impl World {
    fn start(ttl: u64) -> World {
        let mut h = Harness::with(Options {
            agents: vec!["builder", "poster", "signer", "servicer", "watcher"],
            start: false,
            env: vec![("OAUTH_CLIENT_SECRET".into(), CLIENT_SECRET.into())],
            ..Options::default()
        });
        let state = h.path("oauth-state");
        std::fs::create_dir_all(&state).unwrap();
        let idp = start_idp(&h, &state, 0, ttl, "");
        let idp_port = idp.port;
        let issuer = format!("https://localhost:{idp_port}");
        let mut env = tls_env(&h, &state);
        env.extend([("ISSUER", issuer.clone()), ("SCOPE", "echo.read".into())]);
        let resource = Script::start("resource.mjs", &env);
        for key in ["client-key.pem", "sa-key.pem"] {
            std::fs::copy(state.join(key), h.policy.join(key)).unwrap();
        }
        let token_endpoint = format!("token_endpoint = \"{issuer}/token\"");
        let common = format!("scope = \"echo.read\"\nresource = [\"{RESOURCE}\"]");
        // One agent per scope: a scope is chosen by host for an agent.
        let mut policy = ROLES.to_owned();
        for (agent, scope) in AGENTS {
            policy.push_str(&format!(
                "\n[[agent]]\nname = \"{agent}\"\nidentities = [\"spiffe://clawgate.local/agent/{agent}\"]\nscopes = [\"{scope}\"]\n"
            ));
        }
        policy.push_str(&scope(
            "api-basic",
            resource.port,
            &format!("{token_endpoint}\nclient_id = \"cg-basic\"\nenv = \"OAUTH_CLIENT_SECRET\"\n{common}"),
        ));
        policy.push_str(&scope(
            "api-post",
            resource.port,
            &format!("{token_endpoint}\nclient_id = \"cg-post\"\nclient_auth = \"client_secret_post\"\nenv = \"OAUTH_CLIENT_SECRET\"\n{common}"),
        ));
        policy.push_str(&scope(
            "api-jwt",
            resource.port,
            &format!("issuer = \"{issuer}\"\nclient_id = \"cg-jwt\"\nclient_auth = \"private_key_jwt\"\nprivate_key_file = \"client-key.pem\"\n{common}"),
        ));
        policy.push_str(&scope(
            "api-sa",
            resource.port,
            &format!("kind = \"jwt_bearer\"\n{token_endpoint}\nclient_id = \"cg-sa\"\nassertion_issuer = \"{SA_EMAIL}\"\nsubject = \"someone@example.com\"\nprivate_key_file = \"sa-key.pem\"\nscope = \"echo.read\""),
        ));
        std::fs::write(h.policy.join("oauth.toml"), policy).unwrap();
        h.serve(&[]);
        World {
            h,
            state,
            idp: Some(idp),
            idp_port,
            _resource: resource,
        }
    }

    fn get(&self, route: &str) -> common::Reply {
        // The agent's own Authorization must never reach the upstream.
        let agent = AGENTS.iter().find(|(_, s)| *s == route).unwrap().0;
        self.h.curl(
            Some(agent),
            &[
                "-H",
                "authorization: Bearer agent-held-token",
                &format!("{}/{route}/v1/items", self.h.base()),
            ],
        )
    }

    fn mints(&self, scope: &str) -> Vec<DecisionRecord> {
        self.h
            .records()
            .into_iter()
            .filter(|r| r.kind == "mint" && r.scope.as_deref() == Some(scope))
            .collect()
    }

    fn tokens(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("tokens.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// No token the resource server accepted is in clawgate's logs, its
    /// decision log files, or `extra` (replies the agent got).
    fn assert_no_token_leaked(&self, extra: &[&[u8]]) {
        assert_not_leaked(&self.h, &self.tokens(), extra);
    }

    fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !f() {
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[test]
fn client_credentials_with_secret_basic_post_and_private_key_jwt() {
    let w = World::start(300);
    let mut replies = Vec::new();
    for (route, client, auth) in [
        ("api-basic", "cg-basic", "client_secret_basic"),
        ("api-post", "cg-post", "client_secret_post"),
        ("api-jwt", "cg-jwt", "private_key_jwt"),
    ] {
        let r = w.get(route);
        assert_eq!(r.status, 200, "{route}: {}", r.body_text());
        let body = r.json();
        // The resource server checked signature, issuer, audience and scope.
        assert_eq!(body["client_id"], client, "{body}");
        assert_eq!(body["aud"], RESOURCE);
        assert_eq!(body["scope"], "echo.read");
        let decision = w.h.decision(&r.request_id());
        assert_eq!(decision.credential_kind.as_deref(), Some("oauth2"));
        assert!(
            decision
                .credential_ref
                .as_deref()
                .is_some_and(|c| c.starts_with(&format!("oauth2:{client}@https://localhost:"))),
            "{decision:?}"
        );
        let mints = w.mints(route);
        assert_eq!(mints.len(), 1, "{mints:?}");
        let mint = &mints[0];
        assert_eq!(mint.reason, "allowed");
        assert_eq!(mint.credential_kind.as_deref(), Some("oauth2"));
        assert_eq!(mint.request_id, r.request_id());
        let detail = mint.detail.as_deref().unwrap_or_default();
        assert!(detail.contains(&format!("via {auth}")), "{detail}");
        assert!(detail.contains("lifetime 300s"), "{detail}");
        assert!(
            detail.contains("requested scope `echo.read`, granted `echo.read`"),
            "{detail}"
        );
        replies.push(r);
    }
    // A second call reuses the token.
    let again = w.get("api-basic");
    assert_eq!(again.status, 200);
    assert_eq!(w.mints("api-basic").len(), 1);
    let metrics = w.h.admin(Some("watcher"), &["/metrics"]).body_text();
    assert!(
        metrics.contains("clawgate_credential_kind_mints_total{kind=\"oauth2\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("clawgate_credential_kind_cache_hits_total{kind=\"oauth2\"} 1"),
        "{metrics}"
    );
    // An upstream that reflects the minted token hands the agent the
    // redaction marker, and the call's outcome says so.
    let agent = AGENTS.iter().find(|(_, s)| *s == "api-basic").unwrap().0;
    let echoed =
        w.h.curl(Some(agent), &[&format!("{}/api-basic/v1/echo", w.h.base())]);
    assert_eq!(echoed.status, 200, "{}", echoed.body_text());
    assert_eq!(
        echoed.json()["authorization"],
        "Bearer [clawgate:redacted]",
        "{}",
        echoed.body_text()
    );
    let outcome = w.h.outcome(&echoed.request_id());
    assert!(
        outcome
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("credential-reflected: 1 redacted")),
        "{outcome:?}"
    );
    let mut bytes: Vec<&[u8]> = replies.iter().map(|r| r.body.as_slice()).collect();
    bytes.push(again.body.as_slice());
    bytes.push(echoed.body.as_slice());
    let headers: Vec<Vec<u8>> = replies
        .iter()
        .map(|r| r.headers.clone().into_bytes())
        .collect();
    bytes.extend(headers.iter().map(Vec::as_slice));
    w.assert_no_token_leaked(&bytes);
}

#[test]
fn a_thousand_calls_mint_a_handful_of_tokens() {
    let w = World::start(300);
    let url = format!("{}/api-basic/v1/items", w.h.base());
    let (cert, key) = w.h.agent_cert("builder");
    let mut args = vec![
        "-sS".to_owned(),
        "--cacert".into(),
        w.h.certs.join("ca.pem").display().to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
        "-w".into(),
        "\n%{http_code}\n".into(),
    ];
    for _ in 0..1000 {
        args.push(url.clone());
    }
    let out = Command::new("curl").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = text.lines().filter(|l| *l == "200").count();
    assert_eq!(ok, 1000, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("\"ok\":true").count(), 1000);
    let mints = w.mints("api-basic");
    assert!(
        !mints.is_empty() && mints.len() <= 3,
        "1,000 calls over one token's life minted {} times",
        mints.len()
    );
    assert!(w.tokens().len() <= 3, "{}", w.tokens().len());
    let metrics = w.h.admin(Some("watcher"), &["/metrics"]).body_text();
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("clawgate_credential_kind_cache_hits_total{kind=\"oauth2\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(hits >= 997, "{hits} cache hits");
    w.assert_no_token_leaked(&[&out.stdout]);
}

#[test]
fn tokens_are_refreshed_and_a_revoked_client_fails_closed() {
    // Eight-second tokens: refreshed in the background after about five.
    let mut w = World::start(8);
    let first = w.get("api-basic");
    assert_eq!(first.status, 200, "{}", first.body_text());
    // Calls keep succeeding while the token is refreshed ahead of expiry.
    w.wait("a second mint", Duration::from_secs(60), || {
        let r = w.get("api-basic");
        assert_eq!(r.status, 200, "{}", r.body_text());
        // The refreshed token is minted in the background, then used.
        w.mints("api-basic").len() >= 2 && w.tokens().len() >= 2
    });
    assert!(w.mints("api-basic").iter().all(|m| m.reason == "allowed"));

    // The provider comes back without the client: it is revoked.
    w.idp = None;
    let port = w.idp_port;
    w.idp = Some(start_idp(&w.h, &w.state, port, 8, "cg-basic"));
    let mut refused = None;
    w.wait("a refusal", Duration::from_secs(60), || {
        let r = w.get("api-basic");
        if r.status == 200 {
            return false;
        }
        refused = Some(r);
        true
    });
    let refused = refused.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body_text());
    assert_eq!(refused.json()["reason"], "credential-grant-invalid");
    let decision = w.h.decision(&refused.request_id());
    assert_eq!(decision.reason, "credential-grant-invalid");
    let failed: Vec<_> = w
        .mints("api-basic")
        .into_iter()
        .filter(|m| m.reason == "credential-grant-invalid")
        .collect();
    assert!(!failed.is_empty());
    assert!(
        failed
            .iter()
            .all(|m| m.detail.as_deref().unwrap_or("").contains("invalid_client")),
        "{failed:?}"
    );
    // Fail closed: it stays refused, no stale token is injected.
    let again = w.get("api-basic");
    assert_eq!(again.status, 503);

    // The provider gone: a scope that never minted is refused as unreachable.
    w.idp = None;
    let unreachable = w.get("api-post");
    assert_eq!(unreachable.status, 503, "{}", unreachable.body_text());
    assert_eq!(
        unreachable.json()["reason"],
        "credential-endpoint-unreachable"
    );
    assert_eq!(
        w.h.decision(&unreachable.request_id()).reason,
        "credential-endpoint-unreachable"
    );
    w.assert_no_token_leaked(&[&refused.body, &again.body, &unreachable.body]);
}

#[test]
fn github_app_installation_tokens_are_minted_restricted_and_never_shown() {
    let mut h = Harness::with(Options {
        agents: vec!["coder", "rogue"],
        start: false,
        ..Options::default()
    });
    let state = h.path("github-state");
    std::fs::create_dir_all(&state).unwrap();
    let mut env = tls_env(&h, &state);
    env.extend([
        ("APP_ID", "424242".to_owned()),
        ("INSTALLATION_ID", "777".to_owned()),
        ("TTL", "3600".to_owned()),
    ]);
    let github = Script::start("github.mjs", &env);
    for key in ["app-key.pem", "wrong-key.pem"] {
        std::fs::copy(state.join(key), h.policy.join(key)).unwrap();
    }
    let port = github.port;
    let scope = |name: &str, key: &str| {
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
kind = "github_app"
api_url = "https://localhost:{port}"
app_id = 424242
installation_id = 777
private_key_file = "{key}"
repositories = ["widgets"]
permissions = {{ contents = "read" }}
token_ca_file = "upstream-ca.pem"
token_allow_private = ["127.0.0.1", "::1"]

[[scope.allow]]
id = "repos"
methods = ["GET"]
paths = ["/repos/**"]
"#,
            agent = if key == "app-key.pem" {
                "coder"
            } else {
                "rogue"
            }
        )
    };
    let policy = format!(
        "{}{}",
        scope("github", "app-key.pem"),
        scope("github-wrong", "wrong-key.pem")
    );
    std::fs::write(h.policy.join("github.toml"), policy).unwrap();
    h.serve(&[]);
    let get = |agent: &str, route: &str, repo: &str| {
        h.curl(
            Some(agent),
            &[
                "-H",
                "authorization: token agent-held",
                &format!("{}/{route}/repos/acme/{repo}/contents/README.md", h.base()),
            ],
        )
    };
    let mints = |scope: &str| -> Vec<DecisionRecord> {
        h.records()
            .into_iter()
            .filter(|r| r.kind == "mint" && r.scope.as_deref() == Some(scope))
            .collect()
    };

    let ok = get("coder", "github", "widgets");
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    assert_eq!(ok.json()["repo"], "widgets");
    assert_eq!(ok.json()["permissions"]["contents"], "read");
    let decision = h.decision(&ok.request_id());
    assert_eq!(decision.credential_kind.as_deref(), Some("github_app"));
    let minted = mints("github");
    assert_eq!(minted.len(), 1, "{minted:?}");
    assert_eq!(minted[0].reason, "allowed");
    assert_eq!(
        minted[0].credential_ref.as_deref(),
        Some(format!("github_app:424242/installations/777@https://localhost:{port}").as_str())
    );
    let detail = minted[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("repositories `widgets`"), "{detail}");
    assert!(detail.contains("granted `contents:read`"), "{detail}");
    assert!(!detail.contains("granted-broader"), "{detail}");
    // The token is cut down to the repositories the scope names.
    let other = get("coder", "github", "gadgets");
    assert_eq!(other.status, 404, "{}", other.body_text());
    assert_eq!(mints("github").len(), 1, "the token is reused");

    // A JWT signed with a key GitHub does not know: refused, fail closed.
    let refused = get("rogue", "github-wrong", "widgets");
    assert_eq!(refused.status, 503, "{}", refused.body_text());
    assert_eq!(refused.json()["reason"], "credential-grant-invalid");
    let failed = mints("github-wrong");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].reason, "credential-grant-invalid");
    assert!(
        failed[0]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("HTTP 401"),
        "{failed:?}"
    );
    let tokens: Vec<String> = std::fs::read_to_string(state.join("tokens.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(tokens.len(), 1);
    assert_not_leaked(&h, &tokens, &[&ok.body, &other.body, &refused.body]);
    drop(github);
}

#[test]
fn jwt_bearer_grant_as_a_service_account() {
    let w = World::start(300);
    let r = w.get("api-sa");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let body = r.json();
    assert_eq!(body["client_id"], "cg-sa", "{body}");
    assert_eq!(body["aud"], RESOURCE);
    assert_eq!(body["scope"], "echo.read");
    let decision = w.h.decision(&r.request_id());
    assert_eq!(decision.credential_kind.as_deref(), Some("jwt_bearer"));
    let mints = w.mints("api-sa");
    assert_eq!(mints.len(), 1, "{mints:?}");
    assert_eq!(mints[0].reason, "allowed");
    assert_eq!(mints[0].credential_kind.as_deref(), Some("jwt_bearer"));
    assert!(
        mints[0]
            .credential_ref
            .as_deref()
            .is_some_and(|c| c.starts_with(&format!("jwt_bearer:{SA_EMAIL}@https://localhost:"))),
        "{mints:?}"
    );
    let detail = mints[0].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("jwt_bearer via none: lifetime 300s"),
        "{detail}"
    );
    let again = w.get("api-sa");
    assert_eq!(again.status, 200);
    assert_eq!(w.mints("api-sa").len(), 1);
    w.assert_no_token_leaked(&[&r.body, &again.body, r.headers.as_bytes()]);
}
