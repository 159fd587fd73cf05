//! clawgate: an mTLS credential broker and tool-call proxy for AI agents.
//!
//! One call, end to end; the modules follow it:
//!
//! ```text
//! agent ──mTLS──▶ listener ─▶ route ─▶ identity + policy::decide ─▶ limits ─▶ credentials ─▶ forward ──TLS──▶ API
//!                   │                         │                                    │              │
//!                   └─────────────────────────┴────────────────────────────────────┴──────────────┴──▶ audit
//!                  tls-rejected          one decision record, committed                    one outcome record
//!                                        before anything is forwarded                      after the response
//! ```
//!
//! - [`listener`]: rustls accept, client certificate required, ALPN.
//! - [`request`]: one request sent where it belongs: `CONNECT`, vend or call.
//! - [`identity`]: names from the verified peer certificate.
//! - [`route`]: gateway route, forward-proxy host or CONNECT; path normalisation.
//! - [`connect`]: `CONNECT` tunnels, spliced or intercepted.
//! - [`intercept`]: leaves minted per host by the interception CA.
//! - [`policy`]: file model, validation, compiled index, and the pure `decide`.
//! - [`credentials`]: what a scope's calls receive in place of the agent's own:
//!   secrets (environment, file, Secrets Manager), sentinels, and STS
//!   credentials that re-sign the request; one cache, one broker.
//! - [`forward`]: pooled upstream clients, header hygiene, timeouts.
//! - [`egress`]: host normalisation and the address check before any connect.
//! - [`pipeline`]: the per-call order above (admission: identify, judge,
//!   prepare), and credential vending.
//! - [`record`]: the one call record (drop-guarded: written on every exit
//!   path, cancellation included) and the outcome record derived from it.
//! - [`upgrade`]: WebSocket upgrades and the byte splice tunnels share.
//! - [`limits`]: rate limits per agent and per (agent, scope), after `decide`.
//! - [`token`]: run tokens that narrow an agent and name its run.
//! - [`overrides`]: emergency isolation, serial revocation, disabled scopes.
//! - [`audit`]: the decision log (SQLite, group commit, hash chain), query, verify.
//! - [`error`]: the closed set of reasons, and the one refusal type mapped once
//!   to status, body and headers (`Retry-After`, challenges, `Proxy-Status`).
//! - [`reload`]: hot reload of policy; exceptions and overrides lapsing.
//! - [`metrics`]: counters and histograms behind `/metrics`.
//! - [`admin`]: the admin and auditor API (health, metrics, audit, status).

pub mod admin;
pub mod agent_env;
pub mod audit;
pub mod body;
pub mod certs;
pub mod connect;
pub mod console;
pub mod credentials;
pub mod demo;
pub mod egress;
pub mod error;
pub mod forward;
pub mod identity;
pub mod intercept;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod overrides;
pub mod pipeline;
pub mod policy;
pub mod record;
pub mod reload;
pub mod request;
pub mod retention;
pub mod route;
pub mod serve;
pub mod token;
pub mod upgrade;
