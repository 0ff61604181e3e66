//! The warning passes, over what the other passes built: declarations nothing
//! uses or triggers (W001–W003), and reports that run more often than a reader
//! of the file may think (W007, W008), parameters no query uses (W009, in `queries`), and
//! queries that read a window some of their runs will not have (W010).

use petgraph::visit::EdgeRef;

use crate::diagnostic::{Code, Diagnostic};
use crate::source_map::Span;
use crate::workflow::{ReportType, RoleRule, Schedule};

use super::graph::Dag;
use super::names::Map;
use super::{Compiler, Decls};

/// The warning passes: read the declarations, the use and trigger marks the
/// other passes left, the graph and the schedules; write warnings only.
impl Compiler<'_> {
    /// Reports no schedule or dependency triggers, and sources and maskings no
    /// report uses. Each flag is per declaration, in declaration order.
    pub(super) fn unused_warnings(
        &mut self,
        decls: &Decls<'_>,
        triggered: &[bool],
        source_used: &[bool],
        masking_used: &[bool],
    ) {
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
    }

    /// A query reads the window (`:interval_*`) but the report declares no default `window`
    /// and a schedule that runs it declares none either: such a fire has no period to bind. A
    /// dependency's child is left alone (it runs on its parent's window).
    pub(super) fn window_warnings(
        &mut self,
        decls: &Decls<'_>,
        reports: &[ReportType],
        window_uses: &[Option<Span>],
        schedules: &[Schedule],
        dag: &Dag,
    ) {
        for (i, report) in reports.iter().enumerate() {
            let Some(Some(use_span)) = window_uses.get(i) else {
                continue;
            };
            if report.window.is_some() || dag.dependencies.iter().any(|d| d.child == report.name) {
                continue;
            }
            for (schedule, (schedule_name, _)) in schedules.iter().zip(&decls.schedules) {
                if schedule.window.is_some() || !schedule.reports.contains(&report.name) {
                    continue;
                }
                let mut d = Diagnostic::warning(
                    Code::WindowNeeded,
                    format!(
                        "report `{}` reads the window, but neither it nor schedule `{}` gives one",
                        report.name, schedule.name
                    ),
                )
                .label(schedule_name.span, "its fires cover no period");
                if use_span.file == schedule_name.span.file {
                    d = d.label(*use_span, "the query reads the window here");
                }
                self.diags.push(d.help(format!(
                    "add `window previous day` (or week, month, quarter, year, `last 36h`) to schedule `{}` or to report `{}`; until then each of its runs needs an explicit window",
                    schedule.name, report.name
                )));
            }
        }
    }

    /// Warnings about reports that run more often than a reader of the file may think: a
    /// report both scheduled and created by a dependency runs once for each, and a child with
    /// a fixed role runs once per parent scope (role, county), so parents that run as several
    /// roles create several jobs of the same child and role.
    ///
    /// Linear in the workflow: the roles each report can run as are computed once, in
    /// topological order (a cyclic graph has already failed; it gets no warnings).
    pub(super) fn check_repeated_runs(
        &mut self,
        dag: &Dag,
        report_index: &Map<&str, usize>,
        schedules: &[Schedule],
    ) {
        let Dag {
            graph,
            dependencies,
            spans: dep_spans,
        } = dag;
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
}

/// Appends `item` unless `list` has it already.
fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|x| x == item) {
        list.push(item.to_string());
    }
}

#[cfg(test)]
mod tests {
    use crate::compiler::test_support::{codes, compile_text, BASE};

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
