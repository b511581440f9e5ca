//! A small HTTP proxy in front of the real FHIR server. It forwards every request, records what
//! it saw (method, path, `Authorization`), and can inject faults chosen per request: a status
//! (429 with `Retry-After`, 503, a rejection), or a dropped connection before or after the
//! request reached the server.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward it.
    Pass,
    /// Answer this status without forwarding, with an optional `Retry-After` (seconds).
    Status(u16, Option<u32>),
    /// Answer this status and OperationOutcome text without forwarding.
    Reject(u16, String),
    /// Close the connection without forwarding.
    DropBefore,
    /// Forward, then close the connection instead of answering (the server did the work).
    DropAfter,
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The fault applied.
    pub fault: Fault,
}

type Plan = dyn Fn(usize, &str, &str) -> Fault + Send + Sync;

struct State {
    upstream: String,
    plan: Box<Plan>,
    count: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    client: reqwest::Client,
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    /// The proxy's base URL (use it as the FHIR URL).
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` applying `plan(request_index, method, path)`.
    pub async fn start(upstream: &str, plan: impl Fn(usize, &str, &str) -> Fault + Send + Sync + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("the proxy binds");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            plan: Box::new(plan),
            count: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            client: reqwest::Client::new(),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    // A dropped connection ends here with an error; that is the point.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Proxy { url, state, task }
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many requests got a fault.
    pub fn faults(&self) -> usize {
        self.seen().iter().filter(|seen| seen.fault != Fault::Pass).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the test proxy")
    }
}

impl std::error::Error for Dropped {}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
    let index = state.count.fetch_add(1, Ordering::SeqCst);
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let fault = (state.plan)(index, &method, &path);
    state.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        authorization: request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string),
        fault: fault.clone(),
    });
    match &fault {
        Fault::Status(status, retry_after) => {
            let mut response = Response::builder().status(*status);
            if let Some(seconds) = retry_after {
                response = response.header("Retry-After", seconds.to_string());
            }
            return Ok(response.body(Full::new(Bytes::new())).unwrap());
        }
        Fault::Reject(status, text) => {
            let body = serde_json::json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}]
            });
            return Ok(Response::builder()
                .status(*status)
                .header("Content-Type", "application/fhir+json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap());
        }
        Fault::DropBefore => return Err(Dropped),
        Fault::Pass | Fault::DropAfter => {}
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let mut forward = state
        .client
        .request(parts.method.clone(), format!("{}{path}", state.upstream))
        .body(body.to_vec());
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            forward = forward.header(name, value);
        }
    }
    if body.is_empty() && parts.headers.contains_key("content-length") {
        // An empty body is sent without a length unless it is set: Blob Storage requires it.
        forward = forward.header("content-length", "0");
    }
    let response = forward.send().await.map_err(|_| Dropped)?;
    if fault == Fault::DropAfter {
        return Err(Dropped);
    }
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let mut reply = Response::builder().status(status);
    for (name, value) in response.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            reply = reply.header(name.as_str(), value.as_bytes());
        }
    }
    let bytes = response.bytes().await.map_err(|_| Dropped)?;
    Ok(reply.body(Full::new(bytes)).unwrap())
}

/// Answers every request with `body` (for fake token endpoints), recording the requests.
pub struct StaticServer {
    /// Base URL.
    pub url: String,
    /// Requests seen: path with query, and the headers as `name: value` lines.
    pub requests: Arc<Mutex<Vec<(String, String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StaticServer {
    /// Starts a server answering `body` as JSON.
    pub async fn start(body: String) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("the server binds");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let body = body.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let body = body.clone();
                        let seen = seen.clone();
                        async move {
                            let path = request.uri().to_string();
                            let headers: String = request
                                .headers()
                                .iter()
                                .map(|(name, value)| format!("{name}: {}\n", value.to_str().unwrap_or("")))
                                .collect();
                            let content = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            seen.lock()
                                .unwrap()
                                .push((path, headers, String::from_utf8_lossy(&content).to_string()));
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("Content-Type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StaticServer { url, requests, task }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
