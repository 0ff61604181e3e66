//! The real `flowctl serve`, started from the binary on 127.0.0.1:0 with an embedded store,
//! driven from a plain `#[test]`: its requests block (on a runtime of its own) and return the
//! same [`Reply`] as the in-process server's.
//!
//! ```ignore
//! let server = Serve::start(project.path(), &project.join("w.flow"), &project.db(), SECRET);
//! let token = token::minted(SECRET, "ADMIN", Some("C01"));
//! let reply = server.post("/api/reports/generate", &token, &json!({ "reportType": "R" }));
//! ```

use std::future::Future;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::api::{Api, Reply};
use super::bin::Flowctl;
use super::running::Running;

/// A running `flowctl serve`, killed when dropped.
pub struct Serve {
    running: Running,
    /// `127.0.0.1:PORT`, from its `listening on` line.
    pub addr: String,
    pub api: Api,
    runtime: tokio::runtime::Runtime,
}

impl Serve {
    /// Starts `flowctl serve FLOW --listen 127.0.0.1:0 --db DB` in `dir`, verifying tokens
    /// with `secret`, and waits for its `listening on` line.
    pub fn start(dir: &Path, flow: &Path, db: &Path, secret: &str) -> Serve {
        let flowctl = Flowctl::new().dir(dir).env("FLOWCTL_JWT_SECRET", secret);
        Serve::start_with(flowctl, flow, db)
    }

    /// [`Serve::start`] from a command prepared by the test (its directory, environment).
    pub fn start_with(flowctl: Flowctl, flow: &Path, db: &Path) -> Serve {
        let mut running = flowctl
            .arg("serve")
            .arg(flow)
            .args(["--listen", "127.0.0.1:0"])
            .db(db)
            .spawn();
        let deadline = Instant::now() + Duration::from_secs(60);
        let line = running.wait_for_line(deadline, |l| l.starts_with("listening on http://"));
        let addr = line["listening on http://".len()..].trim().to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let api = {
            let _inside = runtime.enter();
            Api::new(&addr)
        };
        Serve {
            running,
            addr,
            api,
            runtime,
        }
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.running.log()
    }

    /// Runs `future` (e.g. a call of `self.api`) to its end.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// `METHOD PATH` with `Authorization: Bearer TOKEN`, `Content-Type: application/json` and
    /// an optional JSON body.
    pub fn request(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Reply {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.block_on(self.api.request(
            method,
            path,
            Some(token),
            Some("application/json"),
            body.into_bytes(),
        ))
    }

    pub fn get(&self, path: &str, token: &str) -> Reply {
        self.request("GET", path, token, None)
    }

    pub fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.request("POST", path, token, Some(body))
    }

    /// Polls `GET /api/jobs/ID` until the job is COMPLETED, FAILED or CANCELLED.
    pub fn wait_finished(&self, id: &str, token: &str) -> Value {
        let what = || format!("job {id} did not finish; server log:\n{}", self.log());
        self.block_on(self.api.wait_finished(id, token, what))
    }

    /// SIGTERM, and up to `limit` for it to exit (SIGKILL after that): its exit status (`None`
    /// if it had to be killed) and its whole stderr.
    pub fn stop(mut self, limit: Duration) -> (Option<ExitStatus>, String) {
        let status = self.running.stop(limit);
        (status, self.running.log())
    }
}
