//! The tool-call firewall: MCP (Model Context Protocol, Streamable HTTP)
//! messages decided one at a time, by tool and by argument.
//!
//! A scope whose policy has `[scope.mcp]` names an MCP endpoint (where the
//! session's GET stream and DELETE go). Every request on the scope that may
//! carry JSON-RPC, on any path ([`detect`]), is one JSON-RPC message, parsed strictly
//! ([`jsonrpc`]: duplicate keys and batches refused), checked against the
//! `Mcp-Method`/`Mcp-Name` headers ([`headers`]) and decided by the scope's
//! rules ([`rules`]: tool-name globs, argument conditions on JSON pointers,
//! resources by normalised URI ([`uri`]), prompts by name, definition
//! pins). Responses, JSON or SSE ([`sse`]), pass through [`response`], which
//! filters every result carrying a list and watches tool definitions
//! ([`pins`]).
//!
//! Invariants:
//! - Decisions come from the body, never from headers alone.
//! - The rules' decision is pure; the state it needs (pins seen, the
//!   definition last seen) is read before and passed in ([`state`]).
//! - Raw arguments never reach a record, a log line or an error: only their
//!   keyed hash does.

pub mod detect;
pub mod fetch;
pub mod headers;
pub mod jsonrpc;
pub mod pin_store;
pub mod pins;
pub mod response;
pub mod results;
pub mod rules;
pub mod sse;
pub mod state;
pub mod uri;

pub use rules::{McpCall, McpRules, McpVerdict};
pub use state::McpState;
