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
//!
//! The pages: the overview ([`overview`]: chain, drift and its cause,
//! calls, findings, what is in force), the event timeline and the filtered
//! calls with their outcomes ([`events`], [`filters`]), one call's every
//! recorded field (`/record?id=`), and pending approvals (`/approvals`).
//! All of it is read from the admin API ([`api`]); the console holds no
//! data of its own.

mod api;
mod approvals;
pub mod auth;
mod events;
mod filters;
mod overview;

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

use filters::Filters;

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
        (&Method::GET, "/" | "/record") => {}
        _ => return respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
    let Some(csrf) = gate.session(req.headers()) else {
        return login_page(StatusCode::UNAUTHORIZED, "");
    };
    let query = req.uri().query().unwrap_or_default();
    let page = if req.uri().path() == "/record" {
        let id = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        render_record(admin, &id, &csrf).await
    } else {
        render(admin, &Filters::parse(query), &csrf).await
    };
    respond(StatusCode::OK, "text/html; charset=utf-8", page)
}

/// `GET /login?token=…`: spends the token for a session cookie, then sends
/// the browser to the page (so the spent token leaves the address bar).
fn login(gate: &auth::Gate, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut token = String::new();
    let mut record = None;
    // The page's filters, or one call's id, may ride along; nothing else
    // does, and the paths are fixed (no open redirect).
    let mut filters = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "token" => token = v.into_owned(),
            "id" => record = Some(v.into_owned()),
            k if filters::NAMES.contains(&k) => {
                filters.append_pair(k, &v);
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
    let to = match record {
        Some(id) => format!("/record?id={}", enc(&id)),
        None if filters.is_empty() => "/".to_owned(),
        None => format!("/?{filters}"),
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
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em 3em}
.notice{background:#fff3cd;border:1px solid #e0c060;padding:4px 8px}
.fields th{width:12em;vertical-align:top}.fields td{font-family:monospace;word-break:break-all}
#filters label{margin-right:.5em}
.detail{max-width:48em;word-break:break-word;font-size:12px}";

/// The overview page: chain, drift and its cause, calls, refusals,
/// findings, what is in force, the timeline and the filtered calls.
async fn render(admin: &AdminConn, f: &Filters, csrf: &str) -> String {
    let since = f.since_or("24h");
    let stats_q = format!("/v1/audit/stats?since={}", enc(since));
    let findings_q = format!("/v1/audit/findings?since={}", enc(since));
    let (timeline_q, calls_q) = (events::timeline_query(f), events::calls_query(f));
    let (hour, stats, hour_stats, status, verify, found, events, calls) = tokio::join!(
        api::get_lines(admin, "/v1/audit?since=1h&limit=100000"),
        api::get_json(admin, &stats_q),
        api::get_json(admin, "/v1/audit/stats?since=1h"),
        api::get_json(admin, "/v1/policy/status"),
        api::get_json(admin, "/v1/audit/verify"),
        api::get_json(admin, &findings_q),
        api::get_lines(admin, &timeline_q),
        api::get_lines(admin, &calls_q),
    );
    let mut o = head("clawgate console", admin, csrf, true);
    overview::pruned_notice(&mut o, &[&stats, &hour_stats]);
    // Chain and drift first: the two answers an operator wants at a glance.
    o.push_str("<div class=grid><section id=chain><h2>Decision log chain</h2>");
    overview::chain_section(&mut o, &verify);
    o.push_str("</section><section id=drift><h2>Policy</h2>");
    overview::policy_section(&mut o, &status);
    o.push_str("</section></div>");
    o.push_str("<div class=grid><section id=calls><h2>Calls over the last hour (per 5 min)</h2>");
    overview::calls_section(&mut o, &hour);
    let _ = write!(
        o,
        "</section><section id=reasons><h2>Top refusal reasons (since {})</h2>",
        esc(since)
    );
    overview::reasons_section(&mut o, &stats);
    o.push_str("</section></div><div class=grid><section id=findings><h2>Findings</h2>");
    overview::findings_section(&mut o, &found);
    o.push_str("</section><section id=lapses><h2>Overrides and exceptions in force</h2><table><tr><th>kind</th><th>id</th><th>target</th><th>time left</th></tr>");
    overview::lapses_section(&mut o, &status);
    o.push_str("</table></section></div><section id=timeline><h2>Events</h2>");
    events::timeline_section(&mut o, &events);
    let _ = write!(
        o,
        "</section><section id=tail><h2>Calls{}</h2>{}",
        if f.any() { ", filtered" } else { "" },
        f.form()
    );
    events::calls_section(&mut o, &calls);
    o.push_str("</section></body></html>\n");
    o
}

/// One call's records, every field.
async fn render_record(admin: &AdminConn, id: &str, csrf: &str) -> String {
    let found = api::get_lines(
        admin,
        &format!("/v1/audit?limit=100&request_id={}", enc(id)),
    )
    .await;
    let mut o = head("clawgate console: one call", admin, csrf, false);
    let _ = write!(
        o,
        "<p><a href=\"/\">back</a></p><h2>Call <code id=request-id>{}</code></h2>",
        esc(id)
    );
    events::record_section(&mut o, id, &found);
    o.push_str("</body></html>\n");
    o
}

/// The top of every page with a session: the logout form (CSRF token) and
/// the admin API it reads.
fn head(title: &str, admin: &AdminConn, csrf: &str, refresh: bool) -> String {
    format!(
        "<!doctype html><html><head><meta charset=utf-8>{}\
         <title>{}</title><style>{STYLE}</style></head><body>\
         <form method=post action=/logout style=float:right><input type=hidden name=csrf value=\"{}\">\
         <button>log out</button></form><h1>clawgate console <small>{}</small></h1>\
         <p><a href=/>overview</a> · <a href=/approvals>approvals</a></p>",
        if refresh {
            "<meta http-equiv=refresh content=30>"
        } else {
            ""
        },
        esc(title),
        esc(csrf),
        esc(&admin.base)
    )
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
