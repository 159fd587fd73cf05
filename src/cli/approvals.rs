//! `clawgate approvals list|show|approve|deny`: answering held calls from a
//! terminal, through the admin API with the approver's own certificate.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Where the admin API is and who is asking.
#[derive(Debug, Args)]
pub(crate) struct ApproverArgs {
    /// The admin API.
    #[arg(long, default_value = "https://localhost:9443")]
    pub(crate) admin: String,
    /// The CA that signed clawgate's server certificate.
    #[arg(long, default_value = "./certs/ca.pem")]
    pub(crate) ca: PathBuf,
    /// The approver's certificate (an admin, or an identity an ask rule
    /// names).
    #[arg(long)]
    pub(crate) cert: PathBuf,
    /// Its key.
    #[arg(long)]
    pub(crate) key: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Approval requests waiting for an answer (every state with --all).
    List {
        #[command(flatten)]
        to: ApproverArgs,
        /// Every approval this replica knows, answered ones included.
        #[arg(long)]
        all: bool,
        /// Print the JSON the API answered.
        #[arg(long)]
        json: bool,
    },
    /// One approval request, with the request as the approver needs it.
    Show {
        /// The approval id.
        id: String,
        #[command(flatten)]
        to: ApproverArgs,
    },
    /// Approve a held call.
    Approve {
        /// The approval id.
        id: String,
        #[command(flatten)]
        to: ApproverArgs,
    },
    /// Deny a held call, with a reason the record keeps.
    Deny {
        /// The approval id.
        id: String,
        /// Why (kept in the `approval-denied` record).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        to: ApproverArgs,
    },
}
