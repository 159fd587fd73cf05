//! `tls-rejected` records for every listener, capped per source address.
//!
//! Every rejected handshake is logged and recorded as `tls-rejected`, at most
//! [`REJECTIONS_PER_SECOND`] records a second per source address (per /64
//! for IPv6); the rest are counted and the count is recorded, so a flood can
//! neither hide nor fill the disk.
//!
//! Requests the HTTP parser refuses (a malformed request line or header, a
//! head past the size limit: hyper answers 400 or 431 before any service
//! sees them) are counted by source and kind and written as one `summary`
//! record per source at each sweep (every few seconds), never with any of
//! the request's bytes. A connection that an override or a reload ends
//! while it waits between requests leaves a record too.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::CertificateError;

use crate::audit::{AuditLog, DecisionRecord, kind};
use crate::error::Reason;

/// Records of rejected handshakes per source address and second.
pub const REJECTIONS_PER_SECOND: u32 = 10;
/// Records of rejected handshakes per second from all sources together.
pub const REJECTIONS_PER_SECOND_IN_ALL: u32 = 100;
/// Distinct sources tracked at once; beyond this, rejections share one counter.
const MAX_SOURCES: usize = 10_000;

/// The verifier's reason, in words an operator can act on.
pub(crate) fn describe_tls_error(e: &std::io::Error) -> String {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "connection closed during handshake".into(),
            _ => format!("handshake failed: {e}"),
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no client certificate".into(),
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not yet valid".into()
            }
            CertificateError::Revoked => "certificate revoked".into(),
            // Only the one-identity check fails a certificate this way.
            CertificateError::ApplicationVerificationFailure => {
                "certificate carries more than one clawgate identity (SPIFFE URI SAN)".into()
            }
            CertificateError::UnknownIssuer => "certificate not issued by the agent CA".into(),
            // Seen when a foreign CA shares the agent CA's name.
            CertificateError::BadSignature => {
                "certificate signature does not verify against the agent CA".into()
            }
            other => format!("certificate rejected: {other:?}"),
        },
        other => format!("handshake failed: {other}"),
    }
}

/// The reason a failed handshake is recorded with: `identity-ambiguous`
/// for a certificate with several clawgate identities, else
/// `tls-rejected`.
pub(crate) fn tls_error_reason(e: &std::io::Error) -> Reason {
    let ambiguous = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| *tls == crate::tls::one_identity::AMBIGUOUS);
    if ambiguous {
        Reason::IdentityAmbiguous
    } else {
        Reason::TlsRejected
    }
}

/// What the HTTP parser refused a request for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseRejection {
    /// A request line or header that does not parse (400).
    Malformed,
    /// A request head past the parser's size limit (431).
    TooLarge,
}

impl ParseRejection {
    /// The kind as a summary record names it.
    pub fn name(self) -> &'static str {
        match self {
            ParseRejection::Malformed => "malformed (400)",
            ParseRejection::TooLarge => "headers too large (431)",
        }
    }

    /// The kind of a connection's error, when the parser refused a request.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Option<ParseRejection> {
        let hyper = e.downcast_ref::<hyper::Error>()?;
        if hyper.is_parse_too_large() {
            Some(ParseRejection::TooLarge)
        } else if hyper.is_parse() {
            Some(ParseRejection::Malformed)
        } else {
            None
        }
    }
}

/// Counts of parser refusals from one source since the last sweep:
/// malformed, too large.
type ParseCounts = HashMap<Option<IpAddr>, (&'static str, [u64; 2])>;

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    second: u64,
    recorded: u32,
    suppressed: u64,
}

/// Per-source caps on `tls-rejected` records.
#[derive(Debug)]
pub struct Rejections {
    audit: AuditLog,
    /// Where every rejection is counted (`clawgate_tls_rejections_total`).
    counted: Option<std::sync::Arc<crate::pipeline::Pipeline>>,
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
    global: Mutex<Window>,
    parse: Mutex<ParseCounts>,
}

/// Seconds since the epoch.
pub fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Rejections {
    /// Rejections recorded into `audit`.
    pub fn new(audit: AuditLog) -> Rejections {
        Rejections {
            audit,
            counted: None,
            windows: Mutex::new(HashMap::new()),
            global: Mutex::new(Window::default()),
            parse: Mutex::new(HashMap::new()),
        }
    }

    /// Also counts every rejection, recorded or not, in `pipeline`'s metrics.
    pub fn counting(mut self, pipeline: std::sync::Arc<crate::pipeline::Pipeline>) -> Rejections {
        self.counted = Some(pipeline);
        self
    }

    /// Records a rejected handshake unless this source is over its cap; a
    /// recorded one carries the count suppressed since the last record.
    pub fn reject(&self, addr: SocketAddr, why: String) {
        self.reject_as(addr, Reason::TlsRejected, why);
    }

    /// Records a rejected handshake with `reason` (`tls-rejected` or
    /// `identity-ambiguous`), under the same caps as [`Rejections::reject`].
    pub fn reject_as(&self, addr: SocketAddr, reason: Reason, why: String) {
        if let Some(pipeline) = &self.counted {
            pipeline.metrics().tls_rejected();
        }
        let Some(earlier_suppressed) = self.admit(addr.ip(), now_second()) else {
            return;
        };
        tracing::warn!(client = %addr, reason = %why, "TLS handshake rejected");
        let detail = if earlier_suppressed > 0 {
            format!(
                "{why}; {earlier_suppressed} earlier rejections from this source were not recorded"
            )
        } else {
            why
        };
        let mut record = rejection_record(Some(addr.to_string()), detail);
        record.reason = reason.code().to_owned();
        self.audit.append(record);
    }

    /// `Some(suppressed_before)` when this rejection may be recorded.
    fn admit(&self, ip: IpAddr, second: u64) -> Option<u64> {
        let Ok(mut windows) = self.windows.lock() else {
            return Some(0);
        };
        let ip = source_key(ip);
        // Past the source limit, unknown sources share one window.
        let key = if windows.len() >= MAX_SOURCES && !windows.contains_key(&Some(ip)) {
            None
        } else {
            Some(ip)
        };
        let window = windows.entry(key).or_default();
        let mut carried = 0;
        if window.second != second {
            carried = window.suppressed;
            *window = Window {
                second,
                recorded: 0,
                suppressed: 0,
            };
        }
        // The global budget is only spent on what the source's own budget
        // admits, so one noisy source cannot crowd out the others' reasons.
        let admitted = window.recorded < REJECTIONS_PER_SECOND
            && self
                .global
                .lock()
                .map(|mut g| {
                    if g.second != second {
                        *g = Window {
                            second,
                            ..Window::default()
                        };
                    }
                    g.recorded += 1;
                    g.recorded <= REJECTIONS_PER_SECOND_IN_ALL
                })
                .unwrap_or(true);
        if admitted {
            window.recorded += 1;
            Some(carried)
        } else {
            // Keep what was carried: it is reported with the next record.
            window.suppressed += carried + 1;
            None
        }
    }

    /// Records the suppressed counts of windows older than `before` and
    /// forgets them.
    pub fn flush_suppressed(&self, before: u64) {
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        windows.retain(|source, window| {
            if window.second >= before {
                return true;
            }
            if window.suppressed > 0 {
                let who = source.map_or_else(|| "many sources".into(), |ip| ip.to_string());
                tracing::warn!(source = %who, count = window.suppressed, "TLS rejections not recorded individually");
                self.audit.append(rejection_record(
                    source.map(|ip| ip.to_string()),
                    format!("{} further rejections from {who} were not recorded individually", window.suppressed),
                ));
            }
            false
        });
    }

    /// Counts a request the HTTP parser refused on `listener`; the counts
    /// are recorded at the next sweep.
    pub fn parse_rejected(&self, listener: &'static str, addr: SocketAddr, kind: ParseRejection) {
        tracing::debug!(listener, client = %addr, kind = kind.name(), "request refused by the HTTP parser");
        let Ok(mut counts) = self.parse.lock() else {
            return;
        };
        let ip = addr.ip().to_canonical();
        let key = if counts.len() >= MAX_SOURCES && !counts.contains_key(&Some(ip)) {
            None
        } else {
            Some(ip)
        };
        let entry = counts.entry(key).or_insert((listener, [0, 0]));
        entry.1[kind as usize] += 1;
    }

    /// Writes one `summary` record per source that had requests refused by
    /// the parser since the last call, with the counts by kind.
    pub fn flush_parse(&self) {
        let drained: Vec<_> = match self.parse.lock() {
            Ok(mut counts) => counts.drain().collect(),
            Err(_) => return,
        };
        for (source, (listener, [malformed, too_large])) in drained {
            let who = source.map_or_else(|| "many sources".into(), |ip| ip.to_string());
            let kinds: Vec<String> = [
                (ParseRejection::Malformed, malformed),
                (ParseRejection::TooLarge, too_large),
            ]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!("{n} {}", kind.name()))
            .collect();
            tracing::warn!(source = %who, counts = %kinds.join(", "), "requests refused by the HTTP parser");
            let mut record = DecisionRecord::new(kind::SUMMARY, &uuid::Uuid::now_v7().to_string());
            record.mode = Some("http".into());
            record.client_addr = source.map(|ip| ip.to_string());
            record.decision = Some("deny".into());
            record.reason = Reason::MalformedRequest.code().to_owned();
            record.detail = Some(format!(
                "{listener} listener: requests refused by the HTTP parser from {who}: {}",
                kinds.join(", ")
            ));
            self.audit.append(record);
        }
    }

    /// Records a connection that `reason` ended while it was open (idle
    /// between requests, or finishing one): who, on which listener, why.
    pub fn connection_ended(
        &self,
        listener: &'static str,
        addr: SocketAddr,
        (reason, detail): (Reason, String),
    ) {
        let mut record = DecisionRecord::new(kind::DECISION, &uuid::Uuid::now_v7().to_string());
        record.mode = Some("connection".into());
        record.client_addr = Some(addr.to_string());
        record.decision = Some("deny".into());
        record.reason = reason.code().to_owned();
        record.detail = Some(format!("{listener} listener: connection ended: {detail}"));
        self.audit.append(record);
    }

    /// Records suppressed counts every `period`, forever.
    pub async fn sweep_every(self: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            self.flush_suppressed(now_second().saturating_sub(2));
            self.flush_parse();
        }
    }
}

/// The source a rejection counts against: the address, or its /64 for IPv6,
/// where one host can hold a whole /64.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    // An IPv4 client on a dual-stack listener arrives as `::ffff:a.b.c.d`.
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
    }
}

fn rejection_record(client_addr: Option<String>, detail: String) -> DecisionRecord {
    let mut record = DecisionRecord::new(kind::DECISION, &uuid::Uuid::now_v7().to_string());
    record.mode = Some("tls".into());
    record.client_addr = client_addr;
    record.decision = Some("deny".into());
    record.reason = Reason::TlsRejected.code().to_owned();
    record.detail = Some(detail);
    record
}

#[cfg(test)]
#[path = "rejections_tests.rs"]
mod tests;
