//! Cron fires: turns every `schedule` of the workflow into root jobs at the
//! right instants, at most once per `(schedule, fire time)` even across
//! restarts and several running instances, with catch-up for fires missed
//! while nothing ran. Also the `flowctl plan` simulation.
//!
//! The decisions are pure functions of (schedule, last recorded fire, now);
//! time comes from a [`Clock`], so tests drive a simulated year in
//! milliseconds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::executor::{Engine, Trigger, WindowRequest};
use crate::job::{JobRequest, NewJob, Principal};
use crate::metrics::Metrics;
use crate::store::{BoxFuture, Enqueued, StoreError, UniqueKey};
use crate::window::{Window, WindowError};
use crate::workflow::{CatchUp, ReportType, RoleRule, Schedule, Workflow};

/// A fire later than this after its time is "missed" (Quartz's default
/// misfire threshold). Fires within it are on time, whatever the policy.
pub const MISFIRE_THRESHOLD: Duration = Duration::from_secs(60);

/// Where the scheduler gets the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves at `t` (at once if `t` is past).
    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'_, ()>;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let wait = (t - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
        })
    }
}

/// A clock tests move by hand: sleepers wake when it is advanced past their
/// instant.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    moved: Notify,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: Mutex::new(start),
            moved: Notify::new(),
        })
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = t;
        self.moved.notify_waiters();
    }

    pub fn advance(&self, d: Duration) {
        let t = self.now() + chrono::Duration::from_std(d).unwrap_or_default();
        self.set(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let notified = self.moved.notified();
                if self.now() >= t {
                    return;
                }
                notified.await;
            }
        })
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'_, ()> {
        (**self).sleep_until(t)
    }
}

/// What one evaluation of a schedule decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    /// Fire times to create jobs for, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Missed fire times dropped by the policy (or outside the window).
    pub dropped: usize,
}

/// Fires of `schedule` after `last` up to `now`, sorted by the catch-up
/// policy. `last == None` means the schedule never fired: nothing before
/// `now - MISFIRE_THRESHOLD` is owed.
pub fn due_fires(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    window: Duration,
) -> Due {
    let threshold = chrono::Duration::from_std(MISFIRE_THRESHOLD).unwrap_or_default();
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::days(1));
    let start = match last {
        Some(l) => l,
        None => now - threshold,
    };
    let mut on_time = Vec::new();
    let mut missed = Vec::new();
    // `all` is bounded by the window; the others only need the newest
    // missed fire, but counting them needs the walk too. Start no earlier
    // than the window so a year-long outage is not walked minute by minute.
    let walk_from = start.max(now - window.max(threshold));
    let mut dropped = 0usize;
    if start < walk_from {
        // Fires between `start` and the window are dropped whatever the policy.
        dropped += schedule
            .cron
            .fires_between(schedule.zone, start, walk_from)
            .count();
    }
    for t in schedule.cron.fires_between(schedule.zone, walk_from, now) {
        if now - t <= threshold {
            on_time.push(t);
        } else {
            missed.push(t);
        }
    }
    let mut fire = match schedule.catch_up {
        CatchUp::Skip => {
            dropped += missed.len();
            Vec::new()
        }
        CatchUp::Once => {
            dropped += missed.len().saturating_sub(1);
            missed.last().copied().into_iter().collect()
        }
        CatchUp::All => missed,
    };
    fire.extend(on_time);
    Due { fire, dropped }
}

/// The window a fire of `schedule` at `at` gives `report`'s jobs: the schedule's `window`,
/// else the report's default, evaluated at the fire time in the schedule's zone. A pure
/// function of the fire, so the same fire always covers the same period (a backfill of a past
/// fire gives the window the scheduler gave it).
pub fn fire_window(
    schedule: &Schedule,
    report: &ReportType,
    at: DateTime<Utc>,
) -> Result<Option<Window>, WindowError> {
    schedule
        .window
        .or(report.window)
        .map(|spec| spec.window_at(at, schedule.zone))
        .transpose()
}

/// The root jobs of one fire of `schedule` at `at`, run as the system principal with the role
/// (and county) the schedule names, each with its report's default parameters and the fire's
/// window ([`fire_window`]).
pub fn fire_jobs(
    engine: &Engine,
    schedule: &Schedule,
    trigger: &str,
    request: &JobRequest,
    at: DateTime<Utc>,
) -> Vec<NewJob> {
    schedule
        .targets()
        .filter_map(|(report, role, county)| {
            let principal = Principal {
                county: county.map(str::to_string),
                ..Principal::system(role)
            };
            let refused = |e: &dyn std::fmt::Display| {
                tracing::error!(schedule = %schedule.name, report, error = %e, "fire target refused");
            };
            let window = match engine.workflow.report(report).map(|r| fire_window(schedule, r, at)) {
                Some(Ok(window)) => window,
                Some(Err(e)) => {
                    refused(&e);
                    return None;
                }
                None => None,
            };
            let trigger_input = Trigger {
                window: window.map(WindowRequest::Decided),
                at: Some(at),
                ..Trigger::default()
            };
            // `check` proves every target passes the county rule and has what it needs; a
            // refusal here is a bug or a workflow changed under a running server, and is
            // logged, never run.
            engine
                .new_job_for(report, principal, trigger, request.clone(), &trigger_input)
                .map_err(|e| refused(&e))
                .ok()
        })
        .collect()
}

/// The trigger id of the fire of `schedule` at `at` (every job of the fire carries it).
pub fn fire_trigger_id(schedule: &str, at: DateTime<Utc>) -> String {
    format!("fire:{schedule}:{}", at.to_rfc3339())
}

/// Creates the jobs of one fire, at most once: the unique key
/// `(schedule, fire time)` makes a second call, here or on another
/// instance, return the first call's jobs.
pub async fn fire(
    engine: &Engine,
    schedule: &Schedule,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Enqueued, StoreError> {
    let trigger = fire_trigger_id(&schedule.name, at);
    let batch = fire_jobs(engine, schedule, &trigger, &JobRequest::default(), at);
    let result = engine
        .store
        .enqueue(batch, Some(UniqueKey::fire(&schedule.name, at)), now)
        .await?;
    if let Enqueued::Created(jobs) = &result {
        Metrics::add(&engine.metrics.schedule_fires, 1);
        engine
            .metrics
            .schedule_lag((now - at).to_std().unwrap_or_default());
        tracing::info!(schedule = %schedule.name, fire = %at, jobs = jobs.len(), "schedule fired");
    }
    Ok(result)
}

/// Evaluates every schedule once at `now`: creates due fires, counts
/// dropped ones. Returns the number of fires that created jobs.
pub async fn tick(engine: &Engine, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut created = 0;
    let window = engine.workflow.config.catch_up_window;
    for schedule in &engine.workflow.schedules {
        let last = engine.store.last_fire(&schedule.name).await?;
        let due = due_fires(schedule, last, now, window);
        if due.dropped > 0 {
            Metrics::add(&engine.metrics.missed_fires, due.dropped as u64);
            tracing::warn!(schedule = %schedule.name, dropped = due.dropped, policy = schedule.catch_up.name(), "missed fires not run");
        }
        for at in due.fire {
            if matches!(fire(engine, schedule, at, now).await?, Enqueued::Created(_)) {
                created += 1;
            }
        }
    }
    Ok(created)
}

/// The next instant any schedule fires after `now`.
pub fn next_wake(workflow: &Workflow, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    workflow
        .schedules
        .iter()
        .filter_map(|s| s.cron.next_after(s.zone, now))
        .min()
}

/// Runs the scheduler until `shutdown`: evaluates at start (catch-up), then
/// sleeps until the next fire of any schedule. A store error is logged and
/// retried; it never stops the scheduler.
pub async fn run(
    engine: Arc<Engine>,
    clock: impl Clock + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StoreError> {
    if !engine.workflow.config.scheduler_enabled || engine.workflow.schedules.is_empty() {
        shutdown.await;
        return Ok(());
    }
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        let now = clock.now();
        let wake = match tick(&engine, now).await {
            Ok(_) => {
                backoff = Duration::from_millis(100);
                next_wake(&engine.workflow, now)
            }
            Err(e) => {
                Metrics::add(&engine.metrics.store_errors, 1);
                tracing::warn!(error = %e, "scheduler could not reach the store; retrying");
                let retry = now + chrono::Duration::from_std(backoff).unwrap_or_default();
                backoff = (backoff * 2).min(Duration::from_secs(10));
                Some(retry)
            }
        };
        let Some(wake) = wake else {
            // No schedule fires ever again (e.g. a past year).
            shutdown.await;
            return Ok(());
        };
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = clock.sleep_until(wake) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// flowctl plan
// ---------------------------------------------------------------------------

/// A job a fire would create, root or dependent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    pub report: String,
    pub role: String,
    pub county: Option<String>,
    /// 0 for a root, 1 for its dependents, ...
    pub depth: usize,
    /// The parent report types whose completion creates it (empty for roots).
    pub after: Vec<String>,
    /// The period it covers: the fire's ([`fire_window`]), or for a dependent the window of
    /// the parent whose completion creates it. `None`: the job reads no window.
    pub window: Option<Window>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFire {
    pub schedule: String,
    pub at: DateTime<Utc>,
    pub jobs: Vec<PlannedJob>,
}

/// What `flowctl plan` shows: the first fires of a window and whether there were more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub fires: Vec<PlannedFire>,
    /// The window has more fires than the limit: `fires` holds the first `limit`.
    pub truncated: bool,
}

/// The first `limit` fires in `(from, to]` (by time, then schedule order) and the jobs each
/// would create, dependents included, assuming every job succeeds. Joins carry state from one
/// fire to the next, as in the engine: a digest that waits for a daily and a weekly report
/// appears under the fire that completes it.
pub fn plan(workflow: &Workflow, from: DateTime<Utc>, to: DateTime<Utc>, limit: usize) -> Plan {
    // Merge the schedules' fire streams: each is computed only as far as the limit needs.
    let mut streams: Vec<_> = workflow
        .schedules
        .iter()
        .map(|s| s.cron.fires_between(s.zone, from, to))
        .collect();
    let mut heads: BinaryHeap<Reverse<(DateTime<Utc>, usize)>> = streams
        .iter_mut()
        .enumerate()
        .filter_map(|(i, fires)| Some(Reverse((fires.next()?, i))))
        .collect();
    let mut fires: Vec<(DateTime<Utc>, usize)> = Vec::new();
    let mut truncated = false;
    while let Some(Reverse((t, i))) = heads.pop() {
        if fires.len() == limit {
            truncated = true;
            break;
        }
        fires.push((t, i));
        if let Some(next) = streams[i].next() {
            heads.push(Reverse((next, i)));
        }
    }
    let mut pending: HashMap<(usize, String, Option<String>), HashSet<String>> = HashMap::new();
    let mut out = Vec::with_capacity(fires.len());
    for (at, i) in fires {
        let schedule = &workflow.schedules[i];
        let mut queue: VecDeque<PlannedJob> = schedule
            .targets()
            .map(|(report, role, county)| PlannedJob {
                report: report.to_string(),
                role: role.to_string(),
                county: county.map(str::to_string),
                depth: 0,
                after: Vec::new(),
                window: workflow
                    .report(report)
                    .and_then(|r| fire_window(schedule, r, at).ok().flatten()),
            })
            .collect();
        let mut jobs = Vec::new();
        while let Some(job) = queue.pop_front() {
            if workflow.config.dependencies_enabled {
                for dep in workflow.dependencies_after(&job.report) {
                    if !dep.parent_roles.is_empty() && !dep.parent_roles.contains(&job.role) {
                        continue;
                    }
                    let Some(index) = workflow.dependencies.iter().position(|d| d.id == dep.id)
                    else {
                        continue;
                    };
                    let key = (index, job.role.clone(), job.county.clone());
                    let seen = pending.entry(key.clone()).or_default();
                    seen.insert(job.report.clone());
                    if dep.parents.iter().all(|p| seen.contains(p)) {
                        pending.remove(&key);
                        let role = match &dep.role {
                            RoleRule::Inherit => job.role.clone(),
                            RoleRule::Fixed(r) => r.clone(),
                        };
                        queue.push_back(PlannedJob {
                            report: dep.child.clone(),
                            role,
                            county: job.county.clone(),
                            depth: job.depth + 1,
                            after: dep.parents.clone(),
                            window: job.window.clone(),
                        });
                    }
                }
            }
            jobs.push(job);
        }
        out.push(PlannedFire {
            schedule: schedule.name.clone(),
            at,
            jobs,
        });
    }
    Plan {
        fires: out,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron_expr::CronExpr;

    fn schedule(cron: &str, zone: &str, catch_up: CatchUp) -> Schedule {
        Schedule {
            name: "s".into(),
            cron: CronExpr::parse(cron).expect("valid cron"),
            zone: zone.parse().expect("valid zone"),
            reports: vec!["R".into()],
            roles: vec!["ADMIN".into()],
            counties: vec![],
            catch_up,
            window: None,
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn on_time_fire_is_due_whatever_the_policy() {
        for policy in [CatchUp::Skip, CatchUp::Once, CatchUp::All] {
            let s = schedule("0 30 5 * * ?", "UTC", policy);
            let due = due_fires(
                &s,
                Some(t("2027-01-01T05:30:00Z")),
                t("2027-01-02T05:30:00.2Z"),
                DAY,
            );
            assert_eq!(due.fire, vec![t("2027-01-02T05:30:00Z")], "{policy:?}");
            assert_eq!(due.dropped, 0);
        }
    }

    #[test]
    fn catch_up_policies() {
        // Down from Jan 1 05:30 (last fire) to Jan 4 12:00: Jan 2, 3, 4 missed.
        let last = Some(t("2027-01-01T05:30:00Z"));
        let now = t("2027-01-04T12:00:00Z");
        let window = Duration::from_secs(7 * 86_400);
        let skip = due_fires(
            &schedule("0 30 5 * * ?", "UTC", CatchUp::Skip),
            last,
            now,
            window,
        );
        assert_eq!(
            skip,
            Due {
                fire: vec![],
                dropped: 3
            }
        );
        let once = due_fires(
            &schedule("0 30 5 * * ?", "UTC", CatchUp::Once),
            last,
            now,
            window,
        );
        assert_eq!(
            once,
            Due {
                fire: vec![t("2027-01-04T05:30:00Z")],
                dropped: 2
            }
        );
        let all = due_fires(
            &schedule("0 30 5 * * ?", "UTC", CatchUp::All),
            last,
            now,
            window,
        );
        assert_eq!(
            all.fire,
            vec![
                t("2027-01-02T05:30:00Z"),
                t("2027-01-03T05:30:00Z"),
                t("2027-01-04T05:30:00Z")
            ]
        );
        // `all` is bounded by the window.
        let bounded = due_fires(
            &schedule("0 30 5 * * ?", "UTC", CatchUp::All),
            last,
            now,
            Duration::from_secs(36 * 3600),
        );
        assert_eq!(
            bounded.fire,
            vec![t("2027-01-03T05:30:00Z"), t("2027-01-04T05:30:00Z")]
        );
        assert_eq!(bounded.dropped, 1);
    }

    #[test]
    fn never_fired_schedule_owes_nothing_old() {
        let s = schedule("0 */2 * * * ?", "UTC", CatchUp::All);
        let due = due_fires(&s, None, t("2027-01-01T00:10:30Z"), DAY);
        assert_eq!(due.fire, vec![t("2027-01-01T00:10:00Z")]);
    }

    #[test]
    fn simulated_year_fire_counts_for_the_seed_crons() {
        // Step the scheduler from one wake to the next through 2027 in UTC,
        // as `run` does, and count fires per schedule.
        for (cron, expected) in [
            ("0 30 5 * * ?", 365),
            ("0 30 5 * * MON", 52),
            ("0 30 5 1 * ?", 12),
            ("0 30 5 1 1,4,7,10 ?", 4),
            ("0 30 5 1 1 ?", 1),
            ("0 */2 * * * ?", 262_800),
        ] {
            let s = schedule(cron, "UTC", CatchUp::Once);
            // Just before the year, so a fire at midnight on Jan 1 counts.
            let mut last = Some(t("2026-12-31T23:59:59Z"));
            let end = t("2028-01-01T00:00:00Z");
            let mut count = 0;
            let mut now = last.unwrap_or(end);
            while let Some(next) = s.cron.next_after(s.zone, now) {
                if next >= end {
                    break;
                }
                now = next;
                let due = due_fires(&s, last, now, DAY);
                assert_eq!(due.dropped, 0);
                count += due.fire.len();
                last = due.fire.last().copied().or(last);
            }
            assert_eq!(count, expected, "{cron}");
        }
    }

    #[test]
    fn dst_spring_forward_and_fall_back() {
        // America/New_York: 2026-03-08 02:30 does not exist → fires 03:30 EDT.
        let s = schedule("0 30 2 * * ?", "America/New_York", CatchUp::Once);
        let next = s.cron.next_after(s.zone, t("2026-03-08T05:00:00Z"));
        assert_eq!(next, Some(t("2026-03-08T07:30:00Z")));
        // 2026-11-01 01:30 happens twice → fires once, at the first (EDT).
        let s = schedule("0 30 1 * * ?", "America/New_York", CatchUp::Once);
        let fires: Vec<_> = s
            .cron
            .fires_between(s.zone, t("2026-11-01T00:00:00Z"), t("2026-11-02T00:00:00Z"))
            .collect();
        assert_eq!(fires, vec![t("2026-11-01T05:30:00Z")]);
    }

    fn two_schedule_workflow(a: &str, b: &str) -> Workflow {
        let text = format!(
            "config {{\n  all_counties ADMIN\n}}\nroles ADMIN\nsource s {{\n  path \"x.csv\"\n}}\nreport R {{\n  source s\n}}\n\
             schedule a {{\n  cron \"{a}\"\n  run R\n  roles ADMIN\n}}\n\
             schedule b {{\n  cron \"{b}\"\n  run R\n  roles ADMIN\n}}\n"
        );
        let loaded = crate::loader::load_text(std::path::Path::new("w.flow"), text);
        let c = crate::compiler::compile(loaded);
        c.workflow.unwrap_or_else(|| panic!("{:?}", c.diagnostics))
    }

    #[test]
    fn plan_is_cut_at_the_limit_and_says_so() {
        let w = two_schedule_workflow("0 * * * * ?", "0 30 5 * * ?");
        let from = t("2027-01-01T00:00:00Z");
        let to = t("2027-01-01T01:00:00Z");
        let cut = plan(&w, from, to, 5);
        assert!(cut.truncated);
        assert_eq!(cut.fires.len(), 5);
        let whole = plan(&w, from, to, 60);
        assert!(!whole.truncated, "exactly the limit is not cut");
        assert_eq!(whole.fires.len(), 60);
        assert!(!plan(&w, from, to, 1000).truncated);
    }

    #[test]
    fn plan_merges_schedules_by_time_whatever_their_rate() {
        // Two schedules firing every second: the first ten fires alternate, as the engine
        // would create them (the plan once took the first schedule's fires only).
        let w = two_schedule_workflow("* * * * * ?", "* * * * * ?");
        let from = t("2027-01-01T00:00:00Z");
        let p = plan(&w, from, from + chrono::Duration::days(1), 10);
        let got: Vec<_> = p
            .fires
            .iter()
            .map(|f| (f.at, f.schedule.as_str()))
            .collect();
        let want: Vec<_> = (1..=5)
            .flat_map(|s| {
                let at = from + chrono::Duration::seconds(s);
                [(at, "a"), (at, "b")]
            })
            .collect();
        assert_eq!(got, want);
        assert!(p.truncated);
    }

    #[test]
    fn plan_shows_each_fires_window_and_dependents_share_it() {
        let text = "config {\n  all_counties ADMIN\n}\nroles ADMIN\nsource s {\n  path \"x.csv\"\n}\n\
            report R {\n  source s\n}\nreport S {\n  source s\n}\nafter R run S\n\
            schedule a {\n  cron \"0 30 5 * * ?\"\n  zone \"Europe/Berlin\"\n  run R\n  roles ADMIN\n}\n";
        let loaded = crate::loader::load_text(std::path::Path::new("w.flow"), text.to_string());
        let c = crate::compiler::compile(loaded);
        let mut w = c.workflow.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
        let from = t("2026-11-29T00:00:00Z");
        let to = t("2026-12-01T12:00:00Z");
        // Without a window nothing is shown.
        let p = plan(&w, from, to, 10);
        assert!(p
            .fires
            .iter()
            .all(|f| f.jobs.iter().all(|j| j.window.is_none())));
        w.schedules[0].window = Some(crate::window::WindowSpec::Previous(
            crate::window::Period::Day,
        ));
        let p = plan(&w, from, to, 10);
        let labels: Vec<Vec<String>> = p
            .fires
            .iter()
            .map(|f| {
                f.jobs
                    .iter()
                    .map(|j| format!("{} {}", j.report, j.window.as_ref().unwrap().label()))
                    .collect()
            })
            .collect();
        assert_eq!(
            labels,
            vec![
                vec!["R 2026-11-28", "S 2026-11-28"],
                vec!["R 2026-11-29", "S 2026-11-29"],
                vec!["R 2026-11-30", "S 2026-11-30"],
            ]
        );
    }

    #[tokio::test]
    async fn manual_clock_wakes_sleepers() {
        let clock = ManualClock::new(t("2027-01-01T00:00:00Z"));
        let c = clock.clone();
        let sleeper = tokio::spawn(async move { c.sleep_until(t("2027-01-01T01:00:00Z")).await });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(1800));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1800));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woke")
            .expect("joined");
    }
}
