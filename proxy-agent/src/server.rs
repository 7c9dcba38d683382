//! kube-proxy's two HTTP endpoints:
//! - `:10249` (metrics): `/metrics`, `/healthz` (plain `ok`), `/proxyMode`;
//! - `:10256` (health, for probes and cloud load balancers): `/healthz` and
//!   `/livez`, JSON, 503 when unhealthy.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// What `/proxyMode` answers; dashboards use it to tell proxies apart.
pub const PROXY_MODE: &str = "ebpf";

/// Response body of both servers.
pub type Body = Full<Bytes>;

pub fn response(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = "nosniff".parse() {
        resp.headers_mut()
            .insert(hyper::header::X_CONTENT_TYPE_OPTIONS, v);
    }
    resp
}

pub fn not_found() -> Response<Body> {
    response(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "404 page not found\n".to_string(),
    )
}

/// The metrics endpoint's routes.
pub fn metrics_routes(metrics: &Metrics, path: &str) -> Response<Body> {
    match path {
        "/metrics" => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => response(StatusCode::OK, "text/plain; charset=utf-8", "ok".into()),
        "/proxyMode" => response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            PROXY_MODE.into(),
        ),
        _ => not_found(),
    }
}

/// The health endpoint's routes; `timeout` is 2 × the sync period.
pub fn health_routes(metrics: &Metrics, path: &str, timeout: Duration) -> Response<Body> {
    let livez = match path {
        "/healthz" => false,
        "/livez" => true,
        _ => return not_found(),
    };
    let report = metrics.health.report(SystemTime::now(), timeout, livez);
    let status = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&report).unwrap_or_default();
    response(status, "application/json", body)
}

/// Binds `addr` and answers every request with `routes(path)` until the task
/// is dropped.
pub async fn serve<F>(name: &'static str, addr: SocketAddr, routes: F) -> std::io::Result<()>
where
    F: Fn(&str) -> Response<Body> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    info!(server = name, addr = %listener.local_addr()?, "serving");
    let routes = Arc::new(routes);
    loop {
        let (stream, _) = listener.accept().await?;
        let routes = routes.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = routes(req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                warn!(server = name, error = %e, "connection error");
            }
        });
    }
}
