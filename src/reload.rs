//! Hot reload and the clock of governance: the policy directory is loaded
//! again on a file change (notify), on SIGHUP and on the admin API's
//! `POST /v1/policy/reload`; exceptions and overrides lapse by themselves.
//!
//! Invariants:
//! - Load, validate everything, then swap: a directory that does not
//!   validate never replaces the policy in force. It is a `policy-rejected`
//!   record, `clawgate_policy_valid` drops to 0 and `policy status` reports
//!   the drift until the files validate again.
//! - A new policy is put in force only once its `policy` record is durable.
//! - Calls already in flight finish under the policy they started with (the
//!   pipeline reads the policy once per call).
//! - A reload whose files have the digest in force changes nothing and
//!   records nothing, whatever triggered it.
//! - Lapses are recorded by [`crate::lapse`], woken here at each expiry.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::audit::{DecisionRecord, kind};
use crate::error::Reason;
use crate::pipeline::Pipeline;
use crate::policy::{self, LoadOptions, Policy};

/// How environment variables are looked up (the process environment in
/// production; tests and the demo pass their own).
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How long after the last file event the directory is loaded, so that an
/// editor's burst of writes is one reload.
const SETTLE: Duration = Duration::from_millis(300);

/// The longest the lapse timer sleeps without looking again.
const LAPSE_POLL: Duration = Duration::from_secs(1);

/// What reloading knows about the files on disk.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// Whether the files validated at the last attempt.
    pub valid: bool,
    /// The problems of the last attempt, when it failed.
    pub error: Option<String>,
    /// When the policy in force was put in force.
    pub loaded_at: SystemTime,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The digest in force now.
    pub digest: String,
    /// Whether a new policy was put in force (false: the files hold the
    /// policy already in force).
    pub changed: bool,
}

/// Loads the policy directory again and swaps it in.
pub struct Reloader {
    dir: PathBuf,
    env: Env,
    max_exception: Duration,
    pipeline: Arc<Pipeline>,
    status: Mutex<ReloadStatus>,
    serial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for the directory the pipeline's policy came from.
    pub fn new(dir: PathBuf, env: Env, max_exception: Duration, pipeline: Arc<Pipeline>) -> Self {
        Reloader {
            dir,
            env,
            max_exception,
            pipeline,
            status: Mutex::new(ReloadStatus {
                valid: true,
                error: None,
                loaded_at: SystemTime::now(),
            }),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// The policy directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The state of the last load.
    pub fn status(&self) -> ReloadStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut ReloadStatus)) {
        match self.status.lock() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Loads the directory; on success puts it in force when its digest
    /// differs from the policy in force (a `policy-loaded` record), on
    /// failure keeps the policy in force (a `policy-rejected` record).
    /// Answers the digest in force and whether it changed, or the problems.
    pub async fn reload(&self, trigger: &str) -> Result<Reloaded, String> {
        let _one_at_a_time = self.serial.lock().await;
        // The options borrow the environment, which is not `Sync`: they must
        // not live across an await.
        let loaded = {
            let options = LoadOptions {
                env: &*self.env,
                now: SystemTime::now(),
                max_exception: self.max_exception,
            };
            policy::load(&self.dir, &options)
        };
        let current = self.pipeline.policy();
        match loaded {
            Ok((policy, warnings)) => {
                for warning in &warnings {
                    tracing::warn!("{warning}");
                }
                // The same digest is the same policy: nothing is put in
                // force and nothing is recorded, whatever asked.
                if policy.digest() == current.digest() {
                    if !self.status().valid {
                        tracing::info!(trigger, "policy files validate again, as in force");
                    }
                    self.set_status(|s| {
                        s.valid = true;
                        s.error = None;
                    });
                    return Ok(Reloaded {
                        digest: policy.digest().to_owned(),
                        changed: false,
                    });
                }
                let mut record = policy_record(&policy);
                record.detail = record.detail.map(|d| format!("{d}; on {trigger}"));
                if let Err(e) = self.pipeline.audit().append_durable(record).await {
                    tracing::error!(error = %e, "policy load not recorded; keeping the policy in force");
                    return Err(format!("the load could not be recorded: {e}"));
                }
                let digest = policy.digest().to_owned();
                tracing::info!(digest = %digest, trigger, "policy loaded: {}", policy.summary());
                self.pipeline.set_policy(Arc::new(policy));
                self.pipeline.metrics().reload(true);
                self.set_status(|s| {
                    s.valid = true;
                    s.error = None;
                    s.loaded_at = SystemTime::now();
                });
                Ok(Reloaded {
                    digest,
                    changed: true,
                })
            }
            Err(e) => {
                let text = e.to_string();
                tracing::error!(
                    trigger,
                    "policy refused; the last good policy stays in force:\n{text}"
                );
                let mut record =
                    DecisionRecord::new(kind::POLICY, &uuid::Uuid::now_v7().to_string());
                record.reason = Reason::PolicyRejected.code().to_owned();
                // The digest of the policy that stays in force.
                record.policy_digest = Some(current.digest().to_owned());
                record.detail = Some(format!(
                    "on {trigger}: {}",
                    truncate(&text.replace('\n', "; "), 4000)
                ));
                self.pipeline.audit().append(record);
                self.pipeline.metrics().reload(false);
                self.set_status(|s| {
                    s.valid = false;
                    s.error = Some(text.clone());
                });
                Err(text)
            }
        }
    }
}

/// The `policy` record of a policy put in force: digest and files.
pub fn policy_record(policy: &Policy) -> DecisionRecord {
    let mut record = DecisionRecord::new(kind::POLICY, &uuid::Uuid::now_v7().to_string());
    record.reason = Reason::PolicyLoaded.code().to_owned();
    record.policy_digest = Some(policy.digest().to_owned());
    let files: Vec<String> = policy
        .files()
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    record.detail = Some(format!("{}; files: {}", policy.summary(), files.join(", ")));
    record
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What wakes the reload task, armed before `serve` reports ready: a file
/// change written, or a SIGHUP sent, the moment after start-up is never
/// missed (nor, for SIGHUP, left to its default action of ending the process).
pub struct Triggers {
    // The watcher must live as long as the task that reads `events`.
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::Receiver<()>,
    hangup: Hangup,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers").finish_non_exhaustive()
    }
}

impl Triggers {
    /// Watches `dir` (when `watch_files`) and installs the SIGHUP handler.
    /// Needs a running Tokio runtime.
    pub fn arm(dir: &std::path::Path, watch_files: bool) -> Triggers {
        let (events_tx, events) = mpsc::channel::<()>(16);
        let watcher = if watch_files {
            watch_dir(dir, events_tx)
        } else {
            None
        };
        Triggers {
            _watcher: watcher,
            events,
            hangup: hangup_signal(),
        }
    }
}

/// Runs until `stop`: reloads on file changes (when armed to watch) and on
/// SIGHUP, and records each lapse of an exception or override at its expiry.
pub async fn run(reloader: Arc<Reloader>, triggers: Triggers, mut stop: watch::Receiver<bool>) {
    let Triggers {
        _watcher,
        mut events,
        mut hangup,
    } = triggers;
    let pipeline = Arc::clone(&reloader.pipeline);
    loop {
        // Wake at the next expiry, so its lapse is recorded at that moment;
        // at least once a second to notice what changed meanwhile.
        let now = SystemTime::now();
        let wait = pipeline.lapses().next_due().map_or(LAPSE_POLL, |due| {
            due.duration_since(now).unwrap_or_default().min(LAPSE_POLL)
        });
        tokio::select! {
            Some(()) = events.recv() => {
                // Let a burst of writes settle, then load once.
                tokio::time::sleep(SETTLE).await;
                while events.try_recv().is_ok() {}
                let _ = reloader.reload("file change").await;
            }
            Some(()) = recv_hangup(&mut hangup) => {
                let _ = reloader.reload("SIGHUP").await;
            }
            () = tokio::time::sleep(wait) => pipeline.settle_lapses(SystemTime::now()),
            _ = stop.changed() => break,
        }
    }
}

fn watch_dir(dir: &std::path::Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the policy directory; reload with SIGHUP");
            return None;
        }
    };
    if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, "cannot watch the policy directory; reload with SIGHUP");
        return None;
    }
    Some(watcher)
}

/// SIGHUP where the platform has it; the certificate reload listens too.
#[cfg(unix)]
pub(crate) type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub(crate) type Hangup = Option<()>;

#[cfg(unix)]
pub(crate) fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
pub(crate) fn hangup_signal() -> Hangup {
    None
}

#[cfg(unix)]
pub(crate) async fn recv_hangup(signal: &mut Hangup) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
pub(crate) async fn recv_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
