//! The command line's shape (clap): every command, flag and default, and
//! the small parsers flags use. What each command does is in `main.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use clawgate::certs;
use clawgate::limits::redis::FailureMode;

mod approvals;
mod audit;
mod pins;
pub(crate) use approvals::*;
pub(crate) use audit::*;
pub(crate) use pins::*;

#[derive(Debug, Parser)]
#[command(
    name = "clawgate",
    version,
    about = "mTLS credential broker and tool-call proxy for AI agents"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the agent listener.
    Serve(Box<ServeArgs>),
    /// A whole first run in a temporary directory: certificates, policy, an echo upstream, real calls.
    Demo {
        /// Keep clawgate and the echo upstream running after the scripted calls.
        #[arg(long)]
        keep: bool,
    },
    /// Development certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The decision log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// A read-only web page on loopback showing the state of governance,
    /// fetched from the admin API with your client certificate.
    Console(ConsoleArgs),
    /// Print what an agent's environment needs to use clawgate as its HTTPS_PROXY.
    Env(EnvArgs),
    /// Sentinel placeholders.
    #[command(subcommand)]
    Sentinel(SentinelCommand),
    /// Run tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Per-agent proxy keys for the token listener.
    #[command(subcommand)]
    ProxyKey(ProxyKeyCommand),
    /// Print nftables rules that let an agent's user or cgroup reach only clawgate.
    Lockdown(LockdownArgs),
    /// MCP servers.
    #[command(subcommand)]
    Mcp(McpCommand),
    /// Calls waiting for a person: list, show, approve, deny.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
}

#[derive(Debug, Args)]
pub(crate) struct LockdownArgs {
    /// An agent's user, by name (repeatable).
    #[arg(long)]
    pub(crate) user: Vec<String>,
    /// An agent's user, by number (repeatable).
    #[arg(long)]
    pub(crate) uid: Vec<u32>,
    /// An agent's cgroup v2 path, `system.slice/openclaw.service` (repeatable).
    #[arg(long)]
    pub(crate) cgroup: Vec<String>,
    /// A clawgate listener the agent may reach, `IP:PORT` (repeatable).
    #[arg(long, required = true)]
    pub(crate) proxy: Vec<SocketAddr>,
    /// A DNS server the agent may ask (repeatable; none by default).
    #[arg(long)]
    pub(crate) dns: Vec<std::net::IpAddr>,
    /// A loopback port the agent may reach besides clawgate (repeatable).
    #[arg(long)]
    pub(crate) allow_loopback_port: Vec<u16>,
}

/// Which credential `env` puts in the agent's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EnvForm {
    /// The proxy key when `agents/NAME.proxy-key` exists, else the certificate.
    Auto,
    /// The agent's proxy key, in the token listener's URL.
    ProxyKey,
    /// A run token issued now, in the token listener's URL.
    RunToken,
    /// The agent's client certificate, for the mTLS listener.
    Certificate,
}

#[derive(Debug, Args)]
pub(crate) struct EnvArgs {
    /// The agent's name in policy.
    #[arg(long)]
    pub(crate) agent: String,
    /// The certificate directory.
    #[arg(long, default_value = "./certs")]
    pub(crate) certs: PathBuf,
    /// Which credential the agent carries.
    #[arg(long, value_enum, default_value_t = EnvForm::Auto)]
    pub(crate) form: EnvForm,
    /// The mTLS listener's URL (certificate form).
    #[arg(long, default_value = "https://localhost:8443")]
    pub(crate) proxy: String,
    /// The token listener's URL (proxy-key and run-token forms).
    #[arg(long, default_value = "https://localhost:8445")]
    pub(crate) token_proxy: String,
    /// The proxy key file (default: `agents/NAME.proxy-key` in the certificate directory).
    #[arg(long)]
    pub(crate) proxy_key_file: Option<PathBuf>,
    /// The run token's lifetime (run-token form).
    #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
    pub(crate) ttl: Duration,
    /// The vending listener's URL, for AWS SDKs (`http://127.0.0.1:8444`).
    #[arg(long)]
    pub(crate) vend: Option<String>,
    /// The AWS scope to vend (default: the agent's one scope with `vend = true` in --policy).
    #[arg(long, requires = "vend")]
    pub(crate) aws_scope: Option<String>,
    /// The policy directory, read to find the agent's vended scope.
    #[arg(long, default_value = "./policy")]
    pub(crate) policy: PathBuf,
    /// The system CA bundle to include (found in the usual places when not given).
    #[arg(long)]
    pub(crate) system_roots: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProxyKeyCommand {
    /// Write a fresh key to `agents/NAME.proxy-key` (mode 0600) and print the
    /// policy entry that admits it (its SHA-256, never the key).
    New {
        /// The agent's name in policy.
        #[arg(long)]
        agent: String,
        /// The key's id in policy and records (default: NAME-YYYYMMDD).
        #[arg(long)]
        id: Option<String>,
        /// The certificate directory; the key goes into its `agents/`.
        #[arg(long, default_value = "./certs")]
        certs: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum McpCommand {
    /// First-use pins: `list`, `accept` or `forget` them through the admin
    /// API; or, given a server's URL, print the definition hash of every
    /// tool of that server as a `[scope.mcp.pins]` table to paste into policy.
    #[command(args_conflicts_with_subcommands = true)]
    Pins {
        #[command(subcommand)]
        action: Option<PinsCommand>,
        /// The server's MCP endpoint, such as `https://mcp.example.com/mcp`.
        url: Option<String>,
        /// A header to send, `Name: value` (repeatable), such as the server's credential.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// PEM roots to trust besides the webpki roots (a private CA).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Sign a run token with the key `certs init` created; prints the JWT.
    Issue {
        /// The agent's name in policy.
        #[arg(long)]
        agent: String,
        /// How long it lives (at most 24h).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Only these scopes (comma-separated); every scope of the agent when absent.
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// The run id (a random one when absent).
        #[arg(long)]
        run: Option<String>,
        /// The certificate directory holding `token-key.pem`.
        #[arg(long, default_value = "./certs")]
        certs: PathBuf,
        /// The policy directory: an agent or scope it does not define is
        /// refused. Without it, nothing is checked (with a warning).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SentinelCommand {
    /// Print a fresh random placeholder and the policy entry to bind it.
    New {
        /// The sentinel's name in policy.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The policy directory.
    #[arg(long, default_value = "./policy")]
    pub(crate) policy: PathBuf,
    /// The certificate directory (ca.pem, server.pem, server-key.pem).
    #[arg(long, default_value = "./certs")]
    pub(crate) certs: PathBuf,
    /// The decision log database.
    #[arg(long, default_value = "./clawgate-audit.db")]
    pub(crate) audit: PathBuf,
    /// Where agents connect.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub(crate) listen: SocketAddr,
    /// How many shards serve the agent and token listeners: threads, each
    /// with its own runtime and socket (`SO_REUSEPORT`); 0 is one per core
    /// but one (the decision log's writer has a core), and at least one.
    #[arg(long, default_value_t = 0)]
    pub(crate) shards: usize,
    /// A PEM certificate revocation list for agent certificates.
    #[arg(long)]
    pub(crate) crl: Option<PathBuf>,
    /// Limit on connecting to an upstream.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) connect_timeout: Duration,
    /// Limit on a whole upstream exchange, response body included.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub(crate) upstream_timeout: Duration,
    /// At shutdown, how long in-flight calls may finish before they are ended.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// The endpoint for every AWS service the broker calls (moto, LocalStack);
    /// `AWS_ENDPOINT_URL` works too.
    #[arg(long)]
    pub(crate) aws_endpoint_url: Option<String>,
    /// The region of the broker's own AWS calls (default: `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, the profile, instance metadata, then us-east-1).
    #[arg(long)]
    pub(crate) aws_region: Option<String>,
    /// A loopback address for credential vending by token (plain HTTP, for
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`).
    #[arg(long)]
    pub(crate) vend_listen: Option<SocketAddr>,
    /// How many bytes of a request body are scanned for sentinel placeholders.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub(crate) sentinel_scan_limit: usize,
    /// Pin a name to an address, `NAME=ADDR` (repeatable), consulted before
    /// DNS. The egress address check still applies.
    #[arg(long, value_parser = parse_pin)]
    pub(crate) resolve: Vec<(String, std::net::IpAddr)>,
    /// BENCHMARK ONLY, hidden: record nothing, so the load harness can show
    /// what the durable decision log costs. Never for serving agents.
    #[arg(long, hide = true)]
    pub(crate) benchmark_only_decision_log_off: bool,
    /// Where the admin and auditor API listens (mTLS with the agent CA), or `off`.
    #[arg(long, default_value = "127.0.0.1:9443", value_parser = parse_listen)]
    pub(crate) admin_listen: Listen,
    /// Do not reload the policy when its files change (SIGHUP and the admin
    /// API still reload it).
    #[arg(long)]
    pub(crate) no_watch: bool,
    /// How far ahead a policy exception may expire (at most 7 days).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub(crate) max_exception: Duration,
    /// A TLS listener (no client certificate) taking a run token as the
    /// password of `Proxy-Authorization: Basic`.
    #[arg(long)]
    pub(crate) token_listen: Option<SocketAddr>,
    /// A fleet's store for the decision log and overrides: a `postgres://`
    /// URL (the SQLite file at `--audit` when absent). Needs `--replica`.
    /// Read from `CLAWGATE_STORE` when not given, which keeps a password
    /// off the command line.
    #[arg(
        long,
        requires = "replica",
        env = "CLAWGATE_STORE",
        hide_env_values = true
    )]
    pub(crate) store: Option<String>,
    /// Keep this long in the decision log (`30d`): older records are
    /// archived to `--archive-dir` and then pruned, every `--retain-every`.
    #[arg(long, requires = "archive_dir", value_parser = humantime::parse_duration)]
    pub(crate) retain: Option<Duration>,
    /// Where `--retain` writes its archives.
    #[arg(long, requires = "retain")]
    pub(crate) archive_dir: Option<PathBuf>,
    /// How often `--retain` looks for records to archive.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) retain_every: Duration,
    /// This replica's name in the fleet: its own hash chain in the store
    /// (one process per name at a time). Needs `--store`.
    #[arg(long, requires = "store")]
    pub(crate) replica: Option<String>,
    /// Rate limits shared by the fleet on Redis: `rediss://[USER@]HOST:PORT`
    /// (TLS), `redis://[USER@]HOST:PORT` or `unix:///PATH` (in this process
    /// when absent). The password is never in the URL: see
    /// `--limits-password-file`.
    /// Parsed by `serve`, not by clap, whose error would repeat the input,
    /// a password included.
    #[arg(long)]
    pub(crate) limits: Option<String>,
    /// The CA that signed the Redis server's certificate (the system's roots
    /// when absent). The host name in `--limits` is checked against it.
    #[arg(long, requires = "limits")]
    pub(crate) limits_ca: Option<PathBuf>,
    /// A client certificate for Redis (with `--limits-key`).
    #[arg(long, requires_all = ["limits", "limits_key"])]
    pub(crate) limits_cert: Option<PathBuf>,
    /// The key of `--limits-cert`.
    #[arg(long, requires = "limits_cert")]
    pub(crate) limits_key: Option<PathBuf>,
    /// A file holding the password of the Redis ACL user named in
    /// `--limits`; `CLAWGATE_LIMITS_PASSWORD` is read when absent.
    #[arg(long, requires = "limits")]
    pub(crate) limits_password_file: Option<PathBuf>,
    /// The longest one Redis round trip may take before the failure mode
    /// decides the call.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub(crate) limits_timeout: Duration,
    /// While Redis cannot answer: `local` (in-process limits at rate ÷ live
    /// replicas), `open` (allow) or `closed` (refuse).
    #[arg(long, default_value = "local", value_parser = clap::value_parser!(FailureMode))]
    pub(crate) limits_failure_mode: FailureMode,
    /// How often a replica tries to append a checkpoint over every chain's
    /// head (one replica at a time succeeds).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) checkpoint_every: Duration,
    /// How often the whole decision log chain is walked to catch a record
    /// edited or removed behind clawgate's back (`clawgate_audit_chain_intact`).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub(crate) chain_check_every: Duration,
    /// Write the SQLite log's head, signed with `--anchor-key`, to
    /// `--anchor-dir` this often (checked by `audit verify --anchors`).
    #[arg(long, value_parser = humantime::parse_duration, requires_all = ["anchor_key", "anchor_dir"], conflicts_with = "store")]
    pub(crate) anchor_every: Option<Duration>,
    /// The Ed25519 key that signs heads (`clawgate certs anchor-key`); keep
    /// it and the anchor directory apart from the log.
    #[arg(long, requires = "anchor_every")]
    pub(crate) anchor_key: Option<PathBuf>,
    /// Where signed heads go, one file per anchor.
    #[arg(long, requires = "anchor_every")]
    pub(crate) anchor_dir: Option<PathBuf>,
    /// Export one span per call to this OTLP/HTTP (protobuf) collector URL
    /// (`http://collector:4318`, `/v1/traces` added when no path is given);
    /// the trace id is written into the call's records. Off by default.
    #[arg(long)]
    pub(crate) otlp_endpoint: Option<String>,
    /// An external issuer's public keys for run tokens (a JWKS file).
    #[arg(long, requires = "token_issuer")]
    pub(crate) token_jwks: Option<PathBuf>,
    /// The `iss` of the external issuer's tokens.
    #[arg(long, requires = "token_jwks")]
    pub(crate) token_issuer: Option<String>,
}

pub(crate) fn parse_pin(text: &str) -> Result<(String, std::net::IpAddr), String> {
    let (name, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` must be NAME=ADDR"))?;
    let name = clawgate::egress::normalise_host(name).map_err(|e| e.to_string())?;
    let addr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    Ok((name.to_string(), addr))
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listen(pub(crate) Option<SocketAddr>);

pub(crate) fn parse_listen(text: &str) -> Result<Listen, String> {
    if text == "off" {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("`{text}` must be HOST:PORT or `off`"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create the CA, the server certificate and the interception CA.
    Init {
        /// The certificate directory.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// Extra subject alternative names for the server certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate for an agent.
    Agent {
        /// The agent's name.
        name: String,
        /// The certificate directory.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = certs::DEFAULT_AGENT_DAYS)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        /// Replace the agent's existing certificate and key, printing the
        /// old serial to revoke (the runbook's "revoke and rotate").
        #[arg(long, conflicts_with = "force")]
        rotate: bool,
    },
    /// Revoke a certificate: add its serial to the CRL that `serve --crl`
    /// reloads on change.
    Revoke {
        /// A serial (hex, colons allowed) or a certificate file. Without
        /// one, the CRL is (re)written with the serials it lists, none at
        /// first: the file `serve --crl` needs before any revocation.
        target: Option<String>,
        /// The certificate directory (its CA signs the CRL).
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// The CRL to write (created on first use).
        #[arg(long, default_value = "./certs/crl.pem")]
        crl: PathBuf,
    },
    /// Make the Ed25519 key pair that signs the decision log's heads
    /// (`serve --anchor-key`): the private key at FILE (mode 0600), the
    /// public key at FILE.pub and on stdout.
    AnchorKey {
        /// The private key file to create (never replaced).
        #[arg(long, default_value = "./anchor.key")]
        out: PathBuf,
    },
    /// Issue an operator's client certificate for the admin API and print
    /// the `[roles]` line that makes it an admin.
    Admin {
        /// The operator's name.
        name: String,
        /// The certificate directory.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = certs::DEFAULT_AGENT_DAYS)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate a policy directory: exit 0 with a summary, or 1 with every problem.
    Check {
        /// The policy directory.
        #[arg(default_value = "./policy")]
        dir: PathBuf,
        /// How far ahead an exception may expire.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        max_exception: Duration,
    },
    /// Ask a running clawgate's admin API: exit 0 in sync, 2 drifted, 1 on error.
    Status(StatusArgs),
    /// Run the `*.test.toml` cases beside a policy: exit 0 when all pass, 1 otherwise.
    Test {
        /// The policy directory (its test files are read from it too).
        #[arg(default_value = "./policy")]
        dir: PathBuf,
    },
    /// Say what a policy decides on a call, and why, rule by rule.
    Explain(Box<ExplainArgs>),
    /// Compare two policy directories structurally, flagging risky changes.
    Diff {
        /// The policy in force (or the base of a change).
        old: PathBuf,
        /// The candidate.
        new: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-decide the recorded calls under a candidate policy: exit 0 when nothing flips, 3 when something does.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The candidate policy directory.
    pub(crate) dir: PathBuf,
    /// The decision log (SQLite); `./clawgate-audit.db` unless only archives are given.
    #[arg(long)]
    pub(crate) audit: Option<PathBuf>,
    /// An archive (`audit export`) to replay first, oldest first (repeatable):
    /// a pruned log's older calls.
    #[arg(long)]
    pub(crate) archive: Vec<PathBuf>,
    /// Only calls this recent.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) since: Option<Duration>,
    /// Only this agent's calls.
    #[arg(long)]
    pub(crate) agent: Option<String>,
    /// Only calls recorded in this scope.
    #[arg(long)]
    pub(crate) scope: Option<String>,
    /// `text` or `json`.
    #[arg(long, default_value = "text")]
    pub(crate) format: String,
}

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// The policy directory (ignored with --cert/--key: the policy in force is asked).
    pub(crate) dir: PathBuf,
    /// The HTTP method.
    pub(crate) method: String,
    /// The URL: `https://HOST/PATH` for a host a scope names, else `https://clawgate/ROUTE/PATH`.
    pub(crate) url: String,
    /// The agent's name in policy.
    #[arg(
        long,
        conflicts_with = "identity",
        required_unless_present = "identity"
    )]
    pub(crate) agent: Option<String>,
    /// An identity instead (`spiffe://…`, `dns:…`, `cn:…`).
    #[arg(long)]
    pub(crate) identity: Option<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(long)]
    pub(crate) header: Vec<String>,
    /// The request body (AWS form bodies).
    #[arg(long)]
    pub(crate) body: Option<String>,
    /// For an MCP scope: the tool of a `tools/call`.
    #[arg(long)]
    pub(crate) mcp_tool: Option<String>,
    /// The tool's arguments, as JSON.
    #[arg(long, requires = "mcp_tool")]
    pub(crate) args: Option<String>,
    /// The time of the call (RFC 3339; default now).
    #[arg(long)]
    pub(crate) at: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Ask a running clawgate's admin API instead (with the overrides in force).
    #[arg(long, default_value = "https://localhost:9443")]
    pub(crate) admin: String,
    /// The CA that signed clawgate's server certificate.
    #[arg(long, default_value = "./certs/ca.pem")]
    pub(crate) ca: PathBuf,
    /// An admin or auditor certificate (asks the admin API).
    #[arg(long, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The admin API.
    #[arg(long, default_value = "https://localhost:9443")]
    pub(crate) admin: String,
    /// The CA that signed clawgate's server certificate.
    #[arg(long, default_value = "./certs/ca.pem")]
    pub(crate) ca: PathBuf,
    /// An admin or auditor certificate.
    #[arg(long)]
    pub(crate) cert: PathBuf,
    /// Its key.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Print the JSON the API answered instead of the summary.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConsoleArgs {
    /// Where the page is served (loopback only).
    #[arg(long, default_value = "127.0.0.1:9480")]
    pub(crate) listen: SocketAddr,
    /// The admin API.
    #[arg(long, default_value = "https://localhost:9443")]
    pub(crate) admin: String,
    /// The CA that signed clawgate's server certificate.
    #[arg(long, default_value = "./certs/ca.pem")]
    pub(crate) ca: PathBuf,
    /// An admin or auditor certificate.
    #[arg(long)]
    pub(crate) cert: PathBuf,
    /// Its key.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// How long a browser session lasts after logging in.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub(crate) session: std::time::Duration,
}
