//! AST to [`Workflow`]: name resolution, value checking and the dependency DAG.
//!
//! **Architecture invariant:** compilation is pure and linear in the size of
//! the input. It reads no files (the loader did that), and it reports every
//! error it finds rather than stopping at the first.
//!
//! `Compiler::workflow` runs the passes in order, each an `impl Compiler`
//! block in its own file: gather the declarations of every file (`Decls`),
//! make names unique and resolve references (`names`), read each kind of block
//! (`config`, `sources`, `mask_rules`, `reports`, `schedules`) with the shared
//! setting checks (`values`) — a report's `params`, its query's placeholders
//! (`queries`) and the `windows` of reports and schedules in their own files —
//! build the dependency graph and find its cycles (`graph`), then warn
//! (`warnings`). Every pass pushes to the same diagnostic
//! list; [`compile`] sorts it.

mod config;
mod graph;
mod mask_rules;
mod names;
mod params;
mod queries;
mod reports;
mod schedules;
mod sources;
#[cfg(test)]
mod test_support;
mod values;
mod warnings;
mod windows;

use std::collections::HashMap;

use petgraph::graph::NodeIndex;

use crate::ast::{Block, DependencyDecl, FlowFile, Ident, ItemKind};
use crate::diagnostic::Diagnostic;
use crate::loader::Loaded;
use crate::source_map::{FileId, SourceMap, Span};
use crate::workflow::{
    Locations, MaskRule, ReportType, Schedule, Source, SourceKind, SourceLocation, Workflow,
};

use names::{index_of, Map, Scope};

pub use values::{humanize, parse_duration};

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
        query_files,
    } = loaded;
    let syntax_failed = diagnostics.iter().any(Diagnostic::is_error);
    let mut compiler = Compiler {
        sources: &sources,
        query_files: &query_files,
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

/// The compiler's state while it runs: the source text (for spans) and the
/// diagnostics every pass pushes to.
struct Compiler<'s> {
    /// The files being compiled, to resolve paths and read the text under a span.
    sources: &'s SourceMap,
    /// The file each `query_file` value names, as the loader read it.
    query_files: &'s HashMap<Span, FileId>,
    /// Errors and warnings, in the order the passes found them.
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

impl Compiler<'_> {
    /// All the passes, in order, over every file's declarations.
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

        let mut sources: Vec<Source> = Vec::with_capacity(decls.sources.len());
        let mut source_locations: Vec<SourceLocation> = Vec::with_capacity(decls.sources.len());
        let mut source_kinds: Vec<Option<SourceKind>> = Vec::with_capacity(decls.sources.len());
        for (file, name, block) in &decls.sources {
            let (source, location, known) = self.source(*file, name, block);
            source_kinds.push(known.then(|| source.kind.clone()));
            sources.push(source);
            source_locations.push(location);
        }

        let maskings: Vec<Vec<(MaskRule, Span)>> = decls
            .maskings
            .iter()
            .map(|(_, block)| self.mask_rules(block, &scope))
            .collect();
        let mut masking_used = vec![false; maskings.len()];
        let mut source_used = vec![false; sources.len()];

        let mut reports: Vec<ReportType> = Vec::with_capacity(decls.reports.len());
        let mut mask_fields: Vec<Vec<Span>> = Vec::with_capacity(decls.reports.len());
        let mut window_uses: Vec<Option<Span>> = Vec::with_capacity(decls.reports.len());
        let mut query_spans: Vec<Option<Span>> = Vec::with_capacity(decls.reports.len());
        for (name, block) in &decls.reports {
            let (report, masks, window_use, query_span) = self.report(
                name,
                block,
                &scope,
                &source_index,
                &source_kinds,
                &masking_index,
                &maskings,
                &mut source_used,
                &mut masking_used,
            );
            reports.push(report);
            mask_fields.push(masks);
            window_uses.push(window_use);
            query_spans.push(query_span);
        }

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

        let dag = self.dependency_graph(
            &decls.dependencies,
            reports.len(),
            &scope,
            &report_index,
            &mut triggered,
        );
        self.check_cycles(&dag, &reports);

        self.unused_warnings(&decls, &triggered, &source_used, &masking_used);

        self.check_repeated_runs(&dag, &report_index, &schedules);
        self.window_warnings(&decls, &reports, &window_uses, &schedules, &dag);
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
            dependencies: dag.dependencies,
            graph: dag.graph,
            report_index,
            locations: Locations {
                sources: source_locations,
                mask_fields,
                queries: query_spans,
            },
        }
    }
}
