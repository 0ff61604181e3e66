//! Report parameters and data windows through the HTTP trigger: resolved and typed when the
//! job is created, stored in the job record and shown by the API, refused with a code that
//! names the parameter, and part of an idempotent request's fingerprint.
//!
//! The bundled workflow, its reports given parameters and windows in Rust (what the language
//! will say), served without a dispatcher: the jobs stay QUEUED, their records are the point.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use flowctl::params::{ParamSpec, ParamType, ParamValue};
use flowctl::window::{Period, WindowSpec};
use flowctl::workflow::{Query, Workflow};
use serde_json::{json, Value};

use common::{token, Options, TestServer};

fn spec(name: &str, ty: ParamType, default: Option<ParamValue>, required: bool) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        ty,
        default,
        required,
        help: format!("The {name}."),
    }
}

/// DAILY_REPORT declares `since` (date, required), `limit` (integer, default 100), `status`
/// (one of OPEN, CLOSED) and `min_amount` (decimal), covers the previous day in Berlin by
/// default; MONTHLY_REPORT reads its window (a query naming `:interval_start`) and has no
/// default one.
fn edit(workflow: &mut Workflow) {
    for report in &mut workflow.reports {
        match report.name.as_str() {
            "DAILY_REPORT" => {
                report.params = vec![
                    spec("since", ParamType::Date, None, true),
                    spec(
                        "limit",
                        ParamType::Integer,
                        Some(ParamValue::Integer(100)),
                        false,
                    ),
                    spec(
                        "status",
                        ParamType::OneOf(vec!["OPEN".into(), "CLOSED".into()]),
                        None,
                        false,
                    ),
                    spec("min_amount", ParamType::Decimal, None, false),
                ];
                report.window = Some(WindowSpec::Previous(Period::Day));
                report.zone = chrono_tz::Europe::Berlin;
            }
            "MONTHLY_REPORT" => {
                report.query = Some(Query {
                    text: "SELECT * FROM cases WHERE opened >= :interval_start".into(),
                    file: None,
                    placeholders: vec!["interval_start".into()],
                });
                report.window = None;
            }
            _ => {}
        }
    }
}

async fn server() -> TestServer {
    TestServer::start_edited(
        Options {
            dispatcher: false,
            ..Options::default()
        },
        edit,
    )
    .await
}

fn admin() -> String {
    token::token("ana", "ADMIN", None)
}

async fn job(server: &TestServer, id: &str) -> Value {
    let reply = server.get(&format!("/api/jobs/{id}"), &admin()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

async fn generate(server: &TestServer, body: Value) -> common::api::Reply {
    server
        .post_json("/api/reports/generate", &admin(), body)
        .await
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_are_resolved_typed_and_stored_with_the_default_window() {
    let server = server().await;
    let before = Utc::now();
    let id = server
        .generate(
            &admin(),
            json!({
                "reportType": "DAILY_REPORT",
                "params": { "since": "2026-11-01", "status": "OPEN", "min_amount": 12.5 },
            }),
        )
        .await;
    let job = job(&server, &id).await;
    assert_eq!(
        job["request"]["params"],
        json!({
            "since": { "date": "2026-11-01" },
            "limit": { "integer": 100 },
            "status": { "string": "OPEN" },
            "min_amount": { "decimal": "12.5" },
        })
    );
    // The report's default: the previous day in Berlin, as of the trigger.
    let window = &job["request"]["window"];
    assert_eq!(window["kind"], "day");
    assert_eq!(window["zone"], "Europe/Berlin");
    let start = utc(window["start"].as_str().unwrap());
    let end = utc(window["end"].as_str().unwrap());
    // It ends at the start of the trigger's day in Berlin (the test may cross a midnight).
    let berlin_day = |t: DateTime<Utc>| t.with_timezone(&chrono_tz::Europe::Berlin).date_naive();
    let end_day = berlin_day(end);
    assert!(
        end_day == berlin_day(before) || end_day == berlin_day(Utc::now()),
        "{window}"
    );
    assert!(end > start && end <= Utc::now());
    assert_eq!(
        window["label"],
        start
            .with_timezone(&chrono_tz::Europe::Berlin)
            .format("%Y-%m-%d")
            .to_string()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_parameter_is_a_422_that_names_it() {
    let server = server().await;
    let cases = [
        (
            json!({ "limit": 3 }),
            "missing_param",
            "since",
            "required (date)",
        ),
        (
            json!({ "since": "2026-11-01", "limt": 3 }),
            "unknown_param",
            "limt",
            "did you mean 'limit'?",
        ),
        (
            json!({ "since": "2026-13-01" }),
            "invalid_param",
            "since",
            "is not a date",
        ),
        (
            json!({ "since": "2026-11-01", "limit": 2.5 }),
            "invalid_param",
            "limit",
            "not an integer",
        ),
        (
            json!({ "since": "2026-11-01", "limit": true }),
            "invalid_param",
            "limit",
            "expected integer, got a boolean",
        ),
        (
            json!({ "since": "2026-11-01", "status": "open" }),
            "invalid_param",
            "status",
            "is not one of OPEN, CLOSED",
        ),
        (
            json!({ "since": "2026-11-01", "status": ["OPEN"] }),
            "invalid_param",
            "status",
            "got an array",
        ),
    ];
    for (params, code, param, says) in cases {
        let reply = generate(
            &server,
            json!({ "reportType": "DAILY_REPORT", "params": params }),
        )
        .await;
        let message = reply.assert_param_error(code, param);
        assert!(message.contains(says), "{params}: {message}");
    }
    // A report that declares none refuses any.
    let reply = generate(
        &server,
        json!({ "reportType": "WEEKLY_REPORT", "params": { "since": "2026-11-01" } }),
    )
    .await;
    let message = reply.assert_param_error("unknown_param", "since");
    assert!(message.contains("declares no parameters"), "{message}");
    // `params` must be an object.
    generate(
        &server,
        json!({ "reportType": "DAILY_REPORT", "params": ["since"] }),
    )
    .await
    .assert_error(400, "invalid_request");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_values_and_names_are_refused_without_being_echoed() {
    let server = server().await;
    let long = "x".repeat(60_000);
    for params in [
        json!({ "since": long }),
        json!({ (long.clone()): 1, "since": "2026-11-01" }),
        json!({ "since": "2026-11-01", "status": long }),
    ] {
        let reply = generate(
            &server,
            json!({ "reportType": "DAILY_REPORT", "params": params }),
        )
        .await;
        assert_eq!(reply.status, 422, "{}", &reply.text()[..200]);
        assert!(reply.body.len() < 1_000, "{} bytes", reply.body.len());
    }
    let reply = generate(
        &server,
        json!({ "reportType": "DAILY_REPORT", "params": { "since": "2026-11-01" },
                "window": { "period": long } }),
    )
    .await;
    reply.assert_error(422, "invalid_window");
    assert!(reply.body.len() < 1_000);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_given_by_period_or_bounds_is_stored() {
    let server = server().await;
    let base = json!({ "reportType": "DAILY_REPORT", "params": { "since": "2026-11-01" } });
    let with = |window: Value| {
        let mut body = base.clone();
        body["window"] = window;
        body
    };
    // A period, in the report's zone.
    let id = server
        .generate(&admin(), with(json!({ "period": "2026-11" })))
        .await;
    assert_eq!(
        job(&server, &id).await["request"]["window"],
        json!({
            "start": "2026-10-31T23:00:00Z",
            "end": "2026-11-30T23:00:00Z",
            "zone": "Europe/Berlin",
            "kind": "month",
            "label": "2026-11",
        })
    );
    // A day of another zone.
    let id = server
        .generate(
            &admin(),
            with(json!({ "period": "2026-03-08", "zone": "America/New_York" })),
        )
        .await;
    let window = job(&server, &id).await["request"]["window"].clone();
    assert_eq!(
        (window["start"].clone(), window["end"].clone()),
        (json!("2026-03-08T05:00:00Z"), json!("2026-03-09T04:00:00Z"))
    );
    // Bounds: a span, kept to the microsecond.
    let id = server
        .generate(
            &admin(),
            with(json!({
                "start": "2026-11-30T06:00:00.1234567+01:00",
                "end": "2026-11-30T12:00:00Z",
            })),
        )
        .await;
    let window = job(&server, &id).await["request"]["window"].clone();
    assert_eq!(window["kind"], "span");
    assert_eq!(window["zone"], "Europe/Berlin");
    assert_eq!(window["start"], "2026-11-30T05:00:00.123456Z");
    for (window, says) in [
        (json!({ "period": "2026-11-31" }), "is not a period"),
        (json!({ "period": "last week" }), "is not a period"),
        (json!({ "start": "2026-11-30T00:00:00Z" }), "both"),
        (
            json!({ "period": "2026-11", "start": "2026-11-30T00:00:00Z" }),
            "not both",
        ),
        (
            json!({ "start": "2026-11-30T00:00:00Z", "end": "2026-11-29T00:00:00Z" }),
            "ends after it starts",
        ),
        (
            json!({ "start": "yesterday", "end": "2026-11-29T00:00:00Z" }),
            "not an RFC 3339 instant",
        ),
        (
            json!({ "period": "2026-11", "zone": "Mars/Olympus" }),
            "unknown time zone",
        ),
    ] {
        let reply = generate(&server, with(window.clone())).await;
        let message = reply.assert_error(422, "invalid_window");
        assert!(message.contains(says), "{window}: {message}");
    }
    generate(&server, with(json!({ "period": "2026-11", "size": 3 })))
        .await
        .assert_error(400, "invalid_request");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_reads_its_window_needs_one() {
    let server = server().await;
    let message = generate(&server, json!({ "reportType": "MONTHLY_REPORT" }))
        .await
        .assert_error(422, "window_required");
    assert!(message.contains("MONTHLY_REPORT"), "{message}");
    assert!(
        message.contains("2026-11"),
        "says how to give one: {message}"
    );
    let id = server
        .generate(
            &admin(),
            json!({ "reportType": "MONTHLY_REPORT", "window": { "period": "2026-10" } }),
        )
        .await;
    assert_eq!(
        job(&server, &id).await["request"]["window"]["label"],
        "2026-10"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_covers_the_params_and_the_window() {
    let server = server().await;
    let body = |since: &str, period: Option<&str>| {
        let mut body = json!({
            "reportType": "DAILY_REPORT",
            "params": { "since": since },
            "idempotencyKey": "k-1",
        });
        if let Some(p) = period {
            body["window"] = json!({ "period": p });
        }
        body
    };
    let first = server
        .generate(&admin(), body("2026-11-01", Some("2026-11-30")))
        .await;
    let again = server
        .generate(&admin(), body("2026-11-01", Some("2026-11-30")))
        .await;
    assert_eq!(first, again);
    for other in [
        body("2026-11-02", Some("2026-11-30")),
        body("2026-11-01", Some("2026-11-29")),
        body("2026-11-01", None),
    ] {
        generate(&server, other)
            .await
            .assert_error(422, "idempotency_key_reused");
    }
    // Without a window given, the report's default is the first request's: a retry answers
    // with the first job whatever the time.
    let mut plain = body("2026-11-01", None);
    plain["idempotencyKey"] = json!("k-2");
    let first = server.generate(&admin(), plain.clone()).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(server.generate(&admin(), plain).await, first);
    server.shutdown().await;
}
