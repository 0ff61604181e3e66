//! A `flowctl` process the test watches while it runs (a server, a worker, a run it kills):
//! its stderr read line by line as it comes, signals, and waiting for it to exit, each with a
//! deadline so that a process that hangs fails the test instead of hanging it.

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A started process, killed when dropped. Its stderr is read on a thread: every line is kept
/// for [`Running::log`] and handed to [`Running::wait_for_line`].
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Running {
    /// Watches `child`, whose stderr must be piped (its stdout is left to the caller).
    pub fn new(mut child: Child) -> Running {
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let kept = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                // The test may have stopped listening; the line is in the log all the same.
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far, one line per line.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a stderr line for which `want` holds and returns it. Panics, after killing
    /// the process, at `deadline` or when stderr ends first, showing the stderr seen.
    #[track_caller]
    pub fn wait_for_line(&mut self, deadline: Instant, want: impl Fn(&str) -> bool) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(e) => {
                    let _ = self.kill();
                    panic!(
                        "no awaited stderr line ({e:?}); stderr so far:\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `limit` for it to exit; once it has, its stderr has been read to the end.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = wait_exit(&mut self.child, limit)?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Some(status)
    }

    /// Sends `signal` (`-TERM`, `-STOP`, `-CONT`, ...); whether it was delivered.
    pub fn signal(&self, signal: &str) -> bool {
        self::signal(self.pid(), signal)
    }

    /// SIGTERM, then up to `limit` for it to exit; SIGKILL if it has not by then (`None`).
    /// Once it has exited, its stderr has been read to the end.
    #[track_caller]
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.try_exit().is_none() {
            assert!(self.signal("-TERM"), "SIGTERM to {}", self.pid());
        }
        let status = self.wait_exit(limit);
        if status.is_none() {
            let _ = self.kill();
        }
        status
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(drop)
    }

    /// Waits until its stderr ends (it exited), up to `deadline`, then returns its exit status
    /// and its stdout (empty unless piped). Panics, after killing it, at the deadline.
    #[track_caller]
    pub fn finish(&mut self, deadline: Instant) -> (ExitStatus, String) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.kill();
                    panic!("flowctl did not finish in time; stderr:\n{}", self.log());
                }
            }
        }
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout).unwrap();
        }
        (self.child.wait().unwrap(), stdout)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (`-TERM`, `-STOP`, ...) to process `pid` with kill(1); whether it was
/// delivered.
pub fn signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to `limit` for `child` to exit (polling every 20 ms); `None` if it is still
/// running then.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
