//! Reads `.flow` files from disk: the paths given, every `.flow` file in a
//! given directory, and the files they `include`.
//!
//! This is the only IO of a compilation; [`crate::compiler`] is pure.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::ast::{FlowFile, ItemKind, ValueKind};
use crate::diagnostic::{Code, Diagnostic};
use crate::parser;
use crate::source_map::{FileId, SourceFile, SourceMap};

/// Failure to read an input named on the command line (a usage error: the
/// user pointed at something that is not there).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} contains no .flow files")]
    EmptyDirectory { path: PathBuf },
}

/// Everything parsed, with parse diagnostics. Files appear in load order:
/// an included file right after the file that includes it.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sources: SourceMap,
    pub files: Vec<(FileId, FlowFile)>,
    pub diagnostics: Vec<Diagnostic>,
}

pub fn load(inputs: &[PathBuf]) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    let mut seen = HashSet::new();
    for input in inputs {
        if input.is_dir() {
            let files = flow_files_in(input)?;
            if files.is_empty() {
                return Err(LoadError::EmptyDirectory {
                    path: input.clone(),
                });
            }
            for file in files {
                let text = read(&file)?;
                add_file(&mut loaded, &mut seen, file, text);
            }
        } else {
            let text = read(input)?;
            add_file(&mut loaded, &mut seen, input.clone(), text);
        }
    }
    Ok(loaded)
}

/// Parses in-memory text as if it were a file at `path` (for tests, `fmt` of
/// stdin, and benchmarks). Includes are still read from disk.
pub fn load_text(path: &Path, text: String) -> Loaded {
    let mut loaded = Loaded::default();
    let mut seen = HashSet::new();
    add_file(&mut loaded, &mut seen, path.to_path_buf(), text);
    loaded
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn flow_files_in(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "flow"))
        .collect();
    files.sort();
    Ok(files)
}

fn add_file(loaded: &mut Loaded, seen: &mut HashSet<PathBuf>, path: PathBuf, text: String) {
    let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    if !seen.insert(key) {
        return;
    }
    let name = display_name(&path);
    let id = loaded
        .sources
        .add(SourceFile::new(path.clone(), name, text));
    let file = loaded.sources.get(id);
    let dir = file.dir().to_path_buf();
    let parsed = parser::parse(id, &file.text);
    loaded.diagnostics.extend(parsed.diagnostics);
    let includes: Vec<_> = parsed
        .file
        .items
        .iter()
        .filter_map(|item| match &item.kind {
            ItemKind::Include(v) => match &v.kind {
                ValueKind::Str(s) => Some((s.clone(), v.span)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    loaded.files.push((id, parsed.file));
    for (include, span) in includes {
        let target = dir.join(&include);
        match std::fs::read_to_string(&target) {
            Ok(text) => add_file(loaded, seen, target, text),
            Err(err) => loaded.diagnostics.push(
                Diagnostic::error(Code::Include, format!("cannot include `{include}`: {err}"))
                    .label(span, "included here")
                    .help("include paths are relative to the file that includes them"),
            ),
        }
    }
}

fn display_name(path: &Path) -> String {
    let s = path.to_string_lossy();
    s.strip_prefix("./").unwrap_or(&s).to_string()
}
