//! The shared harness of the behaviour tests in `tests/`: the real `flowctl` binary run or
//! watched, a temporary workflow directory, the API served in process or by `flowctl serve`,
//! tokens, waiting with a deadline, golden files. A test file takes it with `mod common;`.
//!
//! A new test is a few lines. Against the binary, in a temporary directory of its own:
//!
//! ```ignore
//! mod common;
//! use common::{data, token, Project, TestServer};
//!
//! const FLOW: &str = "config {\n  all_counties ADMIN\n}\nroles ADMIN\n\
//!     source cases {\n  path          \"cases.csv\"\n  county_column county_id\n}\n\
//!     report DAILY {\n  source cases\n}\n";
//!
//! #[test]
//! fn a_report_runs() {
//!     let project = Project::new()
//!         .flow("w.flow", FLOW)
//!         .csv("cases.csv", data::cases(1_000));
//!     project.flowctl().args(["check", "w.flow"]).output().success();
//!     project.run(["w.flow", "--report", "DAILY"]).success(); // run … --db <tmp>/db
//!     let jobs = project.jobs_json();
//!     assert_eq!(jobs[0]["rowsWritten"], 1_000);
//! }
//! ```
//!
//! Against the API served in this process (the bundled workflow; [`Options`] for another
//! key, no dispatcher, a store with faults, timeouts; [`TestServer::serve`] for an engine of
//! the test's own):
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn a_report_completes() {
//!     let server = TestServer::start().await;
//!     let alice = token::token("alice", "CASE_WORKER", Some("C03"));
//!     let id = server.generate(&alice, json!({ "reportType": "DAILY_REPORT" })).await;
//!     let job = server.wait_for(&id, &alice, "COMPLETED").await;
//!     assert_eq!(job["countyId"], "C03");
//!     server.shutdown().await;
//! }
//! ```
//!
//! Or through `flowctl serve` (`Serve::start`, sync requests, `token::minted` tokens).
//!
//! The parts, one file each:
//!
//! * `bin.rs`: [`Flowctl`], a command built step by step; [`Run`], its output with
//!   assertions on the exit status; `jobs_json`.
//! * `running.rs`: [`Running`], a `flowctl` watched while it runs (stderr lines, signals,
//!   exit with a deadline).
//! * `project.rs`: [`Project`], a temporary workflow directory with its store.
//! * `data.rs`: generated CSV sources.
//! * `files.rs`: the repository, file trees, SHA-256.
//! * `api.rs`: [`Api`], a client of the HTTP API, and its [`Reply`].
//! * `server.rs`: [`TestServer`], the API served in this process.
//! * `serve.rs`: [`Serve`], the real `flowctl serve`.
//! * `engine.rs`: an engine in this process.
//! * `store.rs`: [`FaultyStore`], a store that fails when the test says so.
//! * `token.rs`: tokens signed here or minted by `flowctl token`.
//! * `wait.rs`: polling with a deadline.
//! * `golden.rs`: golden files.
//! * `pg.rs`: PostgreSQL tests (`FLOWCTL_TEST_PG`).
// Each test binary compiles the whole harness and uses a part of it.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod api;
pub mod bin;
pub mod data;
pub mod engine;
pub mod files;
pub mod golden;
pub mod pg;
pub mod project;
pub mod running;
pub mod serve;
pub mod server;
pub mod store;
pub mod token;
pub mod wait;

pub use api::{Api, Reply};
pub use bin::{jobs_json, Flowctl, Run};
pub use files::{files_under, repo, sha256_file, sha256_hex};
pub use golden::{flow_files, golden};
pub use project::Project;
pub use running::Running;
pub use serve::Serve;
pub use server::{Options, TestServer};
pub use store::{Call, Faults, FaultyStore};
