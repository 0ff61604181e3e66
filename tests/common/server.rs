//! The API served in this process: `flowctl::server::serve_with` on 127.0.0.1:0 and, where
//! jobs must run, the engine's dispatcher, both stopped by [`TestServer::shutdown`]. By
//! default the bundled workflow (a copy in a temporary directory) on a sled store there,
//! tokens verified with [`token::SECRET`](super::token::SECRET).
//!
//! ```ignore
//! let server = TestServer::start().await;
//! let alice = token::token("alice", "CASE_WORKER", Some("C01"));
//! let id = server.generate(&alice, json!({ "reportType": "DAILY_REPORT" })).await;
//! server.wait_for(&id, &alice, "COMPLETED").await;
//! server.shutdown().await;
//! ```

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use flowctl::auth::AuthConfig;
use flowctl::executor::Engine;
use flowctl::server::{self, AppState, ServeConfig};
use flowctl::store::{SledConfig, SledStore, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::api::Api;
use super::engine;
use super::project::Project;
use super::store::{Faults, FaultyStore};
use super::token;

/// How a [`TestServer`] serves.
pub struct Options {
    /// How tokens are verified: HS256 with [`token::SECRET`] by default.
    pub auth: AuthConfig,
    /// Whether the engine's dispatcher runs (jobs run); without it jobs stay QUEUED.
    pub dispatcher: bool,
    /// For [`TestServer::start_with`]: serve through a [`FaultyStore`] with these faults.
    pub faults: Option<Arc<dyn Faults>>,
    pub serve: ServeConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auth: AuthConfig::hs256(token::SECRET.as_bytes()).unwrap(),
            dispatcher: true,
            faults: None,
            serve: ServeConfig::default(),
        }
    }
}

/// A server (and maybe a dispatcher) on tasks of the test's runtime; a client of it by
/// [`Deref`] to its [`Api`]. Call [`TestServer::shutdown`] at the end of the test.
pub struct TestServer {
    pub api: Api,
    pub engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _project: Option<Project>,
}

impl Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestServer {
    /// The bundled workflow, its jobs run.
    pub async fn start() -> TestServer {
        TestServer::start_with(Options::default()).await
    }

    /// The bundled workflow, no dispatcher: jobs stay QUEUED.
    pub async fn start_idle() -> TestServer {
        TestServer::start_with(Options {
            dispatcher: false,
            ..Options::default()
        })
        .await
    }

    /// The bundled workflow (copied to `wf/` of a temporary directory; results in `results/`),
    /// a sled store at `db` there, served as `options` say.
    pub async fn start_with(options: Options) -> TestServer {
        TestServer::start_edited(options, |_| {}).await
    }

    /// As [`TestServer::start_with`], the compiled workflow changed by `edit` first (what the
    /// language cannot say yet, or a case no `.flow` file should hold).
    pub async fn start_edited(
        mut options: Options,
        edit: impl FnOnce(&mut flowctl::workflow::Workflow),
    ) -> TestServer {
        let project = Project::new().csv_workflow("wf");
        let mut workflow = project.workflow("wf/reports.flow");
        edit(&mut workflow);
        let sled = SledStore::open(SledConfig {
            flush: false,
            ..SledConfig::new(project.db())
        })
        .unwrap();
        let store: Arc<dyn Store> = match options.faults.take() {
            Some(faults) => Arc::new(FaultyStore::new(sled, faults)),
            None => Arc::new(sled),
        };
        let engine = engine::engine(Arc::new(workflow), store);
        let mut server = TestServer::serve(Arc::new(engine), options).await;
        server._project = Some(project);
        server
    }

    /// Serves `engine` (the test's own workflow and store) as `options` say.
    pub async fn serve(engine: Arc<Engine>, options: Options) -> TestServer {
        assert!(
            options.faults.is_none(),
            "faults wrap start_with's store; give `serve` a FaultyStore's engine instead"
        );
        let (stop, stopped) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = Vec::new();
        if options.dispatcher {
            let run = engine.clone().run(until(stopped.clone()), false);
            tasks.push(tokio::spawn(async move {
                run.await.expect("dispatcher");
            }));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Api::new(listener.local_addr().unwrap());
        let state = AppState::new(engine.clone(), Arc::new(options.auth));
        let serve = server::serve_with(listener, state, options.serve, until(stopped));
        tasks.push(tokio::spawn(async move {
            serve.await.expect("server");
        }));
        TestServer {
            api,
            engine,
            stop,
            tasks,
            _project: None,
        }
    }

    /// Stops the server and the dispatcher; both must end by themselves.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("graceful shutdown in time")
                .expect("task ran to its end");
        }
    }
}
