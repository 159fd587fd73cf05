//! Admission's credential steps: the scope's secret or minted token
//! injected, sentinels swapped (or the call refused), then the request
//! re-signed for an `aws` scope. Split from [`super::admit`] only for size;
//! the order is set there.

use std::sync::Arc;
use std::time::SystemTime;

use secrecy::SecretString;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, header};

use super::admit::Admission;
use super::held::Held;
use crate::audit::DecisionRecord;
use crate::body::Prefix;
use crate::credentials::sentinel::{Found, Sentinels};
use crate::credentials::sigv4::{self, Payload, SigningScope};
use crate::credentials::{Credential, MintContext};
use crate::error::Reason;
use crate::metrics::Stage;
use crate::policy::Scope;

/// How much of a refused body is read and dropped before the refusal is
/// sent, so that a client still sending sees the answer (see
/// [`crate::body::Prefix::discard_rest`]).
const DISCARD_LIMIT: usize = 1 << 20;
/// How long that may take at most.
const DISCARD_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Admission<'_> {
    /// The scope's secret or minted token, fetched from the broker and put
    /// into the request. Each value joins `injected`, so the reflection guard
    /// keeps it from coming back to the agent.
    pub(super) async fn inject_credential(
        &self,
        scope: &crate::policy::Scope,
        parts: &mut Parts,
        query: &mut Option<String>,
        ctx: &MintContext,
        injected: &mut Vec<Arc<SecretString>>,
    ) -> Result<(), Reason> {
        match scope.credential.as_deref() {
            Some(Credential::Secret(secret)) => {
                let fetching = std::time::Instant::now();
                let value = self.broker.secret(&secret.value, ctx).await;
                self.metrics.observe(Stage::Credential, fetching.elapsed());
                let value = value.map_err(|e| {
                    tracing::warn!(error = %e, "credential not available");
                    Reason::CredentialUnavailable
                })?;
                injected.push(Arc::clone(&value));
                secret
                    .inject(&value, &mut parts.headers, query)
                    .map_err(|e| {
                        tracing::warn!(error = %e, "credential not injected");
                        Reason::CredentialUnavailable
                    })?;
            }
            Some(Credential::OAuth2(oauth)) => {
                let minting = std::time::Instant::now();
                let token = self.broker.oauth2(oauth, ctx).await;
                self.metrics.observe(Stage::Credential, minting.elapsed());
                let token = token.map_err(|e| {
                    tracing::warn!(error = %e, "oauth2 token not available");
                    e.reason()
                })?;
                crate::credentials::oauth::inject(oauth, &token, &mut parts.headers, query)
                    .map_err(|e| {
                        tracing::warn!(error = %e, "oauth2 token not injected");
                        Reason::CredentialUnavailable
                    })?;
                injected.push(Arc::new(token.value.clone()));
            }
            Some(Credential::GithubApp(app)) => {
                let minting = std::time::Instant::now();
                let token = self.broker.github_app(app, ctx).await;
                self.metrics.observe(Stage::Credential, minting.elapsed());
                let token = token.map_err(|e| {
                    tracing::warn!(error = %e, "github app token not available");
                    e.reason()
                })?;
                crate::credentials::github::inject(app, &token, &mut parts.headers, query)
                    .map_err(|e| {
                        tracing::warn!(error = %e, "github app token not injected");
                        Reason::CredentialUnavailable
                    })?;
                injected.push(Arc::new(token.value.clone()));
            }
            // Sentinels were swapped before; AWS re-signs after.
            _ => {}
        }
        Ok(())
    }

    /// Refuses a call carrying a placeholder bound elsewhere; swaps bound
    /// placeholders for their values in headers, query and body prefix.
    pub(super) async fn swap_sentinels(
        &self,
        scope: &Scope,
        parts: &mut Parts,
        query: &mut Option<String>,
        held: Held,
        ctx: &MintContext,
        record: &mut DecisionRecord,
    ) -> Result<(Held, Vec<Arc<SecretString>>), Reason> {
        let sentinels = self.policy.sentinels();
        if sentinels.is_empty() {
            return Ok((held, Vec::new()));
        }
        let mut found = scan_head(sentinels, parts, query.as_deref());
        let held = self.scan_body(held, &mut found, ctx, record).await?;
        if found.is_empty() {
            return Ok((held, Vec::new()));
        }
        let names: Vec<&str> = found
            .iter()
            .map(|&i| sentinels.get(i).name.as_str())
            .collect();
        let note = format!("sentinels: {}", names.join(", "));
        record.detail = Some(match record.detail.take() {
            Some(earlier) => format!("{earlier}; {note}"),
            None => note,
        });
        if let Some(misdirected) = sentinels.misdirected(&found, &scope.upstream.host, &ctx.agent) {
            tracing::warn!(sentinel = %misdirected.name, "sentinel headed to a host it is not bound to");
            record.add_detail(&format!(
                "sentinel `{}` misdirected to {}",
                misdirected.name, scope.upstream.host
            ));
            return Err(Reason::SentinelMisdirected);
        }
        let mut values = vec![None; sentinels.all().len()];
        for &i in &found {
            let value = self
                .broker
                .secret(&sentinels.get(i).value, ctx)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "sentinel value not available");
                    Reason::CredentialUnavailable
                })?;
            values[i] = Some(value);
        }
        rewrite_headers(sentinels, &values, &mut parts.headers)?;
        if let Some(q) = query.as_mut() {
            let bytes = sentinels.replace(q.as_bytes(), &values, encode_query_value);
            *q = String::from_utf8(bytes).map_err(|_| Reason::MalformedRequest)?;
        }
        let swapped: Vec<Arc<SecretString>> = values.iter().flatten().cloned().collect();
        let Held::Read(prefix) = held else {
            return Ok((held, swapped));
        };
        let replaced = Bytes::from(sentinels.replace(&prefix.bytes, &values, str::to_owned));
        let delta = replaced.len() as i64 - prefix.bytes.len() as i64;
        if prefix.is_complete() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(replaced.len()));
        } else if let Some(length) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
        {
            let adjusted = length
                .checked_add(delta)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or(Reason::MalformedRequest)?;
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(adjusted));
        }
        Ok((
            Held::Read(Prefix {
                bytes: replaced,
                rest: prefix.rest,
                trailers: prefix.trailers,
            }),
            swapped,
        ))
    }

    /// Re-signs the prepared request with the scope's STS session; the
    /// session's secrets join `injected`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the steps of admission share these; a struct would only rename them"
    )]
    pub(super) async fn resign(
        &self,
        scope: &Scope,
        aws: &crate::credentials::AwsCredential,
        ctx: &MintContext,
        parts: &mut Parts,
        held: Held,
        record: &mut DecisionRecord,
        injected: &mut Vec<Arc<SecretString>>,
    ) -> Result<Held, Reason> {
        let (service, region) = scope.signing().ok_or(Reason::CredentialUnavailable)?;
        let agent_payload = parts
            .headers
            .get("x-amz-content-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(p) = agent_payload.as_deref()
            && p.starts_with("STREAMING-")
            && p != "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        {
            // Chunk signatures chain from the agent's own key: they cannot be
            // re-signed without re-framing the body.
            tracing::debug!(payload = p, "signed streaming payloads cannot be re-signed");
            return Err(Reason::MalformedRequest);
        }
        let limit = usize::try_from(aws.max_signed_body).unwrap_or(usize::MAX);
        let prefix = held.read(limit, self.limits.read_timeout).await?;
        let minting = std::time::Instant::now();
        let session = self.broker.aws(aws, ctx).await;
        self.metrics.observe(Stage::Credential, minting.elapsed());
        let session = session.map_err(|e| {
            tracing::warn!(error = %e, "aws credentials not available");
            Reason::CredentialUnavailable
        })?;
        record.credential_ref = Some(session.access_key_id.clone());
        injected.push(Arc::new(session.session_token.clone()));
        injected.push(Arc::new(session.secret_access_key.clone()));
        let payload = match (&agent_payload, prefix.is_complete()) {
            (Some(p), _) if p == "STREAMING-UNSIGNED-PAYLOAD-TRAILER" && aws.unsigned_payload => {
                Payload::StreamingUnsignedTrailer
            }
            (Some(p), _) if p == "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => {
                tracing::debug!("streamed trailer payloads need `unsigned_payload` in the scope");
                return Err(Reason::MalformedRequest);
            }
            (_, true) => Payload::Bytes(&prefix.bytes),
            (_, false) if aws.unsigned_payload && service == "s3" => Payload::Unsigned,
            (_, false) => return Err(Reason::RequestTooLarge),
        };
        let signing = SigningScope {
            service,
            region,
            time: SystemTime::now(),
        };
        let uri = parts.uri.clone();
        sigv4::resign(
            &parts.method,
            &uri,
            &mut parts.headers,
            payload,
            &session,
            &signing,
        )
        .map_err(|e| {
            tracing::warn!(error = %e, "request not signed");
            Reason::CredentialUnavailable
        })?;
        Ok(Held::Read(prefix))
    }
}

/// A query string with every pair form-decoded, for scanning only.
fn encode_query_value(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl Admission<'_> {
    /// Reads the body's prefix (up to the scan limit) and scans it. A body
    /// past the limit is refused to an agent that may hold a placeholder:
    /// what is not scanned could carry one anywhere.
    async fn scan_body(
        &self,
        held: Held,
        found: &mut Found,
        ctx: &MintContext,
        record: &mut DecisionRecord,
    ) -> Result<Held, Reason> {
        let has_body = !matches!(&held, Held::Stream(b) if http_body::Body::is_end_stream(b));
        if !has_body {
            return Ok(held);
        }
        let prefix = held
            .read(self.limits.sentinel_scan, self.limits.read_timeout)
            .await?;
        let sentinels = self.policy.sentinels();
        sentinels.scan_decoded(&prefix.bytes, found);
        if !prefix.is_complete() && sentinels.bears(&ctx.agent) {
            record.add_detail(&format!(
                "body past the sentinel scan limit ({} bytes)",
                self.limits.sentinel_scan
            ));
            prefix
                .discard_rest(DISCARD_LIMIT, self.limits.read_timeout.min(DISCARD_WITHIN))
                .await;
            return Err(Reason::RequestTooLarge);
        }
        Ok(Held::Read(prefix))
    }
}

/// The placeholders in the path, headers and query. Scanned in every
/// spelling a reader could undo (percent, JSON, quoted-printable), but only
/// ever rewritten where they stand as they are. The path (decoded, as rules
/// see it) is never rewritten: a placeholder there is only ever refused or
/// passed on.
fn scan_head(sentinels: &Sentinels, parts: &Parts, query: Option<&str>) -> Found {
    let mut found = Found::new();
    sentinels.scan_decoded(parts.uri.path().as_bytes(), &mut found);
    for (name, value) in &parts.headers {
        sentinels.scan(name.as_str().as_bytes(), &mut found);
        sentinels.scan_decoded(value.as_bytes(), &mut found);
    }
    if let Some(q) = query {
        sentinels.scan_decoded(q.as_bytes(), &mut found);
    }
    found
}

/// Every header value with its bound placeholders swapped for their values;
/// a rewritten value is marked sensitive.
fn rewrite_headers(
    sentinels: &Sentinels,
    values: &[Option<Arc<SecretString>>],
    headers: &mut http::HeaderMap,
) -> Result<(), Reason> {
    let names: Vec<_> = headers.keys().cloned().collect();
    for name in names {
        let rewritten: Vec<HeaderValue> = headers
            .get_all(&name)
            .iter()
            .map(|v| {
                let bytes = sentinels.replace(v.as_bytes(), values, str::to_owned);
                let mut out =
                    HeaderValue::from_bytes(&bytes).map_err(|_| Reason::CredentialUnavailable)?;
                out.set_sensitive(bytes != v.as_bytes() || v.is_sensitive());
                Ok(out)
            })
            .collect::<Result<_, Reason>>()?;
        headers.remove(&name);
        for value in rewritten {
            headers.append(name.clone(), value);
        }
    }
    Ok(())
}
