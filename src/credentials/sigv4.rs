//! SigV4 re-signing of an agent's AWS request with minted credentials.
//!
//! The agent signs with whatever dummy key its SDK holds; clawgate removes
//! that signature and everything tied to it, then signs the request as it
//! will leave (final URI, final headers) with the scope's STS session. The
//! signing key is cached per session, day, region and service ([`signer`]).
//!
//! Invariants: the agent's `Authorization`, `X-Amz-Security-Token`,
//! `X-Amz-Date` and `X-Amz-Content-Sha256` never reach the upstream; the
//! session's secret key and token are only read to sign, and the token goes
//! out marked sensitive.

use std::borrow::Cow;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, Method, Uri};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::CredentialError;
use super::signer;
use super::sts::AwsSession;

/// The headers an agent's own signature leaves behind.
pub const AGENT_SIGNING_HEADERS: [&str; 5] = [
    "authorization",
    "x-amz-security-token",
    "x-amz-date",
    "x-amz-content-sha256",
    // Meaningless once clawgate holds the body, and a header a hop may drop.
    "expect",
];

/// The payload as the signature covers it.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// A body read whole: its hash is signed.
    Bytes(&'a [u8]),
    /// A streamed body, not covered by the signature (S3 only, where allowed).
    Unsigned,
    /// An `aws-chunked` body with unsigned trailing checksums (S3 only).
    StreamingUnsignedTrailer,
}

/// The service and region a host names, for AWS endpoints of the forms
/// `service.region.amazonaws.com`, `bucket.s3.region.amazonaws.com`,
/// `s3.amazonaws.com`, `service.amazonaws.com` (global, us-east-1).
pub fn service_and_region(host: &str) -> Option<(String, String)> {
    let stem = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let labels: Vec<&str> = stem.split('.').collect();
    // S3, virtual-hosted or not: the last `s3` label; after it, perhaps
    // `dualstack`, then the region (none means us-east-1).
    if let Some(i) = labels.iter().rposition(|l| is_s3_label(l)) {
        if let Some(region) = labels[i].strip_prefix("s3-") {
            let region = if region.starts_with("external-") {
                "us-east-1"
            } else {
                region
            };
            return Some(("s3".into(), region.to_owned()));
        }
        let region = labels[i + 1..]
            .iter()
            .find(|l| **l != "dualstack")
            .map_or("us-east-1", |r| r);
        return Some(("s3".into(), region.to_owned()));
    }
    match labels.as_slice() {
        [service] => Some(((*service).to_owned(), "us-east-1".into())),
        [service, region, ..] => Some(((*service).to_owned(), (*region).to_owned())),
        [] => None,
    }
}

/// The query parameters of a presigned URL: the agent's signature in
/// another place. Removed before re-signing.
pub const PRESIGN_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// `query` without the presigning parameters, or `None` if nothing is left.
pub fn strip_presign(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !PRESIGN_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// What a signature is made for: the service, the region, and the time.
#[derive(Debug, Clone)]
pub struct SigningScope {
    /// The signing name of the service (`s3`, `dynamodb`).
    pub service: String,
    /// The region (`us-east-1`).
    pub region: String,
    /// The signing time.
    pub time: SystemTime,
}

/// Removes the agent's signature and signs the request anew.
pub fn resign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    payload: Payload<'_>,
    session: &AwsSession,
    scope: &SigningScope,
) -> Result<(), CredentialError> {
    let service = scope.service.as_str();
    for name in AGENT_SIGNING_HEADERS {
        headers.remove(name);
    }
    let is_s3 = service == "s3";
    let payload_hash: Cow<'_, str> = match payload {
        Payload::Bytes(bytes) => Cow::Owned(hex::encode(Sha256::digest(bytes))),
        Payload::Unsigned if is_s3 => Cow::Borrowed("UNSIGNED-PAYLOAD"),
        Payload::StreamingUnsignedTrailer if is_s3 => {
            Cow::Borrowed("STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        }
        _ => {
            return Err(CredentialError::Signing(format!(
                "service `{service}` needs the body hashed into the signature"
            )));
        }
    };
    // Every header that goes out is signed (but those SigV4 leaves out, see
    // `signer`): one whose value cannot be is refused, not sent unprotected.
    let signed = signer::sign(
        method.as_str(),
        uri,
        headers,
        &payload_hash,
        &signer::Signing {
            access_key_id: &session.access_key_id,
            secret_access_key: session.secret_access_key.expose_secret(),
            session_token: session.session_token.expose_secret(),
            region: &scope.region,
            service,
            time: scope.time,
            s3: is_s3,
        },
    )?;
    let value = |text: &str, sensitive: bool| {
        let mut value = HeaderValue::from_str(text)
            .map_err(|_| CredentialError::Signing("signature is not a header value".into()))?;
        value.set_sensitive(sensitive);
        Ok::<_, CredentialError>(value)
    };
    headers.insert("x-amz-date", value(&signed.x_amz_date, false)?);
    headers.insert(
        http::header::AUTHORIZATION,
        value(&signed.authorization, true)?,
    );
    if let Some(hash) = &signed.content_sha256 {
        headers.insert("x-amz-content-sha256", value(hash, false)?);
    }
    headers.insert(
        "x-amz-security-token",
        value(session.session_token.expose_secret(), true)?,
    );
    Ok(())
}

/// `s3`, or a legacy regional label such as `s3-eu-west-1` or `s3-external-1`.
pub fn is_s3_label(label: &str) -> bool {
    label == "s3"
        || label
            .strip_prefix("s3-")
            .is_some_and(|rest| rest.starts_with("external-") || rest.split('-').count() >= 3)
}

#[cfg(test)]
#[path = "sigv4_tests.rs"]
mod tests;
