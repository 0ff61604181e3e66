//! AST to [`Workflow`]: name resolution, value checking and the dependency DAG.
//!
//! **Architecture invariant:** compilation is pure and linear in the size of
//! the input. It reads no files (the loader did that), and it reports every
//! error it finds rather than stopping at the first.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::ast::{Block, DependencyDecl, FlowFile, Ident, ItemKind, Setting, Value, ValueKind};
use crate::cron_expr::CronExpr;
use crate::diagnostic::{did_you_mean, Code, Diagnostic};
use crate::loader::Loaded;
use crate::masking::MaskMethod;
use crate::source_map::{FileId, SourceMap, Span};
use crate::workflow::{
    CatchUp, Condition, DataFormat, Dependency, Edge, EngineConfig, Locations, MaskRule, Overrides,
    ReportType, RoleRule, Schedule, Source, SourceLocation, Workflow,
};

/// The result of compiling: the workflow when there was no error, and every
/// diagnostic (errors and warnings) in source order.
#[derive(Debug)]
pub struct Compilation {
    pub sources: SourceMap,
    pub workflow: Option<Workflow>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Compilation {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Compiles what the loader read.
pub fn compile(loaded: Loaded) -> Compilation {
    let Loaded {
        sources,
        files,
        mut diagnostics,
    } = loaded;
    let syntax_failed = diagnostics.iter().any(Diagnostic::is_error);
    let mut compiler = Compiler {
        sources: &sources,
        diags: Vec::new(),
    };
    let workflow = compiler.workflow(&files);
    diagnostics.extend(compiler.diags);
    if syntax_failed {
        // Declarations that failed to parse are missing, so "unused" and
        // "never triggered" warnings would be artefacts of the syntax error.
        diagnostics.retain(Diagnostic::is_error);
    }
    // Sort by file then position so output is stable and reads top to bottom.
    diagnostics.sort_by_key(|d| d.primary_span().map(|s| (s.file, s.start)));
    let failed = syntax_failed || diagnostics.iter().any(Diagnostic::is_error);
    Compilation {
        sources,
        workflow: if failed { None } else { Some(workflow) },
        diagnostics,
    }
}

/// Convenience: load from disk, then compile.
pub fn compile_paths(
    paths: &[std::path::PathBuf],
) -> Result<Compilation, crate::loader::LoadError> {
    Ok(compile(crate::loader::load(paths)?))
}

/// FNV-1a: name lookups hash short strings, where SipHash's DoS resistance
/// buys nothing (the input is the user's own file) and costs a third of the
/// compile time of a large workflow.
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Map<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

const CONFIG_KEYS: &[&str] = &[
    "scheduler",
    "poll_interval",
    "max_jobs_per_poll",
    "worker_pool_size",
    "dependencies",
    "results",
    "lease",
    "catch_up_window",
    "all_counties",
];
const SOURCE_KEYS: &[&str] = &["path", "format", "county_column"];
const REPORT_KEYS: &[&str] = &[
    "source",
    "format",
    "chunk_size",
    "priority",
    "target",
    "retries",
    "backoff",
    "timeout",
    "masking",
];
const SCHEDULE_KEYS: &[&str] = &["cron", "zone", "run", "roles", "counties", "catch_up"];
const OVERRIDE_KEYS: &[&str] = &["chunk_size", "priority", "format", "target"];

const MAX_CHUNK_SIZE: i64 = 10_000_000;
const MAX_POOL_SIZE: i64 = 1024;

struct Named<'a> {
    index: usize,
    ident: &'a Ident,
}

struct Compiler<'s> {
    sources: &'s SourceMap,
    diags: Vec<Diagnostic>,
}

/// Declarations gathered from every file before anything is resolved, so a
/// report may refer to a source declared later or in another file.
#[derive(Default)]
struct Decls<'a> {
    configs: Vec<(FileId, &'a Block, Span)>,
    roles: Vec<&'a Ident>,
    sources: Vec<(FileId, &'a Ident, &'a Block)>,
    maskings: Vec<(&'a Ident, &'a Block)>,
    reports: Vec<(&'a Ident, &'a Block)>,
    schedules: Vec<(&'a Ident, &'a Block)>,
    dependencies: Vec<(&'a DependencyDecl, Span)>,
}

impl<'s> Compiler<'s> {
    fn workflow(&mut self, files: &[(FileId, FlowFile)]) -> Workflow {
        let mut decls = Decls::default();
        for (file, ast) in files {
            for item in &ast.items {
                match &item.kind {
                    ItemKind::Include(_) => {}
                    ItemKind::Config(b) => decls.configs.push((*file, b, item.span)),
                    ItemKind::Roles(r) => decls.roles.extend(r.iter()),
                    ItemKind::Source(n, b) => decls.sources.push((*file, n, b)),
                    ItemKind::Masking(n, b) => decls.maskings.push((n, b)),
                    ItemKind::Report(n, b) => decls.reports.push((n, b)),
                    ItemKind::Schedule(n, b) => decls.schedules.push((n, b)),
                    ItemKind::Dependency(d) => decls.dependencies.push((d, item.span)),
                }
            }
        }

        let config = self.config(&decls.configs);
        let roles = self.unique("role", decls.roles.iter().copied());
        let role_names: Vec<String> = roles.iter().map(|r| r.ident.name.clone()).collect();
        let source_names = self.unique("source", decls.sources.iter().map(|(_, n, _)| *n));
        let masking_names = self.unique("masking", decls.maskings.iter().map(|(n, _)| *n));
        let report_names = self.unique("report", decls.reports.iter().map(|(n, _)| *n));
        let schedule_names = self.unique("schedule", decls.schedules.iter().map(|(n, _)| *n));
        let _ = schedule_names;

        let role_index: Map<&str, usize> = index_of(&roles);
        let source_index: Map<&str, usize> = index_of(&source_names);
        let masking_index: Map<&str, usize> = index_of(&masking_names);
        let report_index: Map<&str, usize> = index_of(&report_names);
        let scope = Scope {
            roles: &role_index,
            role_names: &role_names,
        };
        let all_counties = self.all_counties(&decls.configs, &scope);

        let (sources, source_locations): (Vec<Source>, Vec<SourceLocation>) = decls
            .sources
            .iter()
            .map(|(file, name, block)| self.source(*file, name, block))
            .unzip();

        let maskings: Vec<Vec<(MaskRule, Span)>> = decls
            .maskings
            .iter()
            .map(|(_, block)| self.mask_rules(block, &scope))
            .collect();
        let mut masking_used = vec![false; maskings.len()];
        let mut source_used = vec![false; sources.len()];

        let (reports, mask_fields): (Vec<ReportType>, Vec<Vec<Span>>) = decls
            .reports
            .iter()
            .map(|(name, block)| {
                self.report(
                    name,
                    block,
                    &scope,
                    &source_index,
                    &masking_index,
                    &maskings,
                    &mut source_used,
                    &mut masking_used,
                )
            })
            .collect();

        let mut triggered = vec![false; reports.len()];
        let schedules: Vec<Schedule> = decls
            .schedules
            .iter()
            .map(|(name, block)| {
                self.schedule(
                    name,
                    block,
                    &scope,
                    &report_index,
                    &all_counties,
                    &mut triggered,
                )
            })
            .collect();

        // The graph: one node per report in declaration order, so node index
        // == report index.
        let mut graph: DiGraph<usize, Edge> =
            DiGraph::with_capacity(reports.len(), decls.dependencies.len());
        for i in 0..reports.len() {
            graph.add_node(i);
        }
        let mut dependencies = Vec::with_capacity(decls.dependencies.len());
        let mut dep_spans = Vec::with_capacity(decls.dependencies.len());
        for (decl, span) in &decls.dependencies {
            let index = dependencies.len();
            if let Some((dep, parents, child)) = self.dependency(index, decl, &scope, &report_index)
            {
                triggered[child] = true;
                for parent in parents {
                    graph.add_edge(
                        NodeIndex::new(parent),
                        NodeIndex::new(child),
                        Edge { dependency: index },
                    );
                }
                dependencies.push(dep);
                dep_spans.push(*span);
            }
        }
        self.check_cycles(&graph, &reports, &dependencies, &dep_spans);

        for (i, t) in triggered.iter().enumerate() {
            if !t {
                let name = decls.reports[i].0;
                self.diags.push(
                    Diagnostic::warning(
                        Code::NeverTriggered,
                        format!("report `{}` is never triggered", name.name),
                    )
                    .label(name.span, "no schedule runs it and it has no parent")
                    .help("add it to a schedule's `run` list, or declare `after PARENT run ...`; it can still be run by hand or over HTTP"),
                );
            }
        }
        for (i, used) in source_used.iter().enumerate() {
            if !used {
                let name = decls.sources[i].1;
                self.diags.push(
                    Diagnostic::warning(
                        Code::UnusedSource,
                        format!("source `{}` is not used by any report", name.name),
                    )
                    .label(name.span, "declared here")
                    .help("remove it, or set `source` in a report"),
                );
            }
        }
        for (i, used) in masking_used.iter().enumerate() {
            if !used {
                let name = decls.maskings[i].0;
                self.diags.push(
                    Diagnostic::warning(
                        Code::UnusedMasking,
                        format!("masking `{}` is not used by any report", name.name),
                    )
                    .label(name.span, "declared here"),
                );
            }
        }

        self.check_repeated_runs(&graph, &report_index, &schedules, &dependencies, &dep_spans);
        let report_index = reports
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), NodeIndex::new(i)))
            .collect();
        Workflow {
            config,
            roles: role_names,
            all_counties,
            sources,
            reports,
            schedules,
            dependencies,
            graph,
            report_index,
            locations: Locations {
                sources: source_locations,
                mask_fields,
            },
        }
    }

    /// Names must be unique within their kind; later duplicates are reported
    /// pointing at both and left out.
    fn unique<'a>(
        &mut self,
        kind: &str,
        idents: impl Iterator<Item = &'a Ident>,
    ) -> Vec<Named<'a>> {
        let mut seen: Map<&str, &Ident> = Map::default();
        let mut out = Vec::new();
        for (index, ident) in idents.enumerate() {
            if let Some(first) = seen.get(ident.name.as_str()) {
                self.diags.push(
                    Diagnostic::error(
                        Code::Duplicate,
                        format!("{kind} `{}` is defined more than once", ident.name),
                    )
                    .label(ident.span, "defined again here")
                    .label(first.span, "first defined here")
                    .help(format!("rename one of them or remove the duplicate {kind}")),
                );
            } else {
                seen.insert(&ident.name, ident);
                out.push(Named { index, ident });
            }
        }
        out
    }

    // ---- config -------------------------------------------------------

    fn config(&mut self, configs: &[(FileId, &Block, Span)]) -> EngineConfig {
        let mut config = EngineConfig::default();
        if let Some(&(file, _, _)) = configs.first() {
            // `results` is relative to the file that declares the config.
            config.results_dir = resolve(self.sources.get(file).dir(), "results");
        }
        if let [(_, _, first), rest @ ..] = configs {
            for (_, _, span) in rest {
                self.diags.push(
                    Diagnostic::error(Code::Duplicate, "config is defined more than once")
                        .label(
                            Span::new(span.file, span.start as usize, span.start as usize + 6),
                            "defined again here",
                        )
                        .label(
                            Span::new(first.file, first.start as usize, first.start as usize + 6),
                            "first defined here",
                        )
                        .help("a workflow has one config block; merge them"),
                );
            }
        }
        let Some(&(file, block, _)) = configs.first() else {
            return config;
        };
        for setting in self.settings(block, CONFIG_KEYS, "config") {
            let key = setting.key.name.as_str();
            match key {
                "scheduler" => {
                    if let Some(b) = self.bool_value(setting) {
                        config.scheduler_enabled = b;
                    }
                }
                "dependencies" => {
                    if let Some(b) = self.bool_value(setting) {
                        config.dependencies_enabled = b;
                    }
                }
                "poll_interval" => {
                    if let Some(d) = self.duration_value(setting, Duration::from_millis(10)) {
                        config.poll_interval = d;
                    }
                }
                "lease" => {
                    if let Some(d) = self.duration_value(setting, Duration::from_secs(1)) {
                        config.lease = d;
                    }
                }
                "catch_up_window" => {
                    if let Some(d) = self.duration_value(setting, Duration::from_secs(1)) {
                        config.catch_up_window = d;
                    }
                }
                "max_jobs_per_poll" => {
                    if let Some(n) = self.int_value(setting, 1, 10_000) {
                        config.max_jobs_per_poll = n as u32;
                    }
                }
                "worker_pool_size" => {
                    if let Some(n) = self.int_value(setting, 1, MAX_POOL_SIZE) {
                        config.worker_pool_size = n as u32;
                    }
                }
                "results" => {
                    if let Some(s) = self.string_value(setting) {
                        config.results_dir = resolve(self.sources.get(file).dir(), &s);
                    }
                }
                _ => {}
            }
        }
        config
    }

    /// The config's `all_counties`: roles that see every county. Read after the roles are
    /// known (the rest of the config is read before), each checked against them.
    fn all_counties(
        &mut self,
        configs: &[(FileId, &Block, Span)],
        scope: &Scope<'_>,
    ) -> Vec<String> {
        let Some(&(_, block, _)) = configs.first() else {
            return Vec::new();
        };
        let mut roles: Vec<String> = Vec::new();
        for setting in block.settings().filter(|s| s.key.name == "all_counties") {
            for value in &setting.values {
                if let Some(id) = self.as_ident(value, setting) {
                    if scope.check_role(&id, &mut self.diags) && !roles.contains(&id.name) {
                        roles.push(id.name);
                    }
                }
            }
        }
        roles
    }

    /// Warnings about reports that run more often than a reader of the file may think: a
    /// report both scheduled and created by a dependency runs once for each, and a child with
    /// a fixed role runs once per parent scope (role, county), so parents that run as several
    /// roles create several jobs of the same child and role.
    ///
    /// Linear in the workflow: the roles each report can run as are computed once, in
    /// topological order (a cyclic graph has already failed; it gets no warnings).
    fn check_repeated_runs(
        &mut self,
        graph: &DiGraph<usize, Edge>,
        report_index: &Map<&str, usize>,
        schedules: &[Schedule],
        dependencies: &[Dependency],
        dep_spans: &[Span],
    ) {
        let Ok(order) = petgraph::algo::toposort(graph, None) else {
            return;
        };
        // Per report (node index == report index): the first schedule that runs it, and the
        // roles it can run as.
        let mut scheduled_by: Vec<Option<&str>> = vec![None; graph.node_count()];
        let mut roles: Vec<Vec<String>> = vec![Vec::new(); graph.node_count()];
        for schedule in schedules {
            for report in &schedule.reports {
                let Some(&i) = report_index.get(report.as_str()) else {
                    continue;
                };
                scheduled_by[i].get_or_insert(schedule.name.as_str());
                for role in &schedule.roles {
                    push_unique(&mut roles[i], role);
                }
            }
        }
        for node in order {
            let child = node.index();
            // The dependencies that create this report, each with its parents.
            let mut incoming: Vec<(usize, usize)> = graph
                .edges_directed(node, petgraph::Direction::Incoming)
                .map(|e| (e.weight().dependency, e.source().index()))
                .collect();
            incoming.sort_unstable();
            for group in incoming.chunk_by(|a, b| a.0 == b.0) {
                let (dep, span) = (&dependencies[group[0].0], dep_spans[group[0].0]);
                if let Some(schedule) = scheduled_by[child] {
                    self.diags.push(
                        Diagnostic::warning(
                            Code::RunsTwice,
                            format!(
                                "report `{}` runs twice: schedule `{schedule}` runs it, and so does this dependency",
                                dep.child
                            ),
                        )
                        .label(span, format!("a second `{}` job after each parent completion", dep.child))
                        .help("each trigger creates its own job; remove the report from the schedule's `run`, or drop the dependency"),
                    );
                }
                // The roles whose completions of the parents count (the `by` filter); the
                // parents come earlier in the order, so their roles are complete.
                let mut from: Vec<String> = Vec::new();
                for &(_, parent) in group {
                    for role in &roles[parent] {
                        if dep.parent_roles.is_empty() || dep.parent_roles.contains(role) {
                            push_unique(&mut from, role);
                        }
                    }
                }
                let RoleRule::Fixed(role) = &dep.role else {
                    for role in &from {
                        push_unique(&mut roles[child], role);
                    }
                    continue;
                };
                push_unique(&mut roles[child], role.as_str());
                if from.len() > 1 {
                    self.diags.push(
                        Diagnostic::warning(
                            Code::RunsPerParentScope,
                            format!(
                                "`{}` runs as {role} once per parent scope: its parents run as {}, so each round creates {} `{}` jobs",
                                dep.child,
                                from.join(", "),
                                from.len(),
                                dep.child
                            ),
                        )
                        .label(span, "one child per parent (role, county)")
                        .help(format!(
                            "to run it once per round, count one role's completions: `after {} by {} run {} as {role}`",
                            dep.parents.join(", "),
                            from[0],
                            dep.child
                        )),
                    );
                }
            }
        }
    }

    // ---- sources ------------------------------------------------------

    fn source(&mut self, file: FileId, name: &Ident, block: &Block) -> (Source, SourceLocation) {
        let mut path = None;
        let mut format = None;
        let mut county_column = None;
        let mut location = SourceLocation {
            name: Some(name.span),
            ..SourceLocation::default()
        };
        for setting in self.settings(block, SOURCE_KEYS, "source") {
            let value_span = setting.values.first().map(|v| v.span);
            match setting.key.name.as_str() {
                "path" => {
                    path = self.string_value(setting).map(|p| (p, setting.span));
                    location.path = value_span;
                }
                "format" => format = self.format_value(setting),
                "county_column" => {
                    county_column = self.name_or_string(setting);
                    location.county_column = value_span;
                }
                _ => {}
            }
        }
        let dir = self.sources.get(file).dir();
        let resolved = match &path {
            Some((p, _)) => resolve(dir, p),
            None => {
                self.missing(name, "source", "path", "path \"data/cases.csv\"");
                dir.to_path_buf()
            }
        };
        let format = format.or_else(|| {
            let (p, span) = path.as_ref()?;
            let inferred = match Path::new(p).extension().and_then(|e| e.to_str()) {
                Some("csv") => Some(DataFormat::Csv),
                Some("jsonl" | "ndjson") => Some(DataFormat::Jsonl),
                _ => None,
            };
            if inferred.is_none() {
                self.diags.push(
                    Diagnostic::error(
                        Code::MissingSetting,
                        format!(
                            "cannot tell the format of source `{}` from its path",
                            name.name
                        ),
                    )
                    .label(*span, "no .csv or .jsonl extension")
                    .help("add `format csv` or `format jsonl`"),
                );
            }
            inferred
        });
        let source = Source {
            name: name.name.clone(),
            path: resolved,
            format: format.unwrap_or(DataFormat::Csv),
            county_column,
        };
        (source, location)
    }

    // ---- masking ------------------------------------------------------

    fn mask_rules(&mut self, block: &Block, scope: &Scope<'_>) -> Vec<(MaskRule, Span)> {
        for setting in block.settings() {
            self.diags.push(
                Diagnostic::error(
                    Code::UnknownSetting,
                    format!("`{}` is not allowed in a masking block", setting.key.name),
                )
                .label(setting.key.span, "only `mask` rules go here")
                .help("write rules as `mask FIELD METHOD [for ROLES] [except ROLES]`"),
            );
        }
        block
            .masks()
            .filter_map(|rule| self.mask_rule(rule, scope))
            .collect()
    }

    /// A mask rule, with the span of its field name.
    fn mask_rule(
        &mut self,
        rule: &crate::ast::MaskRule,
        scope: &Scope<'_>,
    ) -> Option<(MaskRule, Span)> {
        let method = match MaskMethod::from_name(&rule.method.name) {
            Some(m) => Some(m),
            None => {
                let mut d = Diagnostic::error(
                    Code::BadMaskMethod,
                    format!("unknown masking method `{}`", rule.method.name),
                )
                .label(rule.method.span, "not a masking method");
                d = d.help(match did_you_mean(&rule.method.name, MaskMethod::NAMES.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? methods: redact, last4, hash, null"),
                    None => "methods: redact (****), last4 (keep the last 4 characters), hash (keyed SHA-256), null".to_string(),
                });
                self.diags.push(d);
                None
            }
        };
        let for_roles: Vec<String> = rule
            .for_roles
            .iter()
            .filter(|r| scope.check_role(r, &mut self.diags))
            .map(|r| r.name.clone())
            .collect();
        let except_roles: Vec<String> = rule
            .except_roles
            .iter()
            .filter(|r| scope.check_role(r, &mut self.diags))
            .map(|r| r.name.clone())
            .collect();
        for r in &rule.except_roles {
            if rule.for_roles.iter().any(|f| f.name == r.name) {
                self.diags.push(
                    Diagnostic::error(
                        Code::MaskRoles,
                        format!("role `{}` is both masked and in clear", r.name),
                    )
                    .label(r.span, "listed after `except`")
                    .help(
                        "a role goes after `for` (masked) or after `except` (in clear), not both",
                    ),
                );
            }
        }
        let mask = MaskRule {
            field: rule.field.name.clone(),
            method: method?,
            for_roles: (!rule.for_roles.is_empty()).then_some(for_roles),
            except_roles,
        };
        Some((mask, rule.field.span))
    }

    // ---- reports ------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        name: &Ident,
        block: &Block,
        scope: &Scope<'_>,
        sources: &Map<&str, usize>,
        maskings: &Map<&str, usize>,
        masking_rules: &[Vec<(MaskRule, Span)>],
        source_used: &mut [bool],
        masking_used: &mut [bool],
    ) -> (ReportType, Vec<Span>) {
        let mut report = ReportType {
            name: name.name.clone(),
            source: 0,
            format: DataFormat::Csv,
            chunk_size: 1000,
            priority: 5,
            target: None,
            retries: 0,
            backoff: Duration::from_secs(30),
            timeout: None,
            masks: Vec::new(),
        };
        let mut has_source = false;
        let mut mask_spans = Vec::new();
        for setting in self.settings(block, REPORT_KEYS, "report") {
            match setting.key.name.as_str() {
                "source" => {
                    if let Some(id) = self.ident_value(setting) {
                        has_source = true;
                        if let Some(i) = self.resolve(&id, "source", sources) {
                            report.source = i;
                            source_used[i] = true;
                        }
                    }
                }
                "format" => {
                    if let Some(f) = self.format_value(setting) {
                        report.format = f;
                    }
                }
                "chunk_size" => {
                    if let Some(n) = self.int_value(setting, 1, MAX_CHUNK_SIZE) {
                        report.chunk_size = n as u32;
                    }
                }
                "priority" => {
                    if let Some(n) = self.int_value(setting, 0, 255) {
                        report.priority = n as u8;
                    }
                }
                "target" => report.target = self.name_or_string(setting),
                "retries" => {
                    if let Some(n) = self.int_value(setting, 0, 100) {
                        report.retries = n as u32;
                    }
                }
                "backoff" => {
                    if let Some(d) = self.duration_value(setting, Duration::ZERO) {
                        report.backoff = d;
                    }
                }
                "timeout" => {
                    if let Some(d) = self.duration_value(setting, Duration::from_millis(1)) {
                        report.timeout = Some(d);
                    }
                }
                "masking" => {
                    for value in &setting.values {
                        if let Some(id) = self.as_ident(value, setting) {
                            if let Some(i) = self.resolve(&id, "masking", maskings) {
                                masking_used[i] = true;
                                for (rule, span) in &masking_rules[i] {
                                    report.masks.push(rule.clone());
                                    mask_spans.push(*span);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let (inline, inline_spans): (Vec<MaskRule>, Vec<Span>) = block
            .masks()
            .filter_map(|rule| self.mask_rule(rule, scope))
            .unzip();
        // Inline rules come first: they override a shared masking's rule for
        // the same field.
        report.masks.splice(0..0, inline);
        mask_spans.splice(0..0, inline_spans);
        if !has_source {
            self.missing(name, "report", "source", "source cases");
        }
        (report, mask_spans)
    }

    // ---- schedules ----------------------------------------------------

    fn schedule(
        &mut self,
        name: &Ident,
        block: &Block,
        scope: &Scope<'_>,
        reports: &Map<&str, usize>,
        all_counties: &[String],
        triggered: &mut [bool],
    ) -> Schedule {
        let mut cron = None;
        let mut zone = chrono_tz::UTC;
        let mut run = Vec::new();
        let mut roles = Vec::new();
        let mut role_idents = Vec::new();
        let mut counties = Vec::new();
        let mut catch_up = CatchUp::Once;
        let (mut has_cron, mut has_run, mut has_roles) = (false, false, false);
        for setting in self.settings(block, SCHEDULE_KEYS, "schedule") {
            match setting.key.name.as_str() {
                "cron" => {
                    has_cron = true;
                    cron = self.cron_value(setting);
                }
                "zone" => {
                    if let Some((z, span)) = self.one_string(setting) {
                        match z.parse::<chrono_tz::Tz>() {
                            Ok(tz) => zone = tz,
                            Err(_) => {
                                let suggestion = did_you_mean(
                                    &z,
                                    chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()),
                                );
                                self.diags.push(
                                    Diagnostic::error(
                                        Code::UnknownZone,
                                        format!("unknown time zone `{z}`"),
                                    )
                                    .label(span, "not an IANA time zone")
                                    .help(match suggestion {
                                        Some(s) => format!("did you mean `{s}`?"),
                                        None => "use an IANA name such as `UTC`, `America/New_York` or `Europe/London`".to_string(),
                                    }),
                                );
                            }
                        }
                    }
                }
                "run" => {
                    has_run = true;
                    for v in &setting.values {
                        if let Some(id) = self.as_ident(v, setting) {
                            if let Some(i) = self.resolve(&id, "report", reports) {
                                triggered[i] = true;
                                run.push(id.name.clone());
                            }
                        }
                    }
                }
                "roles" => {
                    has_roles = true;
                    for v in &setting.values {
                        if let Some(id) = self.as_ident(v, setting) {
                            if scope.check_role(&id, &mut self.diags) {
                                roles.push(id.name.clone());
                                role_idents.push(id);
                            }
                        }
                    }
                }
                "counties" => {
                    for v in &setting.values {
                        match &v.kind {
                            ValueKind::Str(s) => counties.push(s.clone()),
                            ValueKind::Ident(s) => counties.push(s.clone()),
                            ValueKind::Number(n) => counties.push(n.to_string()),
                            ValueKind::Duration(_) => self.wrong_kind(v, setting, "a county id"),
                        }
                    }
                }
                "catch_up" => {
                    if let Some(id) = self.ident_value(setting) {
                        match CatchUp::from_name(&id.name) {
                            Some(c) => catch_up = c,
                            None => self.bad_keyword(&id, "catch-up policy", &CatchUp::NAMES),
                        }
                    }
                }
                _ => {}
            }
        }
        if !has_cron {
            self.missing(name, "schedule", "cron", "cron \"0 30 5 * * ?\"");
        }
        if !has_run {
            self.missing(name, "schedule", "run", "run DAILY_REPORT");
        }
        if !has_roles {
            self.missing(name, "schedule", "roles", "roles ADMIN");
        }
        if counties.is_empty() {
            // The county rule: a fire for a county-scoped role must say which counties.
            for id in role_idents
                .iter()
                .filter(|id| !all_counties.contains(&id.name))
            {
                self.diags.push(
                    Diagnostic::error(
                        Code::CountyRequired,
                        format!(
                            "schedule `{}` runs as county-scoped role `{}` but names no counties",
                            name.name, id.name
                        ),
                    )
                    .label(id.span, "this role sees one county's rows at a time")
                    .help(format!(
                        "add `counties \"C01\", \"C02\"` (one job per role and county), or list `{}` in the config's `all_counties` if it may see every county",
                        id.name
                    )),
                );
            }
        }
        Schedule {
            name: name.name.clone(),
            cron: cron.unwrap_or_else(|| {
                CronExpr::parse("0 0 0 1 1 ?").unwrap_or_else(|_| unreachable!("a valid literal"))
            }),
            zone,
            reports: run,
            roles,
            counties,
            catch_up,
        }
    }

    fn cron_value(&mut self, setting: &Setting) -> Option<CronExpr> {
        let (text, span) = self.one_string(setting)?;
        match CronExpr::parse(&text) {
            Ok(c) => Some(c),
            Err(err) => {
                // Point inside the string when the text maps 1:1 (no escapes).
                let raw = self.sources.text(span);
                let inner_span = if raw.len() == text.len() + 2 {
                    let start = span.start as usize + 1 + err.offset;
                    Span::new(span.file, start, start + err.len.max(1))
                } else {
                    span
                };
                let label = match &err.field {
                    Some(f) => format!("in the {} field", f.name()),
                    None => "here".to_string(),
                };
                self.diags.push(
                    Diagnostic::error(Code::InvalidCron, format!("invalid cron expression: {}", err.message))
                        .label(inner_span, label)
                        .help("Quartz cron: second minute hour day-of-month month day-of-week [year], e.g. \"0 30 5 * * ?\" (05:30 daily); day-of-week 1 = Sunday or SUN-SAT"),
                );
                None
            }
        }
    }

    // ---- dependencies -------------------------------------------------

    fn dependency(
        &mut self,
        index: usize,
        decl: &DependencyDecl,
        scope: &Scope<'_>,
        reports: &Map<&str, usize>,
    ) -> Option<(Dependency, Vec<usize>, usize)> {
        let mut ok = true;
        let child = self.resolve(&decl.child, "report", reports);
        let mut parents: Vec<usize> = Vec::new();
        let mut seen: Vec<&Ident> = Vec::new();
        for p in &decl.parents {
            if let Some(first) = seen.iter().find(|s| s.name == p.name) {
                self.diags.push(
                    Diagnostic::error(
                        Code::RepeatedParent,
                        format!("`{}` is listed twice in this join", p.name),
                    )
                    .label(p.span, "repeated here")
                    .label(first.span, "first listed here")
                    .help("a join waits for each parent once; remove the repeated name"),
                );
                ok = false;
                continue;
            }
            seen.push(p);
            if p.name == decl.child.name {
                self.diags.push(
                    Diagnostic::error(
                        Code::SelfDependency,
                        format!("report `{}` depends on itself", p.name),
                    )
                    .label(p.span, "parent")
                    .label(decl.child.span, "is also the child")
                    .help("a report cannot run after itself; remove it from the parents"),
                );
                ok = false;
                continue;
            }
            match self.resolve(p, "report", reports) {
                Some(i) => parents.push(i),
                None => ok = false,
            }
        }
        let condition = match &decl.condition {
            None => Condition::OnSuccess,
            Some(c) => match Condition::from_name(&c.name) {
                Some(c) => c,
                None => {
                    self.bad_keyword(c, "condition", &["success", "completion"]);
                    ok = false;
                    Condition::OnSuccess
                }
            },
        };
        let parent_roles: Vec<String> = decl
            .by_roles
            .iter()
            .filter(|r| scope.check_role(r, &mut self.diags))
            .map(|r| r.name.clone())
            .collect();
        let role = match &decl.as_role {
            None => RoleRule::Inherit,
            Some(r) if r.name == "inherit" => RoleRule::Inherit,
            Some(r) => {
                if !scope.check_role(r, &mut self.diags) {
                    ok = false;
                }
                RoleRule::Fixed(r.name.clone())
            }
        };
        let mut overrides = Overrides::default();
        if let Some(block) = &decl.block {
            for m in block.masks() {
                self.diags.push(
                    Diagnostic::error(
                        Code::UnknownSetting,
                        "mask rules belong in a report, not a dependency",
                    )
                    .label(m.span, "not allowed here")
                    .help(format!("move it into `report {}`", decl.child.name)),
                );
            }
            for setting in self.settings(block, OVERRIDE_KEYS, "dependency") {
                match setting.key.name.as_str() {
                    "chunk_size" => {
                        overrides.chunk_size =
                            self.int_value(setting, 1, MAX_CHUNK_SIZE).map(|n| n as u32)
                    }
                    "priority" => {
                        overrides.priority = self.int_value(setting, 0, 255).map(|n| n as u8)
                    }
                    "format" => overrides.format = self.format_value(setting),
                    "target" => overrides.target = self.name_or_string(setting),
                    _ => {}
                }
            }
        }
        let child = child?;
        if !ok || parents.is_empty() {
            return None;
        }
        Some((
            Dependency {
                id: format!("{index}:{}", decl.child.name),
                // Repeated parents and self-dependencies returned above.
                parents: decl.parents.iter().map(|p| p.name.clone()).collect(),
                child: decl.child.name.clone(),
                condition,
                parent_roles,
                role,
                overrides,
            },
            parents,
            child,
        ))
    }

    fn check_cycles(
        &mut self,
        graph: &DiGraph<usize, Edge>,
        reports: &[ReportType],
        dependencies: &[Dependency],
        dep_spans: &[Span],
    ) {
        let mut sccs: Vec<Vec<NodeIndex>> = petgraph::algo::tarjan_scc(graph)
            .into_iter()
            .filter(|scc| scc.len() > 1)
            .collect();
        for scc in &mut sccs {
            scc.sort();
        }
        sccs.sort();
        for scc in sccs {
            let cycle = find_cycle(graph, &scc);
            let names: Vec<&str> = cycle
                .iter()
                .map(|n| reports[graph[*n]].name.as_str())
                .collect();
            let mut text = names.join(" → ");
            text.push_str(" → ");
            text.push_str(names[0]);
            let mut d = Diagnostic::error(Code::Cycle, format!("dependency cycle: {text}"));
            for (i, a) in cycle.iter().enumerate() {
                let b = cycle[(i + 1) % cycle.len()];
                if let Some(e) = graph.find_edge(*a, b) {
                    let dep = graph[e].dependency;
                    d = d.label(
                        dep_spans[dep],
                        format!(
                            "{} runs after {}",
                            dependencies[dep].child, reports[graph[*a]].name
                        ),
                    );
                }
            }
            self.diags.push(
                d.help("dependencies must form a DAG: remove one of these `after` declarations"),
            );
        }
    }

    // ---- settings helpers ---------------------------------------------

    /// The block's settings, minus unknown keys and duplicates (both reported).
    fn settings<'b>(&mut self, block: &'b Block, allowed: &[&str], what: &str) -> Vec<&'b Setting> {
        let mut out: Vec<&Setting> = Vec::new();
        for s in block.settings() {
            if !allowed.contains(&s.key.name.as_str()) {
                let mut d = Diagnostic::error(
                    Code::UnknownSetting,
                    format!("unknown setting `{}` in {what}", s.key.name),
                )
                .label(s.key.span, "unknown setting");
                d = d.help(match did_you_mean(&s.key.name, allowed.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("{what} settings: {}", allowed.join(", ")),
                });
                self.diags.push(d);
                continue;
            }
            if let Some(first) = out.iter().find(|o| o.key.name == s.key.name) {
                self.diags.push(
                    Diagnostic::error(
                        Code::Duplicate,
                        format!("setting `{}` is given more than once", s.key.name),
                    )
                    .label(s.key.span, "given again here")
                    .label(first.key.span, "first given here")
                    .help("keep one of them"),
                );
                continue;
            }
            out.push(s);
        }
        // Mask rules belong in reports; a dependency reports its own.
        if !matches!(what, "report" | "dependency") {
            for m in block.masks() {
                self.diags.push(
                    Diagnostic::error(
                        Code::UnknownSetting,
                        format!("mask rules are not allowed in a {what}"),
                    )
                    .label(m.span, "not allowed here")
                    .help("mask rules go in a `report` or a `masking` block"),
                );
            }
        }
        out
    }

    fn missing(&mut self, name: &Ident, kind: &str, key: &str, example: &str) {
        self.diags.push(
            Diagnostic::error(
                Code::MissingSetting,
                format!("{kind} `{}` has no `{key}`", name.name),
            )
            .label(name.span, format!("`{key}` is required"))
            .help(format!("add a line such as `{example}`")),
        );
    }

    fn one<'v>(&mut self, setting: &'v Setting) -> Option<&'v Value> {
        if setting.values.len() == 1 {
            return setting.values.first();
        }
        let extra = &setting.values[1];
        self.diags.push(
            Diagnostic::error(
                Code::InvalidValue,
                format!("`{}` takes a single value", setting.key.name),
            )
            .label(extra.span, "unexpected second value"),
        );
        None
    }

    fn wrong_kind(&mut self, value: &Value, setting: &Setting, expected: &str) {
        self.diags.push(
            Diagnostic::error(
                Code::InvalidValue,
                format!(
                    "`{}` expects {expected}, found {}",
                    setting.key.name,
                    value.describe()
                ),
            )
            .label(value.span, format!("expected {expected}")),
        );
    }

    fn one_string(&mut self, setting: &Setting) -> Option<(String, Span)> {
        let v = self.one(setting)?;
        match &v.kind {
            ValueKind::Str(s) => Some((s.clone(), v.span)),
            _ => {
                self.wrong_kind(v, setting, "a quoted string");
                None
            }
        }
    }

    fn string_value(&mut self, setting: &Setting) -> Option<String> {
        self.one_string(setting).map(|(s, _)| s)
    }

    fn as_ident(&mut self, value: &Value, setting: &Setting) -> Option<Ident> {
        match &value.kind {
            ValueKind::Ident(name) => Some(Ident {
                name: name.clone(),
                span: value.span,
            }),
            _ => {
                self.wrong_kind(value, setting, "a name");
                None
            }
        }
    }

    fn ident_value(&mut self, setting: &Setting) -> Option<Ident> {
        let v = self.one(setting)?;
        self.as_ident(v, setting)
    }

    fn name_or_string(&mut self, setting: &Setting) -> Option<String> {
        let v = self.one(setting)?;
        match &v.kind {
            ValueKind::Str(s) | ValueKind::Ident(s) => Some(s.clone()),
            _ => {
                self.wrong_kind(v, setting, "a name or a string");
                None
            }
        }
    }

    fn bool_value(&mut self, setting: &Setting) -> Option<bool> {
        let id = self.ident_value(setting)?;
        match id.name.as_str() {
            "on" | "true" | "yes" => Some(true),
            "off" | "false" | "no" => Some(false),
            _ => {
                self.bad_keyword(&id, "switch value", &["on", "off"]);
                None
            }
        }
    }

    fn format_value(&mut self, setting: &Setting) -> Option<DataFormat> {
        let id = self.ident_value(setting)?;
        let f = DataFormat::from_name(&id.name);
        if f.is_none() {
            self.bad_keyword(&id, "format", &DataFormat::NAMES);
        }
        f
    }

    fn int_value(&mut self, setting: &Setting, min: i64, max: i64) -> Option<i64> {
        let v = self.one(setting)?;
        let ValueKind::Number(n) = v.kind else {
            self.wrong_kind(v, setting, "a whole number");
            return None;
        };
        if n < min || n > max {
            self.diags.push(
                Diagnostic::error(
                    Code::OutOfRange,
                    format!(
                        "`{}` must be between {min} and {max}, not {n}",
                        setting.key.name
                    ),
                )
                .label(v.span, "out of range")
                .help(format!("use a value from {min} to {max}")),
            );
            return None;
        }
        Some(n)
    }

    fn duration_value(&mut self, setting: &Setting, min: Duration) -> Option<Duration> {
        let v = self.one(setting)?;
        let d = match &v.kind {
            ValueKind::Duration(text) => match parse_duration(text) {
                Ok(d) => d,
                Err(why) => {
                    self.diags.push(
                        Diagnostic::error(Code::BadDuration, format!("bad duration `{text}`: {why}"))
                            .label(v.span, "not a duration")
                            .help("write a number and a unit: ms, s, m, h or d, e.g. `500ms`, `30s`, `1h30m`"),
                    );
                    return None;
                }
            },
            ValueKind::Number(n) => {
                self.diags.push(
                    Diagnostic::error(Code::BadDuration, format!("bad duration `{n}`: no unit"))
                        .label(v.span, "which unit?")
                        .help(format!(
                            "write `{n}s`, `{n}m` or another unit: ms, s, m, h, d"
                        )),
                );
                return None;
            }
            _ => {
                self.wrong_kind(v, setting, "a duration such as `30s`");
                return None;
            }
        };
        if d < min {
            self.diags.push(
                Diagnostic::error(
                    Code::OutOfRange,
                    format!("`{}` must be at least {}", setting.key.name, humanize(min)),
                )
                .label(v.span, "too short"),
            );
            return None;
        }
        Some(d)
    }

    fn bad_keyword(&mut self, id: &Ident, what: &str, allowed: &[&str]) {
        let mut d = Diagnostic::error(Code::InvalidValue, format!("unknown {what} `{}`", id.name))
            .label(id.span, format!("not a {what}"));
        d = d.help(match did_you_mean(&id.name, allowed.iter().copied()) {
            Some(s) => format!(
                "did you mean `{s}`? expected one of: {}",
                allowed.join(", ")
            ),
            None => format!("expected one of: {}", allowed.join(", ")),
        });
        self.diags.push(d);
    }

    fn resolve(&mut self, id: &Ident, kind: &str, names: &Map<&str, usize>) -> Option<usize> {
        if let Some(i) = names.get(id.name.as_str()) {
            return Some(*i);
        }
        unknown(&mut self.diags, id, kind, names.keys().copied());
        None
    }
}

/// Role references check against the declared `roles`.
struct Scope<'a> {
    roles: &'a Map<&'a str, usize>,
    role_names: &'a [String],
}

impl Scope<'_> {
    fn check_role(&self, id: &Ident, diags: &mut Vec<Diagnostic>) -> bool {
        if self.roles.contains_key(id.name.as_str()) {
            return true;
        }
        if self.role_names.is_empty() {
            diags.push(
                Diagnostic::error(
                    Code::UnknownReference,
                    format!("unknown role `{}`", id.name),
                )
                .label(id.span, "no roles are declared")
                .help(format!(
                    "declare the workflow's roles, e.g. `roles {}`",
                    id.name
                )),
            );
            return false;
        }
        unknown(
            diags,
            id,
            "role",
            self.role_names.iter().map(String::as_str),
        );
        false
    }
}

fn unknown<'a>(
    diags: &mut Vec<Diagnostic>,
    id: &Ident,
    kind: &str,
    candidates: impl Iterator<Item = &'a str> + Clone,
) {
    let mut d = Diagnostic::error(
        Code::UnknownReference,
        format!("unknown {kind} `{}`", id.name),
    )
    .label(id.span, format!("no {kind} has this name"));
    if let Some(s) = did_you_mean(&id.name, candidates.clone()) {
        d = d.help(format!("did you mean `{s}`?"));
    } else {
        let mut all: Vec<&str> = candidates.collect();
        all.sort_unstable();
        if all.is_empty() {
            d = d.help(format!("no {kind} is declared"));
        } else if all.len() <= 8 {
            d = d.help(format!("declared: {}", all.join(", ")));
        }
    }
    diags.push(d);
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|x| x == item) {
        list.push(item.to_string());
    }
}

fn index_of<'a>(named: &[Named<'a>]) -> Map<&'a str, usize> {
    named
        .iter()
        .map(|n| (n.ident.name.as_str(), n.index))
        .collect()
}

/// `p` relative to `dir`, with `.` and `..` folded lexically so paths read
/// well in output (`workflows/../results` is `results`).
fn resolve(dir: &Path, p: &str) -> std::path::PathBuf {
    use std::path::Component;
    let path = Path::new(p);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    let mut out = std::path::PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let last_is_normal =
                    matches!(out.components().next_back(), Some(Component::Normal(_)));
                if last_is_normal {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The shortest cycle through the SCC's first node, by breadth-first search.
fn find_cycle(graph: &DiGraph<usize, Edge>, scc: &[NodeIndex]) -> Vec<NodeIndex> {
    let start = scc[0];
    let in_scc = |n: NodeIndex| scc.binary_search(&n).is_ok();
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        let mut next: Vec<NodeIndex> = graph.neighbors(n).filter(|m| in_scc(*m)).collect();
        next.sort();
        next.dedup();
        for m in next {
            if m == start {
                let mut path = vec![n];
                let mut cur = n;
                while cur != start {
                    cur = prev[&cur];
                    path.push(cur);
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    scc.to_vec()
}

/// `500ms`, `30s`, `2m`, `1h30m`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty".into());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number before `{rest}`"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_string())?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let millis = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err("a number has no unit".into()),
            other => {
                return Err(format!(
                    "unknown unit `{other}` (expected ms, s, m, h or d)"
                ))
            }
        };
        let part = n
            .checked_mul(millis)
            .ok_or_else(|| "too long".to_string())?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(|| "too long".to_string())?;
    }
    Ok(total)
}

/// Canonical text of a duration, the inverse of [`parse_duration`].
pub fn humanize(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5x")
            .unwrap_err()
            .contains("unknown unit `x`"));
        assert_eq!(humanize(Duration::from_secs(5400)), "1h30m");
        assert_eq!(humanize(Duration::from_millis(1500)), "1s500ms");
    }

    #[test]
    fn suggestions() {
        let c = ["CASE_WORKER", "SUPERVISOR", "ADMIN"];
        assert_eq!(
            did_you_mean("CASE_WORKR", c.iter().copied()),
            Some("CASE_WORKER")
        );
        assert_eq!(did_you_mean("admin", c.iter().copied()), Some("ADMIN"));
        assert_eq!(did_you_mean("NOBODY", c.iter().copied()), None);
    }

    fn compile_text(text: &str) -> Compilation {
        compile(crate::loader::load_text(
            Path::new("w.flow"),
            text.to_string(),
        ))
    }

    fn codes(c: &Compilation) -> Vec<&'static str> {
        c.diagnostics.iter().map(|d| d.code.as_str()).collect()
    }

    const BASE: &str = "roles CASE_WORKER, ADMIN\nsource s {\n  path \"s.csv\"\n  county_column county_id\n}\nreport R {\n  source s\n}\n";

    #[test]
    fn no_role_sees_all_counties_unless_declared() {
        let c = compile_text(&format!(
            "{BASE}schedule d {{\n  cron \"0 0 5 * * ?\"\n  run R\n  roles ADMIN\n}}\n"
        ));
        assert_eq!(codes(&c), ["E021"], "{:?}", c.diagnostics);
        assert!(c.workflow.is_none());
    }

    #[test]
    fn a_schedule_for_a_county_scoped_role_must_name_counties() {
        let config = "config {\n  all_counties ADMIN\n}\n";
        let c = compile_text(&format!(
            "{config}{BASE}schedule d {{\n  cron \"0 0 5 * * ?\"\n  run R\n  roles CASE_WORKER, ADMIN\n}}\n"
        ));
        assert_eq!(codes(&c), ["E021"], "{:?}", c.diagnostics);
        assert!(c.diagnostics[0].message.contains("CASE_WORKER"));
        let c = compile_text(&format!(
            "{config}{BASE}schedule d {{\n  cron \"0 0 5 * * ?\"\n  run R\n  roles CASE_WORKER, ADMIN\n  counties \"C1\"\n}}\n"
        ));
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        let w = c.workflow.unwrap();
        assert!(w.sees_all_counties("ADMIN") && !w.sees_all_counties("CASE_WORKER"));
        assert!(w.check_county("ADMIN", None).is_ok());
        assert!(w.check_county("CASE_WORKER", Some("C1")).is_ok());
        let refused = w.check_county("CASE_WORKER", None).unwrap_err();
        assert!(
            refused.to_string().contains("CASE_WORKER is county-scoped"),
            "{refused}"
        );
    }

    #[test]
    fn all_counties_names_declared_roles() {
        let c = compile_text(&format!("config {{\n  all_counties ADMN\n}}\n{BASE}"));
        assert_eq!(codes(&c), ["E002", "W001"], "{:?}", c.diagnostics);
        assert_eq!(
            c.diagnostics[0].help.as_deref(),
            Some("did you mean `ADMIN`?")
        );
    }

    #[test]
    fn mask_rules_keep_the_span_of_their_field() {
        let text = format!(
            "masking pii {{\n  mask ssn last4\n}}\n{}",
            BASE.replace(
                "  source s\n}",
                "  source s\n  masking pii\n  mask name redact\n}"
            )
        );
        let c = compile_text(&text);
        let w = c.workflow.expect("compiles");
        let spans = &w.locations.mask_fields[0];
        let fields: Vec<&str> = spans.iter().map(|s| c.sources.text(*s)).collect();
        // Inline rules first, like the rules themselves.
        assert_eq!(fields, ["name", "ssn"]);
        assert_eq!(w.reports[0].masks.len(), 2);
        assert_eq!(
            c.sources
                .text(w.locations.sources[0].county_column.unwrap()),
            "county_id"
        );
    }

    #[test]
    fn reports_that_run_twice_are_warned_about() {
        let config = "config {\n  all_counties ADMIN\n}\n";
        let schedule = "schedule d {\n  cron \"0 0 5 * * ?\"\n  run R, C\n  roles ADMIN, CASE_WORKER\n  counties \"C1\"\n}\n";
        let c = compile_text(&format!(
            "{config}{BASE}report C {{\n  source s\n}}\nreport B {{\n  source s\n}}\n{schedule}after R run C\nafter C run B as ADMIN\n"
        ));
        assert_eq!(codes(&c), ["W007", "W008"], "{:?}", c.diagnostics);
        assert!(c.workflow.is_some(), "warnings only");
        // Counting one role's completions runs the child once per round.
        let c = compile_text(&format!(
            "{config}{BASE}report C {{\n  source s\n}}\nreport B {{\n  source s\n}}\n{}after R run C\nafter C by ADMIN run B as ADMIN\n",
            schedule.replace("run R, C", "run R")
        ));
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    }
}
