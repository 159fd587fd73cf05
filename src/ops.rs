//! The operator's `audit` commands: export, verify an archive, prune,
//! restore, stats and findings.

use std::io::Write as _;
use std::process::ExitCode;

use clawgate::audit::postgres::archive as fleet;
use clawgate::audit::{self, Filter};

use crate::cli::{self, AuditCommand, FindingsArgs, OutputFormat};
use crate::{parse_time, runtime, wait_for_stop};

/// Runs one of the commands above (any other is a programming error,
/// answered as a failure).
pub(crate) fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            archive: Some(file),
            ..
        } => verify_archive(&file),
        AuditCommand::Export {
            store: Some(target),
            since,
            until,
            file,
            ..
        } => export_fleet(&target, since.as_deref(), &until, &file),
        AuditCommand::Export {
            audit: path,
            since,
            until,
            file,
            store: None,
        } => {
            let since = since.as_deref().map(parse_time).transpose()?;
            let e = audit::archive::export(&path, since.as_deref(), &parse_time(&until)?, &file)?;
            println!(
                "exported {} records ({}..{}) to `{}`, sha256 {}; manifest recorded as record {}",
                e.manifest.count,
                e.manifest.first_seq,
                e.manifest.last_seq,
                file.display(),
                e.sha256,
                e.recorded_seq
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Stats {
            audit: path,
            store,
            since,
            by,
            format,
        } => stats_command(&path, store.as_deref(), &since, by, format),
        AuditCommand::Findings(args) => findings(&args),
        AuditCommand::Prune {
            store: Some(target),
            before,
            ..
        } => prune_fleet(&target, &before),
        AuditCommand::Prune {
            audit: path,
            before,
            store: None,
        } => {
            match audit::archive::prune(&path, &parse_time(&before)?)? {
                Some(p) => println!(
                    "pruned {} records; the log now starts after anchor {} {} (record {})",
                    p.note.removed, p.note.anchor_seq, p.note.anchor_hash, p.recorded_seq
                ),
                None => println!("nothing to prune: no archived record before that time"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Restore {
            store: Some(target),
            file,
            ..
        } => restore_fleet(&file, &target),
        AuditCommand::Restore {
            audit: path,
            file,
            store: None,
        } => {
            let m = audit::archive::restore(&file, &path)?;
            println!(
                "restored {} records ({}..{}) into `{}`",
                m.count,
                m.first_seq,
                m.last_seq,
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!("not an operator command: {other:?}"),
    }
}

/// `audit verify --archive`: every section of an archive file.
fn verify_archive(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match audit::archive::read_sections(file, |_| Ok(())) {
        Ok(sections) => {
            for m in &sections {
                let chain = m
                    .chain
                    .as_ref()
                    .map_or_else(String::new, |c| format!("chain `{c}`: "));
                println!(
                    "ok: {chain}archive of {} records, {}..{}, from prev_hash {} to last hash {}",
                    m.count, m.first_seq, m.last_seq, m.first_prev_hash, m.last_hash
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ audit::archive::ArchiveError::Broken { .. }) => {
            println!("broken: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// `audit stats`.
fn stats_command(
    path: &std::path::Path,
    store: Option<&str>,
    since: &str,
    by: Option<audit::stats::By>,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    crate::audit_cmd::warn_if_broken(path, store)?;
    let records = read_window(path, store, since)?;
    let mut s = audit::stats::stats(&records, by);
    let retained = match store {
        Some(target) => {
            runtime()?.block_on(audit::postgres::retained_from(&cli::store(target)?))?
        }
        None => audit::retained_from(path)?,
    };
    s.covers_from = audit::stats::covers_from(&parse_time(since)?, retained.as_deref());
    if let Some(from) = &s.covers_from {
        eprintln!("note: {}", audit::stats::pruned_notice(from));
    }
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Table => audit::stats::table(&s, &mut out)?,
        OutputFormat::Csv => audit::stats::csv(&s, &mut out)?,
        OutputFormat::Json => {
            serde_json::to_writer(&mut out, &s)?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit restore --store`: every section into its chain.
fn restore_fleet(file: &std::path::Path, target: &str) -> anyhow::Result<ExitCode> {
    let sections = runtime()?.block_on(audit::postgres::restore(file, &cli::store(target)?))?;
    for m in &sections {
        println!(
            "restored {} records ({}..{}) into chain `{}`",
            m.count,
            m.first_seq,
            m.last_seq,
            m.chain.as_deref().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Every record since `since`, from the SQLite file or a PostgreSQL store.
fn read_window(
    path: &std::path::Path,
    store: Option<&str>,
    since: &str,
) -> anyhow::Result<Vec<audit::DecisionRecord>> {
    let filter = Filter {
        since: Some(parse_time(since)?),
        limit: None,
        ..Filter::default()
    };
    Ok(match store {
        Some(target) => {
            runtime()?.block_on(audit::postgres::query(&cli::store(target)?, &filter))?
        }
        None => audit::query(path, &filter)?,
    })
}

/// `clawgate console`: serves the page until SIGINT or SIGTERM.
pub(crate) fn console(args: cli::ConsoleArgs) -> anyhow::Result<ExitCode> {
    let admin = clawgate::console::AdminConn {
        base: args.admin,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
    };
    runtime()?.block_on(async {
        tokio::select! {
            r = clawgate::console::serve(args.listen, admin, args.session, |addr| {
                println!("console on http://{addr}/ (read-only)");
            }, |url| {
                // Only whoever reads this output can log in.
                println!("log in (once): {url}");
            }) => r.map_err(anyhow::Error::from),
            () = wait_for_stop() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `audit findings`: asked of the admin API when a client certificate is
/// given (drift and what lapses need the live policy), else read from the log.
fn findings(args: &FindingsArgs) -> anyhow::Result<ExitCode> {
    let found: Vec<serde_json::Value> = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("since", &args.since)
                .append_pair("recent", &args.recent)
                .append_pair("burst", &args.burst.to_string())
                .finish();
            let (status, body) = runtime()?.block_on(clawgate::admin::client::get(
                &args.admin,
                &format!("/v1/audit/findings?{query}"),
                &args.ca,
                cert,
                key,
            ))?;
            if status != 200 {
                anyhow::bail!(
                    "admin api answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            serde_json::from_slice(&body)?
        }
        _ => {
            let records = read_window(&args.audit, args.store.as_deref(), &args.since)?;
            let thresholds = audit::stats::Thresholds {
                burst: args.burst,
                ..Default::default()
            };
            let mut found =
                audit::stats::findings(&records, &parse_time(&args.recent)?, thresholds);
            found.extend(audit::approval_findings::findings(
                &records,
                std::time::SystemTime::now(),
            ));
            found
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?
        }
    };
    let mut out = std::io::stdout().lock();
    for f in &found {
        if args.json {
            serde_json::to_writer(&mut out, f)?;
            writeln!(out)?;
        } else {
            let s = |k: &str| f[k].as_str().unwrap_or("-").to_owned();
            writeln!(
                out,
                "{:<22} {:<28} {}",
                s("kind"),
                s("subject"),
                s("detail")
            )?;
        }
    }
    if found.is_empty() && !args.json {
        writeln!(out, "no findings")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit export --store`: every chain's range into one archive, its
/// manifests recorded in the operations chain.
fn export_fleet(
    target: &str,
    since: Option<&str>,
    until: &str,
    file: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let since = since.map(parse_time).transpose()?;
    let until = parse_time(until)?;
    let e = runtime()?.block_on(fleet::export(
        &cli::store(target)?,
        since.as_deref(),
        &until,
        file,
        false,
    ))?;
    println!(
        "exported {} chains to `{}`, sha256 {}; manifests recorded in chain `{}` as records {}",
        e.manifests.len(),
        file.display(),
        e.sha256,
        audit::postgres::OPS_CHAIN,
        e.recorded
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for m in &e.manifests {
        println!(
            "  chain `{}`: {} records ({}..{})",
            m.chain.as_deref().unwrap_or_default(),
            m.count,
            m.first_seq,
            m.last_seq
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit prune --store`: every chain, as far as recorded archives cover it.
fn prune_fleet(target: &str, before: &str) -> anyhow::Result<ExitCode> {
    let p = runtime()?.block_on(fleet::prune(&cli::store(target)?, &parse_time(before)?))?;
    if p.pruned.is_empty() {
        println!("nothing to prune: no archived record before that time");
    }
    for n in &p.pruned {
        println!(
            "pruned {} records of chain `{}`; it now starts after anchor {} {}",
            n.removed,
            n.chain.as_deref().unwrap_or_default(),
            n.anchor_seq,
            n.anchor_hash
        );
    }
    if !p.left.is_empty() {
        eprintln!(
            "kept, not covered by an archive recorded in the log: {}",
            p.left.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
