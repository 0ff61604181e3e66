//! `flowctl run`: queue reports, run them and their whole cascade of
//! dependents to completion against the embedded store, with progress, then
//! print every job.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use super::{
    block_on, compiled_workflow, error, start_engine, Started, StoreArgs, EXIT_FAILURE, EXIT_OK,
};
use crate::executor::{Engine, ExecEvent, JobRefused, Trigger, WindowRequest};
use crate::job::{Job, JobId, JobRequest, JobStatus, NewJob, Principal};
use crate::params::{Given, ParamError, ParamSpec};
use crate::store::{ListFilter, Store};
use crate::workflow::{DataFormat, Workflow};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The workflow: .flow files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub includes: super::IncludeArgs,
    /// Report types to queue (repeatable). Default: every scheduled report,
    /// for each role (and county) of its schedules, as if they all fired now.
    #[arg(long = "report", short = 'r')]
    pub reports: Vec<String>,
    /// Role of the principal for `--report` jobs (default: the first role of the
    /// config's `all_counties`, else the first declared role). A county-scoped role
    /// needs `--county`.
    #[arg(long)]
    pub role: Option<String>,
    /// County of the principal for `--report` jobs: required for a county-scoped role;
    /// restricts a role that sees all counties to one.
    #[arg(long)]
    pub county: Option<String>,
    /// Request settings: chunk_size=N, format=csv|jsonl, priority=N, target=NAME.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub trigger: TriggerArgs,
    /// Queue nothing new: finish what an interrupted run left.
    #[arg(long, conflicts_with_all = ["reports", "set"])]
    pub resume: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Override the workflow's worker pool size.
    #[arg(long)]
    pub workers: Option<u32>,
}

/// What a manual trigger gives its `--report` jobs: parameter values and a window (the same
/// as the HTTP trigger's `params` and `window`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TriggerArgs {
    /// A value for a parameter the report declares, parsed by its declared type
    /// (repeatable): `--param since=2026-11-01 --param status=OPEN`. With several
    /// `--report`s, each gets the values of the parameters it declares. Omitted ones get
    /// their default; a required one must be given.
    #[arg(long = "param", value_name = "NAME=VALUE", requires = "reports")]
    pub params: Vec<String>,
    /// The period of data to cover: a day 2026-11-30, an ISO week 2026-W48, a month 2026-11,
    /// a quarter 2026-Q4 or a year 2026 (in --zone). Default: the report's own window as of
    /// now, if it declares one.
    #[arg(long, value_name = "PERIOD", requires = "reports",
          conflicts_with_all = ["window_start", "window_end"])]
    pub period: Option<String>,
    /// The first instant of the window to cover (RFC 3339, e.g. 2026-11-30T00:00:00Z); with
    /// --window-end.
    #[arg(long, value_name = "INSTANT", requires_all = ["reports", "window_end"])]
    pub window_start: Option<String>,
    /// The instant the window ends, excluded (RFC 3339); with --window-start.
    #[arg(long, value_name = "INSTANT", requires = "window_start")]
    pub window_end: Option<String>,
    /// The IANA zone the window's days and local dates are read in (default: the report's
    /// zone, else UTC).
    #[arg(long, value_name = "ZONE", requires = "reports")]
    pub zone: Option<String>,
}

impl TriggerArgs {
    /// The window named, if any.
    pub fn window(&self) -> Result<Option<WindowRequest>, String> {
        let instant = |flag: &str, text: &str| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    format!("{flag} {text}: not an RFC 3339 instant (2026-11-30T00:00:00Z): {e}")
                })
        };
        Ok(match (&self.period, &self.window_start, &self.window_end) {
            (Some(name), _, _) => Some(WindowRequest::Period {
                name: name.clone(),
                zone: self.zone.clone(),
            }),
            (None, Some(start), Some(end)) => Some(WindowRequest::Span {
                start: instant("--window-start", start)?,
                end: instant("--window-end", end)?,
                zone: self.zone.clone(),
            }),
            (None, None, None) if self.zone.is_some() => {
                return Err(
                    "--zone is the zone of --period or --window-start/--window-end; give one"
                        .into(),
                )
            }
            _ => None,
        })
    }

    /// The trigger of `reports`' jobs: each gets the `--param` values of the parameters it
    /// declares; a name none of them declares is refused (with a did-you-mean).
    pub fn triggers(
        &self,
        workflow: &Workflow,
        reports: &[String],
    ) -> Result<HashMap<String, Trigger>, ParamError> {
        let given = crate::params::parse_cli_pairs(&self.params)?;
        let declared: Vec<ParamSpec> = reports
            .iter()
            .filter_map(|r| workflow.report(r))
            .flat_map(|r| r.params.iter().cloned())
            .collect();
        let unknown: BTreeMap<String, Given> = given
            .iter()
            .filter(|(name, _)| !declared.iter().any(|s| &s.name == *name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !unknown.is_empty() {
            crate::params::resolve(&declared, &unknown)?;
        }
        Ok(reports
            .iter()
            .map(|name| {
                let params = workflow
                    .report(name)
                    .map(|r| {
                        given
                            .iter()
                            .filter(|(k, _)| r.params.iter().any(|s| &s.name == *k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    name.clone(),
                    Trigger {
                        params,
                        ..Trigger::default()
                    },
                )
            })
            .collect())
    }
}

/// Parses `--set` pairs into a request.
pub fn request_from_sets(sets: &[String]) -> Result<JobRequest, String> {
    let mut request = JobRequest::default();
    for set in sets {
        let Some((key, value)) = set.split_once('=') else {
            return Err(format!("--set {set}: expected KEY=VALUE"));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "chunk_size" => {
                let n: u32 = value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    format!("--set chunk_size={value}: expected a whole number ≥ 1")
                })?;
                request.chunk_size = Some(n);
            }
            "format" => {
                DataFormat::from_name(value)
                    .ok_or_else(|| format!("--set format={value}: expected csv or jsonl"))?;
                request.data_format = Some(value.to_string());
            }
            "priority" => {
                let n: u8 = value
                    .parse()
                    .map_err(|_| format!("--set priority={value}: expected 0..255"))?;
                request.priority = Some(n);
            }
            "target" => request.target_system = Some(value.to_string()),
            other => {
                return Err(format!(
                    "--set {other}: unknown parameter (chunk_size, format, priority, target)"
                ))
            }
        }
    }
    Ok(request)
}

/// The root jobs of a run.
fn root_jobs(
    engine: &Engine,
    workflow: &Workflow,
    args: &RunArgs,
    trigger: &str,
) -> Result<Vec<NewJob>, String> {
    let request = request_from_sets(&args.set)?;
    let mut jobs = Vec::new();
    if args.reports.is_empty() {
        let now = Utc::now();
        for schedule in &workflow.schedules {
            jobs.extend(crate::scheduler::fire_jobs(
                engine, schedule, trigger, &request, now,
            ));
        }
        return Ok(jobs);
    }
    let window = args.trigger.window()?;
    let mut triggers = args
        .trigger
        .triggers(workflow, &args.reports)
        .map_err(|e| format!("--param {e}"))?;
    let role = match &args.role {
        Some(r) if workflow.roles.contains(r) => r.clone(),
        Some(r) => {
            let hint =
                crate::diagnostic::did_you_mean(r, workflow.roles.iter().map(String::as_str))
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
            return Err(format!(
                "unknown role {r}{hint}; declared: {}",
                workflow.roles.join(", ")
            ));
        }
        // The first role that sees every county, so a bare `--report` runs unscoped only
        // where the workflow allows it; else the first declared role (which then needs
        // `--county`).
        None => workflow
            .all_counties
            .first()
            .or(workflow.roles.first())
            .cloned()
            .ok_or("the workflow declares no roles; pass --role")?,
    };
    for report in &args.reports {
        let principal = Principal {
            subject: "cli".into(),
            role: role.clone(),
            county: args.county.clone(),
        };
        let mut given = triggers.remove(report).unwrap_or_default();
        given.window.clone_from(&window);
        match engine.new_job_for(report, principal, trigger, request.clone(), &given) {
            Ok(job) => jobs.push(job),
            Err(JobRefused::UnknownReport(_)) => {
                let names = workflow.reports.iter().map(|r| r.name.as_str());
                let hint = crate::diagnostic::did_you_mean(report, names)
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
                return Err(format!("unknown report {report}{hint}"));
            }
            Err(JobRefused::CountyRequired(e)) => {
                return Err(format!("{e}: pass --county"));
            }
            Err(JobRefused::Param(e)) => return Err(format!("{report}: --param {e}")),
            Err(e @ JobRefused::Window(_)) => return Err(format!("{report}: {e}")),
            Err(e @ JobRefused::WindowRequired { .. }) => {
                return Err(format!(
                    "{e} (--period 2026-11-30, or --window-start and --window-end)"
                ))
            }
        }
    }
    Ok(jobs)
}

pub fn run(args: RunArgs) -> u8 {
    match compiled_workflow(&args.paths, &args.includes, true) {
        Ok(workflow) => block_on(run_async(Arc::new(workflow), args)),
        Err(code) => code,
    }
}

async fn run_async(workflow: Arc<Workflow>, args: RunArgs) -> u8 {
    let (tx, rx) = mpsc::unbounded_channel();
    let selection = args.store.selection();
    // Jobs left running by a process that died are taken back first (a
    // shared store takes back only expired leases: other machines may be
    // running the rest).
    let Started {
        engine,
        store,
        recovered,
    } = match start_engine(workflow.clone(), &selection, args.workers, Some(tx)).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let n = recovered.requeued.len() + recovered.finished.len();
    if n > 0 {
        eprintln!("recovered {n} job(s) left running by an interrupted run");
    }
    // The jobs of this run: what it queues or resumes, what recovery took
    // back, and every dependent the cascade creates (seen through events).
    // Only these are read back at the end, never the whole store.
    let mut ids: BTreeSet<JobId> = recovered.requeued.iter().cloned().collect();
    for c in &recovered.finished {
        ids.insert(c.job.job_id.clone());
        ids.extend(c.children_created.iter().map(|j| j.job_id.clone()));
    }
    if args.resume {
        match unfinished(store.as_ref()).await {
            Ok(jobs) => ids.extend(jobs.into_iter().map(|j| j.job_id)),
            Err(e) => return error(e),
        }
        if ids.is_empty() {
            eprintln!("nothing to resume");
        }
    } else {
        let trigger = format!("run:{:08x}", rand::random::<u32>());
        let jobs = match root_jobs(&engine, &workflow, &args, &trigger) {
            Ok(j) => j,
            Err(e) => return error(e),
        };
        if jobs.is_empty() {
            eprintln!("nothing to run: no --report given and the workflow has no schedules");
            return EXIT_OK;
        }
        match store.enqueue(jobs, None, Utc::now()).await {
            Ok(queued) => ids.extend(queued.job_ids()),
            Err(e) => return error(format!("cannot queue jobs: {e}")),
        }
    }

    let display = tokio::spawn(show_progress(rx));
    let shutdown = shutdown_signal();
    let result = engine.clone().run(shutdown, true).await;
    drop(engine);
    ids.extend(display.await.unwrap_or_default());
    if let Err(e) = result {
        return error(format!("store failure: {e}"));
    }

    let mut jobs = Vec::with_capacity(ids.len());
    for id in &ids {
        match store.get(id).await {
            Ok(Some(job)) => jobs.push(job),
            Ok(None) => {}
            Err(e) => return error(format!("cannot read job {id}: {e}")),
        }
    }
    jobs.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then(a.job_id.as_str().cmp(b.job_id.as_str()))
    });
    print_table(&jobs);
    let unfinished = jobs.iter().filter(|j| !j.status.is_terminal()).count();
    if unfinished > 0 {
        eprintln!(
            "interrupted: {unfinished} job(s) not finished; `flowctl run --resume` finishes them"
        );
        return EXIT_FAILURE;
    }
    if jobs.iter().all(|j| j.status == JobStatus::Completed) {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("shutting down: finishing running jobs (Ctrl-C again to abort)");
}

async fn all_jobs(store: &dyn Store, status: Option<JobStatus>) -> Result<Vec<Job>, String> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(ListFilter {
                status,
                limit: ListFilter::MAX_LIMIT,
                cursor,
                ..ListFilter::default()
            })
            .await
            .map_err(|e| format!("cannot list jobs: {e}"))?;
        out.extend(page.jobs);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// Jobs still queued (after recovery, nothing is left running).
async fn unfinished(store: &dyn Store) -> Result<Vec<Job>, String> {
    all_jobs(store, Some(JobStatus::Queued)).await
}

/// Removes temporary result files left by a process that died mid-write, in each report's
/// directory and in its window directories (`<REPORT>/<window>/`).
/// Only files whose writer is not alive are removed, so a concurrent worker
/// on this machine keeps its own.
pub fn sweep_temp_files(results: &Path) {
    let Ok(types) = std::fs::read_dir(results) else {
        return;
    };
    let mut dirs: Vec<std::path::PathBuf> = types.flatten().map(|d| d.path()).collect();
    let windows: Vec<std::path::PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.extend(windows);
    for dir in dirs {
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            let Some(rest) = name.split(".tmp-").nth(1) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| {
                p == std::process::id() || Path::new(&format!("/proc/{p}")).exists()
            });
            if !alive {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
}

/// Draws progress until the executor is gone; returns the ids of the jobs
/// that started and of the dependents created.
pub(super) async fn show_progress(mut rx: mpsc::UnboundedReceiver<ExecEvent>) -> BTreeSet<JobId> {
    let mut seen = BTreeSet::new();
    let fancy = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:<40} [{bar:30}] {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    while let Some(event) = rx.recv().await {
        match event {
            ExecEvent::Started { job, .. } => {
                seen.insert(job.job_id.clone());
                let label = format!("{} {} {}", job.job_id, job.report_type, scope(&job));
                if fancy {
                    let bar = multi.add(ProgressBar::new(100));
                    bar.set_style(style.clone());
                    bar.set_prefix(label);
                    bars.insert(job.job_id.to_string(), bar);
                } else {
                    eprintln!("started   {label} (attempt {})", job.attempt);
                }
            }
            ExecEvent::Progress {
                job_id,
                rows_read,
                rows_total,
            } => {
                if let Some(bar) = bars.get(job_id.as_str()) {
                    let pct = (rows_read * 100).checked_div(rows_total).unwrap_or(0);
                    bar.set_position(pct.min(100));
                    // A total of 0: not known up front (a database query).
                    if rows_total == 0 {
                        bar.set_message(format!("{rows_read} rows"));
                    } else {
                        bar.set_message(format!("{rows_read}/{rows_total} rows"));
                    }
                }
            }
            ExecEvent::Retrying { job } => {
                let msg = format!(
                    "retrying {} {}: {}",
                    job.job_id,
                    job.report_type,
                    job.error.as_deref().unwrap_or("failed")
                );
                match bars.remove(job.job_id.as_str()) {
                    Some(bar) => bar.abandon_with_message(msg),
                    None => eprintln!("{msg}"),
                }
            }
            ExecEvent::Completing { .. } | ExecEvent::Durable { .. } => {}
            ExecEvent::Finished { job, children } => {
                seen.extend(children.iter().map(|c| c.job_id.clone()));
                let msg = match job.status {
                    JobStatus::Completed => format!("{} rows", job.rows_written),
                    JobStatus::Failed => format!("FAILED: {}", job.error.as_deref().unwrap_or("")),
                    other => other.as_str().to_string(),
                };
                let mut line = format!(
                    "{:<9} {} {} {} {msg}",
                    job.status.as_str().to_lowercase(),
                    job.job_id,
                    job.report_type,
                    scope(&job)
                );
                if !children.is_empty() {
                    let names: Vec<String> = children
                        .iter()
                        .map(|c| format!("{} {}", c.report_type, c.job_id))
                        .collect();
                    line.push_str(&format!(" → {}", names.join(", ")));
                }
                match bars.remove(job.job_id.as_str()) {
                    Some(bar) => {
                        bar.set_position(100);
                        bar.finish_with_message(msg);
                        if !children.is_empty() {
                            let _ = multi.println(line);
                        }
                    }
                    None => eprintln!("{line}"),
                }
            }
        }
    }
    seen
}

fn scope(job: &Job) -> String {
    match &job.county {
        Some(c) => format!("({} {c})", job.role),
        None => format!("({})", job.role),
    }
}

fn print_table(jobs: &[Job]) {
    let mut rows: Vec<[String; 8]> = vec![[
        "JOB".into(),
        "REPORT".into(),
        "ROLE".into(),
        "COUNTY".into(),
        "STATUS".into(),
        "ROWS".into(),
        "DURATION".into(),
        "RESULT".into(),
    ]];
    for j in jobs {
        let duration = match (j.started_at, j.completed_at) {
            (Some(s), Some(c)) => {
                let d = (c - s).to_std().unwrap_or_default();
                format_duration(d)
            }
            _ => "-".into(),
        };
        rows.push([
            j.job_id.to_string(),
            j.report_type.clone(),
            j.role.clone(),
            j.county.clone().unwrap_or_else(|| "-".into()),
            j.status.as_str().to_string(),
            j.rows_written.to_string(),
            duration,
            j.result_path
                .clone()
                .or_else(|| j.error.clone())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i == 7 {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    let completed = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Completed)
        .count();
    out.push_str(&format!("{completed} of {} jobs completed\n", jobs.len()));
    out!("{out}");
}

pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        crate::compiler::humanize(Duration::from_secs(d.as_secs()))
    }
}
