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

use super::{
    manifest::{fingerprint, load_dir_fingerprinted},
    Snapshot,
};
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

    let mut last: Option<u64> = None;
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
async fn publish(dir: &Path, tx: &watch::Sender<Option<Snapshot>>, last: &mut Option<u64>) -> bool {
    let dir2 = dir.to_path_buf();
    let seen = *last;
    let loaded = tokio::task::spawn_blocking(move || reload(&dir2, seen)).await;
    match loaded {
        Ok(Ok(Some((fingerprint, snap)))) => {
            *last = Some(fingerprint);
            tx.send_replace(Some(snap));
            return true;
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => warn!(dir = %dir.display(), error = %e, "cannot read manifest directory"),
        Err(e) => warn!(error = %e, "manifest reader task failed"),
    }
    false
}

/// The snapshot of `dir` and its fingerprint, or None if the files are
/// still those fingerprinted `last`: the periodic poll then costs reading
/// the files, not parsing them, and wakes nobody.
fn reload(dir: &Path, last: Option<u64>) -> std::io::Result<Option<(u64, Snapshot)>> {
    if last.is_some() && Some(fingerprint(dir)?) == last {
        return Ok(None);
    }
    let (fingerprint, snap) = load_dir_fingerprinted(dir)?;
    // Equal to `last` when the change came and went before the parse.
    Ok((Some(fingerprint) != last).then_some((fingerprint, snap)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unchanged_directory_is_not_parsed_again() {
        let dir = std::env::temp_dir().join(format!("bpfproxy-watch-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("a.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
        )
        .expect("write");
        let (fp, snap) = super::reload(&dir, None)
            .expect("read")
            .expect("first read");
        assert_eq!(snap.services.len(), 1);
        assert!(super::reload(&dir, Some(fp)).expect("read").is_none());
        std::fs::write(dir.join("b.yaml"), "").expect("write");
        assert!(super::reload(&dir, Some(fp)).expect("read").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
