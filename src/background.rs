//! What `serve` runs beside the calls: policy reloads, housekeeping
//! (sweeping withdrawn connections, certificate reloads, suppressed TLS
//! rejections), the stores' tasks (a fleet's checkpoints, retention, the
//! shared limits' heartbeats) and the admin API.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accept::Rejections;
use crate::admin::Admin;
use crate::audit::Source;
use crate::audit::postgres::PgTarget;
use crate::limits::redis::RedisLimits;
use crate::pipeline::Pipeline;
use crate::reload::{self, Reloader, hangup_signal, recv_hangup};
use crate::serve::ServeConfig;
use crate::tls::TlsStore;

/// What runs beside the calls, handed to [`spawn_tasks`].
pub(crate) struct Background {
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) audit_source: Source,
    pub(crate) admin_listener: Option<TcpListener>,
    pub(crate) shared_limits: Option<Arc<RedisLimits>>,
}

/// Starts what runs beside the calls: reloads, housekeeping, the shared
/// store's tasks and the admin API.
pub(crate) fn spawn_tasks(
    config: &ServeConfig,
    pipeline: &Arc<Pipeline>,
    rejections: &Arc<Rejections>,
    tls: &Arc<TlsStore>,
    stopped: &watch::Receiver<bool>,
    background: Background,
) -> Vec<JoinHandle<()>> {
    let Background {
        reloader,
        audit_source,
        admin_listener,
        shared_limits,
    } = background;
    let triggers = reload::Triggers::arm(reloader.dir(), config.watch_policy);
    let mut tasks = vec![
        tokio::spawn(reload::run(
            Arc::clone(&reloader),
            triggers,
            stopped.clone(),
        )),
        tokio::spawn(housekeeping(
            Arc::clone(pipeline),
            Arc::clone(tls),
            Arc::clone(rejections),
            stopped.clone(),
        )),
    ];
    tasks.extend(spawn_store_tasks(config, shared_limits, stopped));
    let chain_health = Arc::new(crate::audit::health::ChainHealth::default());
    if !config.decision_log_off_benchmark_only {
        tasks.push(tokio::spawn(crate::audit::health::watch_chain(
            audit_source.clone(),
            config.chain_check_every,
            Arc::clone(&chain_health),
            stopped.clone(),
        )));
    }
    if let (Some(anchors), crate::audit::Source::Sqlite(log)) = (&config.anchors, &audit_source) {
        tasks.push(tokio::spawn(crate::audit::anchor::write_on_schedule(
            log.clone(),
            anchors.dir.clone(),
            Arc::clone(&anchors.key),
            anchors.every,
            stopped.clone(),
        )));
    }
    if let Some(listener) = admin_listener {
        let admin = Arc::new(Admin {
            pipeline: Arc::clone(pipeline),
            reloader,
            audit_source,
            certs: Some(Arc::clone(tls)),
            chain_health,
        });
        tasks.push(tokio::spawn(crate::admin::serve(
            listener,
            Arc::clone(tls),
            Arc::clone(rejections),
            admin,
            stopped.clone(),
            config.drain,
        )));
    }
    tasks
}

/// The tasks that keep the stores in shape: the fleet's checkpoints,
/// retention and the shared limits' heartbeats.
fn spawn_store_tasks(
    config: &ServeConfig,
    shared_limits: Option<Arc<RedisLimits>>,
    stopped: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let (Some(target), Some(replica)) = (&config.fleet.store, &config.fleet.replica) {
        tasks.push(tokio::spawn(checkpoints(
            target.clone(),
            replica.clone(),
            config.fleet.checkpoint_every,
            stopped.clone(),
        )));
    }
    if let Some(retention) = &config.retention {
        if let Some(target) = &config.fleet.store {
            tasks.push(tokio::spawn(crate::retention::run_store(
                target.clone(),
                retention.clone(),
                stopped.clone(),
            )));
        } else {
            tasks.push(tokio::spawn(crate::retention::run(
                config.audit_path.clone(),
                retention.clone(),
                stopped.clone(),
            )));
        }
    }
    if let Some(store) = shared_limits {
        tasks.push(tokio::spawn(heartbeats(store, stopped.clone())));
    }
    tasks
}

/// Every `every`, tries to append a checkpoint over every chain's head;
/// one replica at a time succeeds (an advisory lock), the others skip.
async fn checkpoints(
    target: PgTarget,
    replica: String,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        match crate::audit::postgres::checkpoint(&target, &replica).await {
            Ok(Some(c)) => tracing::debug!(seq = c.seq, "decision log checkpoint"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "decision log checkpoint failed"),
        }
    }
}

/// Until `stop`: ends live connections that overrides or a reload withdrew
/// (every [`crate::live::SWEEP_EVERY`]), reloads certificates on SIGHUP and
/// when their files change, and records suppressed TLS rejections.
async fn housekeeping(
    pipeline: Arc<Pipeline>,
    tls: Arc<TlsStore>,
    rejections: Arc<Rejections>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sweep = tokio::time::interval(crate::live::SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut files = tokio::time::interval(Duration::from_secs(1));
    let mut flush = tokio::time::interval(Duration::from_secs(5));
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                let now = std::time::SystemTime::now();
                // An override's lapse is recorded before anything relies on it.
                pipeline.settle_lapses(now);
                // So is an approval's expiry, whether or not anyone asks.
                pipeline.record_expired_approvals(&[], now).await;
                let policy = pipeline.policy();
                pipeline.live().sweep(&policy, pipeline.overrides(), now);
            }
            _ = files.tick() => {
                if tls.changed_on_disk() {
                    let _ = tls.reload("file change").await;
                }
            }
            _ = flush.tick() => {
                rejections.flush_suppressed(crate::accept::rejections::now_second().saturating_sub(2));
                rejections.flush_parse();
            }
            Some(()) = recv_hangup(&mut hangup) => {
                let _ = tls.reload("SIGHUP").await;
            }
            _ = stop.changed() => break,
        }
    }
}

/// Every second, tells Redis this replica is live and learns how many are
/// (the `local` failure mode splits each rate by that count).
async fn heartbeats(store: Arc<RedisLimits>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => store.heartbeat().await,
            _ = stopped.changed() => return,
        }
    }
}
