//! A damaged embedded store is refused at open, never opened as if nothing were missing; read
//! commands never write it; `flowctl store recover --accept-loss` takes what survived.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use common::{Flowctl, Project};
use flowctl::job::{NewJob, Principal};
use flowctl::store::{Outcome, SledConfig, SledStore, Store, StoreError};

fn job() -> NewJob {
    NewJob::new("R", Principal::system("ADMIN"), "test")
}

/// A store with jobs written over many group-commit rounds: 40 enqueues, and the first jobs
/// completed, each durable before the next.
fn filled_store(path: &Path) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SledStore::open(SledConfig::new(path)).unwrap();
        for _ in 0..40 {
            store
                .enqueue(vec![job(); 25], None, Utc::now())
                .await
                .unwrap();
        }
        let claimed = store
            .claim("w", 50, Duration::from_secs(30), Utc::now())
            .await
            .unwrap();
        for job in &claimed {
            let done = Outcome::Success {
                result_path: "r".into(),
                rows_written: 1,
                sha256: String::new(),
            };
            let cas = store
                .complete(&job.job_id, job.version, done, &[], Utc::now())
                .await
                .unwrap();
            assert!(cas.is_applied());
        }
        1000
    })
}

/// Every file under `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                files.insert(entry.path(), std::fs::read(entry.path()).unwrap());
            }
        }
    }
    files
}

/// Waits for this process's last handle on a store to let go (sled releases its lock a moment
/// after close), then opens it.
fn open(path: &Path) -> Result<SledStore, StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match SledStore::open(SledConfig::new(path)) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => return other,
        }
    }
}

fn damaged(result: Result<SledStore, StoreError>) -> String {
    match result {
        Err(error @ StoreError::Damaged { .. }) => error.to_string(),
        Err(other) => panic!("expected a damaged store, got {other}"),
        Ok(_) => panic!("a damaged store was opened"),
    }
}

/// Cuts the store's log to half its length, as a crash or a bad disk may.
fn truncate_log_by_half(path: &Path) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(log(path))
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len / 2).unwrap();
}

/// sled's log file.
fn log(path: &Path) -> PathBuf {
    path.join("db")
}

#[test]
fn a_truncated_log_is_refused_at_open() {
    let dir = Project::new();
    let path = dir.db();
    filled_store(&path);
    truncate_log_by_half(&path);
    let message = damaged(open(&path));
    assert!(message.contains("missing"), "{message}");
    // Refused again: the refusal does not depend on the first try.
    damaged(open(&path));
}

#[test]
fn a_flipped_bit_mid_log_is_refused_at_open() {
    let dir = Project::new();
    let path = dir.db();
    filled_store(&path);
    let mut bytes = std::fs::read(log(&path)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(log(&path), bytes).unwrap();
    damaged(open(&path));
}

#[test]
fn random_bytes_are_refused_at_open() {
    let dir = Project::new();
    let path = dir.db();
    filled_store(&path);
    let len = std::fs::metadata(log(&path)).unwrap().len() as usize;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(log(&path), noise).unwrap();
    match open(&path) {
        Err(StoreError::Damaged { .. }) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(store) => {
            let counts = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(store.counts())
                .unwrap();
            panic!("random bytes opened as a store: {counts:?}")
        }
    }
}

#[test]
fn a_directory_of_unrelated_files_is_refused() {
    let dir = Project::new().file("notes.txt", "not a store");
    std::fs::create_dir(dir.path().join("photos")).unwrap();
    let before = snapshot(dir.path());
    match SledStore::open(SledConfig::new(dir.path())) {
        Err(error @ StoreError::NotAStore { .. }) => {
            assert!(error.to_string().contains("notes.txt"), "{error}")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a directory of other files was opened as a store"),
    }
    assert_eq!(snapshot(dir.path()), before, "nothing was written");
    // A store whose sled files are gone, its watermark left, is damaged, not new.
    let gone = Project::new();
    let path = gone.db();
    filled_store(&path);
    for name in ["conf", "db"] {
        std::fs::remove_file(path.join(name)).unwrap();
    }
    damaged(open(&path));
}

#[test]
fn jobs_list_never_writes_the_store() {
    let dir = Project::new();
    let path = dir.db();
    filled_store(&path);
    let before = snapshot(&path);
    for args in [
        vec!["jobs", "list"],
        vec!["jobs", "list", "--json", "--limit", "5"],
    ] {
        let run = Flowctl::new()
            .args(args)
            .db(&path)
            .env("FLOWCTL_MASK_KEY", "")
            .output();
        assert_eq!(run.code(), 0, "{}", run.stderr());
        assert!(run.stdout().contains("JOB_"), "{}", run.stdout());
    }
    assert_eq!(
        snapshot(&path),
        before,
        "jobs list changed the store's files"
    );

    // Nor a damaged one: refused (exit 2), and left as it is for `store recover`.
    truncate_log_by_half(&path);
    let before = snapshot(&path);
    let run = Flowctl::new().args(["jobs", "list"]).db(&path).output();
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("damaged"), "{}", run.stderr());
    assert!(run.stderr().contains("store recover"), "{}", run.stderr());
    assert_eq!(snapshot(&path), before, "jobs list changed a damaged store");
}

/// Reading a store another process has open is refused as before ("in use"), not read from a
/// copy taken while it writes.
#[test]
fn jobs_list_refuses_a_store_in_use() {
    let dir = Project::new();
    let path = dir.db();
    let store = SledStore::open(SledConfig::new(&path)).unwrap();
    let run = Flowctl::new().args(["jobs", "list"]).db(&path).output();
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("in use"), "{}", run.stderr());
    drop(store);
}

#[test]
fn store_recover_accepts_the_loss_of_a_damaged_store() {
    let dir = Project::new();
    let path = dir.db();
    filled_store(&path);
    truncate_log_by_half(&path);
    // Every command that opens it refuses it.
    let run = Flowctl::new()
        .args(["jobs", "cancel", "JOB_AAAAAAAA"])
        .db(&path)
        .output();
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("damaged"), "{}", run.stderr());
    // Recovery wants the loss accepted in so many words.
    let run = Flowctl::new().args(["store", "recover"]).db(&path).output();
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("--accept-loss"), "{}", run.stderr());
    let run = Flowctl::new()
        .args(["store", "recover", "--accept-loss"])
        .db(&path)
        .output();
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stdout().contains("lost"), "{}", run.stdout());
    // Then it opens, with what survived.
    let run = Flowctl::new().args(["jobs", "list"]).db(&path).output();
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let store = open(&path).expect("a recovered store opens");
    drop(store);
}
