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
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info, warn};

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

/// What one client may take of a server: scrapers, probes and load
/// balancers send one small request, so a slow or stuck client is cut off
/// instead of holding a connection (and a file descriptor) for good.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time for a request's headers to arrive (also the idle time allowed
    /// between keep-alive requests).
    pub header_timeout: Duration,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
}

pub const LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(10),
    max_connections: 128,
};

/// How long to wait before binding again, or after a failed accept().
const RETRY: Duration = Duration::from_secs(1);

/// Answers every request on `addr` with `routes(path)` until the task is
/// dropped. Nothing stops it for good: binding is retried every second
/// while it fails (the port still held by an agent being replaced, a
/// healthCheckNodePort taken by another program), and accept errors (out of
/// file descriptors) are waited out. Errors are logged once until they
/// change.
pub async fn serve<F>(name: &'static str, addr: SocketAddr, routes: F)
where
    F: Fn(&str) -> Response<Body> + Send + Sync + 'static,
{
    let mut last_error = String::new();
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                if e.to_string() != last_error {
                    warn!(server = name, %addr, error = %e, "cannot bind; retrying every second");
                    last_error = e.to_string();
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    serve_on(name, listener, LIMITS, routes).await
}

/// [`serve`] on a bound `listener`, within `limits`.
pub async fn serve_on<F>(name: &'static str, listener: TcpListener, limits: Limits, routes: F)
where
    F: Fn(&str) -> Response<Body> + Send + Sync + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        info!(server = name, %addr, "serving");
    }
    let routes = Arc::new(routes);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut said = Said::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                said.once(name, "accept failed; retrying", &e.to_string());
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            said.once(
                name,
                "connection limit reached; closing new connections",
                "",
            );
            continue; // the stream is dropped: closed
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = routes(req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            if let Err(e) = served {
                debug!(server = name, error = %e, "connection error");
            }
        });
    }
}

/// Logs a condition once until another one (or another detail) comes.
#[derive(Default)]
struct Said(String);

impl Said {
    fn once(&mut self, server: &str, what: &str, detail: &str) {
        let key = format!("{what}{detail}");
        if self.0 != key {
            warn!(server, error = detail, "{what}");
            self.0 = key;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    fn ok(_: &str) -> Response<Body> {
        response(StatusCode::OK, "text/plain", "ok".into())
    }

    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Whether the server closed `s` (EOF or reset) within `within`.
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(within, s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn connections_are_capped_and_silent_clients_are_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            max_connections: 2,
        };
        tokio::spawn(serve_on("test", listener, limits, ok));
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed(&mut third, Duration::from_millis(200)).await,
            "over the cap: closed at once"
        );
        let t0 = Instant::now();
        for s in &mut idle {
            assert!(
                closed(s, Duration::from_secs(2)).await,
                "a silent client is cut off"
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        let answer = get(addr).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn a_busy_port_is_bound_once_it_is_free() {
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = blocker.local_addr().unwrap();
        tokio::spawn(serve("test", addr, ok));
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(blocker);
        let t0 = Instant::now();
        loop {
            if let Ok(answer) = get(addr).await {
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(3), "never bound");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
