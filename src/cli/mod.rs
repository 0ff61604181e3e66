//! The `flowctl` command line: argv in, exit status out.
//!
//! **Architecture invariant:** only `cli` (and `server`) know about argv,
//! terminals and exit codes. Commands turn raw flags into library calls once,
//! here, and print what the library returns.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use crate::compiler::{self, Compilation};
use crate::diagnostic::{self, RenderOptions, Severity};
use crate::graph::{self, GraphFormat};
use crate::loader;
use crate::store::sled::{SledConfig, SledStore};
use crate::store::{PgConfig, PgStore};
use crate::store::{Store, StoreError};

/// `println!` that ignores a closed stdout (`flowctl jobs list | head -1`)
/// instead of panicking: the reader is gone, there is nobody to tell.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod backfill;
mod jobs;
mod migrate;
mod run;
mod serve;
mod token;
mod worker;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: a workflow, a check or a job failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: usage or internal error.
pub const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "flowctl",
    version,
    about = "Workflow/DAG engine for scheduled and on-demand report jobs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check .flow files and print every diagnostic.
    Check {
        /// .flow files or directories of .flow files composing one workflow.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        includes: IncludeArgs,
    },
    /// Format .flow files in place (or check that they are formatted).
    Fmt {
        /// Do not write: exit 1 and list the files that are not formatted.
        #[arg(long)]
        check: bool,
        /// The .flow files to format (each on its own; includes are not followed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        includes: IncludeArgs,
    },
    /// Draw the dependency graph.
    Graph {
        /// The workflow: .flow files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormatArg::Text)]
        format: GraphFormatArg,
        #[command(flatten)]
        includes: IncludeArgs,
    },
    /// Show the next fire times of every schedule, in its zone and in UTC.
    Schedule {
        /// The workflow: .flow files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// How many fire times per schedule.
        #[arg(long, default_value_t = 5)]
        next: usize,
        /// Start instant (RFC 3339, e.g. 2026-03-08T00:00:00Z); default now.
        #[arg(long)]
        from: Option<String>,
        #[command(flatten)]
        includes: IncludeArgs,
    },
    /// List every fire in a time window and the jobs it would create,
    /// dependents included, without running anything.
    Plan {
        /// The workflow: .flow files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Window start (RFC 3339); default now.
        #[arg(long)]
        from: Option<String>,
        /// Window end (RFC 3339); default 24 hours after the start.
        #[arg(long)]
        to: Option<String>,
        /// At most this many fires.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        includes: IncludeArgs,
    },
    /// Queue reports and run them and their dependents to completion.
    Run(run::RunArgs),
    /// Create the runs of every past fire of a schedule in a range, each with its own window,
    /// skipping fires that exist (running it again creates nothing new, and resumes one cut
    /// short); then run them here unless --queue-only. --dry-run prints the plan.
    Backfill(backfill::BackfillArgs),
    /// List, show, cancel and retry jobs in the store.
    Jobs(jobs::JobsArgs),
    /// Run the scheduler, the dispatcher and the HTTP API until SIGTERM or Ctrl-C.
    Serve(serve::ServeArgs),
    /// Run the dispatcher and its workers only (no HTTP, no scheduler): the extra machines
    /// of a shared PostgreSQL store.
    Worker(worker::WorkerArgs),
    /// Create or upgrade the PostgreSQL store's schema (every other command does it too).
    Migrate(migrate::MigrateArgs),
    /// Print a development JWT signed with FLOWCTL_JWT_SECRET.
    Token(token::TokenArgs),
    /// Repair the embedded store.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Open a store refused as damaged (its log lost changes that were on disk), keeping what
    /// survived: jobs whose last changes were lost are as they were before them (a completed
    /// job may be QUEUED and run again, a new one may be gone).
    Recover {
        /// Required: say that the lost changes are given up.
        #[arg(long)]
        accept_loss: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `--include-root`: where `include`s may read from, for every command that
/// loads a workflow.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IncludeArgs {
    /// Also let `include`s read files under DIR (repeatable). By default an
    /// include must stay inside the directory of the file, or the directory,
    /// given.
    #[arg(long = "include-root", value_name = "DIR")]
    pub include_roots: Vec<PathBuf>,
}

impl IncludeArgs {
    pub(crate) fn options(&self) -> loader::LoadOptions {
        loader::LoadOptions {
            include_roots: self.include_roots.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormatArg {
    /// A tree for the terminal, schedules first.
    Text,
    /// Graphviz DOT (`| dot -Tsvg > graph.svg`), ASCII only.
    Dot,
    /// A Mermaid flowchart, for Markdown pages.
    Mermaid,
    /// Nodes and edges as JSON, as `GET /api/graph` serves them.
    Json,
}

impl From<GraphFormatArg> for GraphFormat {
    fn from(f: GraphFormatArg) -> Self {
        match f {
            GraphFormatArg::Text => GraphFormat::Text,
            GraphFormatArg::Dot => GraphFormat::Dot,
            GraphFormatArg::Mermaid => GraphFormat::Mermaid,
            GraphFormatArg::Json => GraphFormat::Json,
        }
    }
}

/// Entry point of the binary.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                EXIT_ERROR
            } else {
                EXIT_OK
            });
        }
    };
    let code = match cli.command {
        Command::Check { paths, includes } => check(&paths, &includes),
        Command::Fmt {
            check,
            files,
            includes,
        } => fmt(&files, check, &includes),
        Command::Graph {
            paths,
            format,
            includes,
        } => graph_cmd(&paths, &includes, format.into()),
        Command::Schedule {
            paths,
            next,
            from,
            includes,
        } => schedule(&paths, &includes, next, from.as_deref()),
        Command::Plan {
            paths,
            from,
            to,
            limit,
            includes,
        } => plan(&paths, &includes, from.as_deref(), to.as_deref(), limit),
        Command::Run(args) => run::run(args),
        Command::Backfill(args) => backfill::run(args),
        Command::Jobs(args) => jobs::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Token(args) => token::run(args),
        Command::Store(StoreCommand::Recover { accept_loss, store }) => {
            store_recover(&store, accept_loss)
        }
    };
    ExitCode::from(code)
}

fn render_options() -> RenderOptions {
    RenderOptions {
        color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        width: 100,
    }
}

fn error(message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    EXIT_ERROR
}

/// Loads and compiles, printing diagnostics. `None` means the caller should
/// exit with the returned status.
pub fn compile_and_report(
    paths: &[PathBuf],
    includes: &IncludeArgs,
    quiet_warnings: bool,
) -> Result<Compilation, u8> {
    let mut compilation = compile(paths, includes).map_err(error)?;
    print_diagnostics(&compilation, quiet_warnings);
    if compilation.has_errors() {
        return Err(EXIT_FAILURE);
    }
    // The engine settings: config block < FLOWCTL_* variables (< flags,
    // applied by each command).
    if let Some(w) = compilation.workflow.as_mut() {
        crate::env::apply(&mut w.config, |k| std::env::var(k).ok()).map_err(error)?;
    }
    Ok(compilation)
}

/// Loads (includes fenced by `includes`) and compiles.
fn compile(paths: &[PathBuf], includes: &IncludeArgs) -> Result<Compilation, loader::LoadError> {
    Ok(compiler::compile(loader::load_with(
        paths,
        &includes.options(),
    )?))
}

fn print_diagnostics(c: &Compilation, quiet_warnings: bool) {
    let shown = c
        .diagnostics
        .iter()
        .filter(|d| !(quiet_warnings && d.severity == Severity::Warning));
    let _ = diagnostic::render_all(
        &mut std::io::stderr().lock(),
        shown,
        &c.sources,
        render_options(),
    );
}

fn check(paths: &[PathBuf], includes: &IncludeArgs) -> u8 {
    let mut c = match compile(paths, includes) {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    // Depends on today's date, so not the (pure) compiler's business.
    let past = past_schedules(c.workflow.as_ref(), Utc::now());
    c.diagnostics.extend(past);
    // What only the data can prove wrong: each rule's column against its source's header.
    if let Some(w) = &c.workflow {
        let found = crate::source_check::check_sources(w, crate::pipeline::read_columns);
        if found.iter().any(|d| d.is_error()) {
            c.workflow = None;
        }
        c.diagnostics.extend(found);
        c.diagnostics
            .sort_by_key(|d| d.primary_span().map(|s| (s.file, s.start)));
    }
    print_diagnostics(&c, false);
    let errors = c.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = c.diagnostics.len() - errors;
    match &c.workflow {
        Some(w) => {
            outln!(
                "ok: {} reports, {} dependencies, {} schedules{}",
                w.reports.len(),
                w.dependencies.len(),
                w.schedules.len(),
                plural_suffix(warnings, "warning")
            );
            EXIT_OK
        }
        None => {
            eprintln!(
                "failed: {} error{}{}",
                errors,
                if errors == 1 { "" } else { "s" },
                plural_suffix(warnings, "warning")
            );
            EXIT_FAILURE
        }
    }
}

/// W005 for every schedule that has no fire time after `now` (a past year field).
fn past_schedules(
    workflow: Option<&crate::workflow::Workflow>,
    now: DateTime<Utc>,
) -> Vec<diagnostic::Diagnostic> {
    let schedules = workflow.map(|w| w.schedules.as_slice()).unwrap_or_default();
    schedules
        .iter()
        .filter(|s| s.cron.next_after(s.zone, now).is_none())
        .map(|s| {
            diagnostic::Diagnostic::warning(
                diagnostic::Code::NeverFiresAgain,
                format!(
                    "schedule `{}` never fires again: \"{}\" has no fire time after {}",
                    s.name,
                    s.cron.source(),
                    now.format("%Y-%m-%d")
                ),
            )
            .help("its year field is in the past; widen it or remove the schedule")
        })
        .collect()
}

fn plural_suffix(n: usize, word: &str) -> String {
    match n {
        0 => String::new(),
        1 => format!(", 1 {word}"),
        n => format!(", {n} {word}s"),
    }
}

fn fmt(files: &[PathBuf], check_only: bool, includes: &IncludeArgs) -> u8 {
    let mut status = EXIT_OK;
    for path in files {
        let text = match loader::read_input(path) {
            Ok(t) => t,
            Err(e) => return error(e),
        };
        let loaded = loader::load_text_with(path, text.clone(), &includes.options());
        if loaded.diagnostics.iter().any(|d| d.is_error()) {
            // Never rewrite a file we could not fully parse: we would drop
            // the declarations that failed.
            let _ = diagnostic::render_all(
                &mut std::io::stderr().lock(),
                &loaded.diagnostics,
                &loaded.sources,
                render_options(),
            );
            status = EXIT_FAILURE;
            continue;
        }
        let Some((_, file)) = loaded.files.first() else {
            continue;
        };
        let formatted = crate::formatter::format(&text, file);
        if formatted == text {
            continue;
        }
        if check_only {
            outln!("{} is not formatted", path.display());
            status = EXIT_FAILURE;
        } else if let Err(e) = write_atomically(path, &formatted) {
            return error(format!("cannot write {}: {e}", path.display()));
        } else {
            outln!("formatted {}", path.display());
        }
    }
    status
}

/// Write to a sibling temporary file and rename over the original, so an
/// interrupted `fmt` never leaves a half-written workflow.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.fmt-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn graph_cmd(paths: &[PathBuf], includes: &IncludeArgs, format: GraphFormat) -> u8 {
    let w = &match compiled_workflow(paths, includes, true) {
        Ok(w) => w,
        Err(code) => return code,
    };
    out!("{}", graph::render(w, format));
    EXIT_OK
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time such as 2026-03-08T00:00:00Z: {e}"))
}

fn schedule(paths: &[PathBuf], includes: &IncludeArgs, next: usize, from: Option<&str>) -> u8 {
    let from = match from.map(parse_instant).transpose() {
        Ok(t) => t.unwrap_or_else(Utc::now),
        Err(e) => return error(e),
    };
    let w = &match compiled_workflow(paths, includes, true) {
        Ok(w) => w,
        Err(code) => return code,
    };
    // Each fire is written as it is computed: `--next 31536000` (a year of seconds) runs in
    // flat memory, and `| head` ends it at once.
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    match write_schedule(&mut out, w, next, from).and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        // The reader is gone (`| head`): a normal end.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => error(format!("cannot write to stdout: {e}")),
    }
}

fn write_schedule(
    out: &mut impl Write,
    w: &crate::workflow::Workflow,
    next: usize,
    from: DateTime<Utc>,
) -> std::io::Result<()> {
    let local_format: Vec<_> = chrono::format::StrftimeItems::new("%Y-%m-%d %H:%M:%S %Z (%:z)")
        .parse_to_owned()
        .map_err(std::io::Error::other)?;
    let utc_format: Vec<_> = chrono::format::StrftimeItems::new("%Y-%m-%dT%H:%M:%SZ")
        .parse_to_owned()
        .map_err(std::io::Error::other)?;
    for s in &w.schedules {
        writeln!(
            out,
            "{}  \"{}\"  {}  runs {}",
            s.name,
            s.cron.source(),
            s.zone.name(),
            s.reports.join(", ")
        )?;
        let mut fires = s.cron.fires_after(s.zone, from);
        for _ in 0..next {
            let Some(fire) = fires.next() else {
                writeln!(out, "  (no more fire times)")?;
                break;
            };
            let local = fire.with_timezone(&s.zone);
            writeln!(
                out,
                "  {}  {}",
                local.format_with_items(local_format.iter()),
                fire.format_with_items(utc_format.iter())
            )?;
        }
    }
    Ok(())
}

/// `--store` / `--db`: where the jobs are, for every command that reads or runs them.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The embedded store's directory.
    #[arg(long, global = true, default_value = ".flowctl/db", env = "FLOWCTL_DB")]
    pub db: PathBuf,
    /// The store: `postgres://…` to share one queue between processes and machines (then
    /// FLOWCTL_MASK_KEY is required), or the embedded store's directory (default: --db).
    #[arg(long, global = true, env = "FLOWCTL_STORE")]
    pub store: Option<String>,
}

impl StoreArgs {
    pub(crate) fn selection(&self) -> StoreSelection {
        StoreSelection::new(self.store.as_deref(), &self.db)
    }
}

/// Which store a command uses: `--store` (or `FLOWCTL_STORE`) when given, else the embedded
/// store at `--db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreSelection {
    /// The embedded store's directory.
    Sled(PathBuf),
    /// A PostgreSQL URL, shared by every process that names it.
    Postgres(String),
}

impl StoreSelection {
    /// `--store postgres://…` or `postgresql://…` selects PostgreSQL; `--store sled:PATH` or
    /// `--store PATH` the embedded store at PATH; no `--store`, the embedded store at `db`.
    pub(crate) fn new(store: Option<&str>, db: &std::path::Path) -> StoreSelection {
        match store.map(str::trim).filter(|s| !s.is_empty()) {
            Some(url) if crate::store::postgres::is_postgres_url(url) => {
                StoreSelection::Postgres(url.to_owned())
            }
            Some(path) => {
                StoreSelection::Sled(PathBuf::from(path.strip_prefix("sled:").unwrap_or(path)))
            }
            None => StoreSelection::Sled(db.to_path_buf()),
        }
    }
}

fn store_recover(args: &StoreArgs, accept_loss: bool) -> u8 {
    let StoreSelection::Sled(db) = args.selection() else {
        return error("`store recover` repairs the embedded store (--db PATH), not PostgreSQL");
    };
    if !accept_loss {
        return error(format!(
            "recovering {} gives up the changes its log lost; pass --accept-loss to do so",
            db.display()
        ));
    }
    match SledStore::recover(&db) {
        Ok(found) => {
            let lost = match found.durable {
                Some(durable) if durable > found.survived => {
                    format!("{} commit round(s) lost", durable - found.survived)
                }
                Some(_) => "nothing was lost".to_string(),
                None => "its commit watermark was unreadable or missing".to_string(),
            };
            outln!(
                "recovered the store at {}: {} job(s), up to commit round {} ({lost})",
                db.display(),
                found.jobs,
                found.survived
            );
            EXIT_OK
        }
        Err(e) => error(format!("cannot recover the store at {}: {e}", db.display())),
    }
}

/// What a refused store's error says to do.
fn store_error(db: &std::path::Path, e: StoreError) -> u8 {
    match e {
        StoreError::Locked { .. } => error(format!(
            "the store at {} is in use by another flowctl process (the embedded store is single-process; use --store postgres://... to share a queue)",
            db.display()
        )),
        e @ StoreError::Damaged { .. } => error(format!(
            "{e}\nit was not opened; `flowctl store recover --db {} --accept-loss` opens it \
             with what survived (the lost changes are gone: jobs may run again)",
            db.display()
        )),
        e => error(format!("cannot open the store at {}: {e}", db.display())),
    }
}

/// Opens the selected store for reading only (`jobs list`, `jobs show`): the embedded store is
/// read from a copy ([`SledStore::open_read_only`]), so that not a byte of it changes, and no
/// masking key is created.
pub(crate) async fn open_store_read_only(
    selection: &StoreSelection,
) -> Result<std::sync::Arc<dyn Store>, u8> {
    match selection {
        StoreSelection::Sled(db) => match SledStore::open_read_only(db) {
            Ok(store) => Ok(std::sync::Arc::new(store)),
            Err(e) => Err(store_error(db, e)),
        },
        StoreSelection::Postgres(_) => open_store(selection).await.map(|(store, _)| store),
    }
}

/// Opens the selected store and the masking key: for the embedded store, the key kept beside it
/// (or `FLOWCTL_MASK_KEY`); for PostgreSQL, `FLOWCTL_MASK_KEY`, which is then required (every
/// machine must hash alike).
pub(crate) async fn open_store(
    selection: &StoreSelection,
) -> Result<(std::sync::Arc<dyn Store>, [u8; 32]), u8> {
    let db = match selection {
        StoreSelection::Sled(db) => db,
        StoreSelection::Postgres(url) => {
            let set =
                std::env::var_os(crate::masking_key::ENV_MASK_KEY).is_some_and(|k| !k.is_empty());
            let Some(key) = crate::masking_key::from_env().filter(|_| set) else {
                return Err(error(format!(
                    "{} must be set with a shared store: every machine must mask with the same \
                     key (any secret string, the same everywhere)",
                    crate::masking_key::ENV_MASK_KEY
                )));
            };
            let shown = crate::store::postgres::redact_url(url);
            let store = match PgStore::open(PgConfig::new(url.as_str())).await {
                Ok(s) => s,
                Err(e) => return Err(error(format!("cannot open the store at {shown}: {e}"))),
            };
            return Ok((std::sync::Arc::new(store), key));
        }
    };
    let store = match SledStore::open(SledConfig::new(db)) {
        Ok(s) => s,
        Err(e) => return Err(store_error(db, e)),
    };
    let key = match crate::masking_key::load_or_create(db) {
        Ok(k) => k,
        Err(e) => return Err(error(e)),
    };
    Ok((std::sync::Arc::new(store), key))
}

fn plan(
    paths: &[PathBuf],
    includes: &IncludeArgs,
    from: Option<&str>,
    to: Option<&str>,
    limit: usize,
) -> u8 {
    let from = match from.map(parse_instant).transpose() {
        Ok(t) => t.unwrap_or_else(Utc::now),
        Err(e) => return error(e),
    };
    let to = match to.map(parse_instant).transpose() {
        Ok(t) => t.unwrap_or(from + chrono::Duration::days(1)),
        Err(e) => return error(e),
    };
    if to <= from {
        return error("--to must be after --from");
    }
    let w = &match compiled_workflow(paths, includes, true) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let plan = crate::scheduler::plan(w, from, to, limit);
    let fires = &plan.fires;
    let mut out = String::new();
    let mut total = 0;
    for f in fires {
        let zone = w
            .schedules
            .iter()
            .find(|s| s.name == f.schedule)
            .map(|s| s.zone)
            .unwrap_or(chrono_tz::UTC);
        out.push_str(&format!(
            "{}  {}  ({})\n",
            f.at.format("%Y-%m-%dT%H:%M:%SZ"),
            f.schedule,
            f.at.with_timezone(&zone).format("%a %Y-%m-%d %H:%M %Z")
        ));
        for j in &f.jobs {
            total += 1;
            let indent = "  ".repeat(j.depth + 1);
            let who = match &j.county {
                Some(c) => format!("{} {c}", j.role),
                None => j.role.clone(),
            };
            let after = if j.after.is_empty() {
                String::new()
            } else {
                format!("  after {}", j.after.join(" + "))
            };
            let window = j
                .window
                .as_ref()
                .map(|w| format!("  window {}", w.label()))
                .unwrap_or_default();
            out.push_str(&format!("{indent}{} as {who}{after}{window}\n", j.report));
        }
    }
    out.push_str(&format!(
        "{} fire(s), {total} job(s) between {} and {}\n",
        fires.len(),
        from.format("%Y-%m-%dT%H:%M:%SZ"),
        to.format("%Y-%m-%dT%H:%M:%SZ")
    ));
    out!("{out}");
    if plan.truncated {
        eprintln!("… plan cut at {limit} fires; use --limit to see more");
    }
    EXIT_OK
}

/// Compiles the workflow a long-running command runs; diagnostics printed.
pub(crate) fn compiled_workflow(
    paths: &[PathBuf],
    includes: &IncludeArgs,
    quiet_warnings: bool,
) -> Result<crate::workflow::Workflow, u8> {
    compile_and_report(paths, includes, quiet_warnings)?
        .workflow
        .ok_or(EXIT_FAILURE)
}

/// Runs `fut` on a multi-threaded runtime and returns its exit status.
pub(crate) fn block_on(fut: impl std::future::Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(fut),
        Err(e) => error(format!("cannot start the runtime: {e}")),
    }
}

/// Log format on stderr for the long-running commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour only on a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

/// Structured logs on stderr; the filter comes from FLOWCTL_LOG, then
/// RUST_LOG, then `info`.
pub(crate) fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var(crate::env::LOG)
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A subscriber may already be set (tests calling `run` twice): keep it.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// An engine ready to dispatch: store opened, config layered (`workers`
/// is the command-line flag), stale temporary results swept, and jobs whose
/// process died taken back (all PROCESSING jobs for the single-process store,
/// expired leases only for a shared one).
pub(crate) struct Started {
    pub engine: std::sync::Arc<crate::executor::Engine>,
    pub store: std::sync::Arc<dyn Store>,
    pub recovered: crate::store::Expired,
}

/// Without `FLOWCTL_MASK_KEY` the `hash` mask uses the key generated beside the embedded store:
/// hashed values then differ from every other store's and change when the store is recreated.
/// Said once, at the start of `run`, `serve` and `worker` when a report masks with `hash`: in the
/// log when there is one, else on stderr.
fn warn_if_mask_key_generated(workflow: &crate::workflow::Workflow, db: &std::path::Path) {
    let hashes = workflow.reports.iter().any(|r| {
        r.masks
            .iter()
            .any(|m| m.method == crate::masking::MaskMethod::Hash)
    });
    if !hashes || crate::masking_key::from_env().is_some() {
        return;
    }
    let message = format!(
        "{} is not set: `hash` masks use the key generated for this store ({}), so hashed \
         values change with every new store and match no other store's; set {} to the same \
         secret everywhere to keep them stable",
        crate::masking_key::ENV_MASK_KEY,
        db.join("mask.key").display(),
        crate::masking_key::ENV_MASK_KEY,
    );
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{message}");
    } else {
        eprintln!("warning: {message}");
    }
}

pub(crate) async fn start_engine(
    workflow: std::sync::Arc<crate::workflow::Workflow>,
    selection: &StoreSelection,
    workers: Option<u32>,
    events: Option<tokio::sync::mpsc::UnboundedSender<crate::executor::ExecEvent>>,
) -> Result<Started, u8> {
    use crate::executor::{Engine, ExecutorConfig};
    let (store, hash_key) = open_store(selection).await?;
    if let StoreSelection::Sled(db) = selection {
        warn_if_mask_key_generated(&workflow, db);
    }
    let mut config = ExecutorConfig::from_workflow(&workflow, hash_key);
    if let Some(w) = workers {
        config.pool_size = w.max(1) as usize;
    }
    if let Some(name) = std::env::var(crate::env::RESULT_SYNC)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        config.result_sync =
            crate::pipeline::SyncMethod::from_name(name.trim()).ok_or_else(|| {
                error(format!(
                    "{}={name}: expected auto, syncfs, fdatasync or serial",
                    crate::env::RESULT_SYNC
                ))
            })?;
    }
    run::sweep_temp_files(&config.results_dir);
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let mut engine = Engine::new(workflow, store.clone(), config, metrics);
    if let Some(tx) = events {
        engine = engine.with_events(tx);
    }
    let engine = std::sync::Arc::new(engine);
    let recovered = store
        .requeue_all_processing(Utc::now(), &engine.joins)
        .await
        .map_err(|e| error(format!("cannot recover jobs: {e}")))?;
    engine.discard_unrecorded_results(&recovered.finished);
    Ok(Started {
        engine,
        store,
        recovered,
    })
}
