//! The `flowctl` binary under test: a command built step by step ([`Flowctl`]), run to its end
//! ([`Run`], with assertions on its exit status) or started and watched ([`Running`]).

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::running::{self, Running};

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flowctl"))
}

/// One invocation of `flowctl`, built step by step: `NO_COLOR=1`, no `RUST_LOG`, the test
/// process's directory and the rest of its environment unless told otherwise.
pub struct Flowctl {
    cmd: Command,
}

impl Default for Flowctl {
    fn default() -> Flowctl {
        Flowctl::new()
    }
}

impl Flowctl {
    pub fn new() -> Flowctl {
        let mut cmd = Command::new(bin());
        cmd.env("NO_COLOR", "1").env_remove("RUST_LOG");
        Flowctl { cmd }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Flowctl {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Flowctl
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// `--db PATH`: the embedded store at `path`.
    pub fn db(self, path: impl AsRef<Path>) -> Flowctl {
        self.arg("--db").arg(path.as_ref())
    }

    pub fn dir(mut self, dir: impl AsRef<Path>) -> Flowctl {
        self.cmd.current_dir(dir);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Flowctl {
        self.cmd.env(key, value);
        self
    }

    /// Removes `key` from the environment `flowctl` inherits.
    pub fn env_remove(mut self, key: &str) -> Flowctl {
        self.cmd.env_remove(key);
        self
    }

    /// Runs `flowctl` to its end.
    pub fn output(mut self) -> Run {
        let output = self.cmd.output().expect("flowctl binary runs");
        Run { output }
    }

    /// Runs `flowctl` to its end, killing it if it has not finished after `limit` (a blocked
    /// read must fail the test, not hang it).
    #[track_caller]
    pub fn output_within(self, limit: Duration) -> Run {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flowctl spawns");
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let Some(status) = running::wait_exit(&mut child, limit) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flowctl did not finish within {limit:?}");
        };
        let output = std::process::Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        };
        Run { output }
    }

    /// Starts `flowctl` and returns at once: stdin empty, stdout discarded, stderr read as it
    /// comes (see [`Running`]).
    pub fn spawn(self) -> Running {
        self.spawn_with(Stdio::null())
    }

    /// [`Flowctl::spawn`] with `stdout` as given: `Stdio::piped()` to read it
    /// (`running.child.stdout`, or [`Running::finish`]).
    pub fn spawn_with(self, stdout: Stdio) -> Running {
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("flowctl spawns");
        Running::new(child)
    }

    /// The command as built so far, for tests that need what the builder does not offer
    /// (other pipes, stderr to a file, ...).
    pub fn command(self) -> Command {
        self.cmd
    }
}

/// Reads `pipe` to its end on a thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// A finished `flowctl` run.
pub struct Run {
    pub output: std::process::Output,
}

impl Run {
    /// The exit status; -1 when a signal ended it.
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Asserts exit status 0.
    #[track_caller]
    pub fn success(self) -> Run {
        self.status(0)
    }

    /// Asserts exit status `code`, showing stdout and stderr if not.
    #[track_caller]
    pub fn status(self, code: i32) -> Run {
        assert_eq!(
            self.code(),
            code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// Every job of the embedded store at `db`, as `flowctl jobs list --json` prints them.
pub fn jobs_json(db: &Path) -> Vec<serde_json::Value> {
    Flowctl::new()
        .args(["jobs", "--db"])
        .args([db])
        .args(["list", "--json", "--limit", "1000"])
        .output()
        .success()
        .stdout()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}
