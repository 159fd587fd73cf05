//! `clawgate mcp pins list|accept|forget`: first-use MCP pins through the
//! admin API, with the caller's own certificate.

use clap::Subcommand;

use super::ApproverArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum PinsCommand {
    /// Every first-use pin, marked `changed` when the tool's definition
    /// moved since (such a tool is hidden and refused).
    List {
        #[command(flatten)]
        to: ApproverArgs,
        /// The JSON the API answers.
        #[arg(long)]
        json: bool,
    },
    /// Re-pin a tool to the definition last seen (or to --hash): its calls
    /// are allowed again. Needs the admin role; recorded.
    Accept {
        /// The scope.
        scope: String,
        /// The tool.
        tool: String,
        /// The hash to pin (`sha256:...`); the last one seen when absent.
        #[arg(long)]
        hash: Option<String>,
        #[command(flatten)]
        to: ApproverArgs,
    },
    /// Drop a tool's pin: its next sighting pins afresh. Needs the admin
    /// role; recorded.
    Forget {
        /// The scope.
        scope: String,
        /// The tool.
        tool: String,
        #[command(flatten)]
        to: ApproverArgs,
    },
}
