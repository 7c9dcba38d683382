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

/// How often the listeners are checked for having died (a panic): a load
/// balancer would otherwise see a node without the port, as if it had no
/// endpoints, with nothing in the logs.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Keeps one listener per healthCheckNodePort in `rx`, answering from the
/// newest state, until `rx` closes (Ok) or a listener ends on its own
/// (Err: listeners only end when told to).
pub async fn run(
    mut rx: watch::Receiver<BTreeMap<u16, HealthCheck>>,
    metrics: Arc<Metrics>,
    health_timeout: Duration,
) -> anyhow::Result<()> {
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
        let ended = tokio::select! {
            changed = rx.changed() => match changed {
                Ok(()) => continue,
                Err(_) => None,
            },
            ended = first_ended(&mut listeners) => Some(ended),
        };
        for task in listeners.values() {
            task.abort();
        }
        return match ended {
            None => Ok(()),
            Some((port, how)) => Err(anyhow::anyhow!(
                "the health check server of port {port} {how}"
            )),
        };
    }
}

/// Waits until a listener has ended; which one and how.
async fn first_ended(listeners: &mut BTreeMap<u16, JoinHandle<()>>) -> (u16, String) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(port) = listeners
            .iter()
            .find(|(_, t)| t.is_finished())
            .map(|(p, _)| *p)
        else {
            continue;
        };
        let how = match listeners.remove(&port) {
            Some(task) => match task.await {
                Ok(()) => "stopped".to_string(),
                Err(e) => format!("ended: {e}"),
            },
            None => "stopped".to_string(),
        };
        return (port, how);
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
