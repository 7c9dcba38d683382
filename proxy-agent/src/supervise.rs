//! The agent's background tasks, each of which must run as long as the
//! agent: the source watch, the sync loop, the HTTP servers, the node
//! watch, the map counters. One that ends — an error, a panic, or a quiet
//! return — would leave the agent half alive (serving stale maps, or no
//! metrics), which nobody notices. So the first task to end is fatal: it is
//! logged by name with its reason, and the agent exits non-zero for the
//! DaemonSet to restart it.
use std::{collections::BTreeMap, future::Future};

use tokio::task::{Id, JoinSet};
use tracing::error;

/// Why the agent stops: which task ended and how.
#[derive(Debug, thiserror::Error)]
#[error("background task {task} {how}")]
pub struct TaskEnded {
    pub task: &'static str,
    pub how: String,
}

/// Background tasks that must never end.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: BTreeMap<Id, &'static str>,
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` under `name` on the current runtime.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Runs `task` and treats its return, whatever it is, as the end of a
    /// task that should have run forever.
    pub fn spawn_forever<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            task.await;
            Ok(())
        });
    }

    /// Waits for the first task to end and says which one and why (logged
    /// too). Never returns while every task runs; with no task at all, it
    /// waits forever.
    pub async fn first_failure(&mut self) -> TaskEnded {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, how) = match joined {
            Ok((id, Ok(()))) => (id, "stopped unexpectedly".to_string()),
            Ok((id, Err(e))) => (id, format!("failed: {e:#}")),
            Err(e) if e.is_panic() => (e.id(), format!("panicked: {}", panic_text(e))),
            Err(e) => (e.id(), format!("was cancelled: {e}")),
        };
        let task = self.names.get(&id).copied().unwrap_or("(unknown)");
        error!(task, reason = %how, "a background task ended");
        TaskEnded { task, how }
    }
}

/// The message a task panicked with.
fn panic_text(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        return (*s).to_string();
    }
    payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn forever() -> anyhow::Result<()> {
        std::future::pending().await
    }

    #[tokio::test]
    async fn a_task_that_fails_is_reported_by_name_with_its_error() {
        let mut s = Supervisor::new();
        s.spawn("sync", forever());
        s.spawn("source", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            anyhow::bail!("watch closed")
        });
        let ended = s.first_failure().await;
        assert_eq!(ended.task, "source");
        assert!(ended.how.contains("watch closed"), "{ended}");
        assert_eq!(
            ended.to_string(),
            "background task source failed: watch closed"
        );
    }

    #[tokio::test]
    async fn a_panic_or_a_quiet_return_is_fatal_too() {
        let mut s = Supervisor::new();
        s.spawn("metrics-server", forever());
        s.spawn("node-watch", async { panic!("boom") });
        let ended = s.first_failure().await;
        assert_eq!(ended.task, "node-watch");
        assert!(ended.how.contains("panicked: boom"), "{ended}");

        let mut s = Supervisor::new();
        s.spawn_forever("healthz-server", async {});
        let ended = s.first_failure().await;
        assert_eq!(
            (ended.task, ended.how.as_str()),
            ("healthz-server", "stopped unexpectedly")
        );
    }

    #[tokio::test]
    async fn tasks_that_keep_running_are_not_reported() {
        let mut s = Supervisor::new();
        s.spawn("sync", forever());
        s.spawn_forever("server", std::future::pending());
        let waited = tokio::time::timeout(Duration::from_millis(100), s.first_failure()).await;
        assert!(waited.is_err(), "nothing ended");
    }
}
