//! The dependency graph: `after PARENTS run CHILD` declarations resolved into
//! edges between reports, and its cycles (E004), each reported once by its
//! shortest loop.

use std::collections::HashMap;

use petgraph::graph::{DiGraph, NodeIndex};

use crate::ast::{DependencyDecl, Ident};
use crate::diagnostic::{Code, Diagnostic};
use crate::source_map::Span;
use crate::workflow::{Condition, Dependency, Edge, Overrides, ReportType, RoleRule};

use super::names::{Map, Scope};
use super::reports::MAX_CHUNK_SIZE;
use super::Compiler;

/// The settings a dependency may override in the child job it creates.
const OVERRIDE_KEYS: &[&str] = &["chunk_size", "priority", "format", "target"];

/// The dependency DAG: one node per report in declaration order, so node index
/// == report index, and one edge per parent of each valid dependency.
pub(super) struct Dag {
    pub(super) graph: DiGraph<usize, Edge>,
    /// The valid dependencies, in declaration order; an edge's weight indexes them.
    pub(super) dependencies: Vec<Dependency>,
    /// Where each of `dependencies` is declared.
    pub(super) spans: Vec<Span>,
}

/// The graph pass: reads the dependency declarations (names resolved against the
/// reports, roles against the scope), writes the [`Dag`], marks each child
/// `triggered`, and reports invalid declarations and cycles.
impl Compiler<'_> {
    /// The graph of the valid `decls` over `report_count` reports.
    pub(super) fn dependency_graph(
        &mut self,
        decls: &[(&DependencyDecl, Span)],
        report_count: usize,
        scope: &Scope<'_>,
        report_index: &Map<&str, usize>,
        triggered: &mut [bool],
    ) -> Dag {
        let mut graph: DiGraph<usize, Edge> = DiGraph::with_capacity(report_count, decls.len());
        for i in 0..report_count {
            graph.add_node(i);
        }
        let mut dependencies = Vec::with_capacity(decls.len());
        let mut dep_spans = Vec::with_capacity(decls.len());
        for (decl, span) in decls {
            let index = dependencies.len();
            if let Some((dep, parents, child)) = self.dependency(index, decl, scope, report_index) {
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
        Dag {
            graph,
            dependencies,
            spans: dep_spans,
        }
    }

    /// One dependency declaration: the [`Dependency`], its parents' and its
    /// child's report indexes; `None` (with the errors) when it is not valid.
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

    /// Every cycle of the graph is an error: one per strongly connected
    /// component, naming its shortest loop and labelling each `after` in it.
    pub(super) fn check_cycles(&mut self, dag: &Dag, reports: &[ReportType]) {
        let Dag {
            graph,
            dependencies,
            spans: dep_spans,
        } = dag;
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
