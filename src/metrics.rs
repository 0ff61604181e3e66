//! The seed's monitoring points as in-process counters: jobs completed and
//! failed per report type, completion durations, failure reasons, dependents
//! created, join firings, lease recoveries, worker utilisation. Rendered in
//! the Prometheus text format for `/metrics` and summarised by the CLI.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the job duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0,
];

#[derive(Default)]
struct PerType {
    completed: u64,
    failed: u64,
    cancelled: u64,
    buckets: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
}

#[derive(Default)]
pub struct Metrics {
    per_type: Mutex<BTreeMap<String, PerType>>,
    failure_reasons: Mutex<BTreeMap<String, u64>>,
    pub dependents_created: AtomicU64,
    pub join_errors: AtomicU64,
    pub lease_recoveries: AtomicU64,
    pub retries: AtomicU64,
    pub workers_busy: AtomicU64,
    /// Workers in the pool: the gauge `flowctl_workers`.
    pub workers: AtomicU64,
    pub store_errors: AtomicU64,
    pub schedule_fires: AtomicU64,
    pub missed_fires: AtomicU64,
    /// Sum and count of schedule lag (fire time → jobs created), seconds.
    schedule_lag: Mutex<(f64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Completed,
    Failed,
    Cancelled,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn job_finished(&self, report_type: &str, finish: Finish, duration: Duration) {
        let mut map = lock(&self.per_type);
        let entry = map.entry(report_type.to_string()).or_default();
        match finish {
            Finish::Completed => entry.completed += 1,
            Finish::Failed => entry.failed += 1,
            Finish::Cancelled => entry.cancelled += 1,
        }
        let secs = duration.as_secs_f64();
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                entry.buckets[i] += 1;
            }
        }
        entry.duration_sum += secs;
        entry.duration_count += 1;
    }

    /// Counts a failure by a short reason: the error's first clause, so that
    /// one label value does not exist per job.
    pub fn failure_reason(&self, error: &str) {
        let reason: String = error
            .split([':', '\n'])
            .next()
            .unwrap_or(error)
            .chars()
            .take(60)
            .collect();
        *lock(&self.failure_reasons).entry(reason).or_default() += 1;
    }

    pub fn schedule_lag(&self, lag: Duration) {
        let mut l = lock(&self.schedule_lag);
        l.0 += lag.as_secs_f64();
        l.1 += 1;
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition. `queue` is the number of jobs per status,
    /// read from the store by the caller.
    pub fn render(&self, queue: &BTreeMap<String, u64>) -> String {
        let mut out = String::new();
        out.push_str("# HELP flowctl_jobs Jobs in the store by status (queue size).\n# TYPE flowctl_jobs gauge\n");
        for (status, n) in queue {
            let _ = writeln!(out, "flowctl_jobs{{status=\"{status}\"}} {n}");
        }
        let per_type = lock(&self.per_type);
        out.push_str("# HELP flowctl_jobs_completed_total Jobs completed, by report type.\n# TYPE flowctl_jobs_completed_total counter\n");
        for (t, m) in per_type.iter() {
            let _ = writeln!(
                out,
                "flowctl_jobs_completed_total{{report_type=\"{t}\"}} {}",
                m.completed
            );
        }
        out.push_str("# HELP flowctl_jobs_failed_total Jobs failed for good, by report type.\n# TYPE flowctl_jobs_failed_total counter\n");
        for (t, m) in per_type.iter() {
            let _ = writeln!(
                out,
                "flowctl_jobs_failed_total{{report_type=\"{t}\"}} {}",
                m.failed
            );
        }
        out.push_str("# HELP flowctl_jobs_cancelled_total Jobs cancelled while running, by report type.\n# TYPE flowctl_jobs_cancelled_total counter\n");
        for (t, m) in per_type.iter() {
            let _ = writeln!(
                out,
                "flowctl_jobs_cancelled_total{{report_type=\"{t}\"}} {}",
                m.cancelled
            );
        }
        out.push_str("# HELP flowctl_job_duration_seconds Time from start to end of a job attempt.\n# TYPE flowctl_job_duration_seconds histogram\n");
        for (t, m) in per_type.iter() {
            for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "flowctl_job_duration_seconds_bucket{{report_type=\"{t}\",le=\"{bound}\"}} {}",
                    m.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "flowctl_job_duration_seconds_bucket{{report_type=\"{t}\",le=\"+Inf\"}} {}",
                m.duration_count
            );
            let _ = writeln!(
                out,
                "flowctl_job_duration_seconds_sum{{report_type=\"{t}\"}} {}",
                m.duration_sum
            );
            let _ = writeln!(
                out,
                "flowctl_job_duration_seconds_count{{report_type=\"{t}\"}} {}",
                m.duration_count
            );
        }
        drop(per_type);
        out.push_str("# HELP flowctl_job_failures_total Failures by reason.\n# TYPE flowctl_job_failures_total counter\n");
        for (reason, n) in lock(&self.failure_reasons).iter() {
            let reason = reason.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "flowctl_job_failures_total{{reason=\"{reason}\"}} {n}");
        }
        let scalars = [
            (
                "flowctl_dependents_created_total",
                "Dependent jobs created by joins firing.",
                &self.dependents_created,
                "counter",
            ),
            (
                "flowctl_join_errors_total",
                "Errors while triggering dependents (the parent is unaffected).",
                &self.join_errors,
                "counter",
            ),
            (
                "flowctl_lease_recoveries_total",
                "Jobs taken back after their lease expired.",
                &self.lease_recoveries,
                "counter",
            ),
            (
                "flowctl_retries_total",
                "Attempts queued again after a failure.",
                &self.retries,
                "counter",
            ),
            (
                "flowctl_store_errors_total",
                "Store operations that failed and were retried.",
                &self.store_errors,
                "counter",
            ),
            (
                "flowctl_schedule_fires_total",
                "Schedule fires that created jobs.",
                &self.schedule_fires,
                "counter",
            ),
            (
                "flowctl_missed_fires_total",
                "Schedule fires missed while not running (skipped or caught up).",
                &self.missed_fires,
                "counter",
            ),
            (
                "flowctl_workers_busy",
                "Workers running a job.",
                &self.workers_busy,
                "gauge",
            ),
            (
                "flowctl_workers",
                "Workers in the pool.",
                &self.workers,
                "gauge",
            ),
        ];
        for (name, help, value, kind) in scalars {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let (sum, count) = *lock(&self.schedule_lag);
        let _ = writeln!(
            out,
            "# HELP flowctl_schedule_lag_seconds Fire time to jobs created.\n# TYPE flowctl_schedule_lag_seconds summary\nflowctl_schedule_lag_seconds_sum {sum}\nflowctl_schedule_lag_seconds_count {count}"
        );
        out
    }

    /// Completed and failed counts per report type, for `flowctl run`'s summary.
    pub fn per_type(&self) -> BTreeMap<String, (u64, u64)> {
        lock(&self.per_type)
            .iter()
            .map(|(t, m)| (t.clone(), (m.completed, m.failed)))
            .collect()
    }
}

/// A poisoned metrics lock only means a panic elsewhere; the counters are
/// still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.job_finished("DAILY_REPORT", Finish::Completed, Duration::from_millis(30));
        m.job_finished("DAILY_REPORT", Finish::Failed, Duration::from_secs(2));
        m.failure_reason("source broke: line 7");
        Metrics::add(&m.dependents_created, 3);
        let queue = BTreeMap::from([("QUEUED".to_string(), 4u64)]);
        let text = m.render(&queue);
        assert!(text.contains("flowctl_jobs{status=\"QUEUED\"} 4"));
        assert!(text.contains("flowctl_jobs_completed_total{report_type=\"DAILY_REPORT\"} 1"));
        assert!(text.contains("flowctl_jobs_failed_total{report_type=\"DAILY_REPORT\"} 1"));
        assert!(text.contains(
            "flowctl_job_duration_seconds_bucket{report_type=\"DAILY_REPORT\",le=\"0.05\"} 1"
        ));
        assert!(text.contains("flowctl_job_duration_seconds_count{report_type=\"DAILY_REPORT\"} 2"));
        assert!(text.contains("flowctl_job_failures_total{reason=\"source broke\"} 1"));
        assert!(text.contains("flowctl_dependents_created_total 3"));
    }

    /// Prometheus naming: `_total` only and always on counters (so the pool size is
    /// `flowctl_workers`, not `flowctl_workers_total`), histograms and summaries in a base unit
    /// (`_seconds`), every family with HELP and TYPE, every sample of a declared family.
    #[test]
    fn metric_names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.job_finished("DAILY_REPORT", Finish::Completed, Duration::from_millis(30));
        m.job_finished("DAILY_REPORT", Finish::Cancelled, Duration::from_millis(3));
        m.failure_reason("source broke: line 7");
        m.schedule_lag(Duration::from_millis(2));
        Metrics::add(&m.workers, 2);
        let text = m.render(&BTreeMap::from([("QUEUED".to_string(), 1u64)]));

        let mut families: BTreeMap<String, String> = BTreeMap::new();
        let mut helped = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                assert!(
                    families.insert(name.into(), kind.into()).is_none(),
                    "{name} declared twice"
                );
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("# HELP name text");
                assert!(!help.trim().is_empty(), "{name} has an empty HELP");
                helped.insert(name.to_string());
            }
        }
        assert!(families.contains_key("flowctl_workers"), "{text}");
        for (name, kind) in &families {
            assert!(name.starts_with("flowctl_"), "{name}: no flowctl_ prefix");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}: not snake_case"
            );
            assert!(helped.contains(name), "{name} has no HELP");
            match kind.as_str() {
                "counter" => assert!(name.ends_with("_total"), "counter {name} lacks _total"),
                "gauge" => assert!(!name.ends_with("_total"), "gauge {name} ends in _total"),
                "histogram" | "summary" => {
                    assert!(!name.ends_with("_total"), "{kind} {name} ends in _total");
                    assert!(name.ends_with("_seconds"), "{kind} {name} lacks a unit");
                }
                other => panic!("{name}: unknown type {other}"),
            }
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = families.iter().find(|(family, kind)| {
                let suffixes: &[&str] = match kind.as_str() {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["", "_sum", "_count"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| name == format!("{family}{s}"))
            });
            assert!(family.is_some(), "sample {line:?} of no declared family");
        }
    }
}
