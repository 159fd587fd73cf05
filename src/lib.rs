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
//! - [`tls`]: the one place PEM files are read and TLS configurations built;
//!   certificate and CRL hot reload.
//! - [`accept`]: one accept path for every listener: handshake admission,
//!   `tls-rejected` and `identity-ambiguous` records, timeouts, HTTP/1.1, HTTP/2, upgrades, drain.
//! - [`shards`]: per-core shards: a thread, a single-threaded runtime and an
//!   `SO_REUSEPORT` socket each, running the agent and token listeners.
//! - [`listener`]: the agent listener (client certificate required).
//! - [`request`]: one request sent where it belongs: `CONNECT`, vend or call.
//! - [`identity`]: names from the verified peer certificate.
//! - [`route`]: gateway route, forward-proxy host or CONNECT; path normalisation.
//! - [`connect`]: `CONNECT` tunnels, spliced or intercepted.
//! - [`client_hello`]: a tunnel's ClientHello, read without terminating TLS,
//!   so a tunnel carries only the host its `CONNECT` named.
//! - [`intercept`]: leaves minted per host by the interception CA.
//! - [`policy`]: file model, validation, compiled index, and the pure `decide`.
//! - [`credentials`]: what a scope's calls receive in place of the agent's own:
//!   secrets (environment, file, Secrets Manager), sentinels, and STS
//!   credentials that re-sign the request; one cache, one broker.
//! - [`forward`]: pooled upstream clients, header hygiene, timeouts.
//! - [`response`]: the response half: the reflection guard redacts (or
//!   refuses) injected values that come back in headers and bodies.
//! - [`egress`]: host normalisation and the address check before any connect.
//! - [`pipeline`]: the per-call order above (admission: identify, judge,
//!   prepare), and credential vending.
//! - [`record`]: the one call record (drop-guarded: written on every exit
//!   path, cancellation included) and the outcome record derived from it.
//! - [`upgrade`]: WebSocket upgrades and the byte splice tunnels share.
//! - [`mcp`]: the tool-call firewall: MCP messages decided by tool and argument,
//!   `tools/list` filtered, tool definitions pinned.
//! - [`limits`]: rate limits per agent and per (agent, scope), after `decide`;
//!   in process, or shared by a fleet on Redis.
//! - [`token`]: run tokens that narrow an agent and name its run.
//! - [`overrides`]: emergency isolation, serial revocation, disabled scopes;
//!   beside the SQLite log, or shared by a fleet on PostgreSQL.
//! - [`live`]: open tunnels, WebSockets and connections that an override or
//!   a reload ends.
//! - [`audit`]: the decision log (SQLite, group commit, hash chain), query, verify;
//!   on a fleet, one chain per replica on PostgreSQL with checkpoints over them.
//! - [`error`]: the closed set of reasons, and the one refusal type mapped once
//!   to status, body and headers (`Retry-After`, challenges, `Proxy-Status`).
//! - [`reload`]: hot reload of policy, and the timer of lapses.
//! - [`lapse`]: exceptions and overrides lapse at their expiry, each lapse a
//!   record queued before any decision that relies on it.
//! - [`metrics`]: counters and histograms behind `/metrics`.
//! - [`admin`]: the admin and auditor API (health, metrics, audit, status,
//!   stats, findings, verify); [`console`]: the read-only page over it.
//! - [`retention`]: `serve --retain`, archiving then pruning the log.
//! - [`agent_env`] and [`lockdown`]: the environment that routes an agent
//!   through clawgate, and the egress rules that leave it no other road.

// In the order of the call (blank lines keep rustfmt from sorting them):
// accept, identify, route, decide, limit, credential, forward, record; then
// what governs it and what runs it.
pub mod tls;

pub mod accept;

pub mod shards;

pub mod listener;

pub mod request;

pub mod identity;

pub mod token;

pub mod route;

pub mod pipeline;

pub mod connect;

pub mod client_hello;

pub mod intercept;

pub mod upgrade;

pub mod live;

pub mod policy;

pub mod approvals;
/// `policy replay`: recorded calls re-decided under a candidate policy.
pub mod replay;

pub mod mcp;

pub mod limits;

pub mod credentials;

pub mod body;

pub mod forward;

pub mod response;

pub mod egress;

pub mod record;

pub mod trace;

pub mod audit;

pub mod retention;

pub mod error;

pub mod overrides;

pub mod lapse;

pub mod reload;

pub mod metrics;

pub mod admin;

pub mod console;

mod background;
pub mod serve;

pub mod certs;

pub mod agent_env;

pub mod lockdown;

pub mod demo;
