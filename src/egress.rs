//! Egress safety: which addresses clawgate may connect to on an agent's
//! behalf.
//!
//! Host strings are normalised once ([`normalise_host`]): brackets, a trailing
//! dot and case are removed, IDN labels become punycode, and IPv4 literals in
//! every form `inet_aton` accepts (`2130706433`, `0x7f000001`, `017700000001`,
//! `127.1`) become dotted quads, so no spelling of an address can differ from
//! the one that is checked.
//!
//! Every address a name resolves to is checked ([`blocked_range`]); if any is
//! loopback, private, link-local, unspecified, multicast, carrier-grade NAT,
//! unique-local, IPv4-mapped, IPv4-compatible, NAT64 or otherwise reserved, the
//! call is refused with `egress-address-blocked` unless the scope names the
//! range or host in `allow_private`. Connections go only to the addresses that
//! were checked ([`EgressResolver`] hands them straight to the connector), so
//! DNS rebinding between check and connect is impossible.
//!
//! Invariants: nothing here decides policy; a blocked address is never
//! connected to; a name is never resolved twice for one check.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name;
use tokio::net::TcpStream;

/// A normalised destination host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IP literal, in any of its spellings.
    Ip(IpAddr),
    /// A DNS name: lowercase ASCII (IDN as punycode), no trailing dot.
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// Why a host string is not a usable host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Empty after normalisation.
    #[error("host is empty")]
    Empty,
    /// Looks like a number but is not a valid IPv4 address.
    #[error("host `{0}` is not a valid IPv4 address")]
    BadIpv4(String),
    /// Bracketed but not IPv6, or an IPv6 zone.
    #[error("host `{0}` is not a valid IPv6 address")]
    BadIpv6(String),
    /// Not a valid (internationalised) domain name.
    #[error("host `{0}` is not a valid domain name")]
    BadName(String),
}

/// Normalises a host as an agent or a policy file wrote it.
pub fn normalise_host(raw: &str) -> Result<Host, HostError> {
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| HostError::BadIpv6(raw.to_owned()))?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| HostError::BadIpv6(raw.to_owned()));
    }
    if raw.contains(':') {
        return raw
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| HostError::BadIpv6(raw.to_owned()));
    }
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(HostError::Empty);
    }
    let lower = trimmed.to_ascii_lowercase();
    // Like the WHATWG URL parser: a host whose last label is numeric is an
    // IPv4 address or nothing, never a name to resolve.
    let last = lower.rsplit('.').next().unwrap_or_default();
    if looks_numeric(last) {
        return parse_ipv4(&lower)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .ok_or_else(|| HostError::BadIpv4(raw.to_owned()));
    }
    let ascii =
        idna::domain_to_ascii_strict(&lower).map_err(|_| HostError::BadName(raw.to_owned()))?;
    if ascii.is_empty()
        || ascii.len() > 253
        || ascii.split('.').any(|label| {
            label.is_empty()
                || label.len() > 63
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    {
        return Err(HostError::BadName(raw.to_owned()));
    }
    Ok(Host::Name(ascii))
}

fn looks_numeric(label: &str) -> bool {
    !label.is_empty()
        && (label.bytes().all(|b| b.is_ascii_digit())
            || label
                .strip_prefix("0x")
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())))
}

/// One part of an `inet_aton` address: decimal, `0x` hex or `0` octal.
fn parse_part(part: &str) -> Option<u64> {
    if let Some(hex) = part.strip_prefix("0x") {
        if hex.is_empty() {
            return Some(0);
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if part.len() > 1 && part.starts_with('0') {
        return u64::from_str_radix(&part[1..], 8).ok();
    }
    part.parse().ok()
}

/// IPv4 in every form `inet_aton` accepts: `a.b.c.d`, `a.b.c` (c 16 bits),
/// `a.b` (b 24 bits) and `a` (32 bits), each part decimal, hex or octal.
fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        if part.is_empty() || part.len() > 20 {
            return None;
        }
        values.push(parse_part(part)?);
    }
    let (last, head) = values.split_last()?;
    if head.iter().any(|&v| v > 255) {
        return None;
    }
    let last_bits = 8 * (5 - values.len()) as u32;
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut n: u64 = 0;
    for (i, v) in head.iter().enumerate() {
        n |= v << (24 - 8 * i as u32);
    }
    n |= last;
    u32::try_from(n).ok().map(Ipv4Addr::from)
}

/// Why an address may not be connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("address {addr} is {range}")]
pub struct Blocked {
    /// The refused address.
    pub addr: IpAddr,
    /// The range it falls in, in words.
    pub range: &'static str,
}

/// The refused range an address falls in, if any.
pub fn blocked_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: [([u8; 4], u32, &str); 14] = [
        ([0, 0, 0, 0], 8, "unspecified"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "reserved"),
        ([192, 0, 2, 0], 24, "reserved"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "reserved"),
        ([198, 51, 100, 0], 24, "reserved"),
        ([203, 0, 113, 0], 24, "reserved"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, name)| *name)
}

fn in_v6(ip: Ipv6Addr, net: u128, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == net & mask
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    const RANGES: [(u128, u32, &str); 9] = [
        (0xffff_0000_0000, 96, "IPv4-mapped"),
        (0, 96, "IPv4-compatible"),
        (0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96, "NAT64"),
        (0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48, "NAT64"),
        (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7, "unique-local"),
        (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10, "link-local"),
        (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10, "site-local"),
        (0xff00_0000_0000_0000_0000_0000_0000_0000, 8, "multicast"),
        (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32, "reserved"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map(|(_, _, name)| *name)
}

/// What a scope's `allow_private` names: address ranges and hosts whose
/// addresses may be private.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AllowPrivate {
    nets: Vec<(IpAddr, u32)>,
    hosts: Vec<String>,
}

impl AllowPrivate {
    /// Parses entries: an address, a CIDR range or a host name.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<AllowPrivate, String> {
        let mut allow = AllowPrivate::default();
        for entry in entries {
            if let Some((addr, prefix)) = entry.split_once('/') {
                let addr: IpAddr = addr
                    .parse()
                    .map_err(|_| format!("`{entry}` is not an address range"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let prefix: u32 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("`{entry}` has a prefix length beyond {max}"))?;
                allow.nets.push((addr, prefix));
                continue;
            }
            match normalise_host(entry) {
                Ok(Host::Ip(ip)) => allow.nets.push((ip, if ip.is_ipv4() { 32 } else { 128 })),
                Ok(Host::Name(name)) => allow.hosts.push(name),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(allow)
    }

    /// Adds everything `other` allows.
    pub fn extend(&mut self, other: AllowPrivate) {
        self.nets.extend(other.nets);
        self.hosts.extend(other.hosts);
    }

    /// Every entry, as text (`10.0.0.0/8`, `db.internal`), for `policy diff`.
    pub fn entries(&self) -> Vec<String> {
        let nets = self
            .nets
            .iter()
            .map(|(ip, prefix)| format!("{ip}/{prefix}"));
        nets.chain(self.hosts.iter().cloned()).collect()
    }

    /// Whether nothing is allowed beyond the public internet.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.hosts.is_empty()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|(net, prefix)| match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => in_v4(ip, net.octets(), *prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_v6(ip, u128::from(*net), *prefix),
            _ => false,
        })
    }

    /// Checks one address that `host` resolved to (or is).
    pub fn check(&self, host: &Host, ip: IpAddr) -> Result<(), Blocked> {
        let Some(range) = blocked_range(ip) else {
            return Ok(());
        };
        let named = matches!(host, Host::Name(name) if self.hosts.iter().any(|h| h == name));
        if named || self.contains(ip) {
            return Ok(());
        }
        Err(Blocked { addr: ip, range })
    }

    /// The check that needs no DNS: an IP literal, or a name that is
    /// loopback by definition (`localhost` and `*.localhost`, RFC 6761).
    pub fn check_literal(&self, host: &Host) -> Result<(), Blocked> {
        match host {
            Host::Ip(ip) => self.check(host, *ip),
            Host::Name(name) if name == "localhost" || name.ends_with(".localhost") => {
                self.check(host, IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
            Host::Name(_) => Ok(()),
        }
    }
}

/// Why a destination could not be resolved or reached.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// An address is in a refused range.
    #[error("egress refused: {0}")]
    Blocked(#[from] Blocked),
    /// The name did not resolve.
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        /// The name.
        host: String,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// No checked address accepted a connection.
    #[error("cannot connect to `{host}`: {source}")]
    Connect {
        /// The host.
        host: String,
        /// The last error.
        source: std::io::Error,
    },
    /// Connecting took too long.
    #[error("connecting to `{0}` timed out")]
    Timeout(String),
}

/// Names pinned to addresses (`serve --resolve`), consulted before DNS. The
/// egress check still applies to what they name.
pub type Pins = Arc<HashMap<String, Vec<IpAddr>>>;

/// Resolves `host` (pins first, then the system resolver) and checks every
/// address; returns them only when all pass.
pub async fn resolve_checked(
    host: &Host,
    port: u16,
    allow: &AllowPrivate,
    pins: &Pins,
) -> Result<Vec<SocketAddr>, EgressError> {
    let ips: Vec<IpAddr> = match host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => match pins.get(name) {
            Some(ips) => ips.clone(),
            None => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|source| EgressError::Resolve {
                    host: name.clone(),
                    source,
                })?
                .map(|addr| addr.ip())
                .collect(),
        },
    };
    if ips.is_empty() {
        return Err(EgressError::Resolve {
            host: host.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        });
    }
    // Every address is checked: a name that answers with one public and one
    // private address is refused, not half-used.
    for ip in &ips {
        allow.check(host, *ip)?;
    }
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// Connects to the first of `addrs` that answers, within `limit`.
pub async fn connect_checked(
    host: &Host,
    addrs: &[SocketAddr],
    limit: Duration,
) -> Result<TcpStream, EgressError> {
    let attempt = async {
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(EgressError::Connect {
            host: host.to_string(),
            source: last,
        })
    };
    tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| EgressError::Timeout(host.to_string()))?
}

/// The resolver behind every pooled upstream client: it resolves, checks
/// every address against the scope's `allow_private`, and hands the connector
/// only addresses that passed. IP literals never reach it (the connector
/// uses them as they are), which is why `decide` checks literals itself.
#[derive(Debug, Clone)]
pub struct EgressResolver {
    allow: Arc<AllowPrivate>,
    pins: Pins,
}

impl EgressResolver {
    /// A resolver for clients of scopes with this `allow_private`.
    pub fn new(allow: Arc<AllowPrivate>, pins: Pins) -> EgressResolver {
        EgressResolver { allow, pins }
    }
}

impl tower_service::Service<Name> for EgressResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = EgressError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow = Arc::clone(&self.allow);
        let pins = Arc::clone(&self.pins);
        Box::pin(async move {
            let host = normalise_host(name.as_str()).map_err(|e| EgressError::Resolve {
                host: name.as_str().to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
            })?;
            // The connector sets the port; 0 here is only for the resolver.
            Ok(resolve_checked(&host, 0, &allow, &pins).await?.into_iter())
        })
    }
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod tests;
