//! Reads `.flow` files from disk: the paths given, every `.flow` file in a
//! given directory, and the files they `include`.
//!
//! This is the only IO of a compilation; [`crate::compiler`] is pure.
//!
//! Reading is fenced, because a workflow's text ends up in diagnostics:
//!
//! - an `include` (and a file of a directory given) must stay inside the
//!   workflow's **root**: the directory of the file, or the directory, given
//!   (plus any [`LoadOptions::include_roots`]). The path is checked before
//!   anything outside is touched (`.` and `..` resolved by the text of the
//!   path), then again after [`std::fs::canonicalize`] (symlinks);
//! - only regular files are read, never FIFOs, devices or directories (the
//!   file is opened non-blocking and checked again after opening);
//! - at most [`MAX_FILE_BYTES`]: reading stops there, whatever the file
//!   claims its size is (`/proc` files say 0);
//! - the text must be UTF-8.
//!
//! A report's `query_file "sql/x.sql"` is read the same way, fenced alike, and registered in
//! the source map beside the `.flow` files, so a diagnostic about the query points at
//! `sql/x.sql:line:col`; the compiler finds its text through [`Loaded::query_files`].

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

use crate::ast::{FlowFile, ItemKind, Setting, ValueKind};
use crate::diagnostic::{Code, Diagnostic};
use crate::parser;
use crate::source_map::{FileId, SourceFile, SourceMap, Span};

/// The largest `.flow` file read: 16 MiB.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What the limit is called in messages.
const MAX_FILE_SIZE_TEXT: &str = "16 MiB";

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
    #[error("cannot read {path}: it is {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "cannot read {path}: it is larger than {MAX_FILE_SIZE_TEXT}, the limit for a .flow file"
    )]
    TooLarge { path: PathBuf },
    #[error("cannot read {path}: it is not UTF-8 text (invalid byte at {line}:{column})")]
    NotUtf8 {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("{path} resolves to {resolved}, outside the directory given ({root}); pass --include-root to allow it")]
    OutsideRoot {
        path: PathBuf,
        resolved: PathBuf,
        root: PathBuf,
    },
    #[error("--include-root {path}: {source}")]
    IncludeRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How files are read.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Directories `include`s may also read from, besides the root of each
    /// input (`--include-root`).
    pub include_roots: Vec<PathBuf>,
}

/// Everything parsed, with parse diagnostics. Files appear in load order:
/// an included file right after the file that includes it.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sources: SourceMap,
    pub files: Vec<(FileId, FlowFile)>,
    pub diagnostics: Vec<Diagnostic>,
    /// The file each `query_file` setting read, by the span of its path value; a file that
    /// could not be read is absent (and has a diagnostic).
    pub query_files: HashMap<Span, FileId>,
}

/// What names a file the loader reads besides the one it was given.
#[derive(Debug, Clone, Copy)]
enum Reference {
    Include,
    QueryFile,
}

/// [`load_with`] with the default options: includes stay inside each input's root.
pub fn load(inputs: &[PathBuf]) -> Result<Loaded, LoadError> {
    load_with(inputs, &LoadOptions::default())
}

pub fn load_with(inputs: &[PathBuf], options: &LoadOptions) -> Result<Loaded, LoadError> {
    let extra = extra_roots(options)?;
    let mut loader = Loader::default();
    for input in inputs {
        if input.is_dir() {
            let root = canonical(input)?;
            let files = flow_files_in(input)?;
            if files.is_empty() {
                return Err(LoadError::EmptyDirectory {
                    path: input.clone(),
                });
            }
            let roots = roots(root, &extra);
            for file in files {
                // A member that is a symlink out of the directory is read
                // only where an include could be.
                let resolved = canonical(&file)?;
                if !inside(&resolved, &roots) {
                    return Err(LoadError::OutsideRoot {
                        path: file,
                        resolved,
                        root: roots[0].clone(),
                    });
                }
                let text = read_input(&file)?;
                loader.add_file(file, text, &roots);
            }
        } else {
            let text = read_input(input)?;
            let root = canonical(&parent_dir(input))?;
            loader.add_file(input.clone(), text, &roots(root, &extra));
        }
    }
    Ok(loader.loaded)
}

/// Parses in-memory text as if it were a file at `path` (for tests, `fmt`,
/// and benchmarks). Includes are still read from disk, inside the directory
/// of `path`.
pub fn load_text(path: &Path, text: String) -> Loaded {
    load_text_with(path, text, &LoadOptions::default())
}

/// [`load_text`] with options. A root that cannot be resolved admits no
/// include at all (fail closed): each include gets a diagnostic.
pub fn load_text_with(path: &Path, text: String, options: &LoadOptions) -> Loaded {
    let mut roots: Vec<PathBuf> = std::fs::canonicalize(parent_dir(path))
        .into_iter()
        .collect();
    roots.extend(
        options
            .include_roots
            .iter()
            .filter_map(|r| std::fs::canonicalize(r).ok()),
    );
    let mut loader = Loader::default();
    loader.add_file(path.to_path_buf(), text, &roots);
    loader.loaded
}

/// Reads a file named on the command line, with the same limits as an
/// include (regular file, [`MAX_FILE_BYTES`], UTF-8).
pub fn read_input(path: &Path) -> Result<String, LoadError> {
    read_source(path).map_err(|e| e.for_input(path))
}

/// Why a file's text could not be had.
#[derive(Debug)]
enum SourceError {
    Io(std::io::Error),
    NotAFile(&'static str),
    TooLarge,
    NotUtf8 { line: usize, column: usize },
}

impl SourceError {
    fn for_input(self, path: &Path) -> LoadError {
        let path = path.to_path_buf();
        match self {
            SourceError::Io(source) => LoadError::Read { path, source },
            SourceError::NotAFile(kind) => LoadError::NotAFile { path, kind },
            SourceError::TooLarge => LoadError::TooLarge { path },
            SourceError::NotUtf8 { line, column } => LoadError::NotUtf8 { path, line, column },
        }
    }

    fn for_reference(self, what: Reference, name: &str, span: Span) -> Diagnostic {
        let limit = match what {
            Reference::Include => "the limit for a .flow file",
            Reference::QueryFile => "the limit for a file a workflow reads",
        };
        match self {
            SourceError::Io(err) => reference_error(
                what,
                Code::Include,
                name,
                &err.to_string(),
                span,
            )
            .help(match what {
                Reference::Include => "include paths are relative to the file that includes them",
                Reference::QueryFile => "a query_file path is relative to the file that names it",
            }),
            SourceError::NotAFile(kind) => reference_error(
                what,
                Code::IncludeNotAFile,
                name,
                &format!("it is {kind}, not a regular file"),
                span,
            )
            .help(match what {
                Reference::Include => "only regular files are included",
                Reference::QueryFile => "a query file is a regular file",
            }),
            SourceError::TooLarge => reference_error(
                what,
                Code::IncludeTooLarge,
                name,
                &format!("it is larger than {MAX_FILE_SIZE_TEXT}, {limit}"),
                span,
            )
            .help(match what {
                Reference::Include => "split the workflow into several files",
                Reference::QueryFile => {
                    "a query is a statement, not data: keep the data in the database"
                }
            }),
            SourceError::NotUtf8 { line, column } => reference_error(
                what,
                Code::Include,
                name,
                &format!("it is not UTF-8 text (invalid byte at {line}:{column})"),
                span,
            )
            .help(match what {
                Reference::Include => "a .flow file is UTF-8 text",
                Reference::QueryFile => "a query file is UTF-8 text",
            }),
        }
    }
}

fn reference_error(what: Reference, code: Code, name: &str, why: &str, span: Span) -> Diagnostic {
    match what {
        Reference::Include => Diagnostic::error(code, format!("cannot include `{name}`: {why}"))
            .label(span, "included here"),
        Reference::QueryFile => {
            Diagnostic::error(code, format!("cannot read query file `{name}`: {why}"))
                .label(span, "named here")
        }
    }
}

/// The text of a regular file of at most [`MAX_FILE_BYTES`].
fn read_source(path: &Path) -> Result<String, SourceError> {
    // Look before opening: opening a FIFO blocks, opening a device may do
    // anything.
    let meta = std::fs::metadata(path).map_err(SourceError::Io)?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile(kind_of(&meta)));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Should the path have become a FIFO since, opening still returns.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path).map_err(SourceError::Io)?;
    let meta = file.metadata().map_err(SourceError::Io)?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile(kind_of(&meta)));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(SourceError::TooLarge);
    }
    // The size a file claims is a hint only: read one byte past the limit.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(SourceError::Io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(SourceError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // The valid prefix is UTF-8 by definition.
        let prefix = std::str::from_utf8(valid).unwrap_or_default();
        let line_start = prefix.rfind('\n').map_or(0, |i| i + 1);
        SourceError::NotUtf8 {
            line: prefix.matches('\n').count() + 1,
            column: prefix[line_start..].chars().count() + 1,
        }
    })
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    "not a file"
}

fn canonical(path: &Path) -> Result<PathBuf, LoadError> {
    std::fs::canonicalize(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn extra_roots(options: &LoadOptions) -> Result<Vec<PathBuf>, LoadError> {
    options
        .include_roots
        .iter()
        .map(|r| {
            let root = std::fs::canonicalize(r).map_err(|source| LoadError::IncludeRoot {
                path: r.clone(),
                source,
            })?;
            if root.is_dir() {
                Ok(root)
            } else {
                Err(LoadError::IncludeRoot {
                    path: r.clone(),
                    source: std::io::Error::other("not a directory"),
                })
            }
        })
        .collect()
}

fn roots(own: PathBuf, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut roots = vec![own];
    roots.extend(extra.iter().cloned());
    roots
}

/// The directory a file named on the command line is in.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn inside(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| path.starts_with(root))
}

/// `base.join(path)` with `.` and `..` resolved by the text alone (no file
/// system access); `base` is absolute.
fn lexical_join(base: &Path, path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in base.join(path).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
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

#[derive(Default)]
struct Loader {
    loaded: Loaded,
    seen: HashSet<PathBuf>,
    /// Query files read so far, by their resolved path: two reports may share one.
    queries: HashMap<PathBuf, FileId>,
}

impl Loader {
    fn add_file(&mut self, path: PathBuf, text: String, roots: &[PathBuf]) {
        let canonical = std::fs::canonicalize(&path).ok();
        let key = canonical.clone().unwrap_or_else(|| path.clone());
        if !self.seen.insert(key) {
            return;
        }
        let name = display_name(&path);
        let id = self
            .loaded
            .sources
            .add(SourceFile::new(path.clone(), name, text));
        let file = self.loaded.sources.get(id);
        let dir = file.dir().to_path_buf();
        // Includes resolve against where the including file really is.
        let real_dir = canonical
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .or_else(|| std::fs::canonicalize(parent_dir(&path)).ok());
        let parsed = parser::parse(id, &file.text);
        self.loaded.diagnostics.extend(parsed.diagnostics);
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
        let queries: Vec<(String, Span)> = parsed
            .file
            .items
            .iter()
            .filter_map(|item| match &item.kind {
                ItemKind::Report(_, block) => Some(block.settings()),
                _ => None,
            })
            .flatten()
            .filter_map(query_file)
            .collect();
        self.loaded.files.push((id, parsed.file));
        for (query, span) in queries {
            let read = read_reference(
                Reference::QueryFile,
                &dir,
                real_dir.as_deref(),
                &query,
                span,
                roots,
            );
            match read {
                Ok((target, resolved, text)) => {
                    let file = match self.queries.get(&resolved) {
                        Some(file) => *file,
                        None => {
                            let name = display_name(&target);
                            let file = self.loaded.sources.add(SourceFile::new(target, name, text));
                            self.queries.insert(resolved, file);
                            file
                        }
                    };
                    self.loaded.query_files.insert(span, file);
                }
                Err(d) => self.loaded.diagnostics.push(d),
            }
        }
        for (include, span) in includes {
            match read_reference(
                Reference::Include,
                &dir,
                real_dir.as_deref(),
                &include,
                span,
                roots,
            ) {
                Ok((target, _, text)) => self.add_file(target, text, roots),
                Err(d) => self.loaded.diagnostics.push(d),
            }
        }
    }
}

/// A report's `query_file` setting: its one string value and that value's span (anything else
/// is the compiler's to report).
fn query_file(setting: &Setting) -> Option<(String, Span)> {
    match setting.values.as_slice() {
        [value] if setting.key.name == "query_file" => {
            value.as_str().map(|s| (s.to_string(), value.span))
        }
        _ => None,
    }
}

/// The path (as shown), the resolved path and the text of a file an include or a
/// `query_file` names, or why it is refused.
fn read_reference(
    what: Reference,
    dir: &Path,
    real_dir: Option<&Path>,
    include: &str,
    span: Span,
    roots: &[PathBuf],
) -> Result<(PathBuf, PathBuf, String), Diagnostic> {
    let outside = || {
        reference_error(
            what,
            Code::IncludeOutsideRoot,
            include,
            "it is outside the workflow's root directory",
            span,
        )
        .help(match what {
            Reference::Include => {
                "includes stay inside the directory of the file or directory given on the \
                 command line; pass `--include-root DIR` to allow another directory"
            }
            Reference::QueryFile => {
                "query files stay inside the directory of the file or directory given on the \
                 command line; pass `--include-root DIR` to allow another directory"
            }
        })
    };
    // Nothing outside the root is even looked at.
    let real_dir = real_dir.ok_or_else(outside)?;
    if !inside(&lexical_join(real_dir, Path::new(include)), roots) {
        return Err(outside());
    }
    // The path that was checked is the path that is opened: relative to the including file's
    // real directory (a symlinked file's own directory could name another file).
    let resolved = std::fs::canonicalize(lexical_join(real_dir, Path::new(include)))
        .map_err(|e| SourceError::Io(e).for_reference(what, include, span))?;
    // A symlink inside the root may point out of it.
    if !inside(&resolved, roots) {
        return Err(outside());
    }
    let text = read_source(&resolved).map_err(|e| e.for_reference(what, include, span))?;
    // Shown as written beside the including file when that names the same file.
    let written = dir.join(include);
    let target = match std::fs::canonicalize(&written) {
        Ok(same) if same == resolved => written,
        _ => resolved.clone(),
    };
    Ok((target, resolved, text))
}

fn display_name(path: &Path) -> String {
    let s = path.to_string_lossy();
    s.strip_prefix("./").unwrap_or(&s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_join_resolves_dots_without_the_file_system() {
        let base = Path::new("/w/flows");
        assert_eq!(
            lexical_join(base, Path::new("a/./b.flow")),
            Path::new("/w/flows/a/b.flow")
        );
        assert_eq!(
            lexical_join(base, Path::new("../../etc/passwd")),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            lexical_join(base, Path::new("/proc/self/environ")),
            Path::new("/proc/self/environ")
        );
        assert_eq!(
            lexical_join(base, Path::new("../../../../x")),
            Path::new("/x")
        );
    }

    #[test]
    fn a_root_is_a_whole_path_component() {
        let roots = [PathBuf::from("/w/flows")];
        assert!(inside(Path::new("/w/flows/a.flow"), &roots));
        assert!(!inside(Path::new("/w/flows-secret/a.flow"), &roots));
        assert!(!inside(Path::new("/w/a.flow"), &roots));
    }

    #[test]
    fn reading_stops_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.flow");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(matches!(read_source(&path), Err(SourceError::TooLarge)));
        file.set_len(MAX_FILE_BYTES).unwrap();
        assert_eq!(read_source(&path).unwrap().len() as u64, MAX_FILE_BYTES);
    }

    #[test]
    fn non_utf8_text_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.flow");
        std::fs::write(&path, b"roles A\nroles \xe9t\xe9\n").unwrap();
        match read_source(&path) {
            Err(SourceError::NotUtf8 { line, column }) => assert_eq!((line, column), (2, 7)),
            other => panic!("{other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_or_device_is_not_read() {
        assert!(matches!(
            read_source(Path::new("/dev/zero")),
            Err(SourceError::NotAFile("a device"))
        ));
        assert!(matches!(
            read_source(Path::new("/")),
            Err(SourceError::NotAFile("a directory"))
        ));
    }
}
