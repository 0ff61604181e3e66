//! Golden files: output compared with a file in `tests/data`, rewritten instead when
//! `UPDATE_GOLDEN=1` is set.

use std::path::{Path, PathBuf};

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
