//! SigV4 header signing with the signing key cached per session, day, region
//! and service.
//!
//! The signing key is four chained HMACs of the secret, the date, the region
//! and the service; it only changes with them, so it is derived once and
//! reused until the day or the session changes (about a third of re-signing
//! was spent deriving it). The canonical request, the string to sign and the
//! `Authorization` header are built exactly as `aws-sigv4` builds them for
//! header signing with a session token; the tests check that the two agree.
//!
//! Invariants: a cached key is only used for the secret it was derived
//! from (each entry holds a digest of its secret, compared on every use);
//! the cache holds no secret in the clear and prints nothing of a key.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use aws_smithy_http::label::{EncodingStrategy, fmt_string as encode_path};
use aws_smithy_http::query::fmt_string as encode_query;
use http::{HeaderMap, Uri};
use ring::hmac;
use sha2::{Digest, Sha256};

use super::CredentialError;

/// The headers `aws-sigv4` leaves out of a signature by default: they
/// change on the way (a proxy's `User-Agent`, X-Ray's trace id, the
/// hop-by-hop `Transfer-Encoding`) or are the signature itself.
const UNSIGNED_HEADERS: [&str; 4] = [
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "transfer-encoding",
];

/// Keys kept before the cache is emptied (a day, a region and a service
/// per session: a handful in practice).
const CACHED_KEYS: usize = 256;

/// What to sign a request with.
pub(crate) struct Signing<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub time: SystemTime,
    /// S3: the path signed as sent (no normalisation, encoded once) and the
    /// payload hash sent in `x-amz-content-sha256`.
    pub s3: bool,
}

/// The headers a signature adds, with the values to send.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Signed {
    pub x_amz_date: String,
    pub authorization: String,
    /// S3 only.
    pub content_sha256: Option<String>,
}

#[derive(Hash, PartialEq, Eq)]
struct KeyId {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
}

struct CachedKey {
    /// SHA-256 of the secret the key was derived from.
    secret_digest: [u8; 32],
    key: hmac::Key,
}

fn cache() -> &'static Mutex<HashMap<KeyId, CachedKey>> {
    static CACHE: OnceLock<Mutex<HashMap<KeyId, CachedKey>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
fn derive_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(k_date.as_ref(), region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), service.as_bytes());
    let k_signing = hmac_sha256(k_service.as_ref(), b"aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// The signing key for `signing` on `date`, from the cache when it holds
/// one derived from the same secret.
fn signing_key(signing: &Signing<'_>, date: &str) -> hmac::Key {
    let secret_digest: [u8; 32] = Sha256::digest(signing.secret_access_key.as_bytes()).into();
    let id = KeyId {
        access_key_id: signing.access_key_id.to_owned(),
        date: date.to_owned(),
        region: signing.region.to_owned(),
        service: signing.service.to_owned(),
    };
    // A poisoned cache is only a cache: derive without it.
    let Ok(mut keys) = cache().lock() else {
        return derive_key(
            signing.secret_access_key,
            date,
            signing.region,
            signing.service,
        );
    };
    if let Some(cached) = keys.get(&id)
        && cached.secret_digest == secret_digest
    {
        return cached.key.clone();
    }
    let key = derive_key(
        signing.secret_access_key,
        date,
        signing.region,
        signing.service,
    );
    if keys.len() >= CACHED_KEYS {
        keys.clear();
    }
    keys.insert(
        id,
        CachedKey {
            secret_digest,
            key: key.clone(),
        },
    );
    key
}

/// `YYYYMMDDTHHMMSSZ`, in UTC.
fn format_date_time(time: SystemTime) -> String {
    let t = time::OffsetDateTime::from(time);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Removes runs of spaces inside a header value and spaces around it (only
/// spaces, as S3 does).
fn trim_all(text: &str) -> Cow<'_, str> {
    let text = text.trim_matches(' ');
    if !text.contains("  ") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last_space = false;
    for c in text.chars() {
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
    Cow::Owned(out)
}

/// RFC 3986 §5.2.4 dot-segment removal, as SigV4 wants for every service
/// but S3.
fn normalize_uri_path(path: &str) -> Cow<'_, str> {
    if path.is_empty() {
        return Cow::Borrowed("/");
    }
    let path = if path.starts_with('/') {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(format!("/{path}"))
    };
    if !(path.contains('.') || path.contains("//")) {
        return path;
    }
    let mut kept: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
    }
    let mut out = kept.join("/");
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    if ["/", "/.", "/./", "/..", "/../"]
        .iter()
        .any(|end| path.ends_with(end))
        && !out.ends_with('/')
    {
        out.push('/');
    }
    Cow::Owned(out)
}

/// The query's parameters, decoded, encoded again the SigV4 way, sorted.
fn canonical_query(uri: &Uri) -> String {
    let mut params: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (encode_query(&k), encode_query(&v)))
            .collect();
    params.sort();
    let mut out = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Signs a request for its headers: returns the headers to add. `headers`
/// are those that will be sent (the agent's signature already removed).
pub(crate) fn sign(
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    payload_hash: &str,
    signing: &Signing<'_>,
) -> Result<Signed, CredentialError> {
    let date_time = format_date_time(signing.time);
    let date = &date_time[..8];

    // Canonical headers, by name; a name's values in the order sent.
    let mut canonical: BTreeMap<&str, Vec<Cow<'_, str>>> = BTreeMap::new();
    for (name, value) in headers {
        let value = value
            .to_str()
            .map_err(|_| CredentialError::Signing("a header value is not visible ASCII".into()))?;
        canonical
            .entry(name.as_str())
            .or_default()
            .push(trim_all(value));
    }
    if !canonical.contains_key("host") {
        let host = match (uri.scheme_str(), uri.port_u16(), uri.authority()) {
            (Some("https"), Some(443), _) | (Some("http"), Some(80), _) => uri.host(),
            (_, _, Some(authority)) => Some(authority.as_str()),
            _ => None,
        }
        .ok_or_else(|| CredentialError::Signing("the upstream address has no host".into()))?;
        canonical.insert("host", vec![Cow::Borrowed(host)]);
    }
    canonical.insert("x-amz-date", vec![Cow::Borrowed(&date_time)]);
    canonical.insert(
        "x-amz-security-token",
        vec![Cow::Borrowed(signing.session_token)],
    );
    if signing.s3 {
        canonical.insert("x-amz-content-sha256", vec![Cow::Borrowed(payload_hash)]);
    }
    canonical.retain(|name, _| !UNSIGNED_HEADERS.contains(name));
    let signed_headers = canonical.keys().copied().collect::<Vec<_>>().join(";");

    let path = if signing.s3 {
        Cow::Borrowed(uri.path())
    } else {
        Cow::Owned(encode_path(
            normalize_uri_path(uri.path()),
            EncodingStrategy::Greedy,
        ))
    };
    let mut request = String::with_capacity(512);
    for part in [method, &path, &canonical_query(uri)] {
        request.push_str(part);
        request.push('\n');
    }
    for (name, values) in &canonical {
        request.push_str(name);
        request.push(':');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                request.push(',');
            }
            request.push_str(value);
        }
        request.push('\n');
    }
    request.push('\n');
    request.push_str(&signed_headers);
    request.push('\n');
    request.push_str(payload_hash);

    let scope = format!("{date}/{}/{}/aws4_request", signing.region, signing.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        hex::encode(Sha256::digest(request.as_bytes()))
    );
    let key = signing_key(signing, date);
    let signature = hex::encode(hmac::sign(&key, string_to_sign.as_bytes()));
    Ok(Signed {
        authorization: format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            signing.access_key_id
        ),
        content_sha256: signing.s3.then(|| payload_hash.to_owned()),
        x_amz_date: date_time,
    })
}

#[cfg(test)]
#[path = "signer_tests.rs"]
mod tests;
