//! Time-boxed exceptions and admin roles: compiling `[[exception]]` and
//! `[roles]`.
//!
//! An exception grants one agent extra scopes until its expiry, which is
//! required and at most [`LoadOptions::max_exception`] ahead of the load. One
//! already expired loads with a warning and grants nothing.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use toml::Spanned;

use super::file::{ExceptionFile, RolesFile};
use super::report::{LoadOptions, Report, valid_name};
use super::{AgentId, ScopeId};
use crate::identity::PeerName;

/// A time-boxed grant of scopes to one agent.
#[derive(Debug, Clone)]
pub struct Exception {
    /// The id, as written and as recorded.
    pub id: String,
    /// The agent it grants to.
    pub agent: AgentId,
    /// The scopes it grants.
    pub scopes: Vec<ScopeId>,
    /// Why it was granted.
    pub reason: String,
    /// Who approved it.
    pub approved_by: String,
    /// The ticket, when there is one.
    pub ticket: Option<String>,
    /// When it stops granting.
    pub expires: SystemTime,
}

impl Exception {
    /// Whether it still grants at `now`.
    pub fn active_at(&self, now: SystemTime) -> bool {
        now < self.expires
    }
}

/// Who may use the admin API.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    /// May read and change (overrides, reload).
    pub admins: Vec<PeerName>,
    /// May read (audit, status, metrics).
    pub auditors: Vec<PeerName>,
}

/// The RFC 3339 rendering of a time, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub(super) fn compile_exceptions(
    report: &mut Report<'_>,
    exceptions: &[(usize, Spanned<ExceptionFile>)],
    agent_ids: &HashMap<String, AgentId>,
    scope_ids: &HashMap<String, ScopeId>,
    options: &LoadOptions<'_>,
) -> Vec<Exception> {
    let mut out = Vec::with_capacity(exceptions.len());
    let mut ids = HashSet::new();
    for (file, exception) in exceptions {
        let file = *file;
        let e = exception.get_ref();
        let id = e.id.get_ref();
        if !valid_name(id) {
            report.error(
                file,
                e.id.span(),
                format!("exception id `{id}` must be 1 to 64 of a-z, 0-9, `.`, `_`, `-`"),
            );
        }
        if !ids.insert(id.clone()) {
            report.error(
                file,
                e.id.span(),
                format!("exception `{id}` is defined twice"),
            );
        }
        let agent = agent_ids.get(e.agent.get_ref()).copied();
        if agent.is_none() {
            report.unknown_name(
                file,
                e.agent.span(),
                format!("unknown agent `{}` in exception `{id}`", e.agent.get_ref()),
            );
        }
        if e.scopes.is_empty() {
            report.error(
                file,
                exception.span(),
                format!("exception `{id}` grants no scopes"),
            );
        }
        let mut scopes = Vec::with_capacity(e.scopes.len());
        for scope in &e.scopes {
            match scope_ids.get(scope.get_ref()) {
                Some(&s) => scopes.push(s),
                None => report.unknown_name(
                    file,
                    scope.span(),
                    format!("unknown scope `{}` in exception `{id}`", scope.get_ref()),
                ),
            }
        }
        for (field, value) in [("reason", &e.reason), ("approved_by", &e.approved_by)] {
            if value.get_ref().trim().is_empty() {
                report.error(
                    file,
                    value.span(),
                    format!("exception `{id}` needs a non-empty `{field}`"),
                );
            }
        }
        let expires = match OffsetDateTime::parse(e.expires.get_ref(), &Rfc3339) {
            Ok(t) => Some(SystemTime::from(t)),
            Err(_) => {
                report.error(
                    file,
                    e.expires.span(),
                    format!(
                        "expiry `{}` of exception `{id}` must be an RFC 3339 time such as `2030-01-31T18:00:00Z`",
                        e.expires.get_ref()
                    ),
                );
                None
            }
        };
        if let Some(expires) = expires {
            if expires <= options.now {
                report.warn(
                    file,
                    e.expires.span(),
                    format!(
                        "exception `{id}` expired at {}; it grants nothing",
                        rfc3339(expires)
                    ),
                );
            } else if expires
                .duration_since(options.now)
                .is_ok_and(|ahead| ahead > options.max_exception)
            {
                report.error(
                    file,
                    e.expires.span(),
                    format!(
                        "exception `{id}` expires more than {} ahead (at most {})",
                        humantime::format_duration(options.max_exception),
                        rfc3339(options.now + options.max_exception)
                    ),
                );
            }
        }
        if let (Some(agent), Some(expires)) = (agent, expires) {
            out.push(Exception {
                id: id.clone(),
                agent,
                scopes,
                reason: e.reason.get_ref().clone(),
                approved_by: e.approved_by.get_ref().clone(),
                ticket: e.ticket.as_ref().map(|t| t.get_ref().clone()),
                expires,
            });
        }
    }
    out
}

pub(super) fn compile_roles(
    report: &mut Report<'_>,
    roles: Option<&(usize, Spanned<RolesFile>)>,
) -> Roles {
    let Some((file, roles)) = roles else {
        return Roles::default();
    };
    let mut parse = |names: &[Spanned<String>]| {
        names
            .iter()
            .filter_map(|n| match PeerName::parse_policy(n.get_ref()) {
                Ok(peer) => Some(peer),
                Err(e) => {
                    report.error(*file, n.span(), e.to_string());
                    None
                }
            })
            .collect::<Vec<_>>()
    };
    Roles {
        admins: parse(&roles.get_ref().admins),
        auditors: parse(&roles.get_ref().auditors),
    }
}

#[cfg(test)]
#[path = "exception_tests.rs"]
mod tests;
