//! The `audit` commands' shape: querying, verifying, anchoring, exporting,
//! pruning and restoring the decision log, and the flags they share.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use clawgate::audit;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DecisionArg {
    Allow,
    Deny,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Print records, oldest first.
    Query {
        /// The decision log database.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
        /// Read a fleet's PostgreSQL store instead of the SQLite file.
        #[arg(long)]
        store: Option<String>,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Only allowed or denied calls.
        #[arg(long)]
        decision: Option<DecisionArg>,
        /// Only this reason code.
        #[arg(long)]
        reason: Option<String>,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Only the records of the call whose span has this trace id (as a
        /// tracing backend shows it).
        #[arg(long)]
        trace_id: Option<String>,
        /// Only report-mode calls that enforce mode would have refused.
        #[arg(long)]
        would_deny: bool,
        /// Only calls from this client address (without its port).
        #[arg(long)]
        source: Option<String>,
        /// Only the records of this request id (a call's decision and outcome).
        #[arg(long)]
        request_id: Option<String>,
        /// From this time: RFC 3339, or a duration back from now (15m, 24h).
        #[arg(long)]
        since: Option<String>,
        /// Before this time: RFC 3339, or a duration back from now.
        #[arg(long)]
        until: Option<String>,
        /// At most this many records (the most recent).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Walk the hash chain: exit 0 when intact, 1 naming the first bad record.
    Verify {
        /// The decision log database.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
        /// A head recorded earlier by `audit head`, as `SEQ:HASH`; the record
        /// must still be there with that hash (catches a cut tail).
        /// On a PostgreSQL store, the anchor is a checkpoint's.
        #[arg(long, value_parser = parse_anchor)]
        anchor: Vec<audit::Head>,
        /// A directory of signed heads written by `serve --anchor-every`:
        /// each must be signed by `--anchor-pub` and its record still there.
        #[arg(long, requires = "anchor_pub", conflicts_with_all = ["store", "archive"])]
        anchors: Option<PathBuf>,
        /// The public key of the anchors (`certs anchor-key` writes it).
        #[arg(long, requires = "anchors")]
        anchor_pub: Option<PathBuf>,
        /// Walk every chain and the checkpoint chain of a fleet's
        /// PostgreSQL store instead of the SQLite file.
        #[arg(long)]
        store: Option<String>,
        /// Check an archive written by `audit export` on its own instead.
        #[arg(long, conflicts_with = "store")]
        archive: Option<PathBuf>,
    },
    /// Write the records of a time range to a self-verifying archive
    /// (gzip'd JSON lines with a manifest) and record its manifest in the log.
    Export {
        /// The decision log database.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
        /// Export every replica's chain of a fleet's PostgreSQL store (one
        /// section per chain) instead of the SQLite file.
        #[arg(long)]
        store: Option<String>,
        /// From the first record at or after this time (RFC 3339, or a
        /// duration back from now); the log's first record when absent.
        #[arg(long)]
        since: Option<String>,
        /// Up to the last record before this time.
        #[arg(long)]
        until: String,
        /// The archive to write (must not exist).
        file: PathBuf,
    },
    /// Remove records before a time that a recorded archive covers; the
    /// pruning is itself a record, from which verify starts.
    Prune {
        /// The decision log database.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
        /// Prune every chain of a fleet's PostgreSQL store (as the role
        /// `clawgate_retention`) instead of the SQLite file.
        #[arg(long)]
        store: Option<String>,
        /// Only records before this time (RFC 3339, or a duration back).
        #[arg(long)]
        before: String,
    },
    /// Check an archive and copy its records, unchanged, into a log that is
    /// empty or ends where the archive starts.
    Restore {
        /// The log to restore into.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
        /// Restore a fleet's archive into a PostgreSQL store instead: each
        /// section into its chain.
        #[arg(long)]
        store: Option<String>,
        /// The archive.
        file: PathBuf,
    },
    /// Print the last record's position and hash (on a PostgreSQL store, the
    /// latest checkpoint's), to anchor elsewhere.
    Head {
        /// The decision log database.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
        /// A fleet's PostgreSQL store instead of the SQLite file.
        #[arg(long)]
        store: Option<String>,
    },
    /// Count allowed, refused and would-deny calls, with the top refusal
    /// reasons and hosts.
    Stats {
        /// The decision log database.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
        /// Read a fleet's PostgreSQL store instead of the SQLite file.
        #[arg(long)]
        store: Option<String>,
        /// From this time: RFC 3339, or a duration back from now.
        #[arg(long, default_value = "24h")]
        since: String,
        /// Group by agent, scope, reason, tool or host.
        #[arg(long)]
        by: Option<audit::stats::By>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// List what needs a look: bursts of failed authentication per source,
    /// agents whose refusals rose against their own baseline, sentinel
    /// misdirections, refused policies, MCP tool-definition changes; and,
    /// asked of a running clawgate (`--cert`), drift and the exceptions and
    /// overrides lapsing within 24 h.
    Findings(FindingsArgs),
    /// Copy a SQLite log into a PostgreSQL store as a chain of its own,
    /// every hash unchanged.
    Migrate {
        /// The SQLite decision log.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
        /// The PostgreSQL store.
        #[arg(long)]
        store: String,
        /// The name of the new chain.
        #[arg(long, default_value = "sqlite")]
        chain: String,
    },
    /// Append a checkpoint over every chain's head now (replicas also do
    /// it every `--checkpoint-every`).
    Checkpoint {
        /// The PostgreSQL store.
        #[arg(long)]
        store: String,
    },
    /// Close a retired replica's chain: its writer is refused from now on,
    /// and once checkpointed, a record added to it fails verify.
    CloseChain {
        /// The PostgreSQL store.
        #[arg(long)]
        store: String,
        /// The replica whose chain closes.
        #[arg(long)]
        replica: String,
    },
}

/// The store's connection string, parsed here rather than by clap, whose
/// error message would repeat the input, password included.
pub(crate) fn store(text: &str) -> anyhow::Result<clawgate::audit::postgres::PgTarget> {
    text.parse()
        .map_err(|e: String| anyhow::anyhow!("--store: {e}"))
}

/// `SEQ:HASH` as printed by `audit head` (a space is accepted too).
pub(crate) fn parse_anchor(text: &str) -> Result<audit::Head, String> {
    let (seq, hash) = text
        .split_once([':', ' '])
        .ok_or_else(|| format!("anchor `{text}` must be SEQ:HASH"))?;
    let seq = seq
        .trim()
        .parse()
        .map_err(|_| format!("anchor `{text}` must start with a record number"))?;
    let hash = hash.trim();
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("anchor `{text}` must end with a 64-digit hex hash"));
    }
    Ok(audit::Head {
        seq,
        hash: hash.to_ascii_lowercase(),
    })
}

/// `audit findings`' flags.
#[derive(Debug, Args)]
pub(crate) struct FindingsArgs {
    /// The decision log database.
    #[arg(long, default_value = "./clawgate-audit.db")]
    pub(crate) audit: PathBuf,
    /// Read a fleet's PostgreSQL store instead of the SQLite file.
    #[arg(long)]
    pub(crate) store: Option<String>,
    /// The window: RFC 3339, or a duration back from now.
    #[arg(long, default_value = "24h")]
    pub(crate) since: String,
    /// The recent part of the window, compared with the rest.
    #[arg(long, default_value = "1h")]
    pub(crate) recent: String,
    /// Refusals of one kind from one source that make a burst.
    #[arg(long, default_value_t = 10)]
    pub(crate) burst: u64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Ask the admin API of a running clawgate (its findings add drift
    /// and what lapses within 24 h) instead of reading the log.
    #[arg(long, default_value = "https://localhost:9443")]
    pub(crate) admin: String,
    /// The CA that signed clawgate's server certificate.
    #[arg(long, default_value = "./certs/ca.pem")]
    pub(crate) ca: PathBuf,
    /// An admin or auditor certificate: given, the findings come from
    /// the admin API.
    #[arg(long, requires = "key", conflicts_with = "store")]
    pub(crate) cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
}
