//! kube-proxy's per-Service health check servers: for every Service with
//! `externalTrafficPolicy: Local`, an HTTP server on its healthCheckNodePort
//! tells the cloud load balancer whether this node has local endpoints
//! (200) or not (503), so traffic only goes to nodes that can serve it.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};
use tracing::info;

use crate::{metrics::Metrics, model::HealthCheck, server};

/// The JSON kube-proxy answers on a healthCheckNodePort.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    service: ServiceRef<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(Debug, Serialize)]
struct ServiceRef<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// The response for one Service: 200 with local endpoints and a healthy
/// proxy, 503 otherwise (any path, as kube-proxy).
pub fn respond(hc: &HealthCheck, proxy_healthy: bool) -> Response<server::Body> {
    let body = Body {
        service: ServiceRef {
            namespace: &hc.namespace,
            name: &hc.name,
        },
        local_endpoints: hc.local_endpoints,
        service_proxy_healthy: proxy_healthy,
    };
    let status = if hc.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = server::response(
        status,
        "application/json",
        serde_json::to_string(&body).unwrap_or_default(),
    );
    // Load balancers that weigh nodes read this header.
    if let Ok(v) = hc.local_endpoints.to_string().parse() {
        resp.headers_mut()
            .insert("X-Load-Balancing-Endpoint-Weight", v);
    }
    resp
}

/// Keeps one listener per healthCheckNodePort in `rx`, answering from the
/// newest state, until `rx` closes.
pub async fn run(
    mut rx: watch::Receiver<BTreeMap<u16, HealthCheck>>,
    metrics: Arc<Metrics>,
    health_timeout: Duration,
) {
    let state: Arc<RwLock<BTreeMap<u16, HealthCheck>>> = Arc::default();
    let mut listeners: BTreeMap<u16, JoinHandle<()>> = BTreeMap::new();
    loop {
        let wanted = rx.borrow_and_update().clone();
        if let Ok(mut s) = state.write() {
            *s = wanted.clone();
        }
        listeners.retain(|port, task| {
            let keep = wanted.contains_key(port);
            if !keep {
                info!(port, "closing health check port");
                task.abort();
            }
            keep
        });
        for port in wanted.keys() {
            if listeners.contains_key(port) {
                continue;
            }
            let (state, metrics, port) = (state.clone(), metrics.clone(), *port);
            let routes = move |_path: &str| {
                let hc = state.read().ok().and_then(|s| s.get(&port).cloned());
                let healthy = metrics
                    .health
                    .report(SystemTime::now(), health_timeout, false)
                    .healthy;
                match hc {
                    Some(hc) => respond(&hc, healthy),
                    None => server::not_found(),
                }
            };
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            listeners.insert(
                port,
                tokio::spawn(server::serve("healthcheck", addr, routes)),
            );
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    for task in listeners.values() {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(n: usize) -> HealthCheck {
        HealthCheck {
            namespace: "ns".into(),
            name: "lb".into(),
            local_endpoints: n,
        }
    }

    #[test]
    fn local_endpoints_answer_200_with_kube_proxys_json() {
        let r = respond(&hc(2), true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["X-Load-Balancing-Endpoint-Weight"], "2");
    }

    #[test]
    fn no_local_endpoints_or_an_unhealthy_proxy_answer_503() {
        assert_eq!(
            respond(&hc(0), true).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond(&hc(3), false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
