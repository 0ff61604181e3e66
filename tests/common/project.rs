//! A workflow's working directory for one test: a temporary directory with the files the test
//! writes into it (a `.flow` file, its CSV sources) or a copy of the bundled `workflows/`, and
//! its embedded store at `db`, so that every test runs apart from the others, in parallel.
//!
//! ```ignore
//! let project = Project::new()
//!     .flow("w.flow", FLOW)
//!     .csv("data/cases.csv", data::cases(1_000));
//! project.run(["w.flow", "--report", "DAILY"]).success();
//! ```

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use flowctl::workflow::Workflow;

use super::bin::{self, Flowctl, Run};
use super::files;

/// A temporary directory, removed when dropped.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Default for Project {
    fn default() -> Project {
        Project::new()
    }
}

impl Project {
    /// An empty directory.
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// An empty directory on tmpfs (`/dev/shm`) where there is one, named `PREFIX…`: for tests
    /// whose results are fsynced when the disk is not what is under test.
    pub fn on_tmpfs(prefix: &str) -> Project {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in(shm)
                .unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        Project { dir }
    }

    /// With a copy of the bundled `workflows/` directory (`reports.flow` and its data) at
    /// `into`; its results go to `results/` beside it.
    pub fn bundled(self, into: &str) -> Project {
        files::copy_dir(&files::repo().join("workflows"), &self.join(into));
        self
    }

    /// With a copy of `tests/data/csv_workflow/` at `into`: the bundled workflow's reports,
    /// schedules and dependencies on one CSV file (12,000 cases), for tests of what every report
    /// does whatever its period (masking, the county rule, crash recovery, the API).
    pub fn csv_workflow(self, into: &str) -> Project {
        files::copy_dir(
            &files::repo().join("tests/data/csv_workflow"),
            &self.join(into),
        );
        self
    }

    /// With a workflow file at `rel`.
    pub fn flow(self, rel: &str, text: &str) -> Project {
        self.file(rel, text)
    }

    /// With a CSV source at `rel` (see `common::data` for generated rows).
    pub fn csv(self, rel: &str, text: impl AsRef<[u8]>) -> Project {
        self.file(rel, text)
    }

    /// With a file at `rel`.
    pub fn file(self, rel: &str, contents: impl AsRef<[u8]>) -> Project {
        self.write(rel, contents);
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }

    /// Where its embedded store is (`db`).
    pub fn db(&self) -> PathBuf {
        self.join("db")
    }

    /// Writes `contents` to `rel` (directories made as needed) and returns its path. The file
    /// appears whole, by rename, as a source must for a `flowctl` that may be reading it.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let partial = path.with_file_name(format!(".{name}.partial"));
        std::fs::write(&partial, contents).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        path
    }

    /// The workflow file at `rel`, compiled; panics with the diagnostics if it does not compile.
    #[track_caller]
    pub fn workflow(&self, rel: &str) -> Workflow {
        let compilation = flowctl::compiler::compile_paths(&[self.join(rel)])
            .unwrap_or_else(|e| panic!("{rel} loads: {e}"));
        compilation
            .workflow
            .unwrap_or_else(|| panic!("{rel} compiles: {:#?}", compilation.diagnostics))
    }

    /// `flowctl`, run in this directory.
    pub fn flowctl(&self) -> Flowctl {
        Flowctl::new().dir(self.path())
    }

    /// `flowctl ARGS... --db <db>`, run in this directory.
    pub fn with_db<I, S>(&self, args: I) -> Flowctl
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.flowctl().args(args).db(self.db())
    }

    /// `flowctl run ARGS... --db <db>`, run in this directory to its end.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<OsString> = vec!["run".into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self.with_db(all).output()
    }

    /// Every job of its store, as `flowctl jobs list --json` prints them.
    pub fn jobs_json(&self) -> Vec<serde_json::Value> {
        bin::jobs_json(&self.db())
    }
}
