//! The `config` block: the engine's settings, one block per workflow.

use std::time::Duration;

use crate::ast::Block;
use crate::diagnostic::{Code, Diagnostic};
use crate::source_map::{FileId, Span};
use crate::workflow::EngineConfig;

use super::names::Scope;
use super::values::resolve_path;
use super::Compiler;

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

/// The largest `worker_pool_size`.
const MAX_POOL_SIZE: i64 = 1024;

/// The config pass: reads the config blocks (only the first counts; others are
/// duplicates), writes the [`EngineConfig`] and its errors.
impl Compiler<'_> {
    /// The engine settings of the first config block (defaults without one).
    /// `all_counties` is read later, by [`Compiler::all_counties`].
    pub(super) fn config(&mut self, configs: &[(FileId, &Block, Span)]) -> EngineConfig {
        let mut config = EngineConfig::default();
        if let Some(&(file, _, _)) = configs.first() {
            // `results` is relative to the file that declares the config.
            config.results_dir = resolve_path(self.sources.get(file).dir(), "results");
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
                        config.results_dir = resolve_path(self.sources.get(file).dir(), &s);
                    }
                }
                _ => {}
            }
        }
        config
    }

    /// The config's `all_counties`: roles that see every county. Read after the roles are
    /// known (the rest of the config is read before), each checked against them.
    pub(super) fn all_counties(
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
}

#[cfg(test)]
mod tests {
    use crate::compiler::test_support::{codes, compile_text, BASE};

    #[test]
    fn all_counties_names_declared_roles() {
        let c = compile_text(&format!("config {{\n  all_counties ADMN\n}}\n{BASE}"));
        assert_eq!(codes(&c), ["E002", "W001"], "{:?}", c.diagnostics);
        assert_eq!(
            c.diagnostics[0].help.as_deref(),
            Some("did you mean `ADMIN`?")
        );
    }
}
