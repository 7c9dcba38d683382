//! When a watch on the API server sees each EndpointSlice change: as near
//! as a client can tell, the moment the server published the event. The
//! benches measure "API server event → kernel map" from it, so the time
//! the server takes to accept and store a write is not counted as the
//! agent's.
use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api,
};

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// A watch of one namespace's EndpointSlices on its own thread.
pub struct EventClock {
    seen: Seen,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The key of one version of a slice: its name and first address.
pub fn key(slice_name: &str, first_address: &str) -> String {
    format!("{slice_name}@{first_address}")
}

impl EventClock {
    /// Starts watching `namespace` and returns once the watch is listed.
    pub fn start(kubeconfig: &Path, namespace: &str) -> Result<Self> {
        let seen: Seen = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(crate::cluster::client(kubeconfig))?;
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let record = seen.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    _ = watch(api, record, ready_tx) => {}
                    _ = stopped => {}
                }
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(60))?;
        Ok(Self {
            seen,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// When the watch first saw `key` (see [`key`]), waiting for it up to
    /// `timeout`.
    pub fn seen(&self, key: &str, timeout: Duration) -> Option<Instant> {
        let t0 = Instant::now();
        loop {
            if let Some(t) = self.seen.lock().ok().and_then(|m| m.get(key).copied()) {
                return Some(t);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for EventClock {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Records the arrival of every change until the stream ends.
async fn watch(api: Api<EndpointSlice>, seen: Seen, ready: std::sync::mpsc::Sender<()>) {
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        match ev {
            Ok(watcher::Event::Apply(slice)) => {
                let name = slice.metadata.name.clone().unwrap_or_default();
                let first = slice
                    .endpoints
                    .first()
                    .and_then(|e| e.addresses.first())
                    .cloned()
                    .unwrap_or_default();
                if let Ok(mut m) = seen.lock() {
                    m.entry(key(&name, &first)).or_insert(now);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let _ = ready.send(());
            }
            _ => {}
        }
    }
}
