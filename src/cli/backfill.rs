//! `flowctl backfill`: the runs of every past fire of a schedule in a range, each with its own
//! window, under the scheduler's own fire keys (see [`crate::backfill`]): a fire that exists
//! is skipped, so running it again creates nothing new and resumes one cut short. Then the
//! jobs run here as `flowctl run` runs them, limited by the pool, unless `--queue-only` (a
//! `serve` or `worker` sharing the store runs them).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use super::{
    block_on, compiled_workflow, error, open_store_read_only, parse_instant, start_engine, Started,
    StoreArgs, EXIT_FAILURE, EXIT_OK,
};
use crate::backfill::{self, BackfillError, Summary};
use crate::job::{JobId, JobStatus};
use crate::workflow::Workflow;

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The workflow: .flow files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub includes: super::IncludeArgs,
    /// The schedule whose fires to create.
    #[arg(long, value_name = "NAME")]
    pub schedule: String,
    /// The first instant of the range (RFC 3339, e.g. 2025-01-01T00:00:00Z): fires at or
    /// after it.
    #[arg(long, value_name = "INSTANT")]
    pub from: String,
    /// The end of the range, excluded (RFC 3339): fires before it; not after now.
    #[arg(long, value_name = "INSTANT")]
    pub to: String,
    /// Print each fire, the window it covers and whether it exists; create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Create the jobs and stop: a `flowctl serve` or `flowctl worker` on the same store runs
    /// them (or a later `flowctl run --resume`).
    #[arg(long, conflicts_with = "dry_run")]
    pub queue_only: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Override the workflow's worker pool size.
    #[arg(long)]
    pub workers: Option<u32>,
}

pub fn run(args: BackfillArgs) -> u8 {
    match compiled_workflow(&args.paths, &args.includes, true) {
        Ok(workflow) => block_on(backfill(Arc::new(workflow), args)),
        Err(code) => code,
    }
}

fn refused(e: BackfillError) -> u8 {
    error(e)
}

async fn backfill(workflow: Arc<Workflow>, args: BackfillArgs) -> u8 {
    let (from, to) = match (parse_instant(&args.from), parse_instant(&args.to)) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) => return error(format!("--from {e}")),
        (_, Err(e)) => return error(format!("--to {e}")),
    };
    let schedule = match backfill::schedule(&workflow, &args.schedule) {
        Ok(s) => s.clone(),
        Err(e) => return refused(e),
    };
    let now = Utc::now();
    let fires = match backfill::fire_times(&schedule, from, to, now) {
        Ok(f) => f,
        Err(e) => return refused(e),
    };
    let selection = args.store.selection();
    if args.dry_run {
        let store = match open_store_read_only(&selection).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let plan = match backfill::plan(&workflow, store.as_ref(), &schedule, &fires).await {
            Ok(p) => p,
            Err(e) => return refused(e),
        };
        let mut out = String::new();
        for fire in &plan {
            let state = match &fire.existing {
                Some(ids) => format!("exists ({} job(s))", ids.len()),
                None => "new".to_string(),
            };
            out.push_str(&format!(
                "{}  window {:<12}  {state}\n",
                fire.at.format("%Y-%m-%dT%H:%M:%SZ"),
                fire.window_labels()
            ));
        }
        out!("{out}");
        print_summary(&schedule.name, &args, &backfill::summarize(&plan), true);
        return EXIT_OK;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let events = (!args.queue_only).then_some(tx);
    let Started {
        engine,
        store: _,
        recovered,
    } = match start_engine(workflow.clone(), &selection, args.workers, events).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let n = recovered.requeued.len() + recovered.finished.len();
    if n > 0 {
        eprintln!("recovered {n} job(s) left running by an interrupted run");
    }
    let bar = progress_bar(fires.len());
    let mut shown = 0;
    let summary = match backfill::run(&engine, &schedule, &fires, now, |done, total| {
        match &bar {
            Some(bar) => bar.set_position(done as u64),
            // Without a terminal, a line at every tenth of the way.
            None if done == total || done * 10 / total.max(1) > shown => {
                shown = done * 10 / total.max(1);
                eprintln!("backfill {}: {done}/{total} fires", schedule.name);
            }
            None => {}
        }
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            // What was created stands: running the backfill again resumes it.
            return error(format!(
                "{e}; the fires created so far stand: run the backfill again to resume"
            ));
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    print_summary(&schedule.name, &args, &summary, false);
    if args.queue_only || summary.job_ids.is_empty() {
        return EXIT_OK;
    }
    let display = tokio::spawn(super::run::show_progress(rx));
    let result = engine
        .clone()
        .run(super::run::shutdown_signal(), true)
        .await;
    let store = engine.store.clone();
    drop(engine);
    let mut ids: Vec<JobId> = summary.job_ids.clone();
    ids.extend(display.await.unwrap_or_default());
    ids.sort();
    ids.dedup();
    if let Err(e) = result {
        return error(format!("store failure: {e}"));
    }
    let mut by_status: std::collections::BTreeMap<JobStatus, usize> = Default::default();
    for id in &ids {
        match store.get(id).await {
            Ok(Some(job)) => *by_status.entry(job.status).or_default() += 1,
            Ok(None) => {}
            Err(e) => return error(format!("cannot read job {id}: {e}")),
        }
    }
    let line: Vec<String> = by_status
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str().to_lowercase()))
        .collect();
    out!("jobs (dependents included): {}\n", line.join(", "));
    if by_status.keys().all(|s| *s == JobStatus::Completed) {
        EXIT_OK
    } else {
        if by_status.contains_key(&JobStatus::Queued) {
            eprintln!("interrupted: `flowctl run --resume` finishes the queued jobs");
        }
        EXIT_FAILURE
    }
}

/// A bar on stderr when it is a terminal.
fn progress_bar(total: usize) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total as u64);
    let style = ProgressStyle::with_template("backfill [{bar:40}] {pos}/{len} fires {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    Some(bar)
}

fn print_summary(schedule: &str, args: &BackfillArgs, s: &Summary, dry_run: bool) {
    let rows = [
        ("fires planned", s.fires_planned),
        (
            if dry_run {
                "fires to create"
            } else {
                "fires created"
            },
            if dry_run {
                s.fires_planned - s.fires_existing
            } else {
                s.fires_created
            },
        ),
        ("fires existing", s.fires_existing),
        ("jobs created", s.jobs_created),
    ];
    let mut out = format!(
        "backfill of {schedule} from {} to {}{}\n",
        args.from,
        args.to,
        if dry_run {
            " (dry run: nothing created)"
        } else {
            ""
        }
    );
    for (what, n) in rows {
        out.push_str(&format!("  {what:<16} {n:>7}\n"));
    }
    out!("{out}");
}
