//! The result file: written under a temporary name beside the result, then moved into place
//! by a move that never replaces a file, and removed on any failure.

use std::collections::hash_map::RandomState;
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
    ///
    /// The move never replaces a file: it links the temporary file at `result_path` (which
    /// fails if anything is there) and then unlinks the temporary name. Result paths are per
    /// attempt, so an attempt that lost its job (a worker paused past its lease) can never put
    /// its output over the result another attempt completed and recorded the SHA-256 of.
    pub(super) fn commit(mut self, result_path: &Path) -> Result<()> {
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
        if let Err(e) = sync_dir(parent_dir(result_path)) {
            // Not durable: do not report a result that may vanish on power loss.
            let _ = fs::remove_file(result_path);
            return Err(io_err(parent_dir(result_path))(e));
        }
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

    use crate::pipeline::fixture::*;
    use crate::pipeline::{run, Control, DataFormat, PipelineError, Progress};

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
