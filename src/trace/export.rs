//! The exporter task: batches spans from the queue and posts them to the
//! collector as one OTLP/HTTP protobuf request per batch. A failed request
//! loses its batch (counted); the exporter never retries into a backlog
//! that would grow without bound.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::sync::mpsc::Receiver;

use super::proto::{self, any_value};
use super::{BATCH, SpanCounts, SpanData, Value};

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The collector's OTLP/HTTP traces URL; a URL without a path gets
    /// `/v1/traces`, as OTLP exporters do.
    pub endpoint: String,
    /// `service.instance.id`: the replica name, or the host's.
    pub instance: String,
    /// The longest a span waits in the queue before its batch is sent.
    pub every: Duration,
    /// The longest one export request may take.
    pub timeout: Duration,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The endpoint is not an `http` or `https` URL.
    #[error("otlp endpoint `{0}` is not an http(s) url with a host")]
    Endpoint(String),
    /// TLS could not be set up for an `https` endpoint.
    #[error("otlp endpoint tls: {0}")]
    Tls(String),
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

pub(super) struct Exporter {
    uri: http::Uri,
    client: Client<Connector, Full<Bytes>>,
    config: ExportConfig,
    counts: Arc<SpanCounts>,
}

impl Exporter {
    pub(super) fn new(
        config: ExportConfig,
        counts: Arc<SpanCounts>,
    ) -> Result<Exporter, TraceError> {
        let uri = endpoint_uri(&config.endpoint)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TraceError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Exporter {
            uri,
            client,
            config,
            counts,
        })
    }

    /// Sends a batch when it is full or its first span has waited
    /// `every`; ends when the queue closes, after sending the rest.
    pub(super) async fn run(self, mut queue: Receiver<SpanData>) {
        let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
        loop {
            if batch.is_empty() {
                match queue.recv().await {
                    Some(span) => batch.push(span),
                    None => return,
                }
            }
            let deadline = tokio::time::Instant::now() + self.config.every;
            let mut open = true;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.send(std::mem::take(&mut batch)).await;
            if !open {
                return;
            }
        }
    }

    async fn send(&self, batch: Vec<SpanData>) {
        let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        let body = encode(&batch, &self.config.instance);
        let request = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else {
            self.counts.failed.fetch_add(count, Ordering::Relaxed);
            return;
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            // Read to the end, so the connection is reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        };
        match tokio::time::timeout(self.config.timeout, exchange).await {
            Ok(Ok(())) => {
                self.counts.exported.fetch_add(count, Ordering::Relaxed);
            }
            Ok(Err(why)) => self.failed(count, &why),
            Err(_) => self.failed(count, "timed out"),
        }
    }

    fn failed(&self, count: u64, why: &str) {
        self.counts.failed.fetch_add(count, Ordering::Relaxed);
        tracing::warn!(
            spans = count,
            error = why,
            "trace export failed; spans lost"
        );
    }
}

/// The collector URL: `http(s)://host[:port]/path`, `/v1/traces` when no
/// path is given.
fn endpoint_uri(endpoint: &str) -> Result<http::Uri, TraceError> {
    let bad = || TraceError::Endpoint(endpoint.to_owned());
    let uri: http::Uri = endpoint.parse().map_err(|_| bad())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(bad());
    }
    if uri.path() == "/" && !endpoint.ends_with('/') {
        let mut parts = uri.into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/traces"));
        return http::Uri::from_parts(parts).map_err(|_| bad());
    }
    Ok(uri)
}

/// One `ExportTraceServiceRequest` holding `batch`.
pub(super) fn encode(batch: &[SpanData], instance: &str) -> Vec<u8> {
    let text = |key: &str, value: &str| proto::KeyValue {
        key: key.to_owned(),
        value: Some(proto::AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    };
    let resource = proto::Resource {
        attributes: vec![
            text("service.name", "clawgate"),
            text("service.version", env!("CARGO_PKG_VERSION")),
            text("service.instance.id", instance),
        ],
    };
    let spans = batch.iter().map(span).collect();
    let request = proto::ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![proto::ScopeSpans {
                scope: Some(proto::InstrumentationScope {
                    name: "clawgate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
            }],
        }],
    };
    request.encode_to_vec()
}

fn span(s: &SpanData) -> proto::Span {
    let attributes = s
        .attributes
        .iter()
        .map(|(key, value)| proto::KeyValue {
            key: (*key).to_owned(),
            value: Some(proto::AnyValue {
                value: Some(match value {
                    Value::Text(t) => any_value::Value::StringValue(t.clone()),
                    Value::Int(i) => any_value::Value::IntValue(*i),
                }),
            }),
        })
        .collect();
    proto::Span {
        trace_id: s.context.trace_id.to_vec(),
        span_id: s.context.span_id.to_vec(),
        parent_span_id: s.context.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name.clone(),
        kind: 2,
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.end),
        attributes,
        status: Some(match &s.error {
            Some(reason) => proto::Status {
                message: reason.clone(),
                code: 2,
            },
            None => proto::Status {
                message: String::new(),
                code: 1,
            },
        }),
        flags: u32::from(s.context.flags),
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
