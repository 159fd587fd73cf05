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

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::resp::{Connection, RedisTarget, Reply, RespError};
use super::{Limited, Limits, Rate};

/// Failures in a row that open the breaker.
pub const BREAKER_FAILURES: u32 = 3;
/// How long an open breaker keeps Redis out of the call path.
pub const BREAKER_OPEN: Duration = Duration::from_secs(5);
/// How long a replica counts as live after its last heartbeat.
const LIVE_FOR_MS: u64 = 5_000;
/// Idle connections kept for reuse.
const POOL: usize = 16;

/// The GCRA script: both keys checked, both spent only if both pass.
pub const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next = {}
local worst, which = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
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

const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
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
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis is.
    pub target: RedisTarget,
    /// The longest one Redis round trip may take.
    pub timeout: Duration,
    /// What to do while Redis cannot answer.
    pub failure_mode: FailureMode,
    /// This replica's name (for the count of live replicas).
    pub replica: String,
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
    sha: Mutex<Option<String>>,
    pool: Mutex<Vec<Connection>>,
    refused: DashMap<String, (Instant, Limited)>,
    local: Limits,
    failures_in_row: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    up: AtomicBool,
    failures: AtomicU64,
    fallbacks: AtomicU64,
    cached: AtomicU64,
    replicas: AtomicU32,
}

#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error(transparent)]
    Resp(#[from] RespError),
    #[error("redis timed out")]
    Timeout,
    #[error("redis said: {0}")]
    Redis(String),
}

impl RedisLimits {
    /// A store over `config`; nothing is contacted until the first call.
    pub fn new(config: RedisConfig) -> RedisLimits {
        RedisLimits {
            sha: Mutex::new(None),
            config,
            pool: Mutex::new(Vec::new()),
            refused: DashMap::new(),
            local: Limits::default(),
            failures_in_row: AtomicU32::new(0),
            open_until: Mutex::new(None),
            up: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            replicas: AtomicU32::new(1),
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

    /// Runs one command on a pooled connection, within the timeout.
    async fn round_trip(&self, args: &[&[u8]]) -> Result<Reply, StoreError> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let attempt = async {
            let mut conn = match pooled {
                Some(c) => c,
                None => Connection::open(&self.config.target).await?,
            };
            let reply = conn.command(args).await?;
            Ok::<_, StoreError>((conn, reply))
        };
        let (conn, reply) = tokio::time::timeout(self.config.timeout, attempt)
            .await
            .map_err(|_| StoreError::Timeout)??;
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < POOL
        {
            pool.push(conn);
        }
        Ok(reply)
    }

    fn succeeded(&self) {
        self.failures_in_row.store(0, Ordering::Relaxed);
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("rate limit store is back");
        }
        if let Ok(mut open) = self.open_until.lock() {
            *open = None;
        }
    }

    fn failed(&self, e: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %e, mode = self.config.failure_mode.as_str(), "rate limit store failed; failure mode in force");
        }
        let n = self.failures_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= BREAKER_FAILURES
            && let Ok(mut open) = self.open_until.lock()
        {
            *open = Some(Instant::now() + BREAKER_OPEN);
            self.failures_in_row.store(0, Ordering::Relaxed);
        }
    }

    async fn load_script(&self) -> Result<String, StoreError> {
        match self
            .round_trip(&[b"SCRIPT", b"LOAD", GCRA.as_bytes()])
            .await?
        {
            Reply::Bulk(Some(sha)) => {
                let sha = String::from_utf8_lossy(&sha).into_owned();
                if let Ok(mut slot) = self.sha.lock() {
                    *slot = Some(sha.clone());
                }
                Ok(sha)
            }
            Reply::Error(e) => Err(StoreError::Redis(e)),
            _ => Err(StoreError::Redis("unexpected reply to SCRIPT LOAD".into())),
        }
    }

    async fn eval(&self, keys: &[String], argv: &[String]) -> Result<Reply, StoreError> {
        let known = self.sha.lock().ok().and_then(|s| s.clone());
        let sha = match known {
            Some(sha) => sha,
            None => self.load_script().await?,
        };
        let numkeys = keys.len().to_string();
        let run = |sha: &str| {
            let mut args: Vec<Vec<u8>> = vec![
                b"EVALSHA".to_vec(),
                sha.as_bytes().to_vec(),
                numkeys.as_bytes().to_vec(),
            ];
            args.extend(keys.iter().map(|k| k.as_bytes().to_vec()));
            args.extend(argv.iter().map(|a| a.as_bytes().to_vec()));
            args
        };
        let args = run(&sha);
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        match self.round_trip(&refs).await? {
            Reply::Error(e) if e.starts_with("NOSCRIPT") => {
                // Redis restarted and forgot the script: load it again.
                let sha = self.load_script().await?;
                let args = run(&sha);
                let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                match self.round_trip(&refs).await? {
                    Reply::Error(e) => Err(StoreError::Redis(e)),
                    reply => Ok(reply),
                }
            }
            Reply::Error(e) => Err(StoreError::Redis(e)),
            reply => Ok(reply),
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
        match self.eval(&keys, &argv).await {
            Ok(Reply::Array(Some(items))) => {
                self.succeeded();
                match items.as_slice() {
                    [Reply::Int(1), ..] => Ok(()),
                    [Reply::Int(0), Reply::Int(i), Reply::Int(wait_us)] => {
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
            Ok(_) => {
                self.failed(&StoreError::Redis("unexpected script reply".into()));
                self.fallback(agent, agent_rate, scope, scope_rate)
            }
            Err(e) => {
                self.failed(&e);
                self.fallback(agent, agent_rate, scope, scope_rate)
            }
        }
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
                self.local
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
        self.local.check_rule(agent, scope, rule, rate)
    }

    /// Says this replica is live and learns how many are; every second.
    pub async fn heartbeat(&self) {
        let live = LIVE_FOR_MS.to_string();
        let args: [&[u8]; 6] = [
            b"EVAL",
            HEARTBEAT.as_bytes(),
            b"1",
            b"clawgate:{replicas}",
            self.config.replica.as_bytes(),
            live.as_bytes(),
        ];
        match self.round_trip(&args).await {
            Ok(Reply::Int(n)) => {
                self.replicas
                    .store(u32::try_from(n).unwrap_or(1).max(1), Ordering::Relaxed);
                self.succeeded();
            }
            Ok(Reply::Error(e)) => self.failed(&StoreError::Redis(e)),
            Ok(_) => {}
            Err(e) => self.failed(&e),
        }
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
