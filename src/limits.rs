//! Rate limits: per agent, and per (agent, scope). The pipeline calls a
//! [`LimitStore`]: governor in this process (the default), or Redis shared by
//! a fleet ([`redis`]).
//!
//! Keys are agent and scope names from policy, never client addresses: an
//! agent that reconnects from another port or host shares its budget.
//!
//! Invariants:
//! - The counters live here, outside the policy, so a reload keeps them; a
//!   key whose rate changed in the new policy starts a fresh limiter.
//! - A refused check consumes nothing.

pub mod redis;
pub mod redis_conn;

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A rate as written in policy: `rate = "60/min"`, with an optional `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many calls per `per`.
    pub count: NonZeroU32,
    /// The period.
    pub per: Duration,
    /// Calls allowed at once before the rate applies; `count` when absent.
    pub burst: NonZeroU32,
}

/// Why a rate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Not `N/sec`, `N/min`, `N/hour` or `N/day`.
    #[error("rate `{0}` must be N/sec, N/min, N/hour or N/day with N at least 1")]
    Syntax(String),
    /// A burst of zero.
    #[error("burst must be at least 1")]
    ZeroBurst,
}

impl Rate {
    /// Parses `N/unit` (`s`, `sec`, `second`, `m`, `min`, `minute`, `h`,
    /// `hour`, `d`, `day`) and an optional burst.
    pub fn parse(text: &str, burst: Option<u32>) -> Result<Rate, RateError> {
        let syntax = || RateError::Syntax(text.to_owned());
        let (count, unit) = text.split_once('/').ok_or_else(syntax)?;
        let count: u32 = count.trim().parse().map_err(|_| syntax())?;
        let count = NonZeroU32::new(count).ok_or_else(syntax)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(syntax()),
        };
        let burst = match burst {
            Some(b) => NonZeroU32::new(b).ok_or(RateError::ZeroBurst)?,
            None => count,
        };
        Ok(Rate { count, per, burst })
    }

    fn quota(&self) -> Quota {
        // One cell every per/count; governor wants a non-zero interval.
        let interval = (self.per / self.count.get()).max(Duration::from_nanos(1));
        Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.burst)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "sec",
            60 => "min",
            3600 => "hour",
            _ => "day",
        };
        write!(f, "{}/{unit} burst {}", self.count, self.burst)
    }
}

/// What a rate limit applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Agent(String),
    Scope(String, String),
    Rule(String, String, String),
}

/// Which limit refused a call, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// `agent`, `scope` or `tool`.
    pub which: &'static str,
    /// The agent's name (an agent limit), the scope's (a scope limit) or
    /// the rule's (a tool limit).
    pub name: String,
    /// The rate that was reached, as policy states it.
    pub rate: Rate,
    /// Until the next call would pass.
    pub retry_after: Duration,
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rate limit `{}` {}; retry after {}s",
            self.which,
            self.name,
            self.rate,
            self.retry_after_secs()
        )
    }
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let secs = if self.retry_after.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        };
        secs.max(1)
    }
}

pub use redis_conn::RedisTarget;

/// Where the counters live: in this process ([`Limits`], the default) or
/// shared by a fleet ([`redis::RedisLimits`]). The pipeline calls this and
/// does not know which.
pub trait LimitStore: Send + Sync + std::fmt::Debug {
    /// Checks the agent's own rate and its rate in the scope; a call must
    /// pass both, and a refused check spends nothing.
    fn check<'a>(
        &'a self,
        agent: &'a str,
        agent_rate: Option<Rate>,
        scope: &'a str,
        scope_rate: Option<Rate>,
    ) -> Pin<Box<dyn Future<Output = Result<(), Limited>> + Send + 'a>>;

    /// Checks the agent's rate under one rule of a scope (an MCP tool
    /// rule's `rate`). In this process on every backend: a per-tool rate is
    /// per replica, not shared by a fleet.
    fn check_rule(&self, agent: &str, scope: &str, rule: &str, rate: Rate) -> Result<(), Limited>;

    /// The shared store's state, for metrics and health (none in-process).
    fn shared_stats(&self) -> Option<redis::RedisStats> {
        None
    }
}

impl LimitStore for Limits {
    fn check<'a>(
        &'a self,
        agent: &'a str,
        agent_rate: Option<Rate>,
        scope: &'a str,
        scope_rate: Option<Rate>,
    ) -> Pin<Box<dyn Future<Output = Result<(), Limited>> + Send + 'a>> {
        Box::pin(std::future::ready(Limits::check(
            self, agent, agent_rate, scope, scope_rate,
        )))
    }

    fn check_rule(&self, agent: &str, scope: &str, rule: &str, rate: Rate) -> Result<(), Limited> {
        Limits::check_rule(self, agent, scope, rule, rate)
    }
}

impl LimitStore for redis::RedisLimits {
    fn check<'a>(
        &'a self,
        agent: &'a str,
        agent_rate: Option<Rate>,
        scope: &'a str,
        scope_rate: Option<Rate>,
    ) -> Pin<Box<dyn Future<Output = Result<(), Limited>> + Send + 'a>> {
        Box::pin(redis::RedisLimits::check(
            self, agent, agent_rate, scope, scope_rate,
        ))
    }

    fn check_rule(&self, agent: &str, scope: &str, rule: &str, rate: Rate) -> Result<(), Limited> {
        self.local_rule(agent, scope, rule, rate)
    }

    fn shared_stats(&self) -> Option<redis::RedisStats> {
        Some(self.stats())
    }
}

/// The rate limiters of one clawgate, across reloads.
#[derive(Debug, Default)]
pub struct Limits {
    limiters: DashMap<Key, (Rate, Arc<DefaultDirectRateLimiter>)>,
    /// Whether a new limiter starts with its burst spent (the fleet's
    /// fallback: the budget was spent on Redis, not handed back).
    start_empty: bool,
}

impl Limits {
    /// Limits whose every limiter starts empty and refills at its rate.
    pub fn starting_empty() -> Limits {
        Limits {
            limiters: DashMap::new(),
            start_empty: true,
        }
    }

    fn limiter(&self, rate: Rate) -> Arc<DefaultDirectRateLimiter> {
        let limiter = RateLimiter::direct(rate.quota());
        if self.start_empty {
            // The burst fits the quota by construction; spend it all.
            let _ = limiter.check_n(rate.burst);
        }
        Arc::new(limiter)
    }

    /// Checks the agent's own rate, then its rate in the scope. A call must
    /// pass both; the first refusal wins.
    pub fn check(
        &self,
        agent: &str,
        agent_rate: Option<Rate>,
        scope: &str,
        scope_rate: Option<Rate>,
    ) -> Result<(), Limited> {
        if let Some(rate) = agent_rate {
            self.check_one(Key::Agent(agent.to_owned()), rate)
                .map_err(|retry_after| Limited {
                    which: "agent",
                    name: agent.to_owned(),
                    rate,
                    retry_after,
                })?;
        }
        if let Some(rate) = scope_rate {
            self.check_one(Key::Scope(agent.to_owned(), scope.to_owned()), rate)
                .map_err(|retry_after| Limited {
                    which: "scope",
                    name: scope.to_owned(),
                    rate,
                    retry_after,
                })?;
        }
        Ok(())
    }

    /// Checks the agent's rate under one rule of a scope (an MCP tool rule's
    /// `rate`).
    pub fn check_rule(
        &self,
        agent: &str,
        scope: &str,
        rule: &str,
        rate: Rate,
    ) -> Result<(), Limited> {
        self.check_one(
            Key::Rule(agent.to_owned(), scope.to_owned(), rule.to_owned()),
            rate,
        )
        .map_err(|retry_after| Limited {
            which: "tool",
            name: rule.to_owned(),
            rate,
            retry_after,
        })
    }

    fn check_one(&self, key: Key, rate: Rate) -> Result<(), Duration> {
        let limiter = {
            let mut entry = self
                .limiters
                .entry(key)
                .or_insert_with(|| (rate, self.limiter(rate)));
            if entry.0 != rate {
                // The policy changed this rate: start afresh under the new one.
                *entry = (rate, self.limiter(rate));
            }
            Arc::clone(&entry.1)
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
