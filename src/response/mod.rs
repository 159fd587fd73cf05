//! The response half of a call: what comes back is not trusted either.
//!
//! - [`reflect`]: the search for the values clawgate injected into a call
//!   (credential, sentinel values, STS session) in what the upstream answers.
//! - [`guard`]: the body filter and header scan that apply it to every
//!   response forwarded to an agent, and what it tells the call's record;
//!   [`frames`]: the same over WebSocket frames after an upgrade.
//!
//! Invariants: a response is streamed, never buffered whole; an injected
//! value never reaches the agent, a log or a record while the scope's
//! `reflection` is `redact` or `refuse`.

pub mod frames;
pub mod guard;
pub mod reflect;
