//! `policy test`, `policy explain`, `policy diff` and `policy replay`: policy
//! changes seen before they land.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clawgate::policy::{self, Caller, LoadOptions, Policy, Probe};

use crate::cli::{ExplainArgs, ReplayArgs};

/// Loads a policy directory without reading any secret: these commands
/// judge calls, they never make them.
pub(crate) fn load_quietly(dir: &Path) -> anyhow::Result<Policy> {
    let no_env = |_: &str| None;
    match policy::load(dir, &LoadOptions::new(&no_env)) {
        Ok((policy, _warnings)) => Ok(policy),
        Err(e) => {
            for problem in &e.problems {
                eprintln!("{problem}");
            }
            anyhow::bail!(
                "policy `{}` does not validate: {} problem(s)",
                dir.display(),
                e.problems.len()
            )
        }
    }
}

/// `policy test DIR`.
pub(crate) fn test(dir: &Path) -> anyhow::Result<ExitCode> {
    let policy = load_quietly(dir)?;
    let reports = match policy::run_cases(dir, &policy) {
        Ok(reports) => reports,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let failed: Vec<_> = reports.iter().filter(|r| r.failure.is_some()).collect();
    for report in &reports {
        match &report.failure {
            None => println!("ok    {} ({})", report.name, report.location),
            Some(why) => {
                println!("FAIL  {} ({}): {why}", report.name, report.location);
                for line in report.trace.lines() {
                    println!("      {line}");
                }
            }
        }
    }
    println!(
        "{} case(s), {} passed, {} failed",
        reports.len(),
        reports.len() - failed.len(),
        failed.len()
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `policy explain DIR METHOD URL --agent A`.
pub(crate) fn explain(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let caller = match (&args.agent, &args.identity) {
        (Some(agent), _) => Caller::Agent(agent.clone()),
        (None, Some(identity)) => Caller::Identity(identity.clone()),
        (None, None) => anyhow::bail!("give --agent or --identity"),
    };
    let mut headers = Vec::new();
    for header in &args.header {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("header `{header}` is not `name: value`"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mcp_args = args
        .args
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--args is not JSON")?;
    let now = match &args.at {
        Some(at) => humantime::parse_rfc3339_weak(at).context("--at is not RFC 3339")?,
        None => SystemTime::now(),
    };
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        return crate::runtime()?.block_on(explain_remote(args, cert, key));
    }
    let probe = Probe {
        caller,
        method: args.method.clone(),
        url: args.url.clone(),
        headers,
        body: args.body.clone(),
        mcp_tool: args.mcp_tool.clone(),
        mcp_args,
        now,
    };
    let policy = load_quietly(&args.dir)?;
    let resolved = probe.resolve(&policy)?;
    let (_, explanation) = resolved.with_call(&policy, |call| policy::explain(call, &policy));
    if args.json {
        println!("{}", serde_json::to_string(&explanation)?);
    } else {
        print!("{}", explanation.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy explain --cert --key`: the admin API explains against the
/// policy and overrides in force.
async fn explain_remote(args: &ExplainArgs, cert: &Path, key: &Path) -> anyhow::Result<ExitCode> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(agent) = &args.agent {
        query.append_pair("agent", agent);
    }
    if let Some(identity) = &args.identity {
        query.append_pair("identity", identity);
    }
    query.append_pair("method", &args.method);
    query.append_pair("url", &args.url);
    for header in &args.header {
        query.append_pair("header", header);
    }
    if let Some(tool) = &args.mcp_tool {
        query.append_pair("mcp_tool", tool);
    }
    if let Some(a) = &args.args {
        query.append_pair("args", a);
    }
    let path = format!("/v1/policy/explain?{}", query.finish());
    let (status, body) =
        clawgate::admin::client::get(&args.admin, &path, &args.ca, cert, key).await?;
    if status != 200 {
        anyhow::bail!(
            "admin api answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    println!("{}", String::from_utf8_lossy(&body).trim_end());
    Ok(ExitCode::SUCCESS)
}

/// `policy diff OLD NEW`: exit 0 always when both validate (the flags are
/// for the reviewer; `policy replay` is the CI gate).
pub(crate) fn diff(old: &Path, new: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (old, new) = (load_quietly(old)?, load_quietly(new)?);
    let changes = policy::diff::diff(&old, &new);
    if json {
        println!("{}", serde_json::to_string(&changes)?);
    } else {
        print!("{}", policy::diff::render(&changes));
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy replay DIR`: exit 0 when nothing flips, 3 when something does.
pub(crate) fn replay(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let json = match args.format.as_str() {
        "text" => false,
        "json" => true,
        other => anyhow::bail!("unknown format `{other}`: use `text` or `json`"),
    };
    let audit = match (&args.audit, args.archive.is_empty()) {
        (Some(audit), _) => Some(audit.clone()),
        (None, true) => Some(std::path::PathBuf::from("./clawgate-audit.db")),
        (None, false) => None,
    };
    if let Some(audit) = audit.as_ref().filter(|a| !a.is_file()) {
        anyhow::bail!("decision log `{}` not found", audit.display());
    }
    let candidate = load_quietly(&args.dir)?;
    let since = args
        .since
        .map(|d| clawgate::audit::format_ts((SystemTime::now() - d).into()));
    let mut replay = clawgate::replay::Replay::new(
        &candidate,
        clawgate::replay::Select {
            agent: args.agent.clone(),
            scope: args.scope.clone(),
        },
    );
    for file in &args.archive {
        // Each archive is checked as it is read (hashes, links, manifest).
        clawgate::audit::archive::read_sections(file, |r| {
            if since.as_deref().is_none_or(|s| r.ts.as_str() >= s) {
                replay.feed(r);
            }
            Ok(())
        })
        .with_context(|| format!("archive `{}`", file.display()))?;
    }
    if let Some(audit) = &audit {
        clawgate::audit::for_each_decision(audit, since.as_deref(), |r| replay.feed(&r))?;
    }
    let summary = replay.summary;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    Ok(if summary.flipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
