//! Every environment variable flowctl reads, declared once, and the layer
//! they form over the workflow's `config` block.
//!
//! Precedence: the `.flow` `config` block < `FLOWCTL_*` variables <
//! command-line flags. Values use the DSL's syntax (`5s`, `on`).
//!
//! | variable | meaning |
//! |---|---|
//! | `FLOWCTL_DB` | embedded store directory (`--db`), default `.flowctl/db` |
//! | `FLOWCTL_STORE` | store URL, e.g. `postgres://…` (`--store`) |
//! | `FLOWCTL_LISTEN` | `serve`'s listen address (`--listen`) |
//! | `FLOWCTL_MASK_KEY` | key of the `hash` mask method (required with a shared store) |
//! | `FLOWCTL_JWT_SECRET` | HS256 secret for bearer tokens |
//! | `FLOWCTL_JWT_PUBLIC_KEY` | PEM public key file for RS256/ES256 tokens |
//! | `FLOWCTL_JWT_ALGORITHM` | pin another algorithm of the key's family |
//! | `FLOWCTL_JWT_ISSUER` / `FLOWCTL_JWT_AUDIENCE` | required `iss` / `aud` |
//! | `FLOWCTL_JWT_MAX_LIFETIME` | longest lifetime a token may claim (`exp` − now, `exp` − `iat`), default `24h` |
//! | `FLOWCTL_WORKER_POOL_SIZE` | `config.worker_pool_size` |
//! | `FLOWCTL_MAX_JOBS_PER_POLL` | `config.max_jobs_per_poll` |
//! | `FLOWCTL_POLL_INTERVAL` | `config.poll_interval` |
//! | `FLOWCTL_LEASE` | `config.lease` |
//! | `FLOWCTL_RESULTS` | `config.results` (relative to the working directory) |
//! | `FLOWCTL_SCHEDULER` | `config.scheduler` (`on`/`off`) |
//! | `FLOWCTL_DEPENDENCIES` | `config.dependencies` (`on`/`off`) |
//! | `FLOWCTL_CATCH_UP_WINDOW` | `config.catch_up_window` |
//! | `FLOWCTL_LOG` | log filter, e.g. `info`, `flowctl=debug` |
//! | `FLOWCTL_HTTP_HEADER_TIMEOUT` | time a connection has to send a whole request head (`serve`), default `10s` |
//! | `FLOWCTL_HTTP_IDLE_TIMEOUT` | a kept-alive connection idle this long is closed (`serve`), default `5s` |
//! | `FLOWCTL_HTTP_MAX_CONNECTIONS` | open connections `serve` holds at most; beyond, new ones wait, default `512` |
//! | `FLOWCTL_RESULT_SYNC` | how result files are made durable: `auto` (default), `syncfs`, `fdatasync`, `serial` |

use std::path::PathBuf;

use crate::compiler::parse_duration;
use crate::workflow::EngineConfig;

pub const DB: &str = "FLOWCTL_DB";
pub const STORE: &str = "FLOWCTL_STORE";
pub const LISTEN: &str = "FLOWCTL_LISTEN";
pub use crate::auth::{
    ENV_JWT_ALGORITHM as JWT_ALGORITHM, ENV_JWT_AUDIENCE as JWT_AUDIENCE,
    ENV_JWT_ISSUER as JWT_ISSUER, ENV_JWT_MAX_LIFETIME as JWT_MAX_LIFETIME,
    ENV_JWT_PUBLIC_KEY as JWT_PUBLIC_KEY, ENV_JWT_SECRET as JWT_SECRET,
};
pub use crate::masking_key::ENV_MASK_KEY as MASK_KEY;
pub const WORKER_POOL_SIZE: &str = "FLOWCTL_WORKER_POOL_SIZE";
pub const MAX_JOBS_PER_POLL: &str = "FLOWCTL_MAX_JOBS_PER_POLL";
pub const POLL_INTERVAL: &str = "FLOWCTL_POLL_INTERVAL";
pub const LEASE: &str = "FLOWCTL_LEASE";
pub const RESULTS: &str = "FLOWCTL_RESULTS";
pub const SCHEDULER: &str = "FLOWCTL_SCHEDULER";
pub const DEPENDENCIES: &str = "FLOWCTL_DEPENDENCIES";
pub const CATCH_UP_WINDOW: &str = "FLOWCTL_CATCH_UP_WINDOW";
pub const LOG: &str = "FLOWCTL_LOG";
pub const HTTP_HEADER_TIMEOUT: &str = "FLOWCTL_HTTP_HEADER_TIMEOUT";
pub const HTTP_IDLE_TIMEOUT: &str = "FLOWCTL_HTTP_IDLE_TIMEOUT";
pub const HTTP_MAX_CONNECTIONS: &str = "FLOWCTL_HTTP_MAX_CONNECTIONS";
pub const RESULT_SYNC: &str = "FLOWCTL_RESULT_SYNC";

/// Every variable above: the README's table must list each (a test checks it).
pub const ALL: [&str; 23] = [
    DB,
    STORE,
    LISTEN,
    MASK_KEY,
    JWT_SECRET,
    JWT_PUBLIC_KEY,
    JWT_ALGORITHM,
    JWT_ISSUER,
    JWT_AUDIENCE,
    JWT_MAX_LIFETIME,
    HTTP_HEADER_TIMEOUT,
    HTTP_IDLE_TIMEOUT,
    HTTP_MAX_CONNECTIONS,
    RESULT_SYNC,
    WORKER_POOL_SIZE,
    MAX_JOBS_PER_POLL,
    POLL_INTERVAL,
    LEASE,
    RESULTS,
    SCHEDULER,
    DEPENDENCIES,
    CATCH_UP_WINDOW,
    LOG,
];

/// Applies the `FLOWCTL_*` engine variables found by `get` to `config`.
/// Errors name the variable and say what was expected.
pub fn apply(
    config: &mut EngineConfig,
    get: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let int = |name: &str, min: u32, max: u32| -> Result<Option<u32>, String> {
        get(name)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        format!("{name}={v}: expected a whole number from {min} to {max}")
                    })
            })
            .transpose()
    };
    let duration = |name: &str| -> Result<Option<std::time::Duration>, String> {
        get(name)
            .map(|v| {
                parse_duration(v.trim())
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("{name}={v}: expected a duration such as 5s or 1m30s"))
            })
            .transpose()
    };
    let switch = |name: &str| -> Result<Option<bool>, String> {
        get(name)
            .map(|v| match v.trim() {
                "on" | "true" | "yes" | "1" => Ok(true),
                "off" | "false" | "no" | "0" => Ok(false),
                _ => Err(format!("{name}={v}: expected on or off")),
            })
            .transpose()
    };
    if let Some(n) = int(WORKER_POOL_SIZE, 1, 1024)? {
        config.worker_pool_size = n;
    }
    if let Some(n) = int(MAX_JOBS_PER_POLL, 1, 10_000)? {
        config.max_jobs_per_poll = n;
    }
    if let Some(d) = duration(POLL_INTERVAL)? {
        config.poll_interval = d;
    }
    if let Some(d) = duration(LEASE)? {
        config.lease = d;
    }
    if let Some(d) = duration(CATCH_UP_WINDOW)? {
        config.catch_up_window = d;
    }
    if let Some(b) = switch(SCHEDULER)? {
        config.scheduler_enabled = b;
    }
    if let Some(b) = switch(DEPENDENCIES)? {
        config.dependencies_enabled = b;
    }
    if let Some(p) = get(RESULTS).filter(|p| !p.trim().is_empty()) {
        config.results_dir = PathBuf::from(p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn with(vars: &[(&str, &str)]) -> Result<EngineConfig, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut c = EngineConfig::default();
        apply(&mut c, |k| map.get(k).cloned())?;
        Ok(c)
    }

    #[test]
    fn variables_override_the_config_block() {
        let c = with(&[
            (WORKER_POOL_SIZE, "8"),
            (POLL_INTERVAL, "250ms"),
            (SCHEDULER, "off"),
            (RESULTS, "/tmp/out"),
        ])
        .unwrap();
        assert_eq!(c.worker_pool_size, 8);
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert!(!c.scheduler_enabled);
        assert_eq!(c.results_dir, PathBuf::from("/tmp/out"));
        assert_eq!(
            c.max_jobs_per_poll,
            EngineConfig::default().max_jobs_per_poll
        );
    }

    /// `FLOWCTL_*` names the source mentions that are not configuration: read by the test
    /// suite only.
    const TEST_ONLY: [&str; 2] = ["FLOWCTL_TEST_PG", "FLOWCTL_STORE_LOCK_PROBE"];

    /// Every `FLOWCTL_*` name in a file's text.
    fn names_in(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for (at, _) in text.match_indices("FLOWCTL_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let name = name.trim_end_matches('_');
            // `FLOWCTL_*` in prose names them all, not one.
            if name != "FLOWCTL" {
                names.insert(name.to_string());
            }
        }
        names
    }

    fn rust_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Whatever variable the code reads is in [`ALL`] (so, declared here), and every one of
    /// them has a row in the README's table, with what it sets and its default, and in this
    /// module's docs.
    #[test]
    fn every_variable_is_in_the_readme_table() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        rust_files(&root.join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in names_in(&text) {
                assert!(
                    ALL.contains(&name.as_str()) || TEST_ONLY.contains(&name.as_str()),
                    "{} reads {name}, which src/env.rs does not declare",
                    file.display()
                );
            }
        }

        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let rows: HashMap<String, Vec<String>> = readme
            .lines()
            .filter(|l| l.starts_with("| `FLOWCTL_"))
            .map(|l| {
                let cells: Vec<String> = l
                    .trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().to_string())
                    .collect();
                (cells[0].trim_matches('`').to_string(), cells)
            })
            .collect();
        for name in ALL {
            let row = rows
                .get(name)
                .unwrap_or_else(|| panic!("README.md's variable table has no row for {name}"));
            assert!(
                row.len() == 3 && row.iter().all(|c| !c.is_empty()),
                "README.md's row for {name} needs: name | what it sets | default"
            );
        }
        for name in rows.keys() {
            assert!(
                ALL.contains(&name.as_str()),
                "README.md lists {name}, which flowctl does not read"
            );
        }

        let docs: String = include_str!("env.rs")
            .lines()
            .filter(|l| l.starts_with("//! |"))
            .collect();
        let documented = names_in(&docs);
        for name in ALL {
            assert!(documented.contains(name), "the module docs miss {name}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert!(with(&[(WORKER_POOL_SIZE, "0")])
            .unwrap_err()
            .contains("FLOWCTL_WORKER_POOL_SIZE=0"));
        assert!(with(&[(LEASE, "soon")])
            .unwrap_err()
            .contains("FLOWCTL_LEASE"));
        assert!(with(&[(DEPENDENCIES, "maybe")])
            .unwrap_err()
            .contains("on or off"));
    }
}
