//! The served OpenAPI document against the real server (the harness's, `common::TestServer`:
//! bound on 127.0.0.1:0 in this process, the bundled workflow, its store behind a switch that
//! can make the API's store calls fail): the operations it names are exactly the routes
//! served, and every status code it documents for an operation is provoked and answered with
//! the documented body.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Request};
use flowctl::server;
use flowctl::store::{StoreError, StoreResult};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use common::store::{Call, Faults};
use common::Options;

// ---------------------------------------------------------------------------------------------
// A store that fails on demand
// ---------------------------------------------------------------------------------------------

/// How the API's store calls (enqueue, get, children, list, cancel, counts) answer; the
/// dispatcher's own calls always reach the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Normal,
    /// A transient failure, as a PostgreSQL store whose database is down.
    Unavailable,
    /// A failure that is not transient: the API answers 500.
    Broken,
    /// A store that stopped accepting changes (a full disk): [`Store::stopped`] says so.
    Stopped,
}

struct Switch {
    mode: AtomicU8,
}

impl Switch {
    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        [Mode::Normal, Mode::Unavailable, Mode::Broken, Mode::Stopped]
            [self.mode.load(Ordering::SeqCst) as usize]
    }
}

impl Faults for Switch {
    fn before(&self, call: Call) -> StoreResult<()> {
        // The API's calls; the dispatcher's own (claim, renew, complete, the sweeps, fire
        // times) always reach the store.
        let api = matches!(
            call,
            Call::Enqueue | Call::Cancel | Call::Get | Call::Children | Call::List | Call::Counts
        );
        let failure = match self.mode() {
            _ if !api => None,
            Mode::Normal => None,
            Mode::Unavailable => Some(StoreError::Unavailable("connection refused (test)".into())),
            Mode::Broken => Some(StoreError::Postgres("refused by the test".into())),
            Mode::Stopped => Some(StoreError::Stopped {
                reason: "No space left on device (test)".into(),
            }),
        };
        failure.map_or(Ok(()), Err)
    }

    fn stopped(&self) -> Option<String> {
        (self.mode() == Mode::Stopped).then(|| "No space left on device (test)".to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// The harness's in-process server on the bundled workflow, its store behind a [`Switch`]; no
/// dispatcher: jobs stay QUEUED until a test runs one.
struct TestServer {
    harness: common::TestServer,
    store: Arc<Switch>,
}

async fn start() -> TestServer {
    let store = Arc::new(Switch {
        mode: AtomicU8::new(Mode::Normal as u8),
    });
    let options = Options {
        dispatcher: false,
        faults: Some(store.clone()),
        ..Options::default()
    };
    let harness = common::TestServer::start_with(options).await;
    TestServer { harness, store }
}

/// One request to send.
#[derive(Clone, Debug)]
struct Probe {
    method: &'static str,
    path: String,
    token: Option<String>,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    mode: Mode,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn media_type(&self) -> String {
        let value = self
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap());
        value
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A JSON 404 or 405 of the router's fallbacks, not of a handler.
    fn is_fallback(&self) -> bool {
        let message = || self.json()["message"].as_str().unwrap_or("").to_string();
        self.status == 405 || (self.status == 404 && message().starts_with("no route for"))
    }
}

impl TestServer {
    async fn send(&self, probe: &Probe) -> Reply {
        self.store.set(probe.mode);
        let mut request = Request::builder()
            .method(probe.method)
            .uri(format!("{}{}", self.harness.base, probe.path));
        if let Some(token) = &probe.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(content_type) = probe.content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in &probe.headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(probe.body.clone())))
            .unwrap();
        let response = self
            .harness
            .client
            .request(request)
            .await
            .expect("the server answers");
        self.store.set(Mode::Normal);
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn document(&self) -> Value {
        let reply = self.send(&get("/api/openapi.json", None)).await;
        assert_eq!(reply.status, 200);
        reply.json()
    }

    /// Queues a DAILY_REPORT for `token`; returns the job id.
    async fn generate(&self, token: &str) -> String {
        let reply = self.send(&generate(token)).await;
        assert_eq!(
            reply.status,
            202,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()["jobId"].as_str().unwrap().to_string()
    }

    async fn shutdown(self) {
        self.harness.shutdown().await;
    }
}

fn get(path: &str, token: Option<&str>) -> Probe {
    Probe {
        method: "GET",
        path: path.to_string(),
        token: token.map(str::to_string),
        content_type: None,
        headers: Vec::new(),
        body: Vec::new(),
        mode: Mode::Normal,
    }
}

fn generate(token: &str) -> Probe {
    Probe {
        method: "POST",
        content_type: Some("application/json"),
        body: json!({ "reportType": "DAILY_REPORT" })
            .to_string()
            .into_bytes(),
        ..get("/api/reports/generate", Some(token))
    }
}

/// A backfill of January 2025's daily fires, as ADMIN; a dry run if `dry`.
fn backfill(dry: bool) -> Probe {
    Probe {
        method: "POST",
        content_type: Some("application/json"),
        body: json!({
            "schedule": "daily",
            "from": "2025-01-01T00:00:00Z",
            "to": "2025-02-01T00:00:00Z",
            "dryRun": dry,
        })
        .to_string()
        .into_bytes(),
        ..get("/api/backfills", Some(&token("ADMIN", None)))
    }
}

/// A valid token for `role` in `county`.
fn token(role: &str, county: Option<&str>) -> String {
    common::token::token("tester", role, county)
}

/// Every `(METHOD, path)` the document names.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().unwrap().keys();
            methods.map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The routes
// ---------------------------------------------------------------------------------------------

/// The document's operations are the routes axum serves: each reaches its handler (not the
/// JSON 404/405 of the fallbacks), every other method on a documented path is a JSON 405, and
/// paths the document does not name are a JSON 404. `HEAD` is left out of the 405 check: axum
/// answers it on every `GET` route with the `GET` handler (HTTP requires it), and OpenAPI
/// leaves it implicit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_operations_are_exactly_the_served_routes() {
    let server = start().await;
    let doc = server.document().await;
    let documented = operations(&doc);
    let listed: BTreeSet<(String, String)> = server::route_list()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, listed,
        "route_list() and the served document differ"
    );
    assert!(documented.len() >= 10, "{documented:?}");

    let admin = token("ADMIN", None);
    for (method, path) in &documented {
        let method: &'static str = ["GET", "POST"]
            .into_iter()
            .find(|m| *m == method.as_str())
            .expect("only GET and POST are documented");
        let probe = Probe {
            method,
            content_type: Some("application/json"),
            body: b"{}".to_vec(),
            ..get(&path.replace("{id}", "JOB_AAAAAAAA"), Some(&admin))
        };
        let reply = server.send(&probe).await;
        assert!(
            !reply.is_fallback(),
            "{method} {path} is not routed: {reply:?}"
        );
    }

    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path.replace("{id}", "JOB_AAAAAAAA");
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            if documented.contains(&(method.to_string(), path.clone())) {
                continue;
            }
            let reply = server
                .send(&Probe {
                    method,
                    ..get(&concrete, Some(&admin))
                })
                .await;
            assert_eq!(reply.status, 405, "{method} {path}: {reply:?}");
            assert_eq!(
                reply.json()["code"],
                "method_not_allowed",
                "{method} {path}"
            );
        }
    }

    for path in [
        "/",
        "/api",
        "/api/",
        "/api/jobs/",
        "/api/jobs/JOB_AAAAAAAA/children",
        "/api/reports",
        "/api/reports/generate/now",
        "/api/openapi.yaml",
        "/health",
        "/metrics/jobs",
    ] {
        for method in ["GET", "POST", "DELETE"] {
            let reply = server
                .send(&Probe {
                    method,
                    ..get(path, Some(&admin))
                })
                .await;
            assert_eq!(reply.status, 404, "{method} {path}: {reply:?}");
            assert_eq!(reply.json()["code"], "not_found", "{method} {path}");
            assert!(reply.is_fallback(), "{method} {path}: {reply:?}");
        }
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Every documented status
// ---------------------------------------------------------------------------------------------

/// The jobs the probes name.
struct Jobs {
    /// QUEUED (no dispatcher runs after it was made).
    queued: String,
    /// COMPLETED, with its result file.
    completed: String,
    worker: String,
}

/// The request that makes `method path` answer `status`, and the error code the answer must
/// carry (`None` for a success). `None` if this test knows no way to: the test fails then, so
/// that a documented status always comes with the request that provokes it.
async fn provoke(
    server: &TestServer,
    jobs: &Jobs,
    method: &str,
    path: &str,
    status: u16,
) -> Option<(Probe, Option<&'static str>)> {
    let job_route = path.contains("{id}");
    let id = match (path, status) {
        ("/api/jobs/{id}/cancel", 200) => server.generate(&jobs.worker).await,
        ("/api/jobs/{id}/result", 200) | ("/api/jobs/{id}/cancel", 409) => jobs.completed.clone(),
        (_, 404) => "JOB_ZZZZ0000".to_string(),
        (_, 400) if job_route => "%ff".to_string(),
        _ => jobs.queued.clone(),
    };
    let is_backfill = path == "/api/backfills";
    let base = match method {
        "POST" if path == "/api/reports/generate" => generate(&jobs.worker),
        "POST" if is_backfill => backfill(status == 200),
        "POST" => Probe {
            method: "POST",
            ..get(&path.replace("{id}", &id), Some(&jobs.worker))
        },
        _ => get(&path.replace("{id}", &id), Some(&jobs.worker)),
    };
    let is_generate = path == "/api/reports/generate";
    let code = |code| Some(Some(code));
    let (probe, code) = match status {
        200 | 202 => (base, Some(None)),
        400 if is_generate => (
            Probe {
                body: b"{\"reportType\": ".to_vec(),
                ..base
            },
            code("invalid_request"),
        ),
        400 if job_route => (base, code("invalid_request")),
        400 if is_backfill => (
            Probe {
                body: json!({ "schedule": "daily", "from": "2025-02-01T00:00:00Z", "to": "2025-01-01T00:00:00Z" })
                    .to_string()
                    .into_bytes(),
                ..base
            },
            code("invalid_request"),
        ),
        // Backfills are for ADMIN: a declared role that is not is refused too.
        403 if is_backfill => (
            Probe {
                token: Some(jobs.worker.clone()),
                ..base
            },
            code("forbidden"),
        ),
        400 if path == "/api/jobs" => (
            Probe {
                path: "/api/jobs?limit=0".into(),
                ..base
            },
            code("invalid_request"),
        ),
        400 if path == "/api/graph" => (
            Probe {
                path: "/api/graph?format=png".into(),
                ..base
            },
            code("invalid_request"),
        ),
        401 => (
            Probe {
                token: None,
                ..base
            },
            code("unauthorized"),
        ),
        403 => (
            Probe {
                token: Some(token("NOBODY", Some("C01"))),
                ..base
            },
            code("forbidden"),
        ),
        404 if job_route => (base, code("not_found")),
        409 if job_route => (base, code("conflict")),
        413 if is_generate => {
            let big =
                json!({ "reportType": "DAILY_REPORT", "targetSystem": "x".repeat(70 * 1024) });
            (
                Probe {
                    body: big.to_string().into_bytes(),
                    ..base
                },
                code("payload_too_large"),
            )
        }
        415 if is_generate => (
            Probe {
                content_type: Some("text/plain"),
                ..base
            },
            code("unsupported_media_type"),
        ),
        422 if is_generate => {
            let body = json!({ "reportType": "DAILY_REPORT", "idempotencyKey": "body-key" });
            let headers = vec![("idempotency-key", "header-key".to_string())];
            (
                Probe {
                    headers,
                    body: body.to_string().into_bytes(),
                    ..base
                },
                code("idempotency_key_mismatch"),
            )
        }
        431 => {
            let headers = vec![("x-padding", "p".repeat(20 * 1024))];
            (Probe { headers, ..base }, code("headers_too_large"))
        }
        500 => (
            Probe {
                mode: Mode::Broken,
                ..base
            },
            code("internal"),
        ),
        503 if path == "/readyz" => (
            Probe {
                mode: Mode::Stopped,
                ..base
            },
            code("store_stopped"),
        ),
        503 => (
            Probe {
                mode: Mode::Stopped,
                ..base
            },
            code("store_unavailable"),
        ),
        _ => (base, None),
    };
    code.map(|code| (probe, code))
}

/// Every status code the document gives an operation is provoked against the real server:
/// the answer has that status, a documented content type, the documented headers, and a body
/// that the documented schema accepts (required fields, types, enums, bounds); an error
/// answer carries the code that status stands for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_status_is_answered_as_documented() {
    let server = start().await;
    let doc = server.document().await;
    let worker = token("CASE_WORKER", Some("C01"));
    // A completed job: a dispatcher runs until nothing is left to do, then no more.
    let completed = server.generate(&worker).await;
    let run = server
        .harness
        .engine
        .clone()
        .run(std::future::pending(), true);
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the jobs finish")
        .expect("the dispatcher");
    let queued = server.generate(&worker).await;
    let jobs = Jobs {
        queued,
        completed,
        worker,
    };

    let mut unprovoked = Vec::new();
    let mut checked = 0;
    for (method, path) in operations(&doc) {
        let responses = doc["paths"][&path][method.to_lowercase()]["responses"]
            .as_object()
            .unwrap()
            .clone();
        for (status, documented) in responses {
            let status: u16 = status.parse().expect("a status code, not a range");
            let Some((probe, code)) = provoke(&server, &jobs, &method, &path, status).await else {
                unprovoked.push(format!("{method} {path} {status}"));
                continue;
            };
            let what = format!("{method} {path} {status}");
            let reply = server.send(&probe).await;
            assert_eq!(reply.status, status, "{what}: {reply:?}");
            answered_as_documented(&doc, &documented, &reply, &what);
            if let Some(code) = code {
                assert_eq!(reply.json()["code"], code, "{what}");
            }
            checked += 1;
        }
    }
    assert!(
        unprovoked.is_empty(),
        "documented, never provoked: {unprovoked:?}"
    );
    assert!(checked >= 50, "only {checked} answers checked");

    // /readyz's other 503: a store that does not answer.
    let reply = server
        .send(&Probe {
            mode: Mode::Unavailable,
            ..get("/readyz", None)
        })
        .await;
    let documented = &doc["paths"]["/readyz"]["get"]["responses"]["503"];
    answered_as_documented(&doc, documented, &reply, "GET /readyz 503 (unavailable)");
    assert_eq!(
        (reply.status, reply.json()["code"].clone()),
        (503, json!("unavailable"))
    );
    server.shutdown().await;
}

/// `reply` has a content type `documented` names, every header it names, and a body its
/// schema accepts.
#[track_caller]
fn answered_as_documented(doc: &Value, documented: &Value, reply: &Reply, what: &str) {
    for (name, header) in documented["headers"].as_object().into_iter().flatten() {
        let value = reply.headers.get(name.as_str());
        let value = value.unwrap_or_else(|| panic!("{what}: no {name} header: {reply:?}"));
        let value = value.to_str().unwrap();
        if header["schema"]["type"] == "integer" {
            let n: i64 = value
                .parse()
                .unwrap_or_else(|_| panic!("{what}: {name}: {value}"));
            conforms(&json!(n), &header["schema"], doc).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
    let content = documented["content"]
        .as_object()
        .expect("documented content");
    let media_type = reply.media_type();
    let schema = &content
        .get(&media_type)
        .unwrap_or_else(|| panic!("{what}: {media_type} is not documented: {reply:?}"))["schema"];
    let body = if media_type == "application/json" {
        reply.json()
    } else {
        Value::String(String::from_utf8(reply.body.to_vec()).expect("a text body"))
    };
    conforms(&body, schema, doc).unwrap_or_else(|e| panic!("{what}: {e}; body {body}"));
}

/// Whether `schema` (OpenAPI 3.1, as this document uses it) accepts `value`.
fn conforms(value: &Value, schema: &Value, doc: &Value) -> Result<(), String> {
    if let Some(target) = schema["$ref"].as_str() {
        let name = target
            .strip_prefix("#/components/schemas/")
            .expect("a local $ref");
        return conforms(value, &doc["components"]["schemas"][name], doc);
    }
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty()
        && !types
            .iter()
            .any(|t| *t == kind || (*t == "number" && kind == "integer"))
    {
        return Err(format!("{value} is not {types:?}"));
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(value) {
            return Err(format!("{value} is not one of {values:?}"));
        }
    }
    if let (Some(n), Some(min)) = (value.as_f64(), schema["minimum"].as_f64()) {
        if n < min {
            return Err(format!("{value} is below {min}"));
        }
    }
    if let (Some(n), Some(max)) = (value.as_f64(), schema["maximum"].as_f64()) {
        if n > max {
            return Err(format!("{value} is above {max}"));
        }
    }
    if let Some(text) = value.as_str() {
        let len = text.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| len < min)
            || schema["maxLength"].as_u64().is_some_and(|max| len > max)
        {
            return Err(format!("{value} has a length out of bounds"));
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("required {name} missing"));
            }
        }
        let properties = schema["properties"].as_object();
        for (name, field) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(property) => {
                    conforms(field, property, doc).map_err(|e| format!("{name}: {e}"))?
                }
                None if schema["additionalProperties"] == false => {
                    return Err(format!("{name} is not a documented field"))
                }
                None => {
                    if let Some(values) = schema["additionalProperties"].as_object() {
                        conforms(field, &Value::Object(values.clone()), doc)?;
                    }
                }
            }
        }
    }
    if let (Some(items), Some(item_schema)) = (value.as_array(), schema.get("items")) {
        for item in items {
            conforms(item, item_schema, doc)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report parameters
// ---------------------------------------------------------------------------------------------

/// The document of a workflow whose reports declare parameters shows each report's: a
/// `ReportParams.<REPORT>` object (each parameter's type, `format` for a date or timestamp,
/// `enum` for a one-of list, the help as description, the default, the required ones), and
/// `GenerateRequest` as one branch per report type; the bodies and jobs the API takes and
/// gives conform to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_shows_each_reports_parameters() {
    use flowctl::params::{ParamSpec, ParamType, ParamValue};
    let spec = |name: &str, ty: ParamType, default: Option<ParamValue>, required: bool| ParamSpec {
        name: name.into(),
        ty,
        default,
        required,
        help: format!("The {name}."),
    };
    let harness = common::TestServer::start_edited(
        Options {
            dispatcher: false,
            ..Options::default()
        },
        |workflow| {
            let daily = workflow
                .reports
                .iter_mut()
                .find(|r| r.name == "DAILY_REPORT")
                .unwrap();
            daily.params = vec![
                spec("since", ParamType::Date, None, true),
                spec("at", ParamType::Timestamp, None, false),
                spec(
                    "limit",
                    ParamType::Integer,
                    Some(ParamValue::Integer(100)),
                    false,
                ),
                spec("min_amount", ParamType::Decimal, None, false),
                spec("closed", ParamType::Boolean, None, false),
                spec("note", ParamType::String, None, false),
                spec(
                    "status",
                    ParamType::OneOf(vec!["OPEN".into(), "CLOSED".into()]),
                    None,
                    false,
                ),
            ];
            daily.window = Some(flowctl::window::WindowSpec::Previous(
                flowctl::window::Period::Day,
            ));
        },
    )
    .await;
    let reply = harness.api.get("/api/openapi.json", "").await;
    assert_eq!(reply.status, 200);
    let doc = reply.json();
    let schemas = &doc["components"]["schemas"];
    let daily = &schemas["ReportParams.DAILY_REPORT"];
    assert_eq!(daily["type"], "object");
    assert_eq!(daily["additionalProperties"], false);
    assert_eq!(daily["required"], json!(["since"]));
    let props = &daily["properties"];
    assert_eq!(
        props["since"],
        json!({ "type": "string", "format": "date", "description": "The since." })
    );
    assert_eq!(props["at"]["format"], "date-time");
    assert_eq!(props["limit"]["type"], "integer");
    assert_eq!(props["limit"]["default"], 100);
    assert_eq!(props["min_amount"]["type"], "string");
    assert_eq!(props["min_amount"]["format"], "decimal");
    assert_eq!(props["closed"]["type"], "boolean");
    assert_eq!(props["note"]["maxLength"], flowctl::params::MAX_TEXT);
    assert_eq!(props["status"]["enum"], json!(["OPEN", "CLOSED"]));
    // A report without parameters takes an empty object.
    assert_eq!(
        schemas["ReportParams.WEEKLY_REPORT"]["properties"],
        json!({})
    );
    // One branch of the trigger body per report type, naming its parameters.
    let branches = schemas["GenerateRequest"]["oneOf"].as_array().unwrap();
    assert_eq!(branches.len(), harness.engine.workflow.reports.len());
    let branch = |report: &str| {
        branches
            .iter()
            .find(|b| b["properties"]["reportType"]["enum"] == json!([report]))
            .unwrap_or_else(|| panic!("no branch for {report}"))
            .clone()
    };
    assert_eq!(
        branch("DAILY_REPORT")["required"],
        json!(["reportType", "params"])
    );
    assert_eq!(branch("WEEKLY_REPORT")["required"], json!(["reportType"]));
    let body = json!({
        "reportType": "DAILY_REPORT",
        "params": { "since": "2026-11-01", "limit": 5, "status": "OPEN" },
        "window": { "period": "2026-11-30" },
    });
    conforms(&body, &schemas["GenerateRequest"], &doc).unwrap();
    conforms(&body, &branch("DAILY_REPORT"), &doc).unwrap();
    let mut unknown = body.clone();
    unknown["params"]["limt"] = json!(5);
    assert!(conforms(&unknown, &branch("DAILY_REPORT"), &doc).is_err());
    let mut bad_type = body.clone();
    bad_type["params"]["limit"] = json!("five");
    assert!(conforms(&bad_type, &branch("DAILY_REPORT"), &doc).is_err());
    // What the API does with that body conforms to what it documents.
    let admin = token("ADMIN", None);
    let id = harness.api.generate(&admin, body).await;
    let reply = harness.api.get(&format!("/api/jobs/{id}"), &admin).await;
    let job = reply.json();
    assert_eq!(job["request"]["window"]["label"], "2026-11-30");
    let get_job = &doc["paths"]["/api/jobs/{id}"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    conforms(&job, get_job, &doc).unwrap_or_else(|e| panic!("{e}: {job}"));
    let window = &schemas["Window"];
    assert_eq!(
        window["properties"]["kind"]["enum"],
        json!(["day", "week", "month", "quarter", "year", "span"])
    );
    // A refused parameter's answer is the documented error, with its `param`.
    let reply = harness
        .api
        .post_json(
            "/api/reports/generate",
            &admin,
            json!({ "reportType": "DAILY_REPORT" }),
        )
        .await;
    reply.assert_param_error("missing_param", "since");
    let error = reply.json();
    conforms(&error, &schemas["Error"], &doc).unwrap();
    assert_eq!(schemas["Error"]["properties"]["param"]["type"], "string");
    harness.shutdown().await;
}
