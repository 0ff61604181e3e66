//! The HTTP API as a client sees it, over a real socket: requests with a bearer token, replies
//! with status, headers and body (read as text or JSON), and the job helpers every API test
//! needs (queue a report, wait for its job).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::wait;

/// An HTTP response.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The header's value; empty when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// A JSON error with exactly `code` and a message, at `status`; returns the message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert!(
            self.header("content-type").starts_with("application/json"),
            "{:?}",
            self.headers
        );
        let body = self.json();
        assert_eq!(body["code"], code, "body: {body}");
        let message = body["message"].as_str().expect("a message").to_string();
        assert!(!message.is_empty());
        assert_eq!(
            body.as_object().unwrap().len(),
            2,
            "only code and message: {body}"
        );
        message
    }
}

impl Reply {
    /// A `422` refusing the report parameter `param` with `code` (`unknown_param`,
    /// `missing_param`, `invalid_param`): `{"code", "message", "param"}`; returns the message.
    #[track_caller]
    pub fn assert_param_error(&self, code: &str, param: &str) -> String {
        assert_eq!(self.status, 422, "body: {}", self.text());
        let body = self.json();
        assert_eq!(body["code"], code, "body: {body}");
        assert_eq!(body["param"], param, "body: {body}");
        assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
        body["message"].as_str().expect("a message").to_string()
    }
}

/// A client of the API at `base` (`http://127.0.0.1:PORT`). Its methods are async: call them
/// inside a tokio runtime.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    /// A client of the server listening on `addr` (`127.0.0.1:PORT`).
    pub fn new(addr: impl std::fmt::Display) -> Api {
        Api {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends `req` (its URI absolute: `format!("{}/path", api.base)`), for requests the other
    /// methods cannot make (headers of the test's choosing).
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let resp = self.client.request(req).await.expect("the server answers");
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// `METHOD PATH`, with `Authorization: Bearer TOKEN` and a `Content-Type` when given.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(c) = content_type {
            req = req.header("content-type", c);
        }
        self.send(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.request("GET", path, Some(token), None, Vec::new())
            .await
    }

    /// A POST without a body.
    pub async fn post(&self, path: &str, token: &str) -> Reply {
        self.request("POST", path, Some(token), None, Vec::new())
            .await
    }

    pub async fn post_json(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(
            "POST",
            path,
            Some(token),
            Some("application/json"),
            body.to_string().into_bytes(),
        )
        .await
    }

    /// Queues a report (`body` as `POST /api/reports/generate` takes it); asserts 202 and the
    /// job's `Location`, and returns the job id.
    pub async fn generate(&self, token: &str, body: Value) -> String {
        let reply = self.post_json("/api/reports/generate", token, body).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
        let json = reply.json();
        let id = json["jobId"].as_str().unwrap().to_string();
        assert_eq!(reply.header("location"), format!("/api/jobs/{id}"));
        id
    }

    /// Polls `GET /api/jobs/ID` (each answer a 200) every 20 ms, for up to a minute, until
    /// `done(job)`; returns the job. Gives up with `what()` and the job last seen.
    pub async fn wait_job(
        &self,
        id: &str,
        token: &str,
        done: impl Fn(&Value) -> bool,
        what: impl Fn() -> String,
    ) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        wait::until(
            Duration::from_secs(60),
            Duration::from_millis(20),
            || format!("{}: {}", what(), last.lock().unwrap()),
            || async {
                let reply = self.get(&format!("/api/jobs/{id}"), token).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                let job = reply.json();
                *last.lock().unwrap() = job.clone();
                done(&job).then_some(job)
            },
        )
        .await
    }

    /// Polls the job until it reaches `status`; waiting for COMPLETED, fails at once if it
    /// ends otherwise (FAILED, CANCELLED).
    pub async fn wait_for(&self, id: &str, token: &str, status: &str) -> Value {
        let reached = |job: &Value| {
            if job["status"] == status {
                return true;
            }
            assert!(
                !matches!(job["status"].as_str(), Some("FAILED" | "CANCELLED"))
                    || status != "COMPLETED",
                "job ended otherwise: {job}"
            );
            false
        };
        self.wait_job(id, token, reached, || format!("job never got {status}"))
            .await
    }

    /// Polls the job until it is COMPLETED, FAILED or CANCELLED.
    pub async fn wait_finished(&self, id: &str, token: &str, what: impl Fn() -> String) -> Value {
        let finished = |job: &Value| {
            ["COMPLETED", "FAILED", "CANCELLED"].contains(&job["status"].as_str().unwrap_or(""))
        };
        self.wait_job(id, token, finished, what).await
    }
}
