//! Watches a manifest directory and publishes a fresh [`Snapshot`] after
//! every burst of changes.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::{manifest::load_dir, Snapshot};
use crate::metrics::Metrics;

/// How long a burst of file events is allowed to settle before re-reading:
/// editors and `kubectl`-like tools write several events per save.
const SETTLE: Duration = Duration::from_millis(30);
/// Re-read even without events, in case an event was lost (network file
/// systems, overflowed inotify queues).
const POLL: Duration = Duration::from_secs(5);

/// Reads `dir` once (the first full sync), then keeps `tx` up to date until
/// every receiver is gone.
pub async fn run(
    dir: PathBuf,
    metrics: Arc<Metrics>,
    tx: watch::Sender<Option<Snapshot>>,
) -> anyhow::Result<()> {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // The receiver only disappears on shutdown.
        let _ = ev_tx.send(res);
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;

    let mut last: Option<String> = None;
    loop {
        if publish(&dir, &tx, &mut last).await {
            metrics.change_queued(None);
        }
        tokio::select! {
            ev = ev_rx.recv() => {
                match ev {
                    Some(Ok(ev)) => debug!(?ev, "manifest directory changed"),
                    Some(Err(e)) => warn!(error = %e, "manifest watch error; re-reading"),
                    None => return Ok(()),
                }
                tokio::time::sleep(SETTLE).await;
                while ev_rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// Re-reads the directory and publishes when anything changed.
/// Returns whether a new snapshot was published.
async fn publish(
    dir: &Path,
    tx: &watch::Sender<Option<Snapshot>>,
    last: &mut Option<String>,
) -> bool {
    let dir2 = dir.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || load_dir(&dir2)).await;
    match loaded {
        Ok(Ok(snap)) => {
            // Cheap change detection so the periodic poll doesn't wake the
            // sync loop for nothing.
            let fingerprint = format!("{:?}{:?}{:?}", snap.services, snap.slices, snap.skips);
            if last.as_deref() != Some(fingerprint.as_str()) {
                *last = Some(fingerprint);
                tx.send_replace(Some(snap));
                return true;
            }
        }
        Ok(Err(e)) => warn!(dir = %dir.display(), error = %e, "cannot read manifest directory"),
        Err(e) => warn!(error = %e, "manifest reader task failed"),
    }
    false
}
