//! Emergency overrides: an admin isolates an agent, revokes a certificate
//! serial or disables a scope at runtime, without editing policy.
//!
//! Invariants:
//! - Every override has a reason and an expiry at most [`MAX_OVERRIDE`]
//!   ahead; it lapses by itself.
//! - Overrides are stored in SQLite (a table beside the decision log), or on
//!   a fleet in PostgreSQL (see `postgres`), before they take effect, so they survive a restart; the in-memory list is what
//!   calls read, swapped whole on every change.
//! - Every change (created, removed, lapsed) is a record; the caller writes
//!   it with [`Override::record`].
//! - A target is one the policy in force defines, unless the request says
//!   `force`; a serial is hex and kept in one form ([`normalise_serial`]),
//!   the form a peer's serial is compared in ([`peer_serial`]).

mod postgres;
mod serial;

pub use serial::{normalise_serial, peer_serial};

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::audit::{DecisionRecord, kind};
use crate::error::Reason;
use crate::policy::rfc3339;

/// The longest an override may last.
pub const MAX_OVERRIDE: Duration = Duration::from_secs(48 * 3600);

/// What an override does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverrideKind {
    /// Refuse every call of an agent (target: the agent name).
    IsolateAgent,
    /// Refuse every call with a certificate serial (target: lowercase hex).
    RevokeSerial,
    /// Refuse every call in a scope (target: the scope name).
    DisableScope,
    /// Refuse every call made with a proxy key (target: the key's id).
    RevokeProxyKey,
}

impl OverrideKind {
    /// The kebab-case name used in the API, the table and records.
    pub fn as_str(self) -> &'static str {
        match self {
            OverrideKind::IsolateAgent => "isolate-agent",
            OverrideKind::RevokeSerial => "revoke-serial",
            OverrideKind::DisableScope => "disable-scope",
            OverrideKind::RevokeProxyKey => "revoke-proxy-key",
        }
    }

    fn parse(text: &str) -> Option<OverrideKind> {
        [
            OverrideKind::IsolateAgent,
            OverrideKind::RevokeSerial,
            OverrideKind::DisableScope,
            OverrideKind::RevokeProxyKey,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }

    /// The refusal a matching call gets.
    pub fn reason(self) -> Reason {
        match self {
            OverrideKind::IsolateAgent => Reason::AgentIsolated,
            OverrideKind::RevokeSerial => Reason::SerialRevoked,
            OverrideKind::DisableScope => Reason::ScopeDisabled,
            OverrideKind::RevokeProxyKey => Reason::ProxyKeyRevoked,
        }
    }
}

/// One override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Its id.
    pub id: String,
    /// What it does.
    pub kind: OverrideKind,
    /// The agent, serial or scope it applies to.
    pub target: String,
    /// Why.
    pub reason: String,
    /// The admin who created it (the first name of their certificate).
    pub created_by: String,
    /// When it was created.
    pub created: SystemTime,
    /// When it lapses.
    pub expires: SystemTime,
}

impl Override {
    /// Whether it is still in force at `now`.
    pub fn active_at(&self, now: SystemTime) -> bool {
        now < self.expires
    }

    /// The JSON form the admin API answers with.
    pub fn to_json(&self, now: SystemTime) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "kind": self.kind.as_str(),
            "target": self.target,
            "reason": self.reason,
            "created_by": self.created_by,
            "created": rfc3339(self.created),
            "expires": rfc3339(self.expires),
            "expires_in_seconds": self.expires.duration_since(now).map_or(0, |d| d.as_secs()),
        })
    }

    /// What it does, in a sentence: the answer to "what is now in force".
    pub fn effect(&self) -> String {
        let until = rfc3339(self.expires);
        match self.kind {
            OverrideKind::IsolateAgent => format!(
                "every call and credential vend of agent `{}` is refused with agent-isolated until {until}",
                self.target
            ),
            OverrideKind::RevokeSerial => format!(
                "every call, credential vend and admin api request made with a certificate of serial `{}` is refused with serial-revoked until {until}",
                self.target
            ),
            OverrideKind::DisableScope => format!(
                "every call and credential vend in scope `{}` is refused with scope-disabled until {until}",
                self.target
            ),
            OverrideKind::RevokeProxyKey => format!(
                "every call and credential vend made with proxy key `{}` is refused with proxy-key-revoked until {until}",
                self.target
            ),
        }
    }

    /// The record of a change to this override (`created`, `removed`, `lapsed`).
    pub fn record(&self, change: &str, by: Option<&str>) -> DecisionRecord {
        let mut record = DecisionRecord::new(kind::OVERRIDE, &self.id);
        record.reason = Reason::OverrideChanged.code().to_owned();
        match self.kind {
            OverrideKind::IsolateAgent => record.agent = Some(self.target.clone()),
            OverrideKind::DisableScope => record.scope = Some(self.target.clone()),
            OverrideKind::RevokeSerial | OverrideKind::RevokeProxyKey => {}
        }
        let by = by.map(|b| format!(" by {b}")).unwrap_or_default();
        record.detail = Some(format!(
            "{change}{by}: {} `{}` until {}; reason: {}",
            self.kind.as_str(),
            self.target,
            rfc3339(self.expires),
            self.reason
        ));
        record
    }
}

/// Why an override could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    /// The database failed.
    #[error("override store: {0}")]
    Store(#[from] rusqlite::Error),
    /// The request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The fleet's store (PostgreSQL) failed.
    #[error("shared override store: {0}")]
    Shared(String),
}

/// A request to create an override.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOverride {
    /// `isolate-agent`, `revoke-serial`, `disable-scope` or `revoke-proxy-key`.
    pub kind: String,
    /// The agent, serial or scope.
    pub target: String,
    /// Why; required.
    pub reason: String,
    /// A duration (`2h`, `30m`); required, at most 48 hours.
    pub expires_in: String,
    /// Accept an agent or scope the policy in force does not define (one
    /// about to be added); the creation record says it was forced.
    #[serde(default)]
    pub force: bool,
}

/// What an override may name, from the policy in force.
pub trait Targets {
    /// Whether the policy defines an agent of this name.
    fn has_agent(&self, name: &str) -> bool;
    /// Whether the policy defines a scope of this name.
    fn has_scope(&self, name: &str) -> bool;
    /// Whether the policy defines a proxy key with this id.
    fn has_proxy_key(&self, id: &str) -> bool;
}

impl Targets for crate::policy::Policy {
    fn has_agent(&self, name: &str) -> bool {
        self.agents().iter().any(|a| a.name == name)
    }

    fn has_scope(&self, name: &str) -> bool {
        self.scope_named(name).is_some()
    }

    fn has_proxy_key(&self, id: &str) -> bool {
        self.agents()
            .iter()
            .any(|a| a.proxy_keys.iter().any(|k| k.id == id))
    }
}

/// A created override and how it came about.
#[derive(Debug, Clone)]
pub struct Created {
    /// The override, in force.
    pub created: Override,
    /// The target as the request wrote it (a serial before normalising).
    pub target_as_given: String,
    /// Whether `force` let through a target the policy does not define.
    pub forced: bool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS overrides (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL
);";

/// The overrides in force, and their store.
#[derive(Debug)]
pub struct Overrides {
    db: Store,
    active: Arc<ArcSwap<Vec<Override>>>,
    /// Set when a fleet's store swapped the list in (another replica's
    /// change): the next settle looks again for lapses due.
    moved: Arc<AtomicBool>,
}

/// Where overrides are kept: beside the SQLite decision log, or in a
/// fleet's PostgreSQL store (shared, see [`postgres`]).
#[derive(Debug)]
enum Store {
    Sqlite(Mutex<Connection>),
    Postgres(postgres::PgOverrides),
}

impl Overrides {
    /// Opens (or creates) the store in the database at `path` and reads every
    /// override that has not been removed or recorded as lapsed.
    pub fn open(path: &Path) -> Result<Overrides, OverrideError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let active = read_all(&conn)?;
        Ok(Overrides {
            db: Store::Sqlite(Mutex::new(conn)),
            active: Arc::new(ArcSwap::from_pointee(active)),
            moved: Arc::default(),
        })
    }

    /// Opens the fleet's overrides on PostgreSQL: read now, then kept
    /// current by NOTIFY and a poll every second. `replica` names this
    /// process in the count of replicas an override is in force on.
    pub fn open_shared(
        target: crate::audit::postgres::PgTarget,
        replica: String,
    ) -> Result<Overrides, OverrideError> {
        let active = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let moved = Arc::new(AtomicBool::new(true));
        let store =
            postgres::PgOverrides::start(target, replica, Arc::clone(&active), Arc::clone(&moved))?;
        Ok(Overrides {
            db: Store::Postgres(store),
            active,
            moved,
        })
    }

    /// Whether the list was swapped in by the fleet's store since the last
    /// call (one relaxed load when it was not).
    pub fn moved(&self) -> bool {
        self.moved.load(Ordering::Relaxed) && self.moved.swap(false, Ordering::AcqRel)
    }

    /// The JSON form of `o` for the admin API; on a fleet's store, with
    /// how many live replicas have it in force.
    pub fn describe(&self, o: &Override, now: SystemTime) -> serde_json::Value {
        let mut value = o.to_json(now);
        if let (Store::Postgres(store), Some(map)) = (&self.db, value.as_object_mut()) {
            let (in_force, live) = postgres::in_force(&store.view.load(), &o.id);
            map.insert("in_force_on_replicas".into(), in_force.into());
            map.insert("live_replicas".into(), live.into());
        }
        value
    }

    /// Every override not yet lapsed or removed, whatever `now` says (one
    /// whose expiry passed stays here until [`Overrides::sweep`] records it).
    pub fn all(&self) -> Arc<Vec<Override>> {
        self.active.load_full()
    }

    /// The first override in force at `now` that refuses this call.
    pub fn refusing(
        &self,
        agent: Option<&str>,
        serial: Option<&str>,
        scope: Option<&str>,
        now: SystemTime,
    ) -> Option<Override> {
        let active = self.active.load();
        if active.is_empty() {
            return None;
        }
        active
            .iter()
            .find(|o| {
                o.active_at(now)
                    && match o.kind {
                        OverrideKind::IsolateAgent => agent == Some(o.target.as_str()),
                        OverrideKind::RevokeSerial => {
                            serial.is_some_and(|s| o.target == peer_serial(s))
                        }
                        OverrideKind::DisableScope => scope == Some(o.target.as_str()),
                        // Matched by `revoking_proxy_key`, never here.
                        OverrideKind::RevokeProxyKey => false,
                    }
            })
            .cloned()
    }

    /// The first override in force at `now` that revokes the proxy key `id`.
    pub fn revoking_proxy_key(&self, id: &str, now: SystemTime) -> Option<Override> {
        self.active
            .load()
            .iter()
            .find(|o| o.active_at(now) && o.kind == OverrideKind::RevokeProxyKey && o.target == id)
            .cloned()
    }

    /// Validates and stores a new override; it is in force once
    /// [`Overrides::finish_creation`] says so (at once on SQLite). An
    /// agent or scope must be one `targets` defines, unless `force`; a serial
    /// must be hex and is stored normalised (see [`normalise_serial`]).
    pub fn create(
        &self,
        new: &NewOverride,
        by: &str,
        now: SystemTime,
        targets: &dyn Targets,
    ) -> Result<Created, OverrideError> {
        let kind = OverrideKind::parse(&new.kind).ok_or_else(|| {
            OverrideError::Invalid(format!(
                "kind `{}` must be `isolate-agent`, `revoke-serial`, `disable-scope` or `revoke-proxy-key`",
                new.kind
            ))
        })?;
        if new.target.trim().is_empty() {
            return Err(OverrideError::Invalid("`target` is required".into()));
        }
        if new.reason.trim().is_empty() {
            return Err(OverrideError::Invalid("`reason` is required".into()));
        }
        let expires_in = humantime::parse_duration(&new.expires_in).map_err(|_| {
            OverrideError::Invalid(format!(
                "expires_in `{}` must be a duration such as `2h`",
                new.expires_in
            ))
        })?;
        if expires_in.is_zero() || expires_in > MAX_OVERRIDE {
            return Err(OverrideError::Invalid(format!(
                "expires_in `{}` must be more than zero and at most 48h",
                new.expires_in
            )));
        }
        let given = new.target.trim();
        let (target, forced) = match kind {
            OverrideKind::RevokeSerial => (normalise_serial(given)?, false),
            OverrideKind::IsolateAgent if targets.has_agent(given) => (given.to_owned(), false),
            OverrideKind::DisableScope if targets.has_scope(given) => (given.to_owned(), false),
            OverrideKind::RevokeProxyKey if targets.has_proxy_key(given) => {
                (given.to_owned(), false)
            }
            _ if new.force => (given.to_owned(), true),
            OverrideKind::IsolateAgent => {
                return Err(OverrideError::Invalid(format!(
                    "unknown agent `{given}`: the policy in force defines no such agent (send `\"force\": true` for one about to be added)"
                )));
            }
            OverrideKind::DisableScope => {
                return Err(OverrideError::Invalid(format!(
                    "unknown scope `{given}`: the policy in force defines no such scope (send `\"force\": true` for one about to be added)"
                )));
            }
            OverrideKind::RevokeProxyKey => {
                return Err(OverrideError::Invalid(format!(
                    "unknown proxy key `{given}`: the policy in force defines no proxy key with this id (send `\"force\": true` for one about to be added)"
                )));
            }
        };
        let created = UNIX_EPOCH + Duration::from_secs(secs(now));
        let o = Override {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            target,
            reason: new.reason.trim().to_owned(),
            created_by: by.to_owned(),
            created,
            expires: created + expires_in,
        };
        let db = match &self.db {
            Store::Sqlite(_) => self.lock()?,
            Store::Postgres(store) => {
                let pending = store.prepare(&o)?;
                if let Ok(mut map) = store.pending.lock() {
                    map.insert(o.id.clone(), pending);
                }
                return Ok(Created {
                    created: o,
                    target_as_given: given.to_owned(),
                    forced,
                });
            }
        };
        db.execute(
            "INSERT INTO overrides (id, kind, target, reason, created_by, created, expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                o.id,
                o.kind.as_str(),
                o.target,
                o.reason,
                o.created_by,
                to_i64(secs(o.created)),
                to_i64(secs(o.expires)),
            ],
        )?;
        self.active.store(Arc::new(read_all(&db)?));
        Ok(Created {
            created: o,
            target_as_given: given.to_owned(),
            forced,
        })
    }

    /// Finishes a creation once its record is durable (`recorded`) or could
    /// not be written: on a fleet's store the override was prepared but
    /// not committed, so no replica enforced it before its record; `Ok`
    /// exactly when it is now stored and in force. Without `recorded` it is
    /// taken back.
    pub async fn finish_creation(&self, id: &str, recorded: bool) -> Result<(), OverrideError> {
        match &self.db {
            Store::Postgres(store) => {
                let pending = store.pending.lock().ok().and_then(|mut m| m.remove(id));
                match pending {
                    Some(pending) => pending.finish(recorded).await,
                    None => Err(OverrideError::Shared("no such prepared creation".into())),
                }
            }
            Store::Sqlite(_) if recorded => Ok(()),
            Store::Sqlite(_) => {
                self.remove(id)?;
                Err(OverrideError::Invalid("creation taken back".into()))
            }
        }
    }

    /// Removes an override; `None` when there is no such id. On a fleet's
    /// store the delete is prepared but not committed: it stays in force
    /// until [`Overrides::finish_removal`] says its record is durable.
    pub fn remove(&self, id: &str) -> Result<Option<Override>, OverrideError> {
        let found = self.active.load().iter().find(|o| o.id == id).cloned();
        if found.is_none() {
            return Ok(None);
        }
        if let Store::Postgres(store) = &self.db {
            let Some(pending) = store.prepare_removal(id)? else {
                return Ok(None);
            };
            if let Ok(mut map) = store.pending.lock() {
                map.insert(format!("removal:{id}"), pending);
            }
            return Ok(found);
        }
        let db = self.lock()?;
        db.execute("DELETE FROM overrides WHERE id = ?1", [id])?;
        self.active.store(Arc::new(read_all(&db)?));
        Ok(found)
    }

    /// Finishes a removal once its record is durable (`recorded`) or could
    /// not be written: `Ok` exactly when the override is now out of force.
    /// On a fleet's store, without `recorded` it stays in force; on SQLite
    /// the removal already took.
    pub async fn finish_removal(&self, id: &str, recorded: bool) -> Result<(), OverrideError> {
        match &self.db {
            Store::Postgres(store) => {
                let key = format!("removal:{id}");
                let pending = store.pending.lock().ok().and_then(|mut m| m.remove(&key));
                match pending {
                    Some(pending) => pending.finish(recorded).await,
                    None => Err(OverrideError::Shared("no such prepared removal".into())),
                }
            }
            Store::Sqlite(_) => Ok(()),
        }
    }

    /// Takes out every override whose expiry passed by `now` and returns
    /// them, so that each lapse is recorded once.
    pub fn sweep(&self, now: SystemTime) -> Result<Vec<Override>, OverrideError> {
        let lapsed: Vec<Override> = self
            .active
            .load()
            .iter()
            .filter(|o| !o.active_at(now))
            .cloned()
            .collect();
        if lapsed.is_empty() {
            return Ok(lapsed);
        }
        if let Store::Postgres(store) = &self.db {
            // Only the lapses this replica took out are its to record.
            return store.lapse(lapsed);
        }
        let db = self.lock()?;
        for o in &lapsed {
            db.execute("DELETE FROM overrides WHERE id = ?1", [&o.id])?;
        }
        self.active.store(Arc::new(read_all(&db)?));
        Ok(lapsed)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, OverrideError> {
        match &self.db {
            Store::Sqlite(db) => db
                .lock()
                .map_err(|_| OverrideError::Invalid("override store is unusable".into())),
            Store::Postgres(_) => Err(OverrideError::Invalid(
                "overrides are on the shared store".into(),
            )),
        }
    }
}

fn read_all(conn: &Connection) -> Result<Vec<Override>, OverrideError> {
    let mut statement = conn.prepare(
        "SELECT id, kind, target, reason, created_by, created, expires FROM overrides ORDER BY created, id",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, String>(4)?,
            row.get::<_, i64>(5)?,
            row.get::<_, i64>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, kind, target, reason, created_by, created, expires) = row?;
        let Some(kind) = OverrideKind::parse(&kind) else {
            tracing::warn!(id = %id, "override of unknown kind `{kind}` ignored");
            continue;
        };
        out.push(Override {
            id,
            kind,
            target,
            reason,
            created_by,
            created: at(created),
            expires: at(expires),
        });
    }
    Ok(out)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[path = "overrides_tests.rs"]
mod tests;
