//! The console's approvals page: pending approval requests, with the request
//! as the approver needs it (from the admin API, so with sentinels masked),
//! and approve and deny buttons that call the admin API with the operator's
//! certificate, so the admin API's own checks (named approver, never the
//! agent itself, never an auditor) and records apply unchanged.
//!
//! Behind the console's login like every other page; an answer is a POST
//! that must carry the session's CSRF token.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::api::get_json;
use super::{AdminConn, STYLE, auth, esc, login_page, respond, s};

/// Whether `path` is this page's.
pub(super) fn owns(path: &str) -> bool {
    path == "/approvals" || path == "/approvals/answer"
}

/// `GET /approvals` and `POST /approvals/answer`.
pub(super) async fn handle(
    admin: &AdminConn,
    gate: &auth::Gate,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(csrf) = gate.session(req.headers()) else {
        return login_page(StatusCode::UNAUTHORIZED, "");
    };
    match *req.method() {
        Method::GET => {
            let note = req
                .uri()
                .query()
                .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "note"))
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                render(admin, &csrf, &note).await,
            )
        }
        Method::POST => answer(admin, &csrf, req).await,
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

async fn answer(admin: &AdminConn, csrf: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Ok(body) = Limited::new(req.into_body(), 8192).collect().await else {
        return respond(StatusCode::BAD_REQUEST, "text/plain", "bad form\n".into());
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(&body.to_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if !same(&get("csrf"), csrf) {
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            "the CSRF token does not match\n".into(),
        );
    }
    let id = get("id");
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "bad approval id\n".into(),
        );
    }
    let (verb, body) = match get("verb").as_str() {
        "approve" => ("approve", Bytes::from_static(b"{}")),
        "deny" => (
            "deny",
            Bytes::from(serde_json::json!({ "reason": get("reason") }).to_string()),
        ),
        _ => return respond(StatusCode::BAD_REQUEST, "text/plain", "bad verb\n".into()),
    };
    let path = format!("/v1/approvals/{id}/{verb}");
    let note = match crate::admin::client::request(
        &admin.base,
        (Method::POST, &path, Some(body)),
        &admin.ca,
        &admin.cert,
        &admin.key,
    )
    .await
    {
        Ok((200, _)) => format!("{verb}d {id}"),
        Ok((status, answer)) => format!(
            "{verb} refused ({status}): {}",
            String::from_utf8_lossy(&answer).trim()
        ),
        Err(e) => format!("{verb} failed: {e}"),
    };
    // Post, then redirect, then get: a reload does not answer twice.
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain", String::new());
    let to = format!(
        "/approvals?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("note", &note)
            .finish()
    );
    if let Ok(v) = http::HeaderValue::from_str(&to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Compares digests, so the time taken says nothing about the token.
fn same(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

async fn render(admin: &AdminConn, csrf: &str, note: &str) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=utf-8><title>clawgate approvals</title>\
         <style>{STYLE}</style></head><body><h1>approvals <small><a href=/>console</a></small></h1>"
    );
    if !note.is_empty() {
        let _ = write!(o, "<p id=note>{}</p>", esc(note));
    }
    let list = match get_json(admin, "/v1/approvals").await {
        Ok(v) => v,
        Err(e) => {
            let _ = write!(o, "<p class=bad>{}</p></body></html>", esc(&e));
            return o;
        }
    };
    let empty = Vec::new();
    let approvals = list["approvals"].as_array().unwrap_or(&empty);
    if approvals.is_empty() {
        o.push_str("<p id=none>no approvals pending</p></body></html>\n");
        return o;
    }
    o.push_str("<table id=approvals><tr><th>agent</th><th>scope</th><th>request</th><th>why</th><th>expires</th><th>answer</th></tr>");
    for a in approvals {
        let r = &a["request"];
        let mut request = format!("{} {}{}", s(&r["method"]), s(&r["host"]), s(&r["path"]));
        if let Some(q) = r["query"].as_str() {
            let _ = write!(request, "?{q}");
        }
        for (label, key) in [
            ("tool", "tool"),
            ("arguments", "arguments"),
            ("action", "action"),
            ("body", "body_preview"),
        ] {
            if let Some(v) = r[key].as_str() {
                let _ = write!(request, "\n{label}: {v}");
            }
        }
        let id = s(&a["id"]);
        let _ = write!(
            o,
            "<tr data-id=\"{id}\"><td>{}</td><td>{}</td><td><pre>{}</pre></td><td>{}</td><td>{}</td><td>\
             <form method=post action=/approvals/answer><input type=hidden name=csrf value=\"{csrf}\">\
             <input type=hidden name=id value=\"{id}\"><button name=verb value=approve>approve</button> \
             <input name=reason placeholder=\"reason to deny\"><button name=verb value=deny>deny</button></form></td></tr>",
            esc(&s(&a["agent"])),
            esc(&s(&a["scope"])),
            esc(&request),
            esc(&s(&a["why"])),
            esc(&s(&a["expires_at"])),
            id = esc(&id),
            csrf = esc(csrf),
        );
    }
    o.push_str("</table></body></html>\n");
    o
}
