//! Live connections that an override or a policy reload can end: tunnels,
//! intercepted connections, WebSockets and kept-alive agent connections.
//!
//! Each registers what it was allowed as (agent, certificate serial, scope,
//! `CONNECT` target) and gets a [`Membership`]; [`Live::sweep`], run every
//! [`SWEEP_EVERY`], checks every member against the overrides and the
//! policy in force and ends those no longer allowed, with a reason for the
//! outcome record (`ended-by-override` or `ended-by-policy`).
//!
//! Invariants: a sweep reads no files and makes no connection; a member is
//! ended at most once; a membership leaves the set when dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::error::Reason;
use crate::identity::PeerName;
use crate::overrides::Overrides;
use crate::policy::{Call, Permitted, Policy, Target, decide};

/// How often live connections are checked; an override or a reload ends
/// what it withdraws within this time and a little.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// What a live connection was allowed as.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// The names of the peer's certificate (empty for a token peer).
    pub names: Vec<PeerName>,
    /// The agent, when known at registration (token peers, tunnels).
    pub agent: Option<String>,
    /// The certificate serial, lowercase hex.
    pub serial: Option<String>,
    /// The scope the connection was allowed in.
    pub scope: Option<String>,
    /// A `CONNECT` target, decided again after a reload.
    pub connect: Option<(String, u16)>,
    /// The SHA-256 of the proxy key the connection was opened with: it
    /// ends when the key leaves the policy, expires or is revoked.
    pub proxy_key: Option<[u8; 32]>,
}

/// Why a live connection was ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// `ended-by-override` or `ended-by-policy`.
    pub reason: Reason,
    /// What withdrew it (the override id, or the policy digest and why).
    pub detail: String,
}

#[derive(Debug)]
struct Entry {
    subject: Subject,
    digest: String,
    since: SystemTime,
    end: watch::Sender<Option<Ended>>,
}

/// The set of live connections.
#[derive(Debug, Default)]
pub struct Live {
    entries: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

/// One connection's place in the set; leaves it when dropped.
#[derive(Debug)]
pub struct Membership {
    id: u64,
    live: Arc<Live>,
    ended: watch::Receiver<Option<Ended>>,
}

impl Live {
    /// Registers a connection allowed under the policy with `digest`.
    pub fn register(self: &Arc<Self>, subject: Subject, digest: &str) -> Membership {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (end, ended) = watch::channel(None);
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(
                id,
                Entry {
                    subject,
                    digest: digest.to_owned(),
                    since: whole_seconds(SystemTime::now()),
                    end,
                },
            );
        }
        Membership {
            id,
            live: Arc::clone(self),
            ended,
        }
    }

    /// Connections in the set now.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every member that `overrides` or `policy` no longer allows;
    /// returns how many were ended.
    pub fn sweep(&self, policy: &Arc<Policy>, overrides: &Overrides, now: SystemTime) -> usize {
        let Ok(mut entries) = self.entries.lock() else {
            return 0;
        };
        let mut ended = 0;
        entries.retain(|_, entry| match withdrawn(entry, policy, overrides, now) {
            Some(why) => {
                tracing::info!(reason = %why.reason, detail = %why.detail, "live connection ended");
                entry.end.send_replace(Some(why));
                ended += 1;
                false
            }
            None => {
                entry.digest = policy.digest().to_owned();
                true
            }
        });
        ended
    }
}

fn withdrawn(
    entry: &Entry,
    policy: &Arc<Policy>,
    overrides: &Overrides,
    now: SystemTime,
) -> Option<Ended> {
    let s = &entry.subject;
    let agent_id = match &s.agent {
        Some(name) => policy.agents().iter().position(|a| &a.name == name),
        None => policy.agent_for(&s.names),
    };
    if agent_id.is_none() && s.agent.is_none() && s.names.is_empty() {
        // Not yet named (a token connection before its first request).
        return None;
    }
    let agent = agent_id.map(|id| policy.agent(id));
    let agent_name = agent.map(|a| a.name.as_str()).or(s.agent.as_deref());
    if let Some(sha256) = &s.proxy_key {
        // Checked on every sweep: a key's expiry needs no reload.
        let ended = match policy.proxy_key(sha256) {
            None => Some((
                Reason::EndedByPolicy,
                "proxy key no longer in policy".to_owned(),
            )),
            Some((_, key)) if !key.valid_at(now) => Some((
                Reason::EndedByPolicy,
                format!("proxy key `{}` expired", key.id),
            )),
            Some((_, key)) => overrides.revoking_proxy_key(&key.id, now).map(|o| {
                (
                    Reason::EndedByOverride,
                    format!("{} by override {}", o.kind.reason(), o.id),
                )
            }),
        };
        if let Some((reason, detail)) = ended {
            return Some(Ended { reason, detail });
        }
    }
    // Only an override newer than the connection ends it: one opened
    // after the override has each of its requests refused instead.
    if let Some(o) = overrides.refusing(agent_name, s.serial.as_deref(), s.scope.as_deref(), now)
        && o.created >= entry.since
    {
        return Some(Ended {
            reason: Reason::EndedByOverride,
            detail: format!("{} by override {}", o.kind.reason(), o.id),
        });
    }
    if entry.digest == policy.digest() {
        return None;
    }
    let by_policy = |why: String| {
        Some(Ended {
            reason: Reason::EndedByPolicy,
            detail: format!("{why} under policy {}", policy.digest()),
        })
    };
    let Some(agent) = agent else {
        return by_policy("agent no longer in policy".into());
    };
    if let Some(scope) = &s.scope {
        let granted = policy
            .scope_named(scope)
            .is_some_and(|id| agent.scopes.contains(&id));
        if !granted {
            return by_policy(format!("scope `{scope}` no longer granted"));
        }
    }
    if let Some((host, port)) = &s.connect {
        let names = if s.names.is_empty() {
            &agent.identities
        } else {
            &s.names
        };
        let call = Call {
            peer: names,
            target: Target::Connect { host, port: *port },
            method: "CONNECT",
            path: "/",
            aws: None,
            now,
        };
        let decision = decide(&call, policy);
        if Permitted::new(policy, &decision).is_none() {
            return by_policy(format!("connect to `{host}` now {}", decision.reason()));
        }
    }
    None
}

/// `at`, to the second: overrides record their creation in whole seconds,
/// and a connection opened in the same second as an override counts as
/// older than it.
fn whole_seconds(at: SystemTime) -> SystemTime {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

impl Membership {
    /// Names the agent of a connection that learns it per request (the
    /// token listener): overrides for that agent now reach it.
    pub fn name_agent(&self, agent: &str) {
        if let Ok(mut entries) = self.live.entries.lock()
            && let Some(entry) = entries.get_mut(&self.id)
            && entry.subject.agent.as_deref() != Some(agent)
        {
            entry.subject.agent = Some(agent.to_owned());
        }
    }

    /// Names the proxy key a token-listener connection proved its agent
    /// with: its revocation, expiry or removal now ends the connection.
    pub fn name_proxy_key(&self, sha256: [u8; 32]) {
        if let Ok(mut entries) = self.live.entries.lock()
            && let Some(entry) = entries.get_mut(&self.id)
        {
            entry.subject.proxy_key = Some(sha256);
        }
    }

    /// A future that resolves when the connection must end, independent of
    /// this membership's borrow.
    pub fn until(&self) -> impl std::future::Future<Output = Ended> + Send + 'static {
        let mut ended = self.ended.clone();
        async move {
            let got = match ended.wait_for(Option::is_some).await {
                Ok(got) => got.clone(),
                Err(_) => None,
            };
            match got {
                Some(got) => got,
                None => std::future::pending().await,
            }
        }
    }

    /// Resolves when the connection must end, with why.
    pub async fn ended(&mut self) -> Ended {
        let ended = match self.ended.wait_for(Option::is_some).await {
            Ok(ended) => ended.clone(),
            Err(_) => None,
        };
        match ended {
            Some(ended) => ended,
            // The set is gone (shutdown): nothing will end this one.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Ok(mut entries) = self.live.entries.lock() {
            entries.remove(&self.id);
        }
    }
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
