//! `clawgate console`: a read-only web page on loopback, server-rendered,
//! that talks to the admin API with the operator's client certificate (as
//! `kubectl proxy` does), so the browser needs none.
//!
//! Invariants: it binds loopback only; it shows nothing without a session,
//! which only the one-time login URL it prints opens ([`auth`]); a request
//! with a foreign `Host` or `Origin` is refused before anything else; the
//! only state changes are logging out and answering an approval
//! ([`approvals`], through the admin API), and both need the CSRF token;
//! every value from the API is HTML-escaped.

mod approvals;
pub mod auth;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Where the admin API is and the operator's certificate for it.
#[derive(Debug, Clone)]
pub struct AdminConn {
    /// The admin API's base URL.
    pub base: String,
    /// The CA of clawgate's server certificate.
    pub ca: PathBuf,
    /// The operator's certificate and key (admin or auditor).
    pub cert: PathBuf,
    /// See `cert`.
    pub key: PathBuf,
}

/// Why the console would not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Not a loopback address.
    #[error("the console listens on loopback only, not `{0}`")]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on `{addr}`: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Serves the console on `listen` until the process ends, with sessions
/// lasting `session`. Prints nothing: gives the bound address to `bound`
/// once listening, and each one-time login URL to `login` (the first, and a
/// fresh one whenever the last is spent).
pub async fn serve(
    listen: SocketAddr,
    admin: AdminConn,
    session: std::time::Duration,
    bound: impl FnOnce(SocketAddr),
    login: impl Fn(&str) + Send + Sync + 'static,
) -> Result<(), ConsoleError> {
    if !listen.ip().is_loopback() {
        return Err(ConsoleError::NotLoopback(listen));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ConsoleError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(listen);
    bound(addr);
    let gate = Arc::new(auth::Gate::new(addr, session, login));
    let admin = Arc::new(admin);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let admin = Arc::clone(&admin);
        let gate = Arc::clone(&gate);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = Arc::clone(&admin);
                let gate = Arc::clone(&gate);
                async move { Ok::<_, Infallible>(handle(&admin, &gate, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn handle(
    admin: &AdminConn,
    gate: &auth::Gate,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    // Names before anything: a rebound name must not even spend a token.
    if let Err(refusal) = gate.check_request(req.headers()) {
        let why = match refusal {
            auth::Refusal::Host => "unexpected Host: the console answers only to its own address\n",
            auth::Refusal::Origin => "unexpected Origin: requests from other sites are refused\n",
        };
        return respond(StatusCode::FORBIDDEN, "text/plain", why.into());
    }
    if approvals::owns(req.uri().path()) {
        return approvals::handle(admin, gate, req).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/login") => return login(gate, &req),
        (&Method::POST, "/logout") => return logout(gate, req).await,
        (&Method::GET, "/") => {}
        _ => return respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
    let Some(csrf) = gate.session(req.headers()) else {
        return login_page(StatusCode::UNAUTHORIZED, "");
    };
    let mut agent = String::new();
    let mut scope = String::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "agent" => agent = v.into_owned(),
            "scope" => scope = v.into_owned(),
            _ => {}
        }
    }
    let page = render(admin, &agent, &scope, &csrf).await;
    respond(StatusCode::OK, "text/html; charset=utf-8", page)
}

/// `GET /login?token=…`: spends the token for a session cookie, then sends
/// the browser to the page (so the spent token leaves the address bar).
fn login(gate: &auth::Gate, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut token = String::new();
    // The page's filters may ride along; nothing else does (no open redirect).
    let mut filters = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "token" => token = v.into_owned(),
            "agent" | "scope" => {
                filters.append_pair(&k, &v);
            }
            _ => {}
        }
    }
    let filters = filters.finish();
    let Some(sid) = gate.login(&token) else {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "That login URL is wrong or already used. ",
        );
    };
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain", String::new());
    let to = if filters.is_empty() {
        "/".to_owned()
    } else {
        format!("/?{filters}")
    };
    if let Ok(v) = http::HeaderValue::from_str(&to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&gate.set_cookie(&sid)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /logout` with the session's CSRF token in the form.
async fn logout(gate: &auth::Gate, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers = req.headers().clone();
    let body = http_body_util::Limited::new(req.into_body(), 4096);
    let Ok(body) = http_body_util::BodyExt::collect(body).await else {
        return respond(StatusCode::BAD_REQUEST, "text/plain", "bad form\n".into());
    };
    let csrf = form_urlencoded::parse(&body.to_bytes())
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !gate.logout(&headers, &csrf) {
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            "no session, or the CSRF token does not match\n".into(),
        );
    }
    let mut r = login_page(StatusCode::OK, "Logged out. ");
    r.headers_mut().insert(
        header::SET_COOKIE,
        http::HeaderValue::from_static(
            "clawgate_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// The only page shown without a session: how to get one, and no data.
fn login_page(status: StatusCode, note: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/html; charset=utf-8",
        format!(
            "<!doctype html><html><head><meta charset=utf-8><title>clawgate console</title>\
             <style>{STYLE}</style></head><body><h1>clawgate console</h1>\
             <p id=login>{}Log in with the one-time URL that <code>clawgate console</code> \
             printed (it prints a fresh one each time one is used).</p></body></html>\n",
            esc(note)
        ),
    )
}

fn respond(status: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(kind));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    // The login URL carries a token: never cached, never sent on as a referrer.
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    r
}

async fn get_json(admin: &AdminConn, path: &str) -> Result<serde_json::Value, String> {
    let (status, body) =
        crate::admin::client::get(&admin.base, path, &admin.ca, &admin.cert, &admin.key)
            .await
            .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!(
            "admin api answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
}

async fn get_lines(admin: &AdminConn, path: &str) -> Result<Vec<serde_json::Value>, String> {
    let (status, body) =
        crate::admin::client::get(&admin.base, path, &admin.ca, &admin.cert, &admin.key)
            .await
            .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("admin api answered {status}"));
    }
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// HTML-escapes `s`.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
.ok{color:#080;font-weight:bold}.bad{color:#b00;font-weight:bold}
.bar{display:inline-block;height:10px}.allow{background:#4a4}.deny{background:#c44}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em 3em}";

async fn render(admin: &AdminConn, agent: &str, scope: &str, csrf: &str) -> String {
    let mut tail_q = String::from("/v1/audit?limit=50");
    if !agent.is_empty() {
        let _ = write!(tail_q, "&agent={}", enc(agent));
    }
    if !scope.is_empty() {
        let _ = write!(tail_q, "&scope={}", enc(scope));
    }
    let (hour, stats, status, verify, tail) = tokio::join!(
        get_lines(admin, "/v1/audit?since=1h&limit=100000"),
        get_json(admin, "/v1/audit/stats?since=24h"),
        get_json(admin, "/v1/policy/status"),
        get_json(admin, "/v1/audit/verify"),
        get_lines(admin, &tail_q),
    );
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=10>\
         <title>clawgate console</title><style>{STYLE}</style></head><body>\
         <form method=post action=/logout style=float:right><input type=hidden name=csrf value=\"{}\">\
         <button>log out</button></form><h1>clawgate console <small>{}</small></h1>",
        esc(csrf),
        esc(&admin.base)
    );
    // Chain and drift first: the two answers an operator wants at a glance.
    o.push_str("<div class=grid><section id=chain><h2>Decision log chain</h2>");
    chain_section(&mut o, &verify);
    o.push_str("</section><section id=drift><h2>Policy</h2>");
    policy_section(&mut o, &status);
    o.push_str("</section></div>");
    o.push_str("<div class=grid><section id=calls><h2>Calls over the last hour (per 5 min)</h2>");
    calls_section(&mut o, &hour);
    o.push_str("</section><section id=reasons><h2>Top refusal reasons (24 h)</h2>");
    reasons_section(&mut o, &stats);
    o.push_str("</section></div>");
    o.push_str("<section id=lapses><h2>Overrides and exceptions in force</h2><table><tr><th>kind</th><th>id</th><th>target</th><th>time left</th></tr>");
    lapses_section(&mut o, &status);
    o.push_str("</table></section>");
    // The live tail, filterable (a form: no script needed).
    let _ = write!(
        o,
        "<section id=tail><h2>Latest decisions</h2><form method=get>agent <input name=agent value=\"{}\"> \
         scope <input name=scope value=\"{}\"> <button>filter</button></form>\
         <table><tr><th>time</th><th>agent</th><th>scope</th><th>method</th><th>host</th><th>path</th><th>decision</th><th>reason</th></tr>",
        esc(agent),
        esc(scope)
    );
    tail_section(&mut o, &tail);
    o.push_str("</table></section></body></html>\n");
    o
}

type Answer = Result<serde_json::Value, String>;
type Lines = Result<Vec<serde_json::Value>, String>;

/// Whether the chain verifies, with its head.
fn chain_section(o: &mut String, verify: &Answer) {
    match &verify {
        Ok(v) if v["intact"] == true => {
            let _ = write!(
                o,
                "<p><span class=ok id=chain-status>intact</span> {} records, head <code>{}</code>{}</p>",
                esc(&s(&v["records"])),
                esc(&s(&v["head"])),
                v["pruned_anchor"]
                    .as_str()
                    .map(|a| format!(", pruned up to <code>{}</code>", esc(a)))
                    .unwrap_or_default()
            );
        }
        Ok(v) => {
            let _ = write!(
                o,
                "<p><span class=bad id=chain-status>BROKEN</span> {}</p>",
                esc(&s(&v["error"]))
            );
        }
        Err(e) => {
            let _ = write!(
                o,
                "<p><span class=bad id=chain-status>unknown</span> {}</p>",
                esc(e)
            );
        }
    }
}

/// Whether the policy in force is the files' (drift).
fn policy_section(o: &mut String, status: &Answer) {
    match &status {
        Ok(st) => {
            let in_sync = st["in_sync"] == true;
            let _ = write!(
                o,
                "<p><span class={} id=drift-status>{}</span> in force <code>{}</code>, valid: {}</p>",
                if in_sync { "ok" } else { "bad" },
                if in_sync { "in sync" } else { "DRIFTED" },
                esc(&s(&st["in_force"])),
                esc(&s(&st["valid"]))
            );
        }
        Err(e) => {
            let _ = write!(o, "<p class=bad id=drift-status>unknown: {}</p>", esc(e));
        }
    }
}

/// Calls over the last hour, per five minutes, by decision.
fn calls_section(o: &mut String, hour: &Lines) {
    match &hour {
        Ok(records) => {
            let mut buckets: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for r in records.iter().filter(|r| r["kind"] == "decision") {
                let ts = r["ts"].as_str().unwrap_or_default();
                // `YYYY-MM-DDTHH:MM`: the minute floored to five.
                let Some(minute) = ts.get(14..16).and_then(|m| m.parse::<u32>().ok()) else {
                    continue;
                };
                let key = format!(
                    "{}{:02}",
                    ts.get(11..14).unwrap_or_default(),
                    minute / 5 * 5
                );
                let e = buckets.entry(key).or_default();
                if r["decision"] == "allow" {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
            let max = buckets
                .values()
                .map(|(a, d)| a + d)
                .max()
                .unwrap_or(1)
                .max(1);
            o.push_str(
                "<table><tr><th>from (UTC)</th><th>allowed</th><th>refused</th><th></th></tr>",
            );
            for (k, (a, d)) in &buckets {
                let _ = write!(
                    o,
                    "<tr class=bucket><td>{}</td><td class=allowed>{a}</td><td class=refused>{d}</td>\
                     <td><span class='bar allow' style='width:{}px'></span><span class='bar deny' style='width:{}px'></span></td></tr>",
                    esc(k),
                    a * 300 / max,
                    d * 300 / max
                );
            }
            o.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(o, "<p class=bad>{}</p>", esc(e));
        }
    }
}

/// The top refusal reasons of the last 24 hours.
fn reasons_section(o: &mut String, stats: &Answer) {
    match &stats {
        Ok(st) => {
            o.push_str("<table><tr><th>reason</th><th>calls</th></tr>");
            for pair in st["top_refusal_reasons"].as_array().into_iter().flatten() {
                let _ = write!(
                    o,
                    "<tr class=reason><td>{}</td><td>{}</td></tr>",
                    esc(&s(&pair[0])),
                    esc(&s(&pair[1]))
                );
            }
            let _ = write!(
                o,
                "</table><p>allowed {}, refused {}, would-deny {}</p>",
                esc(&s(&st["total"]["allowed"])),
                esc(&s(&st["total"]["refused"])),
                esc(&s(&st["total"]["would_deny"]))
            );
        }
        Err(e) => {
            let _ = write!(o, "<p class=bad>{}</p>", esc(e));
        }
    }
}

/// Overrides and exceptions in force, with time left.
fn lapses_section(o: &mut String, status: &Answer) {
    if let Ok(st) = &status {
        let left = |v: &serde_json::Value| {
            humantime::format_duration(std::time::Duration::from_secs(
                v["expires_in_seconds"].as_u64().unwrap_or(0),
            ))
            .to_string()
        };
        for ov in st["overrides"].as_array().into_iter().flatten() {
            let _ = write!(
                o,
                "<tr class=override><td>override {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s(&ov["kind"])),
                esc(&s(&ov["id"])),
                esc(&s(&ov["target"])),
                esc(&left(ov))
            );
        }
        for ex in st["exceptions"].as_array().into_iter().flatten() {
            let _ = write!(
                o,
                "<tr class=exception><td>exception</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s(&ex["id"])),
                esc(&s(&ex["agent"])),
                esc(&left(ex))
            );
        }
    }
}

/// The latest decisions, newest first.
fn tail_section(o: &mut String, tail: &Lines) {
    match &tail {
        Ok(records) => {
            for r in records.iter().rev().filter(|r| r["kind"] == "decision") {
                let _ = write!(
                    o,
                    "<tr class=decision><td>{}</td><td class=agent>{}</td><td class=scope>{}</td><td>{}</td><td>{}</td><td>{}</td><td class={}>{}</td><td>{}</td></tr>",
                    esc(&s(&r["ts"])),
                    esc(&s(&r["agent"])),
                    esc(&s(&r["scope"])),
                    esc(&s(&r["method"])),
                    esc(&s(&r["host"])),
                    esc(&s(&r["path"])),
                    if r["decision"] == "allow" {
                        "ok"
                    } else {
                        "bad"
                    },
                    esc(&s(&r["decision"])),
                    esc(&s(&r["reason"]))
                );
            }
        }
        Err(e) => {
            let _ = write!(o, "<tr><td class=bad colspan=8>{}</td></tr>", esc(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_the_api_are_escaped() {
        assert_eq!(
            esc(r#"<script>alert('x')</script>&"#),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"
        );
        assert_eq!(esc("\"a\" b"), "&quot;a&quot; b");
        assert_eq!(enc("a b&c=d"), "a+b%26c%3Dd");
    }
}
