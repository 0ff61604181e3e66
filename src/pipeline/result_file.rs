//! The result file: written under a temporary name beside the result, made durable, then moved
//! into place by a move that never replaces a file, and removed on any failure.
//!
//! Two ways to finish one: [`StagedResult::commit_now`] syncs the one file and its directory
//! (what [`crate::pipeline::run`] does), and [`commit_batch`] finishes many at once (what the
//! executor's durability stage does, off the pool slot): the data of every file made durable
//! together ([`SyncMethod`]), then each linked into place, then each touched directory (or
//! filesystem) synced once. Whatever the way, the order is the same — data durable, then the
//! name, then the name durable — so a crash at any point leaves either the temporary name
//! (swept at start) or the whole file at its final name, never a partial one there.
//!
//! The stage's default is [`SyncMethod::Auto`]: `syncfs` for a batch of two or more, an
//! `fdatasync` for a lone file. Why `syncfs`: measured 2026-12-03 on the 2-core VM
//! (ext4 on virtio, a Python loop of `os` calls on 19-byte files, three runs each), making 128
//! new files durable took 13–28 ms with one `syncfs`, 23–66 ms with 128 `fdatasync`s from 16
//! threads and 67–156 ms with 128 `fdatasync`s one after the other; 16 files: 4–12, 10–17 and
//! 5–35 ms. `syncfs` is also one system call per batch instead of one per file. Its cost is
//! that it writes *every* dirty page of the filesystem, other programs' too: the first call
//! after a large copy took 1.5 s. On a filesystem shared with heavy writers choose
//! [`SyncMethod::Fdatasync`] (`FLOWCTL_RESULT_SYNC=fdatasync`, or `ExecutorConfig::result_sync`). Through the engine
//! (`benches/engine.rs`, sled pool 2, one run each, other builds running): `fdatasync` below
//! 16 files and `syncfs` above gave 5,187 jobs/s and 0.44 result syncs per job under strace
//! (its slower run makes smaller batches), `syncfs` always 3,925 jobs/s (a noisier moment)
//! and 0.15 per job; the dependent start (batches of one) was 2.4 and 2.5 ms at p50 either
//! way, so a lone file keeps `fdatasync`, which waits for nobody else's pages.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{io_err, PipelineError, Result};

/// The temporary output file; removed on drop unless committed.
pub(super) struct TempFile {
    pub(super) path: PathBuf,
    committed: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_suffix() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(TEMP_COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl TempFile {
    /// Creates `.<name>.tmp-<pid>-<random>` in the directory of `result_path` (created too,
    /// durably: see [`create_dir_durably`]).
    pub(super) fn create(result_path: &Path) -> Result<(File, TempFile)> {
        let dir = parent_dir(result_path);
        create_dir_durably(dir).map_err(io_err(dir))?;
        let name = result_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut last_err = None;
        for _ in 0..16 {
            let path = dir.join(format!(
                ".{name}.tmp-{}-{:016x}",
                std::process::id(),
                random_suffix()
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok((
                        file,
                        TempFile {
                            path,
                            committed: false,
                        },
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some((path, e)),
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        let (path, e) = last_err.expect("at least one attempt");
        Err(io_err(&path)(e))
    }

    /// Moves the (closed, synced) temporary file to `result_path` and syncs the directory.
    pub(super) fn commit(self, result_path: &Path) -> Result<()> {
        self.link_into_place(result_path)?;
        if let Err(e) = sync_dir(parent_dir(result_path)) {
            // Not durable: do not report a result that may vanish on power loss.
            let _ = fs::remove_file(result_path);
            return Err(io_err(parent_dir(result_path))(e));
        }
        Ok(())
    }

    /// Links the (closed, synced) temporary file at `result_path` and unlinks the temporary
    /// name; the new name is not durable until its directory is synced.
    ///
    /// The move never replaces a file: linking fails if anything is at `result_path`. Result
    /// paths are per attempt, so an attempt that lost its job (a worker paused past its lease)
    /// can never put its output over the result another attempt completed and recorded the
    /// SHA-256 of.
    fn link_into_place(mut self, result_path: &Path) -> Result<()> {
        match fs::hard_link(&self.path, result_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(PipelineError::ResultExists {
                    path: result_path.to_path_buf(),
                })
            }
            Err(e) => return Err(io_err(result_path)(e)),
        }
        self.committed = true;
        // The result is whole at its path; a temporary name left behind by a crash here is
        // swept at start like any other.
        let _ = fs::remove_file(&self.path);
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A result written whole to its temporary file (flushed, not synced), not yet at its path.
/// Dropped unfinished, its temporary file is removed.
pub struct StagedResult {
    file: File,
    temp: TempFile,
    result_path: PathBuf,
}

impl std::fmt::Debug for StagedResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedResult")
            .field("temp", &self.temp.path)
            .field("result_path", &self.result_path)
            .finish()
    }
}

impl StagedResult {
    pub(super) fn new(file: File, temp: TempFile, result_path: PathBuf) -> StagedResult {
        StagedResult {
            file,
            temp,
            result_path,
        }
    }

    /// Syncs this one file, moves it into place and syncs its directory.
    pub fn commit_now(self) -> Result<()> {
        let StagedResult {
            file,
            temp,
            result_path,
        } = self;
        file.sync_all().map_err(io_err(&temp.path))?;
        drop(file);
        temp.commit(&result_path)
    }
}

/// How [`commit_batch`] makes a batch of files durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// [`SyncMethod::Syncfs`] for a batch of at least [`AUTO_SYNCFS_FROM`] files, else
    /// [`SyncMethod::Fdatasync`]: a lone result (a parent whose dependent waits for it) is
    /// not made to wait for everything else the filesystem has to write.
    #[default]
    Auto,
    /// One `syncfs` per filesystem for the data, one more for the names (Linux; elsewhere
    /// [`SyncMethod::Fdatasync`]).
    Syncfs,
    /// An `fdatasync` per file, from up to [`SYNC_THREADS`] threads at once, which the journal
    /// commits together; then an `fsync` per touched directory.
    Fdatasync,
    /// An `fdatasync` per file one after the other, then an `fsync` per directory: the
    /// baseline the others are measured against.
    Serial,
}

impl SyncMethod {
    /// `auto`, `syncfs`, `fdatasync` or `serial`.
    pub fn from_name(name: &str) -> Option<SyncMethod> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(SyncMethod::Auto),
            "syncfs" => Some(SyncMethod::Syncfs),
            "fdatasync" => Some(SyncMethod::Fdatasync),
            "serial" => Some(SyncMethod::Serial),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SyncMethod::Auto => "auto",
            SyncMethod::Syncfs => "syncfs",
            SyncMethod::Fdatasync => "fdatasync",
            SyncMethod::Serial => "serial",
        }
    }
}

/// Threads [`SyncMethod::Fdatasync`] syncs from.
pub const SYNC_THREADS: usize = 16;

/// The smallest batch [`SyncMethod::Auto`] syncs with `syncfs`.
pub const AUTO_SYNCFS_FROM: usize = 2;

/// Finishes a batch of staged results: their data made durable together (`method`), then each
/// linked into place (never replacing a file), then the new names made durable (each touched
/// directory, or filesystem, once). Returns each result's outcome, in order: `Ok` when it is
/// whole and durable at its path; on an error nothing of it is left at its path (nor its
/// temporary file).
pub fn commit_batch(batch: Vec<StagedResult>, method: SyncMethod) -> Vec<Result<()>> {
    let method = effective(method, batch.len());
    let data = sync_data(&batch, method);
    let mut results: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
    // Directory → the results linked into it.
    let mut dirs: BTreeMap<PathBuf, Vec<(usize, PathBuf)>> = BTreeMap::new();
    for (i, (staged, synced)) in batch.into_iter().zip(data).enumerate() {
        let StagedResult {
            file,
            temp,
            result_path,
        } = staged;
        drop(file);
        let linked = match synced {
            Ok(()) => temp.link_into_place(&result_path),
            // `temp` is dropped: its file is removed.
            Err(e) => Err(io_err(&temp.path)(e)),
        };
        match linked {
            Ok(()) => dirs
                .entry(parent_dir(&result_path).to_path_buf())
                .or_default()
                .push((i, result_path)),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    let synced = sync_dirs(dirs.keys().map(PathBuf::as_path), method);
    for ((dir, linked), synced) in dirs.into_iter().zip(synced) {
        for (i, result_path) in linked {
            results[i] = Some(match &synced {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Not durable: do not report a result that may vanish on power loss.
                    let _ = fs::remove_file(&result_path);
                    Err(io_err(&dir)(io::Error::new(e.kind(), e.to_string())))
                }
            });
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(PipelineError::InvalidSpec {
                    reason: "a staged result was not finished".into(),
                })
            })
        })
        .collect()
}

/// The method a batch of `files` is synced with: [`SyncMethod::Auto`] decided, `syncfs` only
/// where there is one.
fn effective(method: SyncMethod, files: usize) -> SyncMethod {
    let method = match method {
        SyncMethod::Auto if files >= AUTO_SYNCFS_FROM => SyncMethod::Syncfs,
        SyncMethod::Auto => SyncMethod::Fdatasync,
        other => other,
    };
    if method == SyncMethod::Syncfs && !cfg!(target_os = "linux") {
        SyncMethod::Fdatasync
    } else {
        method
    }
}

/// Makes each staged file's data durable; one outcome per file.
fn sync_data(batch: &[StagedResult], method: SyncMethod) -> Vec<io::Result<()>> {
    match method {
        SyncMethod::Serial => batch.iter().map(|s| s.file.sync_data()).collect(),
        SyncMethod::Fdatasync | SyncMethod::Auto => parallel(batch, |s| s.file.sync_data()),
        SyncMethod::Syncfs => {
            let files: Vec<&File> = batch.iter().map(|s| &s.file).collect();
            syncfs_each(&files)
        }
    }
}

/// Makes the entries of `dirs` durable; one outcome per directory.
fn sync_dirs<'a>(dirs: impl Iterator<Item = &'a Path>, method: SyncMethod) -> Vec<io::Result<()>> {
    let dirs: Vec<&Path> = dirs.collect();
    match method {
        SyncMethod::Serial => dirs.iter().map(|d| sync_dir(d)).collect(),
        SyncMethod::Fdatasync | SyncMethod::Auto => parallel(&dirs, |d| sync_dir(d)),
        SyncMethod::Syncfs => {
            let opened: Vec<io::Result<File>> = dirs.iter().map(File::open).collect();
            let files: Vec<&File> = opened.iter().filter_map(|f| f.as_ref().ok()).collect();
            let mut synced = syncfs_each(&files).into_iter();
            opened
                .iter()
                .map(|f| match f {
                    Ok(_) => synced.next().unwrap_or(Ok(())),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                })
                .collect()
        }
    }
}

/// `f` over `items` from up to [`SYNC_THREADS`] threads; outcomes in order.
fn parallel<T: Sync>(items: &[T], f: impl Fn(&T) -> io::Result<()> + Sync) -> Vec<io::Result<()>> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per_thread = items.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| {
                let f = &f;
                scope.spawn(move || chunk.iter().map(f).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    (0..per_thread)
                        .map(|_| Err(io::Error::other("a sync thread panicked")))
                        .collect()
                })
            })
            .take(items.len())
            .collect()
    })
}

/// One `syncfs` per filesystem among `files` (by device); each file gets its filesystem's
/// outcome.
#[cfg(target_os = "linux")]
fn syncfs_each(files: &[&File]) -> Vec<io::Result<()>> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let devices: Vec<io::Result<u64>> = files
        .iter()
        .map(|f| f.metadata().map(|m| m.dev()))
        .collect();
    let mut synced: BTreeMap<u64, Result<(), (io::ErrorKind, String)>> = BTreeMap::new();
    for (file, dev) in files.iter().zip(&devices) {
        if let Ok(dev) = dev {
            synced.entry(*dev).or_insert_with(|| {
                // SAFETY: a descriptor of an open file, borrowed for the call.
                let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
                if rc == 0 {
                    Ok(())
                } else {
                    let e = io::Error::last_os_error();
                    Err((e.kind(), e.to_string()))
                }
            });
        }
    }
    devices
        .into_iter()
        .map(|dev| match synced.get(&dev?) {
            Some(Err((kind, message))) => Err(io::Error::new(*kind, message.clone())),
            _ => Ok(()),
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn syncfs_each(files: &[&File]) -> Vec<io::Result<()>> {
    files.iter().map(|f| f.sync_data()).collect()
}

/// Creates `dir` and any missing parent, syncing the parent of each directory it creates, so
/// that a result moved into a new directory (a report's first window) survives a power cut
/// with its directory: syncing the result's own directory alone does not make that directory's
/// entry in its parent durable.
pub(super) fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_dir(dir);
    if parent != dir && dir.parent().is_some_and(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        // Another attempt made it first; it syncs its parent itself.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened as files on Windows; the rename is durable enough there.
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::{commit_batch, SyncMethod};
    use crate::pipeline::fixture::*;
    use crate::pipeline::{run, run_staged, Control, DataFormat, PipelineError, Progress};

    /// Every file's name under `dir` and its window directories, sorted.
    fn names_under(dir: &std::path::Path) -> Vec<String> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                names.extend(names_under(&entry.path()));
            } else {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        names
    }

    #[test]
    fn every_sync_method_puts_a_whole_batch_in_place() {
        for method in [
            SyncMethod::Auto,
            SyncMethod::Syncfs,
            SyncMethod::Fdatasync,
            SyncMethod::Serial,
        ] {
            let fx = Fixture::new();
            let src = fx.source("cases.csv", cases_csv(5));
            let (mut outputs, mut staged) = (Vec::new(), Vec::new());
            for i in 0..20 {
                let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
                // Half of them in a window directory, made by the first one there.
                let dir = match i % 2 {
                    0 => fx.results_dir(),
                    _ => fx.results_dir().join("2026-11-30"),
                };
                spec.result_path = dir.join(format!("JOB_{i:04}.csv"));
                let (out, s) = run_staged(&spec, &mut |_: &Progress| Control::Continue).unwrap();
                assert!(!out.path.exists(), "{method:?}: in place before its batch");
                outputs.push(out);
                staged.push(s);
            }
            let results = commit_batch(staged, method);
            assert_eq!(results.len(), 20);
            for (out, result) in outputs.iter().zip(results) {
                result.unwrap_or_else(|e| panic!("{method:?}: {e}"));
                assert_eq!(sha256_hex(&fs::read(&out.path).unwrap()), out.sha256);
            }
            let names = names_under(&fx.results_dir());
            assert_eq!(
                names.len(),
                20,
                "{method:?}: no temporary file left: {names:?}"
            );
            assert!(names.iter().all(|n| n.starts_with("JOB_")), "{names:?}");
        }
    }

    #[test]
    fn a_taken_path_fails_alone_in_its_batch_and_the_file_there_stays() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(5));
        let mut staged = Vec::new();
        for i in 0..3 {
            let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
            spec.result_path = fx.results_dir().join(format!("JOB_{i}.csv"));
            staged.push(
                run_staged(&spec, &mut |_: &Progress| Control::Continue)
                    .unwrap()
                    .1,
            );
        }
        fs::write(fx.results_dir().join("JOB_1.csv"), "old").unwrap();
        let results = commit_batch(staged, SyncMethod::default());
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(
            matches!(&results[1], Err(PipelineError::ResultExists { path }) if path.ends_with("JOB_1.csv")),
            "{results:?}"
        );
        assert_eq!(
            fs::read_to_string(fx.results_dir().join("JOB_1.csv")).unwrap(),
            "old"
        );
        assert_eq!(fx.result_files(), ["JOB_0.csv", "JOB_1.csv", "JOB_2.csv"]);
    }

    #[test]
    fn a_staged_result_dropped_leaves_nothing() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(5));
        let spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        let (out, staged) = run_staged(&spec, &mut |_: &Progress| Control::Continue).unwrap();
        assert_eq!(fx.result_files().len(), 1, "its temporary file");
        drop(staged);
        assert!(fx.result_files().is_empty(), "{:?}", fx.result_files());
        assert!(!out.path.exists());
    }

    #[test]
    fn sync_methods_are_named() {
        for method in [
            SyncMethod::Auto,
            SyncMethod::Syncfs,
            SyncMethod::Fdatasync,
            SyncMethod::Serial,
        ] {
            assert_eq!(SyncMethod::from_name(method.name()), Some(method));
        }
        assert_eq!(SyncMethod::from_name(" SyncFS "), Some(SyncMethod::Syncfs));
        assert_eq!(SyncMethod::from_name("fsync"), None);
    }

    #[test]
    fn a_result_file_is_never_replaced() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(5));
        let spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        fs::create_dir_all(fx.results_dir()).unwrap();
        fs::write(&spec.result_path, "old").unwrap();
        let err = run(&spec, &mut |_: &Progress| Control::Cancel).unwrap_err();
        assert!(matches!(err, PipelineError::Cancelled));
        assert_eq!(fs::read_to_string(&spec.result_path).unwrap(), "old");
        // A whole run that finds its path taken fails and leaves the file as it was.
        let err = run(&spec, &mut |_: &Progress| Control::Continue).unwrap_err();
        assert!(
            matches!(&err, PipelineError::ResultExists { path } if path == &spec.result_path),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert_eq!(fs::read_to_string(&spec.result_path).unwrap(), "old");
        assert_eq!(fx.result_files(), ["JOB_ABCD1234.csv"]);
    }

    #[test]
    fn observer_panic_removes_the_temp_file() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(10));
        let spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        let result = std::panic::catch_unwind(|| {
            let _ = run(&spec, &mut |_: &Progress| -> Control {
                panic!("observer bug")
            });
        });
        assert!(result.is_err());
        assert!(fx.result_files().is_empty(), "{:?}", fx.result_files());
    }

    #[test]
    fn temp_file_is_hidden_beside_the_result() {
        let fx = Fixture::new();
        let src = fx.source("cases.csv", cases_csv(10));
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.chunk_size = 5;
        let mut during = Vec::new();
        let dir = fx.results_dir();
        run(&spec, &mut |_: &Progress| {
            during.push(fs::read_dir(&dir).unwrap().count());
            let names: Vec<String> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names.len(), 1);
            let prefix = format!(".JOB_ABCD1234.csv.tmp-{}-", std::process::id());
            assert!(names[0].starts_with(&prefix), "{names:?}");
            Control::Continue
        })
        .unwrap();
        assert_eq!(during, [1, 1]);
        assert_eq!(fx.result_files(), ["JOB_ABCD1234.csv"]);
    }
}
