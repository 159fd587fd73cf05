//! Rate limits shared by a fleet, on Redis.
//!
//! One Lua script (GCRA, Redis `TIME` as the clock, run by EVALSHA) checks
//! the agent's limit and the (agent, scope) limit together and spends both
//! only when both pass, so the calls allowed across every replica stay
//! within the limit plus its burst. Both keys carry the agent as a hash tag
//! (`{agent}`), so they sit in one cluster slot.
//!
//! Invariants:
//! - A refusal is cached here until its retry-after: a refused agent that
//!   keeps calling costs Redis nothing.
//! - Redis is never waited on longer than the timeout. After
//!   [`BREAKER_FAILURES`] failures in a row the breaker opens for
//!   [`BREAKER_OPEN`] and Redis is not asked at all; meanwhile the failure
//!   mode decides: `local` (in-process limits at rate ÷ live replicas),
//!   `open` (allow) or `closed` (refuse).
//! - No failure hands the fleet a fresh budget. The `local` fallback starts
//!   every limit empty (it refills at the replica's share of the rate, with
//!   no burst), and starts afresh at each failure. Redis keeps an epoch
//!   marker; when it is gone while this replica knew one (Redis restarted
//!   and lost its data), the new epoch is marked as a loss and every limit
//!   Redis no longer holds counts as spent at that moment. After any failed
//!   round trip the epoch is checked before the next limit is.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::redis_conn::RedisTarget;
use super::{Limited, Limits, Rate};

/// Failures in a row that open the breaker.
pub const BREAKER_FAILURES: u32 = 3;
/// How long an open breaker keeps Redis out of the call path.
pub const BREAKER_OPEN: Duration = Duration::from_secs(5);
/// How long a replica counts as live after its last heartbeat.
const LIVE_FOR_MS: u64 = 5_000;
/// How long one connection attempt to Redis may take (outside the call path:
/// a call waits `timeout` at most, the attempt goes on for the next call).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a heartbeat may wait (it is not on the call path).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// The GCRA script: both keys checked, both spent only if both pass.
pub const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next = {}
local worst, which = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local held = redis.call('GET', KEYS[i])
  local tat = now
  if held then tat = tonumber(held) else
    -- Redis lost its data at ARGV[#ARGV]: what it no longer holds was
    -- spent then, not full.
    local lost = tonumber(ARGV[#ARGV])
    if lost > 0 then tat = lost + interval * burst end
  end
  if tat < now then tat = now end
  local new = tat + interval
  local allow_at = new - interval * burst
  if now < allow_at then
    if allow_at - now > worst then worst, which = allow_at - now, i end
  end
  next[i] = new
end
if which > 0 then return {0, which, worst} end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], next[i], 'PX', math.ceil((next[i] - now) / 1000) + 1)
end
return {1, 0, 0}
";

/// The heartbeat: counts live replicas, and keeps the epoch marker
/// (`KEYS[2]`: the Redis time it was set, in µs, and whether it was set
/// after a loss). `ARGV[3]` is 1 when this replica knew an epoch, so a
/// missing marker means Redis lost its data.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  local lost = 0
  if ARGV[3] == '1' then lost = 1 end
  -- Digits, not tostring(): Lua would print 1.7e+15.
  epoch = t[1] .. string.format('%06d', tonumber(t[2])) .. ':' .. lost
  redis.call('SET', KEYS[2], epoch)
end
return {redis.call('ZCARD', KEYS[1]), epoch}
";

/// Only named in a refusal when no rate is at hand, which `check` rules out
/// (it returns early when neither limit is set).
const FALLBACK_RATE: Rate = Rate {
    count: NonZeroU32::MIN,
    per: Duration::from_secs(1),
    burst: NonZeroU32::MIN,
};

/// What to do while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// In-process limits at rate ÷ live replicas (the default).
    Local,
    /// Allow every call (availability over limits).
    Open,
    /// Refuse every limited call (limits over availability).
    Closed,
}

impl std::str::FromStr for FailureMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "local" => Ok(FailureMode::Local),
            "open" => Ok(FailureMode::Open),
            "closed" => Ok(FailureMode::Closed),
            _ => Err(format!(
                "failure mode `{text}` must be `local`, `open` or `closed`"
            )),
        }
    }
}

impl FailureMode {
    /// The name used in flags and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Local => "local",
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
        }
    }
}

/// How the fleet's limits reach Redis.
#[derive(Clone)]
pub struct RedisConfig {
    /// Where Redis is.
    pub target: RedisTarget,
    /// The client for it, with its TLS settings and password.
    pub client: redis::Client,
    /// The longest one Redis round trip may take.
    pub timeout: Duration,
    /// What to do while Redis cannot answer.
    pub failure_mode: FailureMode,
    /// This replica's name (for the count of live replicas).
    pub replica: String,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the password: only the target is shown.
        f.debug_struct("RedisConfig")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .field("failure_mode", &self.failure_mode)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// What the limits store reports to metrics and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisStats {
    /// Whether the last Redis round trip succeeded and the breaker is shut.
    pub up: bool,
    /// Round trips that failed or timed out.
    pub failures: u64,
    /// Calls decided by the failure mode instead of Redis.
    pub fallbacks: u64,
    /// Refusals answered from the local cache.
    pub cached_refusals: u64,
    /// Live replicas, as last seen.
    pub replicas: u32,
    /// The failure mode.
    pub mode: FailureMode,
}

/// Rate limits on Redis, with their fallback.
#[derive(Debug)]
pub struct RedisLimits {
    config: RedisConfig,
    gcra: redis::Script,
    heartbeat: redis::Script,
    conn: Mutex<Option<ConnectionManager>>,
    refused: DashMap<String, (Instant, Limited)>,
    local: Mutex<std::sync::Arc<Limits>>,
    local_rules: Limits,
    failures_in_row: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    up: AtomicBool,
    failures: AtomicU64,
    fallbacks: AtomicU64,
    cached: AtomicU64,
    replicas: AtomicU32,
    /// The epoch marker last seen (`µs:lost`), if any.
    epoch: Mutex<Option<String>>,
    /// When Redis last lost its data (Redis time, µs), 0 if never seen.
    lost_at: AtomicU64,
    /// Set by a failed round trip: check the epoch before the next limit.
    recheck: AtomicBool,
    /// The reasons of failure logged since Redis last answered: each new
    /// one is logged once.
    reasons: Mutex<std::collections::HashSet<String>>,
}

#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis timed out")]
    Timeout,
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        // The crate's message: the kind, the server's words or the TLS
        // error; never a command's arguments (AUTH's included).
        StoreError::Redis(e.to_string())
    }
}

impl RedisLimits {
    /// A store over `config`; nothing is contacted until the first call.
    pub fn new(config: RedisConfig) -> RedisLimits {
        RedisLimits {
            config,
            gcra: redis::Script::new(GCRA),
            heartbeat: redis::Script::new(HEARTBEAT),
            conn: Mutex::new(None),
            refused: DashMap::new(),
            local: Mutex::new(std::sync::Arc::new(Limits::starting_empty())),
            local_rules: Limits::default(),
            failures_in_row: AtomicU32::new(0),
            open_until: Mutex::new(None),
            up: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            replicas: AtomicU32::new(1),
            epoch: Mutex::new(None),
            lost_at: AtomicU64::new(0),
            recheck: AtomicBool::new(false),
            reasons: Mutex::default(),
        }
    }

    /// Counters and flags for metrics and health.
    pub fn stats(&self) -> RedisStats {
        RedisStats {
            up: self.up.load(Ordering::Relaxed) && !self.breaker_open(),
            failures: self.failures.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            cached_refusals: self.cached.load(Ordering::Relaxed),
            replicas: self.replicas.load(Ordering::Relaxed),
            mode: self.config.failure_mode,
        }
    }

    fn breaker_open(&self) -> bool {
        self.open_until
            .lock()
            .ok()
            .and_then(|g| *g)
            .is_some_and(|until| Instant::now() < until)
    }

    /// The multiplexed connection (it reconnects by itself).
    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self
            .conn
            .lock()
            .map_err(|_| StoreError::Redis("connection lock poisoned".into()))?;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None)
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(self.config.client.clone(), settings)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `script` within `timeout`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let reply = tokio::time::timeout(timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| StoreError::Timeout)??;
        Ok(reply)
    }

    fn succeeded(&self) {
        self.failures_in_row.store(0, Ordering::Relaxed);
        if let Ok(mut seen) = self.reasons.lock() {
            seen.clear();
        }
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("rate limit store is back");
        }
        if let Ok(mut open) = self.open_until.lock() {
            *open = None;
        }
    }

    fn failed(&self, e: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.recheck.store(true, Ordering::Relaxed);
        let said = e.to_string();
        let new_reason = self
            .reasons
            .lock()
            .is_ok_and(|mut seen| seen.len() < 16 && seen.insert(said));
        let was_up = self.up.swap(false, Ordering::Relaxed);
        if new_reason && !was_up {
            // Why it still fails, once per new reason (a timeout, then the
            // server's refusal of the password, say).
            tracing::error!(error = %e, "rate limit store still failing");
        }
        if was_up {
            tracing::error!(error = %e, mode = self.config.failure_mode.as_str(), "rate limit store failed; failure mode in force");
            // Each failure starts the local fallback afresh and empty: what
            // the fleet spent on Redis is not handed back as a new burst.
            if let Ok(mut local) = self.local.lock() {
                *local = std::sync::Arc::new(Limits::starting_empty());
            }
        }
        let n = self.failures_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= BREAKER_FAILURES
            && let Ok(mut open) = self.open_until.lock()
        {
            *open = Some(Instant::now() + BREAKER_OPEN);
            self.failures_in_row.store(0, Ordering::Relaxed);
        }
    }

    /// Checks both limits together on Redis; the failure mode when Redis
    /// cannot answer.
    pub async fn check(
        &self,
        agent: &str,
        agent_rate: Option<Rate>,
        scope: &str,
        scope_rate: Option<Rate>,
    ) -> Result<(), Limited> {
        if agent_rate.is_none() && scope_rate.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let cache_keys = [format!("a\0{agent}"), format!("s\0{agent}\0{scope}")];
        for key in &cache_keys {
            if let Some((until, limited)) = self.refused.get(key).map(|e| e.clone()) {
                if until > now {
                    self.cached.fetch_add(1, Ordering::Relaxed);
                    return Err(Limited {
                        retry_after: until - now,
                        ..limited
                    });
                }
                self.refused.remove(key);
            }
        }
        if self.breaker_open() {
            return self.fallback(agent, agent_rate, scope, scope_rate);
        }
        if self.recheck.load(Ordering::Relaxed) {
            // Redis failed since the epoch was last read: it may have
            // restarted empty. Learn that before trusting what it holds.
            if let Err(e) = self.beat(self.config.timeout).await {
                self.failed(&e);
                return self.fallback(agent, agent_rate, scope, scope_rate);
            }
        }
        let mut keys = Vec::new();
        let mut argv = Vec::new();
        let mut which = Vec::new();
        // `{agent}` is the hash tag: both keys in one slot.
        let tag = agent.replace(['{', '}'], "_");
        for (name, rate, key) in [
            ("agent", agent_rate, format!("clawgate:{{{tag}}}:agent")),
            (
                "scope",
                scope_rate,
                format!("clawgate:{{{tag}}}:scope:{scope}"),
            ),
        ] {
            if let Some(rate) = rate {
                keys.push(key);
                let interval = (rate.per.as_micros() / u128::from(rate.count.get())).max(1);
                argv.push(interval.to_string());
                argv.push(rate.burst.get().to_string());
                which.push((name, rate));
            }
        }
        match self
            .run::<Vec<i64>>(self.gcra_call(&keys, &mut argv), self.config.timeout)
            .await
        {
            Ok(items) => {
                self.succeeded();
                match items.as_slice() {
                    [1, ..] => Ok(()),
                    [0, i, wait_us] => {
                        let (which, rate) = usize::try_from(*i - 1)
                            .ok()
                            .and_then(|i| which.get(i).copied())
                            .unwrap_or((
                                "agent",
                                agent_rate.or(scope_rate).unwrap_or(FALLBACK_RATE),
                            ));
                        let retry_after =
                            Duration::from_micros(u64::try_from(*wait_us).unwrap_or(0));
                        let (key, name) = if which == "agent" {
                            (&cache_keys[0], agent)
                        } else {
                            (&cache_keys[1], scope)
                        };
                        let limited = Limited {
                            which,
                            name: name.to_owned(),
                            rate,
                            retry_after,
                        };
                        self.refused
                            .insert(key.clone(), (now + retry_after, limited.clone()));
                        Err(limited)
                    }
                    _ => {
                        self.failed(&StoreError::Redis("unexpected script reply".into()));
                        self.fallback(agent, agent_rate, scope, scope_rate)
                    }
                }
            }
            Err(e) => {
                self.failed(&e);
                self.fallback(agent, agent_rate, scope, scope_rate)
            }
        }
    }

    /// The GCRA script over `keys` and `argv`, with when Redis last lost its
    /// data as its last argument.
    fn gcra_call(&self, keys: &[String], argv: &mut Vec<String>) -> redis::ScriptInvocation<'_> {
        argv.push(self.lost_at.load(Ordering::Relaxed).to_string());
        let mut invocation = self.gcra.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in argv.iter() {
            invocation.arg(arg);
        }
        invocation
    }

    fn fallback(
        &self,
        agent: &str,
        agent_rate: Option<Rate>,
        scope: &str,
        scope_rate: Option<Rate>,
    ) -> Result<(), Limited> {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        match self.config.failure_mode {
            FailureMode::Open => Ok(()),
            FailureMode::Closed => Err(Limited {
                which: "store",
                name: agent.to_owned(),
                rate: agent_rate.or(scope_rate).unwrap_or(FALLBACK_RATE),
                retry_after: BREAKER_OPEN,
            }),
            FailureMode::Local => {
                let n = self.replicas.load(Ordering::Relaxed).max(1);
                let share = |r: Option<Rate>| r.map(|r| share(r, n));
                self.local()
                    .check(agent, share(agent_rate), scope, share(scope_rate))
            }
        }
    }

    /// A per-rule (MCP tool) rate, kept in this process.
    pub fn local_rule(
        &self,
        agent: &str,
        scope: &str,
        rule: &str,
        rate: Rate,
    ) -> Result<(), Limited> {
        self.local_rules.check_rule(agent, scope, rule, rate)
    }

    fn local(&self) -> std::sync::Arc<Limits> {
        match self.local.lock() {
            Ok(local) => std::sync::Arc::clone(&local),
            Err(poisoned) => std::sync::Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Says this replica is live and learns how many are; every second.
    pub async fn heartbeat(&self) {
        // Off the call path: long enough for a connection to be made (or
        // refused, with the reason logged) on a slow network.
        match self.beat(self.config.timeout.max(HEARTBEAT_TIMEOUT)).await {
            Ok(()) => self.succeeded(),
            Err(e) => self.failed(&e),
        }
    }

    /// One heartbeat: the count of live replicas and the epoch marker.
    async fn beat(&self, timeout: Duration) -> Result<(), StoreError> {
        let known = self.epoch.lock().ok().and_then(|e| e.clone());
        let mut invocation = self.heartbeat.prepare_invoke();
        invocation
            .key("clawgate:{replicas}")
            .key("clawgate:{replicas}:epoch")
            .arg(&self.config.replica)
            .arg(LIVE_FOR_MS)
            .arg(if known.is_some() { "1" } else { "0" });
        let (n, epoch): (i64, String) = self.run(invocation, timeout).await?;
        self.replicas
            .store(u32::try_from(n).unwrap_or(1).max(1), Ordering::Relaxed);
        if known.as_deref() != Some(epoch.as_str()) {
            if let Some((at, "1")) = epoch.split_once(':') {
                let at = at.parse().unwrap_or(0);
                if self.lost_at.swap(at, Ordering::Relaxed) != at {
                    tracing::warn!(
                        "the rate limit store lost its data; every limit it no longer holds counts as spent"
                    );
                }
            }
            if let Ok(mut slot) = self.epoch.lock() {
                *slot = Some(epoch);
            }
        }
        self.recheck.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// This replica's share of `rate` when `n` replicas split it.
fn share(rate: Rate, n: u32) -> Rate {
    let count = NonZeroU32::new(rate.count.get() / n).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst.get() / n).unwrap_or(NonZeroU32::MIN);
    Rate {
        count,
        per: rate.per,
        burst,
    }
}

#[cfg(test)]
#[path = "redis_tests.rs"]
mod tests;
