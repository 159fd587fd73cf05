//! Compiling a scope's strictness settings: what a tunnel's ClientHello may
//! leave unsaid (`tunnel_without_sni`, `tunnel_ech`) and how request paths
//! are read (`path_strictness`, `case_insensitive_paths`).

use toml::Spanned;

use super::Strictness;
use super::file::ScopeFile;
use super::report::Report;

/// The scope's strictness; a setting that cannot apply to how the scope
/// treats `CONNECT` (a tunnel setting on an intercepting scope, a path
/// setting on a tunnelling one) is an error, not a silent no-op.
pub(super) fn compile_strictness(
    report: &mut Report<'_>,
    file: usize,
    scope: &ScopeFile,
    tunnels: bool,
) -> Strictness {
    let name = scope.name.get_ref();
    let mut choice = |setting: &Option<Spanned<String>>, key: &str, yes: &str, no: &str| {
        let setting = setting.as_ref()?;
        let value = setting.get_ref().as_str();
        if value != yes && value != no {
            report.error(
                file,
                setting.span(),
                format!("{key} `{value}` must be `{no}` or `{yes}`"),
            );
            return None;
        }
        Some((value == yes, setting.span()))
    };
    let without_sni = choice(
        &scope.tunnel_without_sni,
        "tunnel_without_sni",
        "allow",
        "refuse",
    );
    let ech = choice(&scope.tunnel_ech, "tunnel_ech", "allow", "refuse");
    let lenient = choice(
        &scope.path_strictness,
        "path_strictness",
        "lenient",
        "strict",
    );
    let folded = scope
        .case_insensitive_paths
        .as_ref()
        .map(|s| (*s.get_ref(), s.span()));
    for (key, setting) in [("tunnel_without_sni", &without_sni), ("tunnel_ech", &ech)] {
        if let Some((_, span)) = setting
            && !tunnels
        {
            report.error(
                file,
                span.clone(),
                format!("scope `{name}` intercepts, so `{key}` does not apply: clawgate terminates its TLS"),
            );
        }
    }
    for (key, setting) in [
        ("path_strictness", &lenient),
        ("case_insensitive_paths", &folded),
    ] {
        if let Some((_, span)) = setting
            && tunnels
        {
            report.error(
                file,
                span.clone(),
                format!("scope `{name}` tunnels, so `{key}` does not apply: clawgate never sees its paths"),
            );
        }
    }
    Strictness {
        tunnel_without_sni: without_sni.is_some_and(|s| s.0),
        tunnel_ech: ech.is_some_and(|s| s.0),
        lenient_paths: lenient.is_some_and(|s| s.0),
        case_insensitive_paths: folded.is_some_and(|s| s.0),
    }
}

#[cfg(test)]
#[path = "strictness_tests.rs"]
mod tests;

/// A sentinel bound to a host that one of its agents reaches through a
/// tunnelling scope can never be swapped: clawgate never sees the request,
/// so the placeholder would reach the host unchanged. An error at the
/// sentinel's host entry.
pub(super) fn check_sentinel_tunnels(
    report: &mut Report<'_>,
    sentinels: &[(usize, Spanned<super::file::SentinelFile>)],
    agents: &[super::Agent],
    scopes: &[super::Scope],
) {
    for (file, sentinel) in sentinels {
        let s = sentinel.get_ref();
        let name = s.name.get_ref();
        let may_use = |agent: &super::Agent| {
            s.agents
                .as_ref()
                .is_none_or(|list| list.iter().any(|a| a.get_ref() == &agent.name))
        };
        for host in &s.hosts {
            let bound = host.get_ref().trim_end_matches('.').to_ascii_lowercase();
            let tunnelled = agents.iter().filter(|a| may_use(a)).find_map(|agent| {
                agent
                    .scopes
                    .iter()
                    .map(|&id| &scopes[id])
                    .find(|scope| {
                        scope.connect == super::ConnectMode::Tunnel && scope.upstream.host == bound
                    })
                    .map(|scope| (agent, scope))
            });
            if let Some((agent, scope)) = tunnelled {
                report.error(
                    *file,
                    host.span(),
                    format!(
                        "sentinel `{name}` is bound to `{bound}`, which scope `{}` of agent `{}` tunnels: clawgate never sees those requests, so the placeholder would reach `{bound}` unchanged; make the scope intercept (`connect = \"intercept\"`, with allow rules)",
                        scope.name, agent.name
                    ),
                );
            }
        }
    }
}
