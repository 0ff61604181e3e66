//! Opening and closing a [`SledStore`]: the lock, what the directory holds, the layout check,
//! the commit watermark check and recovery, the intent's replay, the indexes' rebuild, and
//! read-only copies.
//!
//! # Damage
//!
//! sled recovers the longest prefix of its log that reads back whole, and says nothing: a
//! flipped bit or a truncated file loses every change after it (completed jobs QUEUED again,
//! jobs gone), random bytes open as an empty store, and a directory of other files becomes a
//! new store among them. So every flush round that writes numbers itself, in sled (`mcommit`,
//! its last write) and, after sled's fsync, in the watermark file (fsynced once a second and on
//! close, not in every round: see `WATERMARK_SYNC_INTERVAL`). `open` refuses a store whose log
//! ends before the watermark's round ([`StoreError::Damaged`], "the changes of the last N
//! rounds are missing"), a watermark without sled's files or sled's files without it once they
//! hold rounds, and a directory of files that are not sled's ([`StoreError::NotAStore`]),
//! before sled touches anything. [`SledStore::recover`] (`flowctl store recover
//! --accept-loss`) opens such a store with what survived and moves the watermark back. sled
//! truncates a damaged log when it opens it (before the check can run: a refused writable open
//! leaves the log as sled recovered it, which loses nothing sled could still read), so
//! [`SledStore::open_read_only`] (`jobs list`, `jobs show`) opens a copy: a reading command
//! changes no byte of the store, damaged or not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::codec::{corrupt, LAYOUT_VERSION, UPGRADABLE_LAYOUTS};
use super::flusher::Flusher;
use super::indexes::State;
use super::intent::{replay_intent, INTENT_TREE};
use super::keys::META_LAYOUT;
use super::lock;
use super::snapshot::{self, SNAPSHOT_FILE};
use super::store::{SledConfig, SledStore};
use super::watermark::{read_commit, Watermark, WATERMARK_FILE};
use super::writer::Writer;
use crate::store::{StoreError, StoreResult};

/// What [`SledStore::recover`] found and accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The last commit round sled's log still holds.
    pub survived: u64,
    /// The last round the commit watermark said was durable (`None`: no readable watermark).
    pub durable: Option<u64>,
    /// Jobs the store holds now.
    pub jobs: u64,
}

/// How [`SledStore::open_with`] treats a store whose log lost committed rounds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Damage {
    Refuse,
    /// `flowctl store recover --accept-loss`: take what survived, and move the watermark back.
    Accept,
}

impl SledStore {
    /// Opens (or creates) the store at `config.path` and rebuilds the indexes from its records.
    ///
    /// Fails with [`StoreError::Locked`] if another process, or another open store in this
    /// process, holds it; with [`StoreError::FormatVersion`] if it was written with another
    /// layout; with [`StoreError::NotAStore`] if the directory holds something else; with
    /// [`StoreError::Damaged`] if sled's log lost commit rounds that were durable (see
    /// [`SledStore::recover`]).
    pub fn open(config: SledConfig) -> StoreResult<SledStore> {
        Self::open_with(config, Damage::Refuse)
    }

    /// Opens the store for reading only, without writing a byte of it: sled writes when it
    /// opens (it truncates a damaged log, it may start a segment), and so do the layout
    /// upgrade and the replay of an interrupted change. So this checks the store's lock (as
    /// [`SledStore::open`] does: [`StoreError::Locked`] if another process holds it), copies
    /// the directory to a temporary one and opens the copy, with every check
    /// of `open`. The copy is removed on close. Costs a copy of the store: for the CLI's
    /// `jobs list` and `jobs show`, not for a service.
    pub fn open_read_only(path: impl Into<PathBuf>) -> StoreResult<SledStore> {
        let path = path.into();
        if matches!(lock(&OPEN_STORES).get(&canonical(&path)), Some(Held::Open)) {
            return Err(StoreError::Locked { path });
        }
        let copy = std::env::temp_dir().join(format!(
            "flowctl-read-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let copied = (|| {
            if inspect(&path)? == Found::Sled {
                if locked_by_another_process(&path.join("db")) {
                    return Err(StoreError::Locked { path: path.clone() });
                }
                copy_dir(&path, &copy)?;
            }
            Ok(())
        })();
        let opened = copied.and_then(|()| {
            Self::open(SledConfig {
                flush: false,
                ..SledConfig::new(&copy)
            })
        });
        match opened {
            Ok(mut store) => {
                store.copy = Some(copy);
                Ok(store)
            }
            Err(error) => {
                let _ = std::fs::remove_dir_all(&copy);
                Err(error.at(&copy, &path))
            }
        }
    }

    /// Opens a store that [`SledStore::open`] refuses as damaged, accepting the loss: the jobs
    /// and changes sled's log still holds are the store from now on (what the lost rounds did
    /// is gone: completed jobs may be QUEUED again and run again), and the commit watermark is
    /// set back to the last round that survived. A directory that is not a store is still
    /// refused.
    pub fn recover(path: impl Into<PathBuf>) -> StoreResult<Recovered> {
        let path = path.into();
        let durable = Watermark::read(&path).ok().flatten();
        let store = Self::open_with(SledConfig::new(&path), Damage::Accept)?;
        let survived = read_commit(&store.tree)?;
        let jobs = lock(&store.state).counts.iter().sum();
        Ok(Recovered {
            survived,
            durable,
            jobs,
        })
    }

    fn open_with(config: SledConfig, damage: Damage) -> StoreResult<SledStore> {
        inspect(&config.path)?;
        let mark = match (Watermark::read(&config.path), damage) {
            (Ok(mark), _) => mark,
            (Err(_), Damage::Accept) => None,
            (Err(error), Damage::Refuse) => return Err(error),
        };
        let sled_config = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity_bytes)
            .flush_every_ms(if config.flush { None } else { Some(500) });
        let db = open_db(&sled_config, &config.path)?;
        let tree = db.open_tree("flowctl").map_err(StoreError::Sled)?;
        let intents = db.open_tree(INTENT_TREE).map_err(StoreError::Sled)?;
        let survived = read_commit(&tree)?;
        let missing = match mark {
            Some(durable) if survived < durable => Some(format!(
                "sled's log ends at commit round {survived}, but round {durable} was durable: \
                 the changes of the last {} round(s) are missing (a truncated or corrupted log)",
                durable - survived
            )),
            Some(_) => None,
            None if survived > 0 => Some(format!(
                "its commit watermark ({WATERMARK_FILE}) is missing, though sled's log holds \
                 {survived} commit round(s)"
            )),
            // A store from before the watermark, or a new one (sled's files with no flowctl
            // data and layout are refused by `check_layout`).
            None => None,
        };
        if let Some(missing) = missing {
            if damage == Damage::Refuse {
                return Err(StoreError::Damaged {
                    path: config.path.clone(),
                    missing,
                });
            }
            tracing::warn!(%missing, "accepted the loss of a damaged job store");
        }
        let watermark = if mark != Some(survived) {
            Watermark::create(&config.path, survived)?
        } else {
            Watermark::open(&config.path, survived)?
        };
        // Taken (and deleted) before anything writes to the store: `snapshot.rs`.
        let snapshot = match damage {
            Damage::Refuse => snapshot::take(&config.path, survived)?,
            Damage::Accept => {
                snapshot::discard(&config.path)?;
                None
            }
        };
        check_layout(&tree)?;
        let replayed = replay_intent(&tree, &intents)?;
        if replayed > 0 {
            tracing::warn!(
                writes = replayed,
                "finished a change that a crash had interrupted"
            );
        }
        let state = match snapshot {
            Some(state) if replayed == 0 => state,
            _ => State::rebuild(&tree)?,
        };
        let state = Arc::new(Mutex::new(state));
        let wake = watch::Sender::new(0);
        let flusher = {
            let writer = Writer {
                db: db.clone(),
                tree: tree.clone(),
                intents: intents.clone(),
                state: Arc::clone(&state),
                fsync: config.flush,
                wake: wake.clone(),
                watermark,
            };
            let mut writer = writer;
            Flusher::start(move |round| writer.write(round))
        };
        let registered = canonical(&config.path);
        lock(&OPEN_STORES).insert(registered.clone(), Held::Open);
        Ok(SledStore {
            db,
            tree,
            path: config.path,
            registered,
            state,
            wake,
            fsync: config.flush,
            flusher: Some(flusher),
            copy: None,
        })
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Some(mut flusher) = self.flusher.take() {
            flusher.stop();
        }
        match self.db.flush() {
            Ok(_) if self.copy.is_none() => self.write_snapshot(),
            Ok(_) => {}
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "flushing the job store on close failed");
            }
        }
        // sled lets go of the file just after the handles below drop.
        lock(&OPEN_STORES).insert(self.registered.clone(), Held::ClosedAt(Instant::now()));
        if let Some(copy) = &self.copy {
            // sled's last handles let go of the files just after; unlinked, they go then.
            let _ = std::fs::remove_dir_all(copy);
        }
    }
}

impl SledStore {
    /// Leaves the index snapshot for the next open, if every committed change is in sled
    /// (`snapshot.rs`). Called on close, after the final round and sled's flush.
    fn write_snapshot(&self) {
        let state = lock(&self.state);
        if state.broken.is_some() || state.injected_fault.is_some() || !state.overlay.is_empty() {
            return;
        }
        let written = read_commit(&self.tree)
            .map_err(|error| error.to_string())
            .and_then(|round| {
                snapshot::write(&self.path, &state, round).map_err(|error| error.to_string())
            });
        if let Err(error) = written {
            tracing::warn!(path = %self.path.display(), %error, "the index snapshot was not written; the next open reads every record");
        }
    }
}

/// Stores this process has open, or has closed, by canonical path.
///
/// sled 0.34 releases its file lock a moment after the last handle drops, once its IO threads
/// let go of the file (sled issue #1289), so reopening a store this process just closed can
/// find it still locked. This process knows it closed it, so `open` waits for the lock then, for
/// up to [`REOPEN_WAIT`]. A store open in this process, or held by another process, is
/// [`StoreError::Locked`] at once.
static OPEN_STORES: Mutex<BTreeMap<PathBuf, Held>> = Mutex::new(BTreeMap::new());
const REOPEN_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
enum Held {
    Open,
    ClosedAt(Instant),
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

fn open_db(config: &sled::Config, path: &Path) -> StoreResult<sled::Db> {
    let held = lock(&OPEN_STORES).get(&canonical(path)).copied();
    let wait_until = match held {
        Some(Held::Open) => {
            return Err(StoreError::Locked {
                path: path.to_owned(),
            })
        }
        Some(Held::ClosedAt(closed)) => Some(closed + REOPEN_WAIT),
        None => None,
    };
    loop {
        match config.open().map_err(|error| open_error(error, path)) {
            Err(StoreError::Locked { .. })
                if wait_until.is_some_and(|until| Instant::now() < until) =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            result => return result,
        }
    }
}

fn open_error(error: sled::Error, path: &Path) -> StoreError {
    match error {
        // sled takes an exclusive file lock on open and reports a failure to get it only as
        // this message.
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: path.to_owned(),
            }
        }
        sled::Error::Io(io) => StoreError::Io(io),
        other => StoreError::Sled(other),
    }
}

/// What a store's directory holds before it is opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Found {
    /// Nothing (missing or empty): a new store.
    New,
    /// sled's files.
    Sled,
}

/// Refuses a directory that is not a store: a file, or files that are not sled's (sled would
/// start a new store among them), or a watermark without sled's files (a store whose data is
/// gone).
fn inspect(path: &Path) -> StoreResult<Found> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Found::New),
        Err(_) if path.exists() && !path.is_dir() => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                found: "it is a file, not a directory".into(),
            })
        }
        Err(error) => return Err(error.into()),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        names.insert(entry?.file_name().to_string_lossy().into_owned());
    }
    if names.is_empty() {
        return Ok(Found::New);
    }
    if names.contains("conf") && names.contains("db") {
        return Ok(Found::Sled);
    }
    if names.contains(WATERMARK_FILE) {
        return Err(StoreError::Damaged {
            path: path.to_owned(),
            missing: "sled's files (conf, db) are missing".into(),
        });
    }
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    Err(StoreError::NotAStore {
        path: path.to_owned(),
        found: format!(
            "it holds other files ({}{}) and not sled's (conf, db)",
            shown.join(", "),
            if names.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        ),
    })
}

/// Whether another process holds sled's lock (an `flock` on `db`), as `/proc/locks` shows it:
/// taking the lock to find out would need `flock`, which std has only since Rust 1.89 (this
/// crate builds with 1.85). Where `/proc/locks` cannot be read, `false`.
fn locked_by_another_process(file: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(inode) = std::fs::metadata(file).map(|meta| meta.ino()) else {
        return false;
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    let me = std::process::id().to_string();
    // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`: pid, then major:minor:inode.
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let held = fields.iter().position(|f| *f == "FLOCK").and_then(|at| {
            let pid = fields.get(at + 3)?;
            let ino = fields
                .get(at + 4)?
                .rsplit(':')
                .next()?
                .parse::<u64>()
                .ok()?;
            Some(ino == inode && *pid != me)
        });
        held == Some(true)
    })
}

/// Copies a store's directory (not its masking key) for [`SledStore::open_read_only`], the
/// watermark first: copied while something writes, the copy's watermark is then no newer than
/// its log.
pub(super) fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let watermark = from.join(WATERMARK_FILE);
    if watermark.exists() {
        std::fs::copy(&watermark, to.join(WATERMARK_FILE))?;
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_name() != "mask.key"
            && entry.file_name() != WATERMARK_FILE
            && entry.file_name() != SNAPSHOT_FILE
        {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn check_layout(tree: &sled::Tree) -> StoreResult<()> {
    match tree.get(META_LAYOUT).map_err(StoreError::Sled)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| corrupt(META_LAYOUT, "the layout version is not 4 bytes"))?;
            if UPGRADABLE_LAYOUTS.contains(&found) {
                tree.insert(META_LAYOUT, &LAYOUT_VERSION.to_be_bytes())
                    .map_err(StoreError::Sled)?;
                tracing::info!(
                    from = found,
                    to = LAYOUT_VERSION,
                    "upgraded the job store's layout"
                );
            } else if found != LAYOUT_VERSION {
                return Err(StoreError::FormatVersion {
                    found,
                    expected: LAYOUT_VERSION,
                });
            }
            Ok(())
        }
        // Data without a layout version was written before versions existed.
        None if !tree.is_empty() => Err(StoreError::FormatVersion {
            found: 0,
            expected: LAYOUT_VERSION,
        }),
        None => {
            tree.insert(META_LAYOUT, &LAYOUT_VERSION.to_be_bytes())
                .map_err(StoreError::Sled)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {

    use crate::store::sled::testing::{open_at, raw_sled};
    use crate::store::sled::{keys, SledConfig, SledStore, LAYOUT_VERSION};
    use crate::store::StoreError;

    #[test]
    fn a_second_open_in_this_process_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _first = open_at(&path);
        match SledStore::open(SledConfig::new(&path)) {
            Err(StoreError::Locked { path: locked }) => {
                assert_eq!(locked, path);
                let message = StoreError::Locked { path: locked }.to_string();
                assert!(message.contains("in use"), "{message}");
            }
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("opened a store twice"),
        }
    }

    const PROBE_ENV: &str = "FLOWCTL_STORE_LOCK_PROBE";

    /// Runs in a child process started by `a_second_process_is_locked_out`; does nothing
    /// otherwise.
    #[test]
    fn lock_probe_in_child_process() {
        if let Ok(path) = std::env::var(PROBE_ENV) {
            match SledStore::open(SledConfig::new(path)) {
                Err(StoreError::Locked { .. }) => println!("probe: locked"),
                Err(other) => println!("probe: other error: {other}"),
                Ok(_) => println!("probe: opened"),
            }
        }
    }

    #[test]
    fn a_second_process_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _held = open_at(&path);
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::sled::open::tests::lock_probe_in_child_process",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(PROBE_ENV, &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("probe: locked"), "child said: {stdout}");
    }

    #[test]
    fn another_layout_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(open_at(&path));
        {
            let db = raw_sled(&path);
            let tree = db.open_tree("flowctl").unwrap();
            tree.insert(keys::META_LAYOUT, &99u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        match SledStore::open(SledConfig::new(&path)) {
            Err(StoreError::FormatVersion { found, expected }) => {
                assert_eq!((found, expected), (99, LAYOUT_VERSION));
            }
            Err(other) => panic!("expected FormatVersion, got {other}"),
            Ok(_) => panic!("opened a store of another layout"),
        }
    }

    #[test]
    fn a_layout_1_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(open_at(&path));
        {
            let db = raw_sled(&path);
            let tree = db.open_tree("flowctl").unwrap();
            tree.insert(keys::META_LAYOUT, &1u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let store = open_at(&path);
        assert_eq!(
            store.tree.get(keys::META_LAYOUT).unwrap().as_deref(),
            Some(&LAYOUT_VERSION.to_be_bytes()[..])
        );
    }

    /// A store the previous release wrote (layout 2) opens; its jobs read back with their
    /// text parameters and no window, and a change writes them in this layout.
    #[tokio::test]
    async fn a_layout_2_store_opens_and_its_jobs_read_back() {
        use crate::store::conformance::at;
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(open_at(&path));
        // An older release leaves no index snapshot.
        std::fs::remove_file(path.join(super::SNAPSHOT_FILE)).unwrap();
        let old = crate::store::sled::codec::tests::layout_2_bytes();
        let id: crate::job::JobId = "JOB_ABCD1234".parse().unwrap();
        {
            let db = raw_sled(&path);
            let tree = db.open_tree("flowctl").unwrap();
            tree.insert(keys::META_LAYOUT, &2u32.to_be_bytes()).unwrap();
            tree.insert(
                keys::job_key(at(0).timestamp_micros(), &keys::id_bytes(&id)),
                old,
            )
            .unwrap();
            db.flush().unwrap();
        }
        let store = open_at(&path);
        assert_eq!(
            store.tree.get(keys::META_LAYOUT).unwrap().as_deref(),
            Some(&LAYOUT_VERSION.to_be_bytes()[..])
        );
        let job = store.get(&id).await.unwrap().expect("the old job");
        assert_eq!(job.request.window, None);
        assert_eq!(job.request.params.len(), 1);
        assert_eq!(job.status, crate::job::JobStatus::Processing);
        // A change rewrites it (a cancel of a running job asks its worker to stop).
        store.cancel(&id, at(1)).await.unwrap();
        drop(store);
        let store = open_at(&path);
        let job = store.get(&id).await.unwrap().unwrap();
        assert!(job.cancel_requested);
        assert_eq!(job.request.params.len(), 1);
    }

    /// A store of layout 3 (digests as hex text) opens as it stands: its COMPLETED jobs read
    /// back with their digests, and only the version is rewritten.
    #[tokio::test]
    async fn a_layout_3_store_opens_and_its_digests_read_back() {
        use crate::store::sled::codec::{self, tests::completed_job, tests::HEX};
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(open_at(&path));
        std::fs::remove_file(path.join(super::SNAPSHOT_FILE)).unwrap();
        let job = completed_job(HEX);
        let key = keys::job_key(
            job.created_at.timestamp_micros(),
            &keys::id_bytes(&job.job_id),
        );
        {
            let db = raw_sled(&path);
            let tree = db.open_tree("flowctl").unwrap();
            tree.insert(keys::META_LAYOUT, &3u32.to_be_bytes()).unwrap();
            tree.insert(key, codec::encode_job_layout_3(&job)).unwrap();
            db.flush().unwrap();
        }
        let store = open_at(&path);
        assert_eq!(
            store.tree.get(keys::META_LAYOUT).unwrap().as_deref(),
            Some(&LAYOUT_VERSION.to_be_bytes()[..])
        );
        assert_eq!(
            store.tree.get(key).unwrap().unwrap()[0],
            codec::JOB_FORMAT_3
        );
        assert_eq!(store.get(&job.job_id).await.unwrap(), Some(job));
    }
}
