//! Runs ready jobs: a dispatcher that claims from the store and a bounded
//! pool of workers that run the report pipeline, renew their lease, observe
//! cancellation and timeouts, retry with backoff and complete the job (which
//! fires its dependents in the same store transaction).
//!
//! **Architecture invariant:** never more jobs run than `worker_pool_size`:
//! the dispatcher claims only as many jobs as it has free permits.
//!
//! The files: `dispatcher` (claims and the pool), `attempt` (one attempt of a job: its
//! pipeline spec, the pipeline beside the lease heartbeat, retries' backoff), `durability`
//! (the stage that makes written results durable in batches and records their completions,
//! off the pool slots), `completion` (recording the outcome, which claims the worker's next
//! job), `estimates` (row counts and throughput), `joins` (the dependency edges the store
//! fires) and `results` (result file names and what a lost attempt leaves).

mod attempt;
mod completion;
mod dispatcher;
mod durability;
mod estimates;
mod joins;
mod results;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::mpsc;

use crate::job::{Job, JobId, JobRequest, NewJob, Principal};
use crate::metrics::Metrics;
use crate::params::{Given, ParamError};
use crate::pipeline::SyncMethod;
use crate::store::{Store, StoreError};
use crate::window::{Window, WindowError};
use crate::workflow::{CountyRequired, ReportType, Workflow};

use estimates::RowCounts;

pub use joins::Joins;
pub use results::result_file_name;

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Names this process in `lease_owner`.
    pub worker_id: String,
    pub pool_size: usize,
    pub max_jobs_per_poll: usize,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub dependencies_enabled: bool,
    pub results_dir: PathBuf,
    /// Key of the `hash` mask method.
    pub hash_key: [u8; 32],
    /// On shutdown, how long running jobs may take to finish before they are
    /// abandoned to lease recovery.
    pub grace: Duration,
    /// How the durability stage makes a batch of results durable (`durability`; default
    /// `auto`: `syncfs` for several files, `fdatasync` for one, measured in
    /// `pipeline::result_file`; `FLOWCTL_RESULT_SYNC` sets it for `run` and `serve`).
    pub result_sync: SyncMethod,
}

impl ExecutorConfig {
    pub fn from_workflow(workflow: &Workflow, hash_key: [u8; 32]) -> ExecutorConfig {
        let c = &workflow.config;
        ExecutorConfig {
            worker_id: default_worker_id(),
            pool_size: c.worker_pool_size as usize,
            max_jobs_per_poll: c.max_jobs_per_poll as usize,
            poll_interval: c.poll_interval,
            lease: c.lease,
            dependencies_enabled: c.dependencies_enabled,
            results_dir: c.results_dir.clone(),
            hash_key,
            grace: Duration::from_secs(30),
            result_sync: SyncMethod::default(),
        }
    }
}

/// `host:pid:random`, unique per process run.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}:{}:{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Why [`Engine::new_job`] made no job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRefused {
    #[error("unknown report type {0}")]
    UnknownReport(String),
    #[error(transparent)]
    CountyRequired(#[from] CountyRequired),
    /// A parameter value is unknown, missing or ill-typed ([`ParamError::code`] says which).
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The window the trigger gave cannot be made (an unknown zone, an end not after its
    /// start, a period that is not one).
    #[error("window: {0}")]
    Window(#[from] WindowError),
    /// The report's query reads the window, and neither the trigger nor the report gave one.
    #[error(
        "report {report} reads its data window (:interval_start, :interval_end) and has no \
         default window: give one (a period such as 2026-11-30 or 2026-11, or a start and an \
         end), or declare a `window` for the report"
    )]
    WindowRequired { report: String },
}

impl JobRefused {
    /// A stable code for each refusal (the HTTP API's error code).
    pub fn code(&self) -> &'static str {
        match self {
            JobRefused::UnknownReport(_) => "unknown_report",
            JobRefused::CountyRequired(_) => "county_required",
            JobRefused::Param(e) => e.code,
            JobRefused::Window(_) => "invalid_window",
            JobRefused::WindowRequired { .. } => "window_required",
        }
    }
}

/// What a trigger gives a job beside its principal and request: parameter values, a window,
/// and when it happened. The default (nothing given, now) is a plain manual trigger.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trigger {
    /// Parameter values as given: text from the command line, JSON from the API. Checked
    /// against the report's declarations by [`crate::params::resolve`].
    pub params: BTreeMap<String, Given>,
    /// The window the trigger names; `None`: the report's default window at [`Trigger::at`].
    pub window: Option<WindowRequest>,
    /// When the trigger happened (a fire's time); `None`: now.
    pub at: Option<DateTime<Utc>>,
}

/// A window as a trigger names it.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowRequest {
    /// `[start, end)`, its local dates read in `zone` (default: the report's `zone`).
    Span {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        zone: Option<String>,
    },
    /// A calendar period by name ([`Window::period`]: `2026-11-30`, `2026-W48`, `2026-11`,
    /// `2026-Q4`, `2026`), in `zone` (default: the report's `zone`).
    Period { name: String, zone: Option<String> },
    /// A window already decided: a schedule fire's, evaluated at the fire time.
    Decided(Window),
}

impl WindowRequest {
    /// The window this names, for `report`.
    pub fn window(&self, report: &ReportType) -> Result<Window, WindowError> {
        let zone = |zone: &Option<String>| -> Result<Tz, WindowError> {
            match zone {
                None => Ok(report.zone),
                Some(name) => name.parse().map_err(|_| {
                    WindowError::UnknownZone(crate::diagnostic::bounded(name.clone()))
                }),
            }
        };
        match self {
            WindowRequest::Span {
                start,
                end,
                zone: z,
            } => Window::between(*start, *end, zone(z)?.name()),
            WindowRequest::Period { name, zone: z } => Window::period(name, zone(z)?),
            WindowRequest::Decided(window) => Ok(window.clone()),
        }
    }
}

/// The window a job of `report` covers: the one `trigger` names, else the report's default at
/// the trigger's time; refused when there is none and the report's query reads it.
pub fn decide_window(
    report: &ReportType,
    trigger: &Trigger,
    now: DateTime<Utc>,
) -> Result<Option<Window>, JobRefused> {
    let window = match (&trigger.window, report.window) {
        (Some(request), _) => Some(request.window(report)?),
        (None, Some(spec)) => Some(spec.window_at(trigger.at.unwrap_or(now), report.zone)?),
        (None, None) => None,
    };
    if window.is_none() && report.query.as_ref().is_some_and(|q| q.uses_window()) {
        return Err(JobRefused::WindowRequired {
            report: report.name.clone(),
        });
    }
    Ok(window.map(Window::truncated_to_micros))
}

/// What the executor reports while it runs, for progress displays.
#[derive(Debug, Clone)]
pub enum ExecEvent {
    /// A worker began an attempt (`at`: when it did).
    Started {
        job: Job,
        at: Instant,
    },
    Progress {
        job_id: JobId,
        rows_read: u64,
        rows_total: u64,
    },
    Finished {
        job: Job,
        children: Vec<Job>,
    },
    /// The attempt failed and the job was queued again.
    Retrying {
        job: Job,
    },
    /// The worker is handing its outcome on (the job's work is done, its slot
    /// free for the next job): to the store, or a written result to the
    /// durability stage, which makes it durable first; `Finished` follows once
    /// the store has recorded it.
    Completing {
        job_id: JobId,
        report_type: String,
        at: Instant,
    },
    /// The durability stage made the job's result durable and put it in place, and is
    /// recording its completion now: what `Completing` marked before the stage existed, so the
    /// span from here to a dependent's `Started` is the engine's dependent start.
    Durable {
        job_id: JobId,
        report_type: String,
        at: Instant,
    },
}

/// Everything a running engine shares: workflow, store, joins, metrics.
pub struct Engine {
    pub workflow: Arc<Workflow>,
    pub store: Arc<dyn Store>,
    pub joins: Joins,
    pub config: ExecutorConfig,
    pub metrics: Arc<Metrics>,
    events: Option<mpsc::UnboundedSender<ExecEvent>>,
    /// Observed rows per second per report type (moving average).
    throughput: Mutex<HashMap<String, f64>>,
    /// Woken when a retry's backoff ends, so the dispatcher claims it then
    /// rather than at the next poll.
    retry_due: Arc<tokio::sync::Notify>,
    row_counts: RowCounts,
    /// Set when the dispatcher stops claiming: finishing workers stop taking jobs too.
    stopping: AtomicBool,
    /// Woken when the durability stage has recorded a batch, so a dispatcher waiting for the
    /// store to be idle looks again.
    stage_settled: tokio::sync::Notify,
}

/// Making the engine, its events and its root jobs; lease recovery.
impl Engine {
    pub fn new(
        workflow: Arc<Workflow>,
        store: Arc<dyn Store>,
        config: ExecutorConfig,
        metrics: Arc<Metrics>,
    ) -> Engine {
        // Counting the children's sources here warms the cache that root
        // jobs' estimates use too: each file is read once per version.
        let row_counts = RowCounts::default();
        let joins = if config.dependencies_enabled {
            Joins::from_workflow(&workflow, |source| row_counts.get(source))
        } else {
            Joins::none()
        };
        Metrics::add(&metrics.workers, config.pool_size as u64);
        Engine {
            workflow,
            store,
            joins,
            config,
            metrics,
            events: None,
            throughput: Mutex::new(HashMap::new()),
            retry_due: Arc::new(tokio::sync::Notify::new()),
            row_counts,
            stopping: AtomicBool::new(false),
            stage_settled: tokio::sync::Notify::new(),
        }
    }

    /// Sends [`ExecEvent`]s to `tx` as jobs start, progress and finish.
    pub fn with_events(mut self, tx: mpsc::UnboundedSender<ExecEvent>) -> Engine {
        self.events = Some(tx);
        self
    }

    fn emit(&self, event: ExecEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    /// A root job for `report_type` run as `principal`, given nothing but its request (the
    /// report's default parameters and window): [`Engine::new_job_for`] with
    /// [`Trigger::default`].
    pub fn new_job(
        &self,
        report_type: &str,
        principal: Principal,
        trigger_id: &str,
        request: JobRequest,
    ) -> Result<NewJob, JobRefused> {
        self.new_job_for(
            report_type,
            principal,
            trigger_id,
            request,
            &Trigger::default(),
        )
    }

    /// A root job for `report_type` run as `principal`, with the report's priority, attempts
    /// and an estimated completion time, its parameters resolved from `trigger`'s values and
    /// its window decided ([`decide_window`]); `request`'s own `params` and `window` are
    /// replaced. Every entry point (CLI, API, schedule fires, backfills) makes its jobs here,
    /// so the county rule, the parameters and the window are decided here once, before any
    /// job exists.
    pub fn new_job_for(
        &self,
        report_type: &str,
        principal: Principal,
        trigger_id: &str,
        mut request: JobRequest,
        trigger: &Trigger,
    ) -> Result<NewJob, JobRefused> {
        let report = self
            .workflow
            .report(report_type)
            .ok_or_else(|| JobRefused::UnknownReport(report_type.to_string()))?;
        self.workflow
            .check_county(&principal.role, principal.county.as_deref())?;
        request.params = crate::params::resolve(&report.params, &trigger.params)?;
        request.window = decide_window(report, trigger, Utc::now())?;
        let priority = request.priority.unwrap_or(report.priority);
        Ok(NewJob {
            report_type: report_type.to_string(),
            principal,
            parent_job_ids: Vec::new(),
            trigger_id: trigger_id.to_string(),
            request,
            priority,
            max_attempts: report.retries + 1,
            estimated_completion: self.estimate(report_type, Utc::now()),
        })
    }

    /// Takes back jobs whose lease expired, counting them.
    pub async fn recover_leases(&self) -> Result<usize, StoreError> {
        let expired = self.store.requeue_expired(Utc::now(), &self.joins).await?;
        let n = expired.requeued.len() + expired.finished.len();
        self.discard_unrecorded_results(&expired.finished);
        Metrics::add(&self.metrics.lease_recoveries, n as u64);
        for c in &expired.finished {
            Metrics::add(
                &self.metrics.dependents_created,
                c.children_created.len() as u64,
            );
        }
        if n > 0 {
            tracing::warn!(
                requeued = expired.requeued.len(),
                finished = expired.finished.len(),
                "lease recovery"
            );
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{ParamSpec, ParamType, ParamValue};
    use crate::window::{Period, WindowKind, WindowSpec};
    use crate::workflow::Query;

    const FLOW: &str = "config {\n  all_counties ADMIN\n}\nroles ADMIN\n\
        source s {\n  path \"s.csv\"\n  county_column county_id\n}\n\
        report R {\n  source s\n}\n\
        schedule nightly {\n  cron \"0 30 5 * * ?\"\n  zone \"America/New_York\"\n  run R\n  roles ADMIN\n}\n";

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// `R` declares `since` (date, required) and `limit` (integer, default 10), covers the
    /// previous day in Berlin by default; `edit` changes it further.
    fn test_engine(edit: impl FnOnce(&mut ReportType)) -> (Engine, tempfile::TempDir) {
        let loaded = crate::loader::load_text(std::path::Path::new("w.flow"), FLOW.to_string());
        let compilation = crate::compiler::compile(loaded);
        let mut workflow = compilation
            .workflow
            .unwrap_or_else(|| panic!("{:#?}", compilation.diagnostics));
        let report = &mut workflow.reports[0];
        report.params = vec![
            ParamSpec {
                name: "since".into(),
                ty: ParamType::Date,
                default: None,
                required: true,
                help: "first day".into(),
            },
            ParamSpec {
                name: "limit".into(),
                ty: ParamType::Integer,
                default: Some(ParamValue::Integer(10)),
                required: false,
                help: "rows".into(),
            },
        ];
        report.window = Some(WindowSpec::Previous(Period::Day));
        report.zone = chrono_tz::Europe::Berlin;
        edit(report);
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::SledStore::open(crate::store::SledConfig::new(dir.path().join("db")))
                .unwrap();
        let config = ExecutorConfig::from_workflow(&workflow, [0; 32]);
        let engine = Engine::new(
            Arc::new(workflow),
            Arc::new(store),
            config,
            Arc::new(Metrics::new()),
        );
        (engine, dir)
    }

    fn given(pairs: &[(&str, &str)]) -> BTreeMap<String, Given> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Given::Text(v.to_string())))
            .collect()
    }

    fn job(engine: &Engine, trigger: &Trigger) -> Result<NewJob, JobRefused> {
        engine.new_job_for(
            "R",
            Principal::system("ADMIN"),
            "cli:test",
            JobRequest::default(),
            trigger,
        )
    }

    #[test]
    fn params_are_resolved_before_a_job_exists() {
        let (engine, _dir) = test_engine(|_| {});
        let trigger = Trigger {
            params: given(&[("since", "2026-11-01")]),
            ..Trigger::default()
        };
        let new = job(&engine, &trigger).unwrap();
        assert_eq!(
            new.request.params,
            [
                ("limit".to_string(), ParamValue::Integer(10)),
                (
                    "since".to_string(),
                    ParamValue::Date(chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap())
                ),
            ]
            .into()
        );
        for (pairs, code) in [
            (vec![], "missing_param"),
            (
                vec![("since", "2026-11-01"), ("limt", "1")],
                "unknown_param",
            ),
            (vec![("since", "November")], "invalid_param"),
        ] {
            let trigger = Trigger {
                params: given(&pairs),
                ..Trigger::default()
            };
            let refused = job(&engine, &trigger).unwrap_err();
            assert!(matches!(refused, JobRefused::Param(_)), "{refused}");
            assert_eq!(refused.code(), code, "{pairs:?}");
        }
        // `new_job` is a trigger that gives nothing: a required parameter is missing.
        assert_eq!(
            engine
                .new_job("R", Principal::system("ADMIN"), "t", JobRequest::default())
                .unwrap_err()
                .code(),
            "missing_param"
        );
    }

    #[test]
    fn the_window_is_the_triggers_else_the_reports_default_at_the_trigger_time() {
        let (engine, _dir) = test_engine(|_| {});
        let with = |window: Option<WindowRequest>, at: Option<&str>| {
            let trigger = Trigger {
                params: given(&[("since", "2026-11-01")]),
                window,
                at: at.map(utc),
            };
            job(&engine, &trigger).map(|j| j.request.window.unwrap())
        };
        // The default, in the report's zone, at the trigger's time.
        let w = with(None, Some("2026-12-01T04:30:00Z")).unwrap();
        assert_eq!(
            (w.start, w.end, w.label()),
            (
                utc("2026-11-29T23:00:00Z"),
                utc("2026-11-30T23:00:00Z"),
                "2026-11-30".to_string()
            )
        );
        // A span given: its zone defaults to the report's; kept to the microsecond.
        let w = with(
            Some(WindowRequest::Span {
                start: utc("2026-11-30T00:00:00.000000999Z"),
                end: utc("2026-11-30T06:00:00Z"),
                zone: None,
            }),
            None,
        )
        .unwrap();
        assert_eq!(w.kind, WindowKind::Span);
        assert_eq!(w.zone, "Europe/Berlin");
        assert_eq!(w.start, utc("2026-11-30T00:00:00Z"));
        // A period given, in another zone.
        let w = with(
            Some(WindowRequest::Period {
                name: "2026-11".into(),
                zone: Some("America/New_York".into()),
            }),
            None,
        )
        .unwrap();
        assert_eq!(w.start, utc("2026-11-01T04:00:00Z"));
        for bad in [
            WindowRequest::Period {
                name: "2026-11-31".into(),
                zone: None,
            },
            WindowRequest::Period {
                name: "2026-11".into(),
                zone: Some("Nowhere/City".into()),
            },
            WindowRequest::Span {
                start: utc("2026-11-30T06:00:00Z"),
                end: utc("2026-11-30T06:00:00Z"),
                zone: None,
            },
        ] {
            let refused = with(Some(bad.clone()), None).unwrap_err();
            assert_eq!(refused.code(), "invalid_window", "{bad:?}: {refused}");
        }
    }

    #[test]
    fn a_report_that_reads_its_window_is_refused_without_one() {
        let (engine, _dir) = test_engine(|report| {
            report.window = None;
            report.query = Some(Query {
                text: "SELECT 1 WHERE :interval_end > :since".into(),
                file: None,
                placeholders: vec!["interval_end".into(), "since".into()],
            });
        });
        let trigger = Trigger {
            params: given(&[("since", "2026-11-01")]),
            ..Trigger::default()
        };
        let refused = job(&engine, &trigger).unwrap_err();
        assert_eq!(refused, JobRefused::WindowRequired { report: "R".into() });
        assert!(refused.to_string().contains("2026-11-30"), "{refused}");
        let trigger = Trigger {
            window: Some(WindowRequest::Period {
                name: "2026-11-30".into(),
                zone: None,
            }),
            ..trigger
        };
        assert!(job(&engine, &trigger).unwrap().request.window.is_some());
        // A report that does not read it runs without one.
        let (engine, _dir) = test_engine(|report| report.window = None);
        let trigger = Trigger {
            params: given(&[("since", "2026-11-01")]),
            ..Trigger::default()
        };
        assert_eq!(job(&engine, &trigger).unwrap().request.window, None);
    }

    #[test]
    fn a_fire_covers_the_schedules_window_in_the_schedules_zone_and_always_the_same() {
        let (engine, _dir) = test_engine(|report| {
            report.params[0].required = false;
        });
        let mut schedule = engine.workflow.schedules[0].clone();
        let report = engine.workflow.report("R").unwrap();
        let fire = utc("2026-12-01T10:30:00Z");
        // The report's default (previous day), read in the schedule's zone, not the report's.
        let w = crate::scheduler::fire_window(&schedule, report, fire)
            .unwrap()
            .unwrap();
        assert_eq!(w.zone, "America/New_York");
        assert_eq!(w.start, utc("2026-11-30T05:00:00Z"));
        // The schedule's own window wins.
        schedule.window = Some(WindowSpec::Previous(Period::Month));
        let w = crate::scheduler::fire_window(&schedule, report, fire)
            .unwrap()
            .unwrap();
        assert_eq!(w.label(), "2026-11");
        let jobs = |at| {
            crate::scheduler::fire_jobs(&engine, &schedule, "fire:t", &JobRequest::default(), at)
        };
        let first = jobs(fire);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].request.window.as_ref(), Some(&w));
        assert_eq!(first[0].request.params["limit"], ParamValue::Integer(10));
        assert_eq!(
            first.iter().map(|j| &j.request).collect::<Vec<_>>(),
            jobs(fire).iter().map(|j| &j.request).collect::<Vec<_>>()
        );
    }
}
