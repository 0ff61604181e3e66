//! The dependency edges of the workflow as the store fires them: per parent report type, the
//! joins it takes part in and the child each creates.

use std::collections::HashMap;
use std::time::Duration;

use crate::job::JobRequest;
use crate::store::{ChildTemplate, JoinEdge, JoinRules};
use crate::workflow::{Source, Workflow};

use super::estimates::DEFAULT_ROWS_PER_SEC;

/// The dependency edges of the workflow, by parent report type, as the store
/// needs them.
pub struct Joins {
    by_parent: HashMap<String, Vec<JoinEdge>>,
}

impl Joins {
    /// `rows` counts a source's rows, for the children's estimated durations.
    pub fn from_workflow(workflow: &Workflow, rows: impl Fn(&Source) -> Option<u64>) -> Joins {
        let mut by_parent: HashMap<String, Vec<JoinEdge>> = HashMap::new();
        for dep in &workflow.dependencies {
            let Some(child) = workflow.report(&dep.child) else {
                continue;
            };
            let o = &dep.overrides;
            let edge = JoinEdge {
                join_id: dep.id.clone(),
                parents: dep.parents.clone(),
                condition: dep.condition,
                parent_roles: (!dep.parent_roles.is_empty()).then(|| dep.parent_roles.clone()),
                child: ChildTemplate {
                    report_type: dep.child.clone(),
                    role: dep.role.clone(),
                    priority: o.priority.unwrap_or(child.priority),
                    max_attempts: child.retries + 1,
                    request: JobRequest {
                        chunk_size: o.chunk_size,
                        data_format: o.format.map(|f| f.name().to_string()),
                        priority: o.priority,
                        target_system: o.target.clone(),
                        // The child's own defaults; the parent's values and window are laid
                        // over them when it fires (`ChildTemplate::instantiate`).
                        params: child
                            .params
                            .iter()
                            .filter_map(|p| Some((p.name.clone(), p.default.clone()?)))
                            .collect(),
                        window: None,
                    },
                    // Rows of the child's source at the default rate; the
                    // executor refines the estimate while the child runs.
                    estimated_duration: rows(workflow.source_of(child))
                        .map(|rows| Duration::from_secs_f64(rows as f64 / DEFAULT_ROWS_PER_SEC)),
                },
            };
            for parent in &dep.parents {
                by_parent
                    .entry(parent.clone())
                    .or_default()
                    .push(edge.clone());
            }
        }
        Joins { by_parent }
    }

    /// No joins: dependencies are disabled.
    pub fn none() -> Joins {
        Joins {
            by_parent: HashMap::new(),
        }
    }
}

impl JoinRules for Joins {
    fn joins_for(&self, report_type: &str) -> &[JoinEdge] {
        self.by_parent.get(report_type).map_or(&[], Vec::as_slice)
    }
}
