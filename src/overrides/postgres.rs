//! Overrides shared by a fleet, on PostgreSQL.
//!
//! A change writes the row, bumps the one-row version and sends a
//! `NOTIFY` in one transaction. Every replica listens, and also polls the
//! version every second, because a notification sent while a replica was
//! disconnected is lost; either way it reads the whole list and swaps it
//! in. Each poll also records which version this replica has in force, so
//! the admin API can say on how many live replicas an override holds.
//!
//! Invariants:
//! - A lapse is taken out by a `DELETE … RETURNING`: only the replica whose
//!   delete removed the row records it, so it is recorded once in the fleet.
//!   A delete that commits after its caller stopped waiting is still owed to
//!   the log: the next sweep returns it.
//! - A creation is two-phase: the row is written in a transaction that is
//!   committed only once the caller says its creation record is durable, so
//!   no replica enforces an override before that record exists. A prepare
//!   that misses its deadline is rolled back (the session is dropped before
//!   `COMMIT` was ever sent); once `COMMIT` is sent, the caller waits for its
//!   real outcome, and a lost answer is settled by reading the row back.
//! - A removal is two-phase too: the row is deleted in a transaction
//!   committed only once the caller's removal record is durable, so no
//!   override is out of force without its record.
//! - All database work runs on one thread with its own runtime; callers
//!   (the admin API, the sweep) wait for its answer, as they wait for
//!   SQLite's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use super::{Override, OverrideError, OverrideKind, at, secs, to_i64};
use crate::audit::postgres::PgTarget;

/// How often the version is polled (and this replica's heartbeat sent).
const POLL: Duration = Duration::from_secs(1);
/// A replica whose heartbeat is older than this is not counted.
const LIVE_SECS: f64 = 5.0;
/// How long a caller waits for the store.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// How long the worker waits for a prepared creation's go-ahead (the
/// caller's durable creation record) before rolling it back.
const GO_WITHIN: Duration = Duration::from_secs(30);
const CHANNEL: &str = "clawgate_overrides";

type Answer<T> = std::sync::mpsc::SyncSender<Result<T, OverrideError>>;

enum Request {
    Create(Box<Override>, Answer<()>, Commit),
    Remove(String, Answer<bool>, Commit),
    Lapse(Vec<Override>, Answer<()>),
}

/// The second phase of a creation: the caller's go-ahead (dropped or
/// `false`: roll back) and the real outcome of the commit.
struct Commit {
    go: oneshot::Receiver<bool>,
    done: oneshot::Sender<Result<(), OverrideError>>,
}

/// A creation prepared in an open transaction, waiting for its go-ahead.
#[derive(Debug)]
pub(super) struct Pending {
    go: oneshot::Sender<bool>,
    done: oneshot::Receiver<Result<(), OverrideError>>,
}

impl Pending {
    /// Commits (`go`) or rolls back the creation and returns the real
    /// outcome: `Ok` exactly when the override is stored and in force.
    pub(super) async fn finish(self, go: bool) -> Result<(), OverrideError> {
        let _ = self.go.send(go);
        if !go {
            return Err(OverrideError::Shared("change taken back".into()));
        }
        self.done.await.unwrap_or_else(|_| {
            Err(OverrideError::Shared(
                "the override store has stopped".into(),
            ))
        })
    }
}

/// The fleet's view: versions and live replicas.
#[derive(Debug, Default)]
pub(super) struct FleetView {
    /// The version at which each override was created.
    pub(super) created_at: HashMap<String, i64>,
    /// The version each live replica has in force.
    pub(super) live: Vec<i64>,
}

/// The handle the rest of clawgate holds.
#[derive(Debug)]
pub(super) struct PgOverrides {
    tx: mpsc::UnboundedSender<Request>,
    pub(super) view: Arc<ArcSwap<FleetView>>,
    /// Lapses this replica's deletes took out that are not recorded yet.
    owed: Arc<Mutex<Vec<Override>>>,
    /// Creations (by id) and removals (by `removal:` id) prepared and
    /// waiting for their record.
    pub(super) pending: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

fn db(e: tokio_postgres::Error) -> OverrideError {
    OverrideError::Shared(crate::audit::postgres::describe(&e))
}

impl PgOverrides {
    /// Connects, reads every override into `active`, and starts the thread
    /// that keeps it current.
    pub(super) fn start(
        target: PgTarget,
        replica: String,
        active: Arc<ArcSwap<Vec<Override>>>,
        moved: Arc<AtomicBool>,
    ) -> Result<PgOverrides, OverrideError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let view = Arc::new(ArcSwap::from_pointee(FleetView::default()));
        let owed = Arc::default();
        let (ready, started) = std::sync::mpsc::sync_channel(1);
        let worker = Worker {
            target,
            replica,
            active,
            view: Arc::clone(&view),
            moved,
            owed: Arc::clone(&owed),
            session: None,
            version: -1,
        };
        std::thread::Builder::new()
            .name("clawgate-overrides".into())
            .spawn(move || worker.run(rx, ready))
            .map_err(|e| OverrideError::Shared(format!("cannot start: {e}")))?;
        started
            .recv_timeout(ANSWER_WITHIN)
            .map_err(|_| OverrideError::Shared("the override store did not answer".into()))??;
        Ok(PgOverrides {
            tx,
            view,
            owed,
            pending: Mutex::default(),
        })
    }

    fn ask<T>(&self, make: impl FnOnce(Answer<T>) -> Request) -> Result<T, OverrideError> {
        let (answer, wait) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send(make(answer))
            .map_err(|_| OverrideError::Shared("the override store has stopped".into()))?;
        wait.recv_timeout(ANSWER_WITHIN)
            .map_err(|_| OverrideError::Shared("the override store did not answer".into()))?
    }

    /// Writes `o` in a transaction left open: nothing is in force until
    /// [`Pending::finish`] says go. An error here means nothing was stored.
    pub(super) fn prepare(&self, o: &Override) -> Result<Pending, OverrideError> {
        let (go_tx, go) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        self.ask(|a| Request::Create(Box::new(o.clone()), a, Commit { go, done }))?;
        Ok(Pending {
            go: go_tx,
            done: done_rx,
        })
    }

    /// Deletes `id` in a transaction left open: it stays in force until
    /// [`Pending::finish`] says go. `None` when there is no such row (and
    /// nothing was changed); an error means nothing was removed.
    pub(super) fn prepare_removal(&self, id: &str) -> Result<Option<Pending>, OverrideError> {
        let (go_tx, go) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        let found = self.ask(|a| Request::Remove(id.to_owned(), a, Commit { go, done }))?;
        Ok(found.then_some(Pending {
            go: go_tx,
            done: done_rx,
        }))
    }

    /// Deletes the lapsed overrides and returns those this replica took out
    /// (another replica may have been first), with any that an earlier
    /// sweep's delete took out after that sweep stopped waiting.
    pub(super) fn lapse(&self, lapsed: Vec<Override>) -> Result<Vec<Override>, OverrideError> {
        let asked = self.ask(|a| Request::Lapse(lapsed, a));
        let owed = self
            .owed
            .lock()
            .map(|mut owed| std::mem::take(&mut *owed))
            .unwrap_or_default();
        match asked {
            Err(e) if owed.is_empty() => Err(e),
            _ => Ok(owed),
        }
    }
}

struct Worker {
    target: PgTarget,
    replica: String,
    active: Arc<ArcSwap<Vec<Override>>>,
    view: Arc<ArcSwap<FleetView>>,
    moved: Arc<AtomicBool>,
    owed: Arc<Mutex<Vec<Override>>>,
    session: Option<(Client, mpsc::UnboundedReceiver<()>)>,
    version: i64,
}

impl Worker {
    fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Request>,
        ready: std::sync::mpsc::SyncSender<Result<(), OverrideError>>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = ready.send(Err(OverrideError::Shared(e.to_string())));
                return;
            }
        };
        runtime.block_on(async move {
            let _ = ready.send(self.refresh().await);
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let notified = async {
                    match &mut self.session {
                        Some((_, notes)) => notes.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    request = rx.recv() => match request {
                        Some(request) => self.handle(request).await,
                        None => return,
                    },
                    note = notified => {
                        if note.is_none() {
                            self.session = None;
                        }
                        let _ = self.refresh().await;
                    }
                    _ = tick.tick() => {
                        if let Err(e) = self.refresh().await {
                            tracing::warn!(error = %e, "override store unreachable; the last list stays in force");
                        }
                    }
                }
            }
        });
    }

    /// A session listening on the channel, connected if need be.
    async fn client(&mut self) -> Result<&Client, OverrideError> {
        if self.session.is_none() {
            let (notes, heard) = mpsc::unbounded_channel();
            let client = self
                .target
                .open(Some(notes))
                .await
                .map_err(|e| OverrideError::Shared(e.to_string()))?;
            client
                .batch_execute(&format!("SET synchronous_commit TO on; LISTEN {CHANNEL}"))
                .await
                .map_err(db)?;
            self.session = Some((client, heard));
            // Whatever was sent while disconnected is read now.
            self.version = -1;
        }
        match &self.session {
            Some((client, _)) => Ok(client),
            None => Err(OverrideError::Shared("no session".into())),
        }
    }

    /// Reads the list when the version moved, says which version this
    /// replica has, and learns which the others have.
    async fn refresh(&mut self) -> Result<(), OverrideError> {
        let result = self.refresh_once().await;
        if result.is_err() {
            self.session = None;
        }
        result
    }

    async fn refresh_once(&mut self) -> Result<(), OverrideError> {
        let replica = self.replica.clone();
        let known = self.version;
        let client = self.client().await?;
        let version: i64 = client
            .query_one("SELECT version FROM overrides_version WHERE id = 1", &[])
            .await
            .map_err(db)?
            .get(0);
        let mut created_at = None;
        if version != known {
            let rows = client
                .query(
                    "SELECT id, kind, target, reason, created_by, created, expires, version
                     FROM overrides ORDER BY created, id",
                    &[],
                )
                .await
                .map_err(db)?;
            let mut list = Vec::new();
            let mut versions = HashMap::new();
            for row in rows {
                let id: String = row.get(0);
                let kind: String = row.get(1);
                let Some(kind) = OverrideKind::parse(&kind) else {
                    tracing::warn!(id = %id, "override of unknown kind `{kind}` ignored");
                    continue;
                };
                versions.insert(id.clone(), row.get::<_, i64>(7));
                list.push(Override {
                    id,
                    kind,
                    target: row.get(2),
                    reason: row.get(3),
                    created_by: row.get(4),
                    created: at(row.get(5)),
                    expires: at(row.get(6)),
                });
            }
            self.active.store(Arc::new(list));
            self.moved.store(true, Ordering::Release);
            created_at = Some(versions);
        }
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO replicas (replica, version, seen) VALUES ($1, $2, now())
                 ON CONFLICT (replica) DO UPDATE SET version = $2, seen = now()",
                &[&replica, &version],
            )
            .await
            .map_err(db)?;
        let live: Vec<i64> = client
            .query(
                "SELECT version FROM replicas
                 WHERE seen > now() - make_interval(secs => $1)",
                &[&LIVE_SECS],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let created_at = created_at.unwrap_or_else(|| self.view.load().created_at.clone());
        self.view.store(Arc::new(FleetView { created_at, live }));
        self.version = version;
        Ok(())
    }

    /// Does what was asked, rereads the list, then answers: a change is in
    /// force on this replica when its caller hears back.
    async fn handle(&mut self, request: Request) {
        match request {
            Request::Create(o, answer, commit) => self.create(&o, answer, commit).await,
            Request::Remove(id, answer, commit) => self.remove(&id, answer, commit).await,
            Request::Lapse(lapsed, answer) => {
                let ids = lapsed.iter().map(|o| o.id.clone()).collect();
                let result = self.delete(ids).await.map(|gone| {
                    if let Ok(mut owed) = self.owed.lock() {
                        owed.extend(lapsed.into_iter().filter(|o| gone.contains(&o.id)));
                    }
                });
                self.reread().await;
                let _ = answer.send(result);
            }
        }
    }

    async fn reread(&mut self) {
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "override list could not be reread");
        }
    }

    /// Prepares `o` (answering `answer`), waits for the go-ahead, commits
    /// and sends the real outcome to `commit.done`.
    async fn create(&mut self, o: &Override, answer: Answer<()>, commit: Commit) {
        let prepared = tokio::time::timeout(ANSWER_WITHIN, self.prepare(o)).await;
        if self.prepared(prepared, answer).await.is_some() {
            self.finish(&o.id, true, commit).await;
        }
    }

    /// Deletes `id` in an open transaction (answering `answer`: whether
    /// there was such a row), waits for the go-ahead, commits and sends the
    /// real outcome to `commit.done`.
    async fn remove(&mut self, id: &str, answer: Answer<bool>, commit: Commit) {
        let prepared = tokio::time::timeout(ANSWER_WITHIN, self.prepare_delete(id)).await;
        match self.prepared(prepared, answer).await {
            Some(true) => self.finish(id, false, commit).await,
            Some(false) => {
                // Nothing was deleted: end the transaction here.
                let ended = match self.client().await {
                    Ok(client) => client.batch_execute("ROLLBACK").await.map_err(db),
                    Err(e) => Err(e),
                };
                if ended.is_err() {
                    self.session = None;
                }
            }
            None => {}
        }
    }

    /// Answers the first phase; on an error or a missed deadline drops the
    /// session before any `COMMIT`, so the server rolls the transaction
    /// back whenever it gets there. `Some` when prepared.
    async fn prepared<T: Copy>(
        &mut self,
        prepared: Result<Result<T, OverrideError>, tokio::time::error::Elapsed>,
        answer: Answer<T>,
    ) -> Option<T> {
        let prepared = prepared.unwrap_or_else(|_| {
            Err(OverrideError::Shared(
                "the override store did not answer".into(),
            ))
        });
        match prepared {
            Ok(value) => {
                let _ = answer.send(Ok(value));
                Some(value)
            }
            Err(e) => {
                self.session = None;
                let _ = answer.send(Err(e));
                None
            }
        }
    }

    /// Waits for the go-ahead, commits (or rolls back) and sends the real
    /// outcome to `commit.done`; `row` is whether the commit leaves the row.
    async fn finish(&mut self, id: &str, row: bool, commit: Commit) {
        let go = matches!(
            tokio::time::timeout(GO_WITHIN, commit.go).await,
            Ok(Ok(true))
        );
        let result = if go {
            self.commit(id, row).await
        } else {
            self.session = None;
            Err(OverrideError::Shared("change taken back".into()))
        };
        self.reread().await;
        let _ = commit.done.send(result);
    }

    async fn prepare(&mut self, o: &Override) -> Result<(), OverrideError> {
        let client = self.client().await?;
        client.batch_execute("BEGIN").await.map_err(db)?;
        let sql = "
            WITH v AS (UPDATE overrides_version SET version = version + 1 WHERE id = 1
                       RETURNING version),
                 n AS (SELECT pg_notify($8, (SELECT version FROM v)::text))
            INSERT INTO overrides (id, kind, target, reason, created_by, created, expires, version)
            SELECT $1, $2, $3, $4, $5, $6, $7, v.version FROM v, n";
        client
            .execute(
                sql,
                &[
                    &o.id,
                    &o.kind.as_str(),
                    &o.target,
                    &o.reason,
                    &o.created_by,
                    &to_i64(secs(o.created)),
                    &to_i64(secs(o.expires)),
                    &CHANNEL,
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Sends `COMMIT` and waits for its real outcome, however long the
    /// server takes; when the session dies before answering, reads the row
    /// back (reconnecting every second) to learn what happened: the commit
    /// took when the row's presence is `row`.
    async fn commit(&mut self, id: &str, row: bool) -> Result<(), OverrideError> {
        let sent = match self.client().await {
            Ok(client) => client.batch_execute("COMMIT").await,
            Err(e) => return Err(e),
        };
        let lost = match sent {
            Ok(()) => return Ok(()),
            // The server refused it: nothing was committed.
            Err(e) if e.as_db_error().is_some() => {
                self.session = None;
                return Err(db(e));
            }
            Err(e) => e,
        };
        self.session = None;
        tracing::warn!(error = %crate::audit::postgres::describe(&lost), "override commit unacknowledged; reading it back");
        loop {
            let found = async {
                let client = self.client().await?;
                let row = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM overrides WHERE id = $1)",
                        &[&id],
                    )
                    .await
                    .map_err(db)?;
                Ok::<bool, OverrideError>(row.get(0))
            }
            .await;
            match found {
                Ok(found) if found == row => return Ok(()),
                Ok(_) => return Err(OverrideError::Shared("the commit did not take".into())),
                Err(_) => {
                    self.session = None;
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    /// Deletes `id` in a transaction left open; whether there was one.
    async fn prepare_delete(&mut self, id: &str) -> Result<bool, OverrideError> {
        let client = self.client().await?;
        client.batch_execute("BEGIN").await.map_err(db)?;
        let sql = "
            WITH gone AS (DELETE FROM overrides WHERE id = $1 RETURNING id),
                 v AS (UPDATE overrides_version SET version = version + 1
                       WHERE id = 1 AND EXISTS (SELECT 1 FROM gone) RETURNING version),
                 n AS (SELECT pg_notify($2, version::text) FROM v)
            SELECT gone.id FROM gone LEFT JOIN n ON true";
        let rows = client.query(sql, &[&id, &CHANNEL]).await.map_err(db)?;
        Ok(!rows.is_empty())
    }

    /// Deletes `ids`; returns those this call removed.
    async fn delete(&mut self, ids: Vec<String>) -> Result<Vec<String>, OverrideError> {
        let result = async {
            let client = self.client().await?;
            let sql = "
                WITH gone AS (DELETE FROM overrides WHERE id = ANY($1) RETURNING id),
                     v AS (UPDATE overrides_version SET version = version + 1
                           WHERE id = 1 AND EXISTS (SELECT 1 FROM gone) RETURNING version),
                     n AS (SELECT pg_notify($2, version::text) FROM v)
                SELECT gone.id FROM gone LEFT JOIN n ON true";
            let rows = client.query(sql, &[&ids, &CHANNEL]).await.map_err(db)?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        }
        .await;
        if result.is_err() {
            self.session = None;
        }
        result
    }
}

/// On how many live replicas `id` is in force, of how many live.
pub(super) fn in_force(view: &FleetView, id: &str) -> (usize, usize) {
    let live = view.live.len();
    match view.created_at.get(id) {
        Some(v) => (view.live.iter().filter(|seen| *seen >= v).count(), live),
        None => (0, live),
    }
}
