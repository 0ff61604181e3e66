//! `flowctl jobs`: list, show, cancel and retry jobs in the store.

use std::path::PathBuf;

use chrono::Utc;

use super::{error, open_store, open_store_read_only, StoreArgs, EXIT_FAILURE, EXIT_OK};
use crate::job::{Job, JobId, JobStatus, NewJob, Principal};
use crate::store::{CancelOutcome, ListFilter, Store};

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub command: JobsCommand,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first, with a summary by status.
    List {
        /// Only jobs in this status: QUEUED, PROCESSING, COMPLETED, FAILED or CANCELLED.
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this report type (a typo gets a "did you mean").
        #[arg(long)]
        report: Option<String>,
        /// Check `--report` against this workflow's report types (.flow files or directories);
        /// default: against the stored jobs' report types.
        #[arg(long, value_name = "PATH")]
        workflow: Vec<PathBuf>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the records as JSON lines (the HTTP API's field names).
        #[arg(long)]
        json: bool,
    },
    /// Every field of one job, its parents and its children.
    Show {
        /// The job id (JOB_ followed by 8 characters).
        id: String,
        /// Print the record as JSON (the HTTP API's field names), with `childJobIds`.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued job at once, or a running one at its next chunk.
    Cancel {
        /// The job id (JOB_ followed by 8 characters).
        id: String,
    },
    /// Queue a new attempt of a failed or cancelled job (a new job id).
    Retry {
        /// The job id of the failed or cancelled job.
        id: String,
    },
}

pub fn run(args: JobsArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return error(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        // Reading commands never write the store (not even sled's own recovery at open).
        let read_only = matches!(
            args.command,
            JobsCommand::List { .. } | JobsCommand::Show { .. }
        );
        let selection = args.store.selection();
        let opened = if read_only {
            open_store_read_only(&selection).await
        } else {
            open_store(&selection).await.map(|(store, _)| store)
        };
        let store = match opened {
            Ok(s) => s,
            Err(code) => return code,
        };
        match args.command {
            JobsCommand::List {
                status,
                report,
                workflow,
                limit,
                json,
            } => {
                if let Some(report) = &report {
                    if let Err(code) = check_report_type(store.as_ref(), report, &workflow).await {
                        return code;
                    }
                }
                list(store.as_ref(), status, report, limit, json).await
            }
            JobsCommand::Show { id, json } => show(store.as_ref(), &id, json).await,
            JobsCommand::Cancel { id } => cancel(store.as_ref(), &id).await,
            JobsCommand::Retry { id } => retry(store.as_ref(), &id).await,
        }
    })
}

fn parse_id(id: &str) -> Result<JobId, u8> {
    id.parse::<JobId>().map_err(|_| {
        error(format!(
            "`{id}` is not a job id (JOB_ followed by 8 characters)"
        ))
    })
}

/// How many stored jobs `jobs list --report` reads, at most, to suggest a report type.
const REPORT_TYPE_SCAN: usize = 10_000;

/// `--report` must name a report type of `--workflow` when one is given, else the report type
/// of some stored job: a typo is an error (exit 2) with a "did you mean", not an empty list. An
/// empty store without `--workflow` knows no report type and accepts any.
async fn check_report_type(
    store: &dyn Store,
    report: &str,
    workflow: &[PathBuf],
) -> Result<(), u8> {
    let known: Vec<String> = if workflow.is_empty() {
        let probe = ListFilter {
            report_type: Some(report.to_string()),
            limit: 1,
            ..ListFilter::default()
        };
        match store.list(probe).await {
            Ok(page) if !page.jobs.is_empty() => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(error(format!("cannot list jobs: {e}"))),
        }
        // No job has `report` (the probe is exact): collect the types jobs do have, for the
        // suggestion, from the newest jobs only.
        let mut types = std::collections::BTreeSet::new();
        let (mut cursor, mut seen) = (None, 0);
        while seen < REPORT_TYPE_SCAN {
            let filter = ListFilter {
                limit: ListFilter::MAX_LIMIT,
                cursor,
                ..ListFilter::default()
            };
            let page = match store.list(filter).await {
                Ok(p) => p,
                Err(e) => return Err(error(format!("cannot list jobs: {e}"))),
            };
            seen += page.jobs.len();
            types.extend(page.jobs.into_iter().map(|j| j.report_type));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        if types.is_empty() {
            return Ok(());
        }
        types.into_iter().collect()
    } else {
        let w = super::compiled_workflow(workflow, &super::IncludeArgs::default(), true)?;
        if w.reports.iter().any(|r| r.name == report) {
            return Ok(());
        }
        w.reports.into_iter().map(|r| r.name).collect()
    };
    let hint = match crate::diagnostic::did_you_mean(report, known.iter().map(String::as_str)) {
        Some(name) => format!("did you mean `{name}`?"),
        None => format!("known: {}", known.join(", ")),
    };
    Err(error(format!("unknown report type `{report}`; {hint}")))
}

fn parse_status(s: &str) -> Result<JobStatus, u8> {
    s.to_uppercase().parse::<JobStatus>().map_err(|_| {
        error(format!(
            "unknown status `{s}` (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)"
        ))
    })
}

async fn list(
    store: &dyn Store,
    status: Option<String>,
    report: Option<String>,
    limit: usize,
    json: bool,
) -> u8 {
    let status = match status.as_deref().map(parse_status).transpose() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut jobs = Vec::new();
    let mut cursor = None;
    while jobs.len() < limit {
        let page = match store
            .list(ListFilter {
                status,
                report_type: report.clone(),
                limit: (limit - jobs.len()).min(ListFilter::MAX_LIMIT),
                cursor,
                ..ListFilter::default()
            })
            .await
        {
            Ok(p) => p,
            Err(e) => return error(format!("cannot list jobs: {e}")),
        };
        jobs.extend(page.jobs);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    if json {
        for j in &jobs {
            outln!("{}", serde_json::to_string(j).unwrap_or_default());
        }
        return EXIT_OK;
    }
    outln!(
        "{:<12}  {:<20}  {:<12}  {:<6}  {:<10}  {:>4}  {:>8}  CREATED",
        "JOB",
        "REPORT",
        "ROLE",
        "COUNTY",
        "STATUS",
        "PROG",
        "ROWS"
    );
    for j in &jobs {
        outln!(
            "{:<12}  {:<20}  {:<12}  {:<6}  {:<10}  {:>3}%  {:>8}  {}",
            j.job_id.as_str(),
            j.report_type,
            j.role,
            j.county.as_deref().unwrap_or("-"),
            j.status.as_str(),
            j.progress,
            j.rows_written,
            j.created_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    if let Ok(counts) = store.counts().await {
        let summary: Vec<String> = counts
            .iter()
            .map(|(s, n)| format!("{} {n}", s.as_str()))
            .collect();
        outln!("{}", summary.join(" · "));
    }
    EXIT_OK
}

async fn find(store: &dyn Store, id: &str) -> Result<Job, u8> {
    let id = parse_id(id)?;
    match store.get(&id).await {
        Ok(Some(j)) => Ok(j),
        Ok(None) => Err(error(format!("no job {id}"))),
        Err(e) => Err(error(format!("cannot read job {id}: {e}"))),
    }
}

async fn show(store: &dyn Store, id: &str, json: bool) -> u8 {
    let job = match find(store, id).await {
        Ok(j) => j,
        Err(code) => return code,
    };
    let children = store.children(&job.job_id).await.unwrap_or_default();
    if json {
        let mut value = serde_json::to_value(&job).unwrap_or_default();
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "childJobIds".into(),
                children
                    .iter()
                    .map(|c| serde_json::Value::String(c.job_id.to_string()))
                    .collect(),
            );
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return EXIT_OK;
    }
    let opt = |t: Option<chrono::DateTime<Utc>>| t.map_or("-".to_string(), |t| t.to_rfc3339());
    let fields = [
        ("job", job.job_id.to_string()),
        ("status", job.status.as_str().to_string()),
        ("report", job.report_type.clone()),
        (
            "principal",
            format!(
                "{} as {} in {}",
                job.subject,
                job.role,
                job.county.as_deref().unwrap_or("all counties")
            ),
        ),
        ("trigger", job.trigger_id.clone()),
        (
            "parents",
            if job.parent_job_ids.is_empty() {
                "-".into()
            } else {
                job.parent_job_ids
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "children",
            if children.is_empty() {
                "-".into()
            } else {
                children
                    .iter()
                    .map(|c| format!("{} ({})", c.job_id, c.report_type))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("request", request_settings(&job.request)),
        ("window", window_line(job.request.window.as_ref())),
        ("params", params_lines(&job.request.params)),
        ("priority", job.priority.to_string()),
        (
            "attempt",
            format!("{} of {}", job.attempt, job.max_attempts),
        ),
        ("progress", format!("{}%", job.progress)),
        ("rows", job.rows_written.to_string()),
        (
            "result",
            job.result_path.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "sha256",
            job.result_sha256.clone().unwrap_or_else(|| "-".into()),
        ),
        ("error", job.error.clone().unwrap_or_else(|| "-".into())),
        ("created", job.created_at.to_rfc3339()),
        ("started", opt(job.started_at)),
        ("completed", opt(job.completed_at)),
        ("estimated", opt(job.estimated_completion)),
        (
            "lease",
            format!(
                "{} until {}",
                job.lease_owner.as_deref().unwrap_or("-"),
                opt(job.lease_until)
            ),
        ),
        ("version", job.version.to_string()),
    ];
    for (k, v) in fields {
        outln!("{k:<10} {v}");
    }
    EXIT_OK
}

/// The request's settings (chunk size, format, priority, target), as JSON; `-` if none.
fn request_settings(request: &crate::job::JobRequest) -> String {
    let settings = crate::job::JobRequest {
        params: Default::default(),
        window: None,
        ..request.clone()
    };
    let mut value = serde_json::to_value(&settings).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        obj.retain(|k, v| !v.is_null() && k != "params" && k != "window");
        if obj.is_empty() {
            return "-".into();
        }
    }
    value.to_string()
}

/// `2026-11-30 (day, Europe/Berlin): 2026-11-30T00:00:00+01:00 to 2026-12-01T00:00:00+01:00`.
pub(super) fn window_line(window: Option<&crate::window::Window>) -> String {
    let Some(w) = window else {
        return "-".into();
    };
    let kind = match w.kind {
        crate::window::WindowKind::Period(p) => p.name(),
        crate::window::WindowKind::Span => "span",
    };
    let zone = w.tz();
    format!(
        "{} ({kind}, {}): {} to {} (end excluded)",
        w.label(),
        w.zone,
        w.start.with_timezone(&zone).to_rfc3339(),
        w.end.with_timezone(&zone).to_rfc3339()
    )
}

/// One `name (type) = value` per parameter, aligned under the first; `-` if none.
fn params_lines(params: &std::collections::BTreeMap<String, crate::params::ParamValue>) -> String {
    if params.is_empty() {
        return "-".into();
    }
    let lines: Vec<String> = params
        .iter()
        .map(|(name, value)| {
            // A string is quoted, escaped and cut, so it shows on one line as what it is.
            let text = match value {
                crate::params::ParamValue::String(s) => {
                    crate::diagnostic::bounded(format!("{s:?}"))
                }
                other => other.to_string(),
            };
            format!("{name} ({}) = {text}", value.type_name())
        })
        .collect();
    lines.join(&format!("\n{:<10} ", ""))
}

async fn cancel(store: &dyn Store, id: &str) -> u8 {
    let id = match parse_id(id) {
        Ok(i) => i,
        Err(code) => return code,
    };
    match store.cancel(&id, Utc::now()).await {
        Ok(CancelOutcome::Cancelled(j)) => {
            outln!("{} cancelled", j.job_id);
            EXIT_OK
        }
        Ok(CancelOutcome::Requested(j)) => {
            outln!("{} is running: it stops at its next chunk", j.job_id);
            EXIT_OK
        }
        Ok(CancelOutcome::AlreadyFinished(j)) => {
            eprintln!("{} already finished ({})", j.job_id, j.status.as_str());
            EXIT_FAILURE
        }
        Ok(CancelOutcome::NotFound) => error(format!("no job {id}")),
        Err(e) => error(format!("cannot cancel {id}: {e}")),
    }
}

async fn retry(store: &dyn Store, id: &str) -> u8 {
    let job = match find(store, id).await {
        Ok(j) => j,
        Err(code) => return code,
    };
    if !matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
        eprintln!(
            "{} is {}: only FAILED or CANCELLED jobs can be retried",
            job.job_id,
            job.status.as_str()
        );
        return EXIT_FAILURE;
    }
    // The status machine has no way back from FAILED: a retry is a new job
    // with the same request, principal, parents and trigger.
    let new = NewJob {
        report_type: job.report_type.clone(),
        principal: Principal {
            subject: job.subject.clone(),
            role: job.role.clone(),
            county: job.county.clone(),
        },
        parent_job_ids: job.parent_job_ids.clone(),
        trigger_id: job.trigger_id.clone(),
        request: job.request.clone(),
        priority: job.priority,
        max_attempts: job.max_attempts,
        estimated_completion: None,
    };
    match store.enqueue(vec![new], None, Utc::now()).await {
        Ok(e) => {
            let ids = e.job_ids();
            outln!(
                "queued {} (retry of {}); `flowctl run FILE --resume` runs it",
                ids.first().map(|i| i.to_string()).unwrap_or_default(),
                job.job_id
            );
            EXIT_OK
        }
        Err(e) => error(format!("cannot queue the retry: {e}")),
    }
}
