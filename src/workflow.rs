//! The compiled workflow: engine config, sources, report types, schedules and
//! the dependency DAG. This is what the engine runs; it holds no syntax.
//!
//! **Architecture invariant:** a `Workflow` is valid by construction. Every
//! name in it resolves, every number is in range and the graph is acyclic, so
//! the engine never re-checks what the compiler proved.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};

use crate::cron_expr::CronExpr;
use crate::masking::MaskMethod;
use crate::params::ParamSpec;
use crate::source_map::Span;
use crate::window::WindowSpec;

pub use crate::pipeline::DataFormat;

/// The engine `config` block, with defaults for what it leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub scheduler_enabled: bool,
    pub poll_interval: Duration,
    pub max_jobs_per_poll: u32,
    pub worker_pool_size: u32,
    pub dependencies_enabled: bool,
    /// Resolved against the directory of the file that declared it.
    pub results_dir: PathBuf,
    pub lease: Duration,
    /// How far back the `all` catch-up policy replays missed fires.
    pub catch_up_window: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        // The seed's application.yml values.
        EngineConfig {
            scheduler_enabled: true,
            poll_interval: Duration::from_secs(5),
            max_jobs_per_poll: 3,
            worker_pool_size: 2,
            dependencies_enabled: true,
            results_dir: PathBuf::from("results"),
            lease: Duration::from_secs(30),
            catch_up_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where a source's rows come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// A CSV or JSON lines file; the whole file is the report's data.
    File { path: PathBuf, format: DataFormat },
    /// A SQLite database file, opened read-only; each report gives its query.
    Sqlite { path: PathBuf },
    /// A PostgreSQL database whose connection URL is in the environment variable `url_env`
    /// (read when a job runs: a password never sits in a `.flow` file); each report gives its
    /// query.
    Postgres { url_env: String },
}

impl SourceKind {
    /// Whether reports on this source give a query.
    pub fn is_database(&self) -> bool {
        !matches!(self, SourceKind::File { .. })
    }

    /// The kind's name as written in a `source` block.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::File { .. } => "file",
            SourceKind::Sqlite { .. } => "sqlite",
            SourceKind::Postgres { .. } => "postgres",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    pub county_column: Option<String>,
}

impl Source {
    /// The file a file or SQLite source reads.
    pub fn path(&self) -> Option<&std::path::Path> {
        match &self.kind {
            SourceKind::File { path, .. } | SourceKind::Sqlite { path } => Some(path),
            SourceKind::Postgres { .. } => None,
        }
    }
}

/// A report's query on a database source, with its named placeholders (`:name`).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The SQL text as written (inline) or as read (from its `.sql` file).
    pub text: String,
    /// The `.sql` file it was read from; `None` when inline.
    pub file: Option<PathBuf>,
    /// The distinct placeholder names, in order of first use: each is a declared parameter of
    /// the report or a built-in ([`crate::params::BUILT_INS`]).
    pub placeholders: Vec<String>,
}

impl Query {
    /// Whether the query reads the run's window.
    pub fn uses_window(&self) -> bool {
        self.placeholders.iter().any(|p| p.starts_with("interval_"))
    }
}

/// Who a mask rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskRule {
    pub field: String,
    pub method: MaskMethod,
    /// Roles the rule applies to; `None` means every role.
    pub for_roles: Option<Vec<String>>,
    /// Roles that see the field in clear even if `for_roles` is `None`.
    pub except_roles: Vec<String>,
}

impl MaskRule {
    pub fn applies_to(&self, role: &str) -> bool {
        let listed = self
            .for_roles
            .as_ref()
            .is_none_or(|roles| roles.iter().any(|r| r == role));
        listed && !self.except_roles.iter().any(|r| r == role)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReportType {
    pub name: String,
    /// Index into [`Workflow::sources`].
    pub source: usize,
    pub format: DataFormat,
    pub chunk_size: u32,
    /// Higher runs first.
    pub priority: u8,
    pub target: Option<String>,
    pub retries: u32,
    pub backoff: Duration,
    pub timeout: Option<Duration>,
    /// Inline rules and rules of the `masking` sets it uses, in order.
    pub masks: Vec<MaskRule>,
    /// The query, for a report on a database source (required there, refused on a file).
    pub query: Option<Query>,
    /// Declared parameters, in declaration order.
    pub params: Vec<ParamSpec>,
    /// The window a trigger that gives none gets (a schedule's own `window` wins for its fires;
    /// a dependent gets its parent's).
    pub window: Option<WindowSpec>,
    /// The zone the default window's calendar periods and local dates are read in (UTC unless
    /// the report says `zone`).
    pub zone: Tz,
}

impl ReportType {
    /// The `(field, method)` pairs a principal with `role` gets; the first
    /// rule for a field wins.
    pub fn masks_for(&self, role: &str) -> Vec<(String, MaskMethod)> {
        let mut out: Vec<(String, MaskMethod)> = Vec::new();
        for rule in &self.masks {
            if rule.applies_to(role) && !out.iter().any(|(f, _)| *f == rule.field) {
                out.push((rule.field.clone(), rule.method));
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    Skip,
    Once,
    All,
}

impl CatchUp {
    pub const NAMES: [&'static str; 3] = ["skip", "once", "all"];

    pub fn from_name(s: &str) -> Option<CatchUp> {
        match s {
            "skip" => Some(CatchUp::Skip),
            "once" => Some(CatchUp::Once),
            "all" => Some(CatchUp::All),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::Once => "once",
            CatchUp::All => "all",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub cron: CronExpr,
    pub zone: Tz,
    /// Report types created on each fire.
    pub reports: Vec<String>,
    /// One job per role (and per county, when counties are listed).
    pub roles: Vec<String>,
    pub counties: Vec<String>,
    pub catch_up: CatchUp,
    /// The period each fire covers (`None`: the report's own default, if any).
    pub window: Option<WindowSpec>,
}

impl Schedule {
    /// What one fire creates: a job per report, per role, per county (or
    /// one for all counties when the schedule names none), in that order.
    pub fn targets(&self) -> impl Iterator<Item = (&str, &str, Option<&str>)> + '_ {
        let counties: Vec<Option<&str>> = if self.counties.is_empty() {
            vec![None]
        } else {
            self.counties.iter().map(|c| Some(c.as_str())).collect()
        };
        self.reports.iter().flat_map(move |report| {
            let counties = counties.clone();
            self.roles.iter().flat_map(move |role| {
                counties
                    .clone()
                    .into_iter()
                    .map(move |county| (report.as_str(), role.as_str(), county))
            })
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    OnSuccess,
    OnCompletion,
}

impl Condition {
    pub fn from_name(s: &str) -> Option<Condition> {
        match s {
            "success" => Some(Condition::OnSuccess),
            "completion" => Some(Condition::OnCompletion),
            _ => None,
        }
    }

    /// As written in the DSL after `on`.
    pub fn name(self) -> &'static str {
        match self {
            Condition::OnSuccess => "success",
            Condition::OnCompletion => "completion",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleRule {
    Inherit,
    Fixed(String),
}

/// What a dependency changes in the child job's request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub chunk_size: Option<u32>,
    pub priority: Option<u8>,
    pub format: Option<DataFormat>,
    pub target: Option<String>,
}

/// One `after ... run ...` declaration: a join of `parents.len()` parents.
#[derive(Debug, Clone, PartialEq)]
pub struct Dependency {
    /// Stable within a workflow: `<index>:<child>`.
    pub id: String,
    pub parents: Vec<String>,
    pub child: String,
    pub condition: Condition,
    /// Parent-role filter: only these roles' completions count. Empty = all.
    pub parent_roles: Vec<String>,
    pub role: RoleRule,
    pub overrides: Overrides,
}

/// Weight of a graph edge parent → child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Index into [`Workflow::dependencies`].
    pub dependency: usize,
}

/// Where the declarations that only the data can prove wrong were written, so that
/// `flowctl check`, which reads each source's header, can point at them. Not part of the
/// workflow's meaning: [`Workflow`]'s equality ignores it.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    /// Per source (same index as [`Workflow::sources`]): its `path` value and its
    /// `county_column` value.
    pub sources: Vec<SourceLocation>,
    /// Per report (same index as [`Workflow::reports`]): the field name of each mask rule, in
    /// [`ReportType::masks`] order.
    pub mask_fields: Vec<Vec<Span>>,
    /// Per report (same index as [`Workflow::reports`]): its query (the inline text, or the
    /// `.sql` file's name), where `check` reports what the database says of it. May be
    /// shorter than the reports (no span known).
    pub queries: Vec<Option<Span>>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SourceLocation {
    pub name: Option<Span>,
    pub path: Option<Span>,
    pub county_column: Option<Span>,
}

/// A job that the county rule refuses: a county-scoped role without a county.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role {role} is county-scoped and the job names no county; only {} may run for every county", all_counties_phrase(.all_counties))]
pub struct CountyRequired {
    pub role: String,
    pub all_counties: Vec<String>,
}

fn all_counties_phrase(roles: &[String]) -> String {
    if roles.is_empty() {
        "roles listed in the config's `all_counties` (none are)".to_string()
    } else {
        format!("the roles in `all_counties` ({})", roles.join(", "))
    }
}

#[derive(Debug, Clone)]
pub struct Workflow {
    pub config: EngineConfig,
    pub roles: Vec<String>,
    /// Roles that see every county's rows (the config's `all_counties`); every other role is
    /// county-scoped. Fail closed: no role sees all counties unless the workflow says so.
    pub all_counties: Vec<String>,
    pub sources: Vec<Source>,
    pub reports: Vec<ReportType>,
    pub schedules: Vec<Schedule>,
    pub dependencies: Vec<Dependency>,
    /// Node weight: index into `reports`. One edge per (parent, dependency).
    pub graph: DiGraph<usize, Edge>,
    pub(crate) report_index: HashMap<String, NodeIndex>,
    pub locations: Locations,
}

impl Workflow {
    /// Whether `role` sees every county's rows and jobs (declared in `all_counties`).
    pub fn sees_all_counties(&self, role: &str) -> bool {
        self.all_counties.iter().any(|r| r == role)
    }

    /// The county rule, the same for every entry point (CLI, API, schedules, dependents) and
    /// checked again by the executor before a job reads a row: a county-scoped role runs only
    /// for a named county; a role in `all_counties` may run for one county or for all (`None`).
    pub fn check_county(&self, role: &str, county: Option<&str>) -> Result<(), CountyRequired> {
        if county.is_some() || self.sees_all_counties(role) {
            return Ok(());
        }
        Err(CountyRequired {
            role: role.to_string(),
            all_counties: self.all_counties.clone(),
        })
    }

    pub fn report(&self, name: &str) -> Option<&ReportType> {
        self.report_index
            .get(name)
            .map(|n| &self.reports[self.graph[*n]])
    }

    pub fn node(&self, name: &str) -> Option<NodeIndex> {
        self.report_index.get(name).copied()
    }

    pub fn source_of(&self, report: &ReportType) -> &Source {
        &self.sources[report.source]
    }

    /// Dependencies in which `report` is one of the parents.
    pub fn dependencies_after<'a>(
        &'a self,
        report: &'a str,
    ) -> impl Iterator<Item = &'a Dependency> + 'a {
        self.dependencies
            .iter()
            .filter(move |d| d.parents.iter().any(|p| p == report))
    }

    /// Schedules that create `report`.
    pub fn schedules_of<'a>(&'a self, report: &'a str) -> impl Iterator<Item = &'a Schedule> + 'a {
        self.schedules
            .iter()
            .filter(move |s| s.reports.iter().any(|r| r == report))
    }
}

impl PartialEq for Workflow {
    /// Structural equality, independent of declaration spans and of the
    /// order petgraph assigned edge indexes in.
    fn eq(&self, other: &Self) -> bool {
        let edges = |w: &Workflow| {
            let mut e: Vec<(String, String, usize)> = w
                .graph
                .edge_indices()
                .filter_map(|e| {
                    let (a, b) = w.graph.edge_endpoints(e)?;
                    Some((
                        w.reports[w.graph[a]].name.clone(),
                        w.reports[w.graph[b]].name.clone(),
                        w.graph[e].dependency,
                    ))
                })
                .collect();
            e.sort();
            e
        };
        self.config == other.config
            && self.roles == other.roles
            && self.all_counties == other.all_counties
            && self.sources == other.sources
            && self.reports == other.reports
            && self.schedules == other.schedules
            && self.dependencies == other.dependencies
            && edges(self) == edges(other)
    }
}
