//! The node's operations endpoint on an opt-in local address (`consort node DIR --metrics
//! 127.0.0.1:9464`, or `[metrics] listen` in config.toml): `GET /metrics` (the
//! [`crate::metrics`] registry, OpenMetrics text, which Prometheus scrapes), `GET /healthz` (200
//! while the node runs and its audit log can be written, 503 with the reason otherwise: a node
//! that cannot log takes no jobs) and `GET /readyz` (200 when it takes jobs: the same condition
//! today, since it serves as soon as it has started).
//!
//! Plain HTTP/1.1 without authentication: bind it to loopback or a monitoring network, never to
//! the peers' address. hyper serves it on the node's runtime; answers are computed in memory.

use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::state::NodeState;

/// Whether the node takes jobs: `Err(reason)` when not (the audit log cannot be written).
pub fn health(state: &NodeState) -> Result<(), String> {
    match state.audit.failure() {
        None => Ok(()),
        Some(reason) => Err(reason),
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, content_type.parse().expect("a valid header value"));
    response
}

/// One request to the metrics address.
fn answer(state: &NodeState, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    if request.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, text, "only GET\n".into());
    }
    match request.uri().path() {
        "/metrics" => respond(StatusCode::OK, OPENMETRICS, state.metrics.encode(state.pinned.open_connections())),
        "/healthz" | "/readyz" => match health(state) {
            Ok(()) => respond(StatusCode::OK, text, "ok\n".into()),
            Err(reason) => respond(StatusCode::SERVICE_UNAVAILABLE, text, format!("{reason}\n")),
        },
        _ => respond(StatusCode::NOT_FOUND, text, "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

/// Binds the metrics address (so a bad address fails the node's start, not later).
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr}"))
}

/// Serves the metrics and health endpoints on `listener` until the returned task is aborted.
pub fn serve(listener: TcpListener, state: Arc<NodeState>) -> tokio::task::JoinHandle<()> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    info!(metrics = %addr, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = answer(&state, &request);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let _ = connection.await;
            });
        }
    })
}
