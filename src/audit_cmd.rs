//! `clawgate audit …`: query, verify, head, migrate, checkpoint and
//! close-chain on either backend; export, stats, findings, prune and restore
//! are in [`crate::ops`].

use std::process::ExitCode;

use clawgate::audit::{self, Filter, Format, VerifyError};

use crate::cli::{self, AuditCommand, DecisionArg, OutputFormat};
use crate::{ops, parse_time, runtime};

/// Runs one `audit` subcommand.
pub(crate) fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Query {
            audit: path,
            store,
            agent,
            scope,
            decision,
            reason,
            host,
            trace_id,
            would_deny,
            source,
            request_id,
            since,
            until,
            limit,
            format,
        } => {
            let filter = Filter {
                agent,
                scope,
                decision: decision.map(|d| match d {
                    DecisionArg::Allow => "allow".to_owned(),
                    DecisionArg::Deny => "deny".to_owned(),
                }),
                reason,
                host,
                trace_id: trace_id.map(|t| t.to_ascii_lowercase()),
                would_deny,
                since: since.as_deref().map(parse_time).transpose()?,
                until: until.as_deref().map(parse_time).transpose()?,
                limit: Some(limit),
                source,
                request_id,
                kinds: Vec::new(),
            };
            query(&path, store.as_deref(), &filter, format)
        }
        command @ (AuditCommand::Verify {
            archive: Some(_), ..
        }
        | AuditCommand::Export { .. }
        | AuditCommand::Stats { .. }
        | AuditCommand::Findings(_)
        | AuditCommand::Prune { .. }
        | AuditCommand::Restore { .. }) => ops::run(command),
        AuditCommand::Verify {
            store: Some(target),
            anchor,
            ..
        } => fleet_verify(&cli::store(&target)?, &anchor),
        AuditCommand::Head {
            store: Some(target),
            ..
        } => match runtime()?.block_on(audit::postgres::head(&cli::store(&target)?))? {
            Some(c) => {
                println!("{} {}", c.seq, c.hash);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("no checkpoint yet: run `clawgate audit checkpoint` first");
                Ok(ExitCode::FAILURE)
            }
        },
        AuditCommand::Migrate {
            audit: path,
            store,
            chain,
        } => {
            let copied = runtime()?.block_on(audit::postgres::migrate(
                &path,
                &cli::store(&store)?,
                &chain,
            ))?;
            println!("migrated {copied} records into chain `{chain}`");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoint { store } => {
            match runtime()?.block_on(audit::postgres::checkpoint(
                &cli::store(&store)?,
                "clawgate audit checkpoint",
            ))? {
                Some(c) => println!("checkpoint {} {}", c.seq, c.hash),
                None => println!("another replica is making a checkpoint now"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::CloseChain { store, replica } => {
            runtime()?.block_on(audit::postgres::close_chain(&cli::store(&store)?, &replica))?;
            println!("chain `{replica}` closed");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            audit: path,
            anchor,
            anchors,
            anchor_pub,
            store: None,
            archive: None,
        } => local_verify(
            &path,
            &anchor,
            anchors.as_deref().zip(anchor_pub.as_deref()),
        ),
        AuditCommand::Head {
            audit: path,
            store: None,
        } => {
            let head = audit::head(&path)?;
            println!("{} {}", head.seq, head.hash);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Says on stderr when the log's chain does not verify: figures and
/// records read from it may hold edited or missing records. An unreadable
/// log is left to the read that follows.
pub(crate) fn warn_if_broken(path: &std::path::Path, store: Option<&str>) -> anyhow::Result<()> {
    let source = match store {
        Some(target) => audit::Source::Postgres(cli::store(target)?),
        None => audit::Source::Sqlite(path.to_owned()),
    };
    if let Some(audit::health::ChainState::Broken(seq)) = runtime()?.block_on(source.check_chain())
    {
        eprintln!(
            "warning: the decision log's chain is broken at record {seq} (see `clawgate audit verify`): \
             what follows may include edited or missing records"
        );
    }
    Ok(())
}

/// `audit query`: from the SQLite file, or from PostgreSQL with `--store`.
fn query(
    path: &std::path::Path,
    store: Option<&str>,
    filter: &Filter,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    warn_if_broken(path, store)?;
    let records = match store {
        Some(target) => {
            runtime()?.block_on(audit::postgres::query(&cli::store(target)?, filter))?
        }
        None => audit::query(path, filter)?,
    };
    let format = match format {
        OutputFormat::Table => Format::Table,
        OutputFormat::Json => Format::Json,
        OutputFormat::Csv => Format::Csv,
    };
    audit::render(&records, format, &mut std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}

/// `audit verify` of a SQLite file, from its pruned anchor when it has one,
/// then against every signed head in `signed` (directory, public key).
fn local_verify(
    path: &std::path::Path,
    anchor: &[audit::Head],
    signed: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<ExitCode> {
    let verdict = local_verify_chain(path, anchor)?;
    let Some((dir, public)) = signed else {
        return Ok(verdict);
    };
    if verdict != ExitCode::SUCCESS {
        return Ok(verdict);
    }
    use audit::anchor::{AnchorError, load_public, verify_anchors};
    match verify_anchors(path, dir, &load_public(public)?) {
        Ok(count) => {
            println!("ok: {count} signed anchors hold");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (AnchorError::Broken { .. } | AnchorError::Forged(..))) => {
            println!("broken: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// The chain walk of [`local_verify`] and its `--anchor` heads.
fn local_verify_chain(path: &std::path::Path, anchor: &[audit::Head]) -> anyhow::Result<ExitCode> {
    match audit::verify(path).and_then(|report| {
        anchor
            .iter()
            .try_for_each(|a| audit::check_anchor(path, a))
            .map(|()| report)
    }) {
        Ok(report) => {
            let from = report.anchor.map_or_else(String::new, |a| {
                format!(" from pruned anchor {} {},", a.seq, a.hash)
            });
            println!(
                "ok: {} records,{from} chain intact, head {} {}",
                report.count, report.head.seq, report.head.hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Broken { seq, why }) => {
            println!("broken: record {seq}: {why}");
            Ok(ExitCode::FAILURE)
        }
        Err(VerifyError::Audit(e)) => Err(e.into()),
    }
}

/// `audit verify --store`: every chain and the checkpoint chain.
fn fleet_verify(
    target: &audit::postgres::PgTarget,
    anchors: &[audit::Head],
) -> anyhow::Result<ExitCode> {
    use audit::postgres::FleetVerifyError;
    match runtime()?.block_on(audit::postgres::verify(target, anchors)) {
        Ok(report) => {
            let head = report.head.map_or_else(
                || "no checkpoint yet".to_owned(),
                |c| format!("checkpoint {} {}", c.seq, c.hash),
            );
            let pruned = if report.pruned > 0 {
                format!(" ({} from a pruned anchor)", report.pruned)
            } else {
                String::new()
            };
            println!(
                "ok: {} records in {} chains{pruned}, {} checkpoints, all intact; {head}",
                report.records, report.chains, report.checkpoints
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(FleetVerifyError::Broken { what, seq, why }) => {
            println!("broken: {what} {seq}: {why}");
            Ok(ExitCode::FAILURE)
        }
        Err(FleetVerifyError::Store(e)) => Err(e.into()),
    }
}
