//! `clawgate lockdown`: deny-by-default egress for an agent, as nftables
//! rules, so that the proxy cannot be bypassed.
//!
//! A proxy governs only the traffic sent to it; an agent (or a tool it runs,
//! such as OpenClaw's `web_fetch`) that opens its own sockets goes around it.
//! The rules match the agent's sockets by user (`meta skuid`) or by cgroup
//! v2 path (`socket cgroupv2`), and let them reach only clawgate's listeners,
//! DNS servers when asked, and loopback ports named explicitly. Everything
//! else they send is counted in the named counter `dropped` and dropped.
//! Replies on connections others opened to the agent pass (`ct state
//! established,related`).
//!
//! This module only writes text; applying it (`nft -f`) is the operator's
//! step, and `nft list counter inet clawgate_lockdown dropped` reads the count.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// The nftables table the rules live in (one per host: `nft delete table
/// inet clawgate_lockdown` takes them all away).
pub const TABLE: &str = "clawgate_lockdown";

/// Whose sockets are locked down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A numeric user id.
    Uid(u32),
    /// A cgroup v2 path relative to the root, `system.slice/openclaw.service`.
    Cgroup(String),
}

/// What `lockdown` needs.
#[derive(Debug, Clone)]
pub struct Lockdown {
    /// The agents' users or cgroups.
    pub subjects: Vec<Subject>,
    /// clawgate's listeners the agents may reach.
    pub proxies: Vec<SocketAddr>,
    /// DNS servers the agents may ask (UDP and TCP port 53).
    pub dns: Vec<IpAddr>,
    /// Loopback ports the agents may reach besides clawgate (their own
    /// local services, such as an OpenClaw gateway's control port).
    pub loopback_ports: Vec<u16>,
}

/// Why the rules could not be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LockdownError {
    /// Nobody to lock down.
    #[error("name at least one --user, --uid or --cgroup")]
    NoSubject,
    /// Nowhere to go.
    #[error("name at least one --proxy HOST:PORT (clawgate's listener)")]
    NoProxy,
    /// A cgroup path nftables cannot take.
    #[error(
        "cgroup `{0}` must be a relative path of letters, digits, `.`, `_`, `-`, `@`, `:` and `/`"
    )]
    BadCgroup(String),
}

/// The ruleset, ready for `nft -f`.
pub fn rules(lockdown: &Lockdown) -> Result<String, LockdownError> {
    if lockdown.subjects.is_empty() {
        return Err(LockdownError::NoSubject);
    }
    if lockdown.proxies.is_empty() {
        return Err(LockdownError::NoProxy);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# clawgate lockdown: the agents below reach only clawgate{}.",
        if lockdown.dns.is_empty() {
            ""
        } else {
            " and DNS"
        }
    );
    let _ = writeln!(
        out,
        "# apply: nft -f FILE    count: nft list counter inet {TABLE} dropped    remove: nft delete table inet {TABLE}"
    );
    // Re-applying replaces the table whole: declare it, delete it, then
    // write it afresh, in one transaction.
    let _ = writeln!(out, "table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    let _ = writeln!(out, "\tcounter dropped {{\n\t}}\n");
    let _ = writeln!(out, "\tchain output {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook output priority filter; policy accept;"
    );
    for subject in &lockdown.subjects {
        match subject {
            Subject::Uid(uid) => {
                let _ = writeln!(out, "\t\tmeta skuid {uid} jump agent");
            }
            Subject::Cgroup(path) => {
                if path.is_empty()
                    || path.starts_with('/')
                    || !path
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-@:/".contains(&b))
                {
                    return Err(LockdownError::BadCgroup(path.clone()));
                }
                let level = path.split('/').filter(|p| !p.is_empty()).count();
                let _ = writeln!(
                    out,
                    "\t\tsocket cgroupv2 level {level} \"{path}\" jump agent"
                );
            }
        }
    }
    let _ = writeln!(out, "\t}}\n");
    let _ = writeln!(out, "\tchain agent {{");
    let _ = writeln!(out, "\t\tct state established,related accept");
    for proxy in &lockdown.proxies {
        let _ = writeln!(
            out,
            "\t\t{} daddr {} tcp dport {} accept",
            family(proxy.ip()),
            proxy.ip(),
            proxy.port()
        );
    }
    for server in &lockdown.dns {
        for proto in ["udp", "tcp"] {
            let _ = writeln!(
                out,
                "\t\t{} daddr {server} {proto} dport 53 accept",
                family(*server)
            );
        }
    }
    for port in &lockdown.loopback_ports {
        let _ = writeln!(out, "\t\toifname \"lo\" tcp dport {port} accept");
    }
    let _ = writeln!(out, "\t\tcounter name \"dropped\" drop");
    let _ = writeln!(out, "\t}}\n}}");
    Ok(out)
}

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn rules_let_the_agent_reach_clawgate_and_dns_only() {
        let text = rules(&Lockdown {
            subjects: vec![
                Subject::Uid(1001),
                Subject::Cgroup("system.slice/oc.service".into()),
            ],
            proxies: vec![
                "127.0.0.1:8445".parse().unwrap(),
                "[::1]:8443".parse().unwrap(),
            ],
            dns: vec!["10.0.0.2".parse().unwrap()],
            loopback_ports: vec![18789],
        })
        .unwrap();
        for line in [
            "meta skuid 1001 jump agent",
            "socket cgroupv2 level 2 \"system.slice/oc.service\" jump agent",
            "ip daddr 127.0.0.1 tcp dport 8445 accept",
            "ip6 daddr ::1 tcp dport 8443 accept",
            "ip daddr 10.0.0.2 udp dport 53 accept",
            "oifname \"lo\" tcp dport 18789 accept",
            "counter name \"dropped\" drop",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(text.trim_end().ends_with('}'));
    }

    #[test]
    fn nothing_to_lock_or_nowhere_to_go_is_an_error() {
        let mut l = Lockdown {
            subjects: Vec::new(),
            proxies: vec!["127.0.0.1:8445".parse().unwrap()],
            dns: Vec::new(),
            loopback_ports: Vec::new(),
        };
        assert_eq!(rules(&l), Err(LockdownError::NoSubject));
        l.subjects = vec![Subject::Cgroup("/abs\"; flush ruleset".into())];
        assert!(matches!(rules(&l), Err(LockdownError::BadCgroup(_))));
        l.subjects = vec![Subject::Uid(7)];
        l.proxies.clear();
        assert_eq!(rules(&l), Err(LockdownError::NoProxy));
    }
}
