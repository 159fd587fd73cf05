//! Compiling a scope's network settings: its upstream, how CONNECT is
//! served, private addresses and ports it may reach, and blocked ranges.
//! Split from [`super::scope`] only for size.

use super::file::ScopeFile;
use super::report::Report;
use super::{ConnectMode, Upstream};
use crate::egress::{self, AllowPrivate, Blocked};

pub(super) fn compile_connect(
    report: &mut Report<'_>,
    file: usize,
    scope: &ScopeFile,
) -> ConnectMode {
    let name = scope.name.get_ref();
    let sees_requests = !scope.allow.is_empty()
        || !scope.deny.is_empty()
        || scope.credential.is_some()
        || scope.mcp.is_some();
    match scope
        .connect
        .as_ref()
        .map(|c| (c.get_ref().as_str(), c.span()))
    {
        None if sees_requests => ConnectMode::Intercept,
        None => ConnectMode::Tunnel,
        Some(("intercept", _)) => ConnectMode::Intercept,
        Some(("tunnel", span)) => {
            if scope.mcp.is_some() {
                report.error(
                    file,
                    span,
                    format!(
                        "scope `{name}` tunnels, so it cannot have MCP rules: clawgate would not see its tool calls"
                    ),
                );
            } else if sees_requests {
                report.error(
                    file,
                    span,
                    format!(
                        "scope `{name}` tunnels, so it cannot have rules or a credential: clawgate never sees its requests"
                    ),
                );
            }
            ConnectMode::Tunnel
        }
        Some((other, span)) => {
            report.error(
                file,
                span,
                format!("connect `{other}` must be `intercept` or `tunnel`"),
            );
            ConnectMode::Tunnel
        }
    }
}

pub(super) fn compile_allow_private(
    report: &mut Report<'_>,
    file: usize,
    scope: &ScopeFile,
) -> AllowPrivate {
    let mut allow_private = AllowPrivate::default();
    for entry in scope.allow_private.iter().flatten() {
        match AllowPrivate::parse([entry.get_ref().as_str()]) {
            Ok(one) => allow_private.extend(one),
            Err(message) => report.error(
                file,
                entry.span(),
                format!("allow_private entry is not an address, range or host: {message}"),
            ),
        }
    }
    allow_private
}

pub(super) fn compile_ports(
    report: &mut Report<'_>,
    file: usize,
    scope: &ScopeFile,
    upstream: Option<&Upstream>,
) -> Vec<u16> {
    let Some(ports) = &scope.ports else {
        return upstream.map(|u| vec![u.port]).unwrap_or_default();
    };
    if ports.get_ref().is_empty() || ports.get_ref().contains(&0) {
        report.error(
            file,
            ports.span(),
            "ports must list at least one port, none of them 0".into(),
        );
    }
    ports.get_ref().clone()
}

/// Whether the upstream, written as an address, is one the egress check
/// refuses (a warning: the scope loads, its calls will be refused).
pub(super) fn check_blocked(
    report: &mut Report<'_>,
    file: usize,
    scope: &ScopeFile,
    upstream: Option<&Upstream>,
    allow_private: &AllowPrivate,
) -> Option<Blocked> {
    let host = egress::normalise_host(&upstream?.host).ok()?;
    let blocked = allow_private.check_literal(&host).err()?;
    report.warn(
        file,
        scope.upstream.span(),
        format!(
            "upstream `{}` is {}; calls in this scope will get egress-address-blocked unless `allow_private` names it",
            scope.upstream.get_ref(),
            blocked.range
        ),
    );
    Some(blocked)
}

pub(super) fn parse_upstream(text: &str) -> Result<Upstream, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("upstream `{text}` is not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("https") => http::uri::Scheme::HTTPS,
        Some("http") => http::uri::Scheme::HTTP,
        _ => {
            return Err(format!(
                "upstream `{text}` must start with `https://` or `http://`"
            ));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("upstream `{text}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("upstream `{text}` must not carry user information"));
    }
    if uri.query().is_some() {
        return Err(format!("upstream `{text}` must not have a query"));
    }
    // Normalised like every host an agent names, so `0x7f000001` and
    // `127.0.0.1` are one upstream.
    let host = match egress::normalise_host(authority.host()) {
        Ok(host) => host.to_string(),
        Err(egress::HostError::Empty) => return Err(format!("upstream `{text}` has no host")),
        Err(e) => return Err(format!("upstream `{text}`: {e}")),
    };
    let default_port = if scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    // The base path goes through the same normalisation as request paths, so
    // the joined path the upstream sees is still canonical.
    let base_path = crate::route::normalise_path(uri.path())
        .map_err(|e| format!("upstream `{text}`: base {e}"))?
        .trim_end_matches('/')
        .to_owned();
    Ok(Upstream {
        scheme,
        host,
        port: authority.port_u16().unwrap_or(default_port),
        base_path,
    })
}
