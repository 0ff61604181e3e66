//! Drawings of the dependency DAG: a text tree for terminals, Graphviz DOT,
//! Mermaid `flowchart` and JSON. Pure functions of a [`Workflow`].

use std::collections::HashSet;
use std::fmt::Write as _;

use petgraph::graph::NodeIndex;
use petgraph::Direction;
use serde_json::{json, Value};

use crate::workflow::{Condition, Dependency, RoleRule, Workflow};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Text,
    Dot,
    Mermaid,
    Json,
}

pub fn render(workflow: &Workflow, format: GraphFormat) -> String {
    match format {
        GraphFormat::Text => text(workflow),
        GraphFormat::Dot => dot(workflow),
        GraphFormat::Mermaid => mermaid(workflow),
        GraphFormat::Json => {
            let mut s = serde_json::to_string_pretty(&json_value(workflow)).unwrap_or_default();
            s.push('\n');
            s
        }
    }
}

/// Children edges of a node in declaration order of their dependencies.
fn children(w: &Workflow, n: NodeIndex) -> Vec<(NodeIndex, usize)> {
    let mut c: Vec<(NodeIndex, usize)> = w
        .graph
        .edges_directed(n, Direction::Outgoing)
        .map(|e| {
            use petgraph::visit::EdgeRef;
            (e.target(), e.weight().dependency)
        })
        .collect();
    c.sort_by_key(|(t, d)| (*d, *t));
    c
}

/// Words describing an edge: condition, join partners, filters, overrides.
fn edge_label(dep: &Dependency, parent: &str) -> String {
    let mut parts = vec![format!("on {}", dep.condition.name())];
    let others: Vec<&str> = dep
        .parents
        .iter()
        .map(String::as_str)
        .filter(|p| *p != parent)
        .collect();
    if !others.is_empty() {
        parts.push(format!("join with {}", others.join(" + ")));
    }
    if !dep.parent_roles.is_empty() {
        parts.push(format!("by {}", dep.parent_roles.join(", ")));
    }
    if let RoleRule::Fixed(r) = &dep.role {
        parts.push(format!("as {r}"));
    }
    let o = &dep.overrides;
    if let Some(c) = o.chunk_size {
        parts.push(format!("chunk_size {c}"));
    }
    if let Some(p) = o.priority {
        parts.push(format!("priority {p}"));
    }
    if let Some(f) = o.format {
        parts.push(format!("format {}", f.name()));
    }
    if let Some(t) = &o.target {
        parts.push(format!("target {t}"));
    }
    parts.join(", ")
}

fn schedule_names(w: &Workflow, report: &str) -> Vec<String> {
    w.schedules_of(report).map(|s| s.name.clone()).collect()
}

/// (node, line prefix, (is last sibling, edge label) unless a root).
type Visit = (NodeIndex, String, Option<(bool, String)>);

/// A tree from every root (a report with no parent). A report reached a
/// second time (the other parent of a join) is named with `(see above)`
/// instead of being expanded again, so output stays linear in the graph.
pub fn text(w: &Workflow) -> String {
    let mut out = String::new();
    if !w.schedules.is_empty() {
        out.push_str("schedules\n");
        let name_w = w.schedules.iter().map(|s| s.name.len()).max().unwrap_or(0);
        let cron_w = w
            .schedules
            .iter()
            .map(|s| s.cron.source().len())
            .max()
            .unwrap_or(0);
        let zone_w = w
            .schedules
            .iter()
            .map(|s| s.zone.name().len())
            .max()
            .unwrap_or(0);
        for s in &w.schedules {
            let mut roles = s.roles.join(", ");
            if !s.counties.is_empty() {
                let _ = write!(roles, " × counties {}", s.counties.join(", "));
            }
            let _ = writeln!(
                out,
                "  {:<name_w$}  {:<cron_w$}  {:<zone_w$}  runs {} for {}",
                s.name,
                s.cron.source(),
                s.zone.name(),
                s.reports.join(", "),
                roles
            );
        }
        out.push('\n');
    }
    out.push_str("reports\n");
    let mut expanded: HashSet<NodeIndex> = HashSet::new();
    for n in w.graph.node_indices() {
        if w.graph
            .neighbors_directed(n, Direction::Incoming)
            .next()
            .is_some()
        {
            continue;
        }
        // Iterative depth-first walk, so a chain of 100k reports cannot
        // overflow the stack.
        let mut stack: Vec<Visit> = vec![(n, String::new(), None)];
        while let Some((node, prefix, edge)) = stack.pop() {
            let report = &w.reports[w.graph[node]];
            let mut line = String::new();
            let child_prefix = match &edge {
                None => {
                    line.push_str(&report.name);
                    String::new()
                }
                Some((last, label)) => {
                    let branch = if *last { "└─▶ " } else { "├─▶ " };
                    let _ = write!(line, "{prefix}{branch}{} [{label}]", report.name);
                    format!("{prefix}{}", if *last { "    " } else { "│   " })
                }
            };
            let again = !expanded.insert(node);
            if again {
                line.push_str(" (see above)");
            } else if edge.is_none() {
                let sched = schedule_names(w, &report.name);
                if !sched.is_empty() {
                    let _ = write!(line, "  ⏰ {}", sched.join(", "));
                }
            }
            out.push_str(&line);
            out.push('\n');
            if again {
                continue;
            }
            let kids = children(w, node);
            for (i, (child, dep)) in kids.iter().enumerate().rev() {
                let last = i + 1 == kids.len();
                let label = edge_label(&w.dependencies[*dep], &report.name);
                stack.push((*child, child_prefix.clone(), Some((last, label))));
            }
        }
    }
    out
}

/// Every edge as (parent name, child name, its dependency), in edge order.
fn edges(w: &Workflow) -> impl Iterator<Item = (&str, &str, &Dependency)> + '_ {
    w.graph.edge_indices().filter_map(move |e| {
        let (a, b) = w.graph.edge_endpoints(e)?;
        Some((
            w.reports[w.graph[a]].name.as_str(),
            w.reports[w.graph[b]].name.as_str(),
            &w.dependencies[w.graph[e].dependency],
        ))
    })
}

/// Schedule names and crons of a report, joined by `sep`, escaped by `esc`. Words, not a
/// clock glyph: Graphviz's default fonts have no emoji.
fn schedule_label(w: &Workflow, report: &str, sep: &str, esc: fn(&str) -> String) -> String {
    let mut label = String::new();
    for s in w.schedules_of(report) {
        let _ = write!(
            label,
            "{sep}schedule {}: {}",
            esc(&s.name),
            esc(s.cron.source())
        );
    }
    label
}

/// A DOT quoted string's content, ASCII only: `\` and `"` escaped, `&` and every non-ASCII
/// character (from a name or a `target "Entrepôt"`) as an HTML entity, which Graphviz decodes
/// in labels: the output is plain ASCII whatever the reader's encoding.
fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '&' => out.push_str("&amp;"),
            c if c.is_ascii() => out.push(c),
            c => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
        }
    }
    out
}

pub fn dot(w: &Workflow) -> String {
    let mut out = String::from(
        "digraph flow {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n",
    );
    for n in w.graph.node_indices() {
        let r = &w.reports[w.graph[n]];
        let label = format!(
            "{}\\n{}, chunk {}{}",
            dot_escape(&r.name),
            r.format.name(),
            r.chunk_size,
            schedule_label(w, &r.name, "\\n", dot_escape)
        );
        let _ = writeln!(out, "  \"{}\" [label=\"{label}\"];", dot_escape(&r.name));
    }
    for (parent, child, dep) in edges(w) {
        let style = match dep.condition {
            Condition::OnSuccess => "solid",
            Condition::OnCompletion => "dashed",
        };
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [label=\"{}\", style={style}];",
            dot_escape(parent),
            dot_escape(child),
            dot_escape(&edge_label(dep, parent))
        );
    }
    out.push_str("}\n");
    out
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;")
        .replace('|', "#124;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

pub fn mermaid(w: &Workflow) -> String {
    let mut out = String::from("flowchart LR\n");
    let id = |name: &str| format!("r_{name}");
    for n in w.graph.node_indices() {
        let r = &w.reports[w.graph[n]];
        let label = format!(
            "{}{}",
            mermaid_escape(&r.name),
            schedule_label(w, &r.name, "<br/>", mermaid_escape)
        );
        let _ = writeln!(out, "  {}[\"{label}\"]", id(&r.name));
    }
    for (parent, child, dep) in edges(w) {
        let arrow = match dep.condition {
            Condition::OnSuccess => "-->",
            Condition::OnCompletion => "-.->",
        };
        let _ = writeln!(
            out,
            "  {} {arrow}|\"{}\"| {}",
            id(parent),
            mermaid_escape(&edge_label(dep, parent)),
            id(child)
        );
    }
    out
}

pub fn json_value(w: &Workflow) -> Value {
    let nodes: Vec<Value> = w
        .graph
        .node_indices()
        .map(|n| {
            let r = &w.reports[w.graph[n]];
            let schedules: Vec<Value> = w
                .schedules_of(&r.name)
                .map(|s| {
                    json!({
                        "name": s.name,
                        "cron": s.cron.source(),
                        "zone": s.zone.name(),
                        "roles": s.roles,
                        "counties": s.counties,
                        "catchUp": s.catch_up.name(),
                    })
                })
                .collect();
            json!({
                "name": r.name,
                "source": w.sources[r.source].name,
                "format": r.format.name(),
                "chunkSize": r.chunk_size,
                "priority": r.priority,
                "schedules": schedules,
            })
        })
        .collect();
    let edges: Vec<Value> = w
        .graph
        .edge_indices()
        .filter_map(|e| {
            let (a, b) = w.graph.edge_endpoints(e)?;
            let dep = &w.dependencies[w.graph[e].dependency];
            let o = &dep.overrides;
            Some(json!({
                "from": w.reports[w.graph[a]].name,
                "to": w.reports[w.graph[b]].name,
                "dependency": dep.id,
                "condition": match dep.condition {
                    Condition::OnSuccess => "on_success",
                    Condition::OnCompletion => "on_completion",
                },
                "join": dep.parents,
                "parentRoles": dep.parent_roles,
                "role": match &dep.role { RoleRule::Inherit => "inherit".to_string(), RoleRule::Fixed(r) => r.clone() },
                "overrides": {
                    "chunkSize": o.chunk_size,
                    "priority": o.priority,
                    "format": o.format.map(|f| f.name()),
                    "target": o.target,
                },
            }))
        })
        .collect();
    json!({ "nodes": nodes, "edges": edges })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(text: &str) -> Workflow {
        let loaded = crate::loader::load_text(std::path::Path::new("t.flow"), text.to_string());
        let c = crate::compiler::compile(loaded);
        let errors: Vec<_> = c.diagnostics.iter().filter(|d| d.is_error()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        c.workflow.expect("compiles")
    }

    #[test]
    fn dot_output_uses_only_ascii_even_for_non_ascii_values() {
        let w = workflow(
            r#"config {
  all_counties ADMIN
}
roles ADMIN
source cases {
  path "data/cases.csv"
}
report DAILY_REPORT {
  source cases
  target "Entrepôt & Co \"BI\" → ok"
}
report DAILY_SUMMARY {
  source cases
}
schedule daily {
  cron  "0 30 5 * * ?"
  run   DAILY_REPORT
  roles ADMIN
}
after DAILY_REPORT on completion run DAILY_SUMMARY {
  target "Entrepôt & Co \"BI\" → ok"
}
"#,
        );
        let dot = dot(&w);
        assert!(dot.is_ascii(), "non-ASCII in:\n{dot}");
        assert!(
            dot.contains(r#"target Entrep&#244;t &amp; Co \"BI\" &#8594; ok"#),
            "{dot}"
        );
        assert!(dot.contains(r#"DAILY_REPORT\ncsv, chunk 1000\nschedule daily: 0 30 5 * * ?"#));
        assert!(mermaid(&w).contains("schedule daily: 0 30 5 * * ?"));
    }
}
