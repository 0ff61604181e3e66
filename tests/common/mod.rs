//! Shared helpers for behaviour tests: run the real `flowctl` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flowctl"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One invocation of `flowctl`, built step by step.
pub struct Flowctl {
    cmd: Command,
}

impl Flowctl {
    pub fn new() -> Flowctl {
        let mut cmd = Command::new(bin());
        cmd.env("NO_COLOR", "1").env_remove("RUST_LOG");
        Flowctl { cmd }
    }

    pub fn args<I, S>(mut self, args: I) -> Flowctl
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn dir(mut self, dir: impl AsRef<Path>) -> Flowctl {
        self.cmd.current_dir(dir);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Flowctl {
        self.cmd.env(key, value);
        self
    }

    pub fn output(mut self) -> Run {
        let output = self.cmd.output().expect("flowctl binary runs");
        Run { output }
    }
}

pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    #[track_caller]
    pub fn success(self) -> Run {
        assert_eq!(
            self.code(),
            0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }

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

/// Compares `actual` with the golden file, or rewrites it when
/// `UPDATE_GOLDEN=1` is set.
#[track_caller]
pub fn golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{} differs from the output (rerun with UPDATE_GOLDEN=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

/// `*.flow` files directly inside `dir`, sorted.
pub fn flow_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("test data directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "flow"))
        .collect();
    files.sort();
    files
}

impl Flowctl {
    /// The command as built so far, for tests that spawn `flowctl` and
    /// watch it while it runs (pipe its output, kill it, ...).
    pub fn command(self) -> Command {
        self.cmd
    }
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `limit`; then panics with
/// `what()` (which should say what was seen).
#[track_caller]
pub fn wait_for<T>(
    limit: std::time::Duration,
    mut probe: impl FnMut() -> Option<T>,
    what: impl Fn() -> String,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if std::time::Instant::now() >= deadline {
            panic!("gave up after {limit:?}: {}", what());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The SHA-256 of a file's bytes, in lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hex::encode(sha2::Sha256::digest(&bytes))
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

/// A development token from `flowctl token`, signed with `secret`.
pub fn token(secret: &str, role: &str, county: Option<&str>) -> String {
    let mut flowctl = Flowctl::new()
        .env("FLOWCTL_JWT_SECRET", secret)
        .args(["token", "--role", role, "--sub", "tester"]);
    if let Some(county) = county {
        flowctl = flowctl.args(["--county", county]);
    }
    flowctl.output().success().stdout().trim().to_string()
}

/// An HTTP response: status and body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text()))
    }
}

/// A real `flowctl serve` on 127.0.0.1:0 with an embedded store, killed when dropped.
pub struct Serve {
    child: std::process::Child,
    pub addr: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Serve {
    /// Starts `flowctl serve FLOW --db DB` in `dir`, verifying tokens with `secret`, and waits
    /// for its `listening on` line.
    pub fn start(dir: &Path, flow: &Path, db: &Path, secret: &str) -> Serve {
        use std::io::BufRead;
        let mut child = Flowctl::new()
            .dir(dir)
            .env("FLOWCTL_JWT_SECRET", secret)
            .args([std::ffi::OsStr::new("serve"), flow.as_os_str()])
            .args(["--listen", "127.0.0.1:0", "--db"])
            .args([db])
            .command()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("flowctl serve starts");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut serve = Serve {
            child,
            addr: String::new(),
            log,
        };
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(addr) => serve.addr = addr,
            Err(_) => panic!("no `listening on` line; stderr:\n{}", serve.log()),
        }
        serve
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `METHOD PATH` with `Authorization: Bearer TOKEN` and an optional JSON body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
    ) -> Reply {
        use std::io::{Read, Write};
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = std::net::TcpStream::connect(&self.addr).expect("connect to the server");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read the response");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete response head");
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let mut body = raw[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Reply { status, body }
    }

    pub fn get(&self, path: &str, token: &str) -> Reply {
        self.request("GET", path, token, None)
    }

    pub fn post(&self, path: &str, token: &str, body: &serde_json::Value) -> Reply {
        self.request("POST", path, token, Some(body))
    }

    /// Polls `GET /api/jobs/ID` until the job is COMPLETED, FAILED or CANCELLED.
    pub fn wait_finished(&self, id: &str, token: &str) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        wait_for(
            std::time::Duration::from_secs(60),
            || {
                let reply = self.get(&format!("/api/jobs/{id}"), token);
                assert_eq!(reply.status, 200, "{}", reply.text());
                last = reply.json();
                ["COMPLETED", "FAILED", "CANCELLED"]
                    .contains(&last["status"].as_str().unwrap_or(""))
                    .then(|| last.clone())
            },
            || format!("job {id} did not finish; server log:\n{}", self.log()),
        )
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = end + 2;
        out.extend_from_slice(&body[start..start + size]);
        body = &body[start + size + 2..];
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
