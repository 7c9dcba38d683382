//! kube-proxy's health rules (`:10256` `/healthz` and `/livez`), as pure
//! functions over a few timestamps, and the shared state that feeds them.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, SystemTime},
};

use serde::Serialize;

/// Timestamps the sync loop and the sources update.
#[derive(Debug, Default)]
pub struct ProxierHealth {
    times: Mutex<Times>,
    /// False while this Node is being deleted (or tainted for deletion by
    /// the cluster autoscaler): load balancers should drain it.
    node_ineligible: AtomicBool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Times {
    last_updated: Option<SystemTime>,
    /// The oldest change queued since the last completed sync.
    oldest_pending: Option<SystemTime>,
}

/// The JSON body of `/healthz` and `/livez`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub last_updated: String,
    pub current_time: String,
    pub node_eligible: bool,
    pub healthy: bool,
}

impl ProxierHealth {
    pub fn queued(&self, now: SystemTime) {
        if let Ok(mut t) = self.times.lock() {
            t.oldest_pending.get_or_insert(now);
        }
    }

    /// A sync finished and applied everything queued before `started`.
    pub fn updated(&self, started: SystemTime, now: SystemTime) {
        if let Ok(mut t) = self.times.lock() {
            t.last_updated = Some(now);
            if t.oldest_pending.is_some_and(|q| q <= started) {
                t.oldest_pending = None;
            }
        }
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.node_ineligible.store(!eligible, Ordering::Relaxed);
    }

    /// `/healthz` (`livez` = false) or `/livez` (`livez` = true), and
    /// whether it answers 200.
    pub fn report(&self, now: SystemTime, timeout: Duration, livez: bool) -> HealthReport {
        let times = self.times.lock().map(|t| *t).unwrap_or_default();
        let node_eligible = !self.node_ineligible.load(Ordering::Relaxed);
        evaluate(
            now,
            times.last_updated,
            times.oldest_pending,
            timeout,
            // /livez ignores node eligibility: a node being drained is
            // still alive and must not be restarted for it.
            if livez { true } else { node_eligible },
        )
    }
}

/// kube-proxy's rule: unhealthy when a queued change has waited longer than
/// `timeout` (2 × sync period) without a sync applying it, or, for
/// `/healthz`, while the node is not eligible. A healthy answer reports
/// `lastUpdated` as now, as kube-proxy does for old clients.
pub fn evaluate(
    now: SystemTime,
    last_updated: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
    timeout: Duration,
    node_eligible: bool,
) -> HealthReport {
    let stuck =
        oldest_pending.is_some_and(|q| now.duration_since(q).unwrap_or(Duration::ZERO) >= timeout);
    let healthy = !stuck && node_eligible;
    let last = if healthy { Some(now) } else { last_updated };
    HealthReport {
        last_updated: last.map(format_time).unwrap_or_default(),
        current_time: format_time(now),
        node_eligible,
        healthy,
    }
}

fn format_time(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(60);

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn a_change_pending_longer_than_the_timeout_is_unhealthy() {
        assert!(evaluate(at(100), Some(at(0)), Some(at(41)), T, true).healthy);
        let r = evaluate(at(100), Some(at(0)), Some(at(40)), T, true);
        assert!(!r.healthy);
        assert_eq!(
            r.last_updated, "2023-11-14T22:13:20Z",
            "the real last update"
        );
    }

    #[test]
    fn nothing_pending_is_healthy_even_long_after_the_last_sync() {
        let r = evaluate(at(10_000), Some(at(0)), None, T, true);
        assert!(r.healthy);
        assert_eq!(r.last_updated, r.current_time);
    }

    #[test]
    fn an_ineligible_node_is_unhealthy() {
        let r = evaluate(at(1), None, None, T, false);
        assert!(!r.healthy);
        assert!(!r.node_eligible);
    }

    #[test]
    fn a_sync_clears_only_changes_queued_before_it_started() {
        let h = ProxierHealth::default();
        h.queued(at(0));
        h.updated(at(0), at(1));
        assert!(h.report(at(1000), T, false).healthy);
        h.queued(at(2000));
        h.updated(at(1999), at(2001)); // started before the change
        assert!(!h.report(at(2100), T, false).healthy);
    }

    #[test]
    fn livez_ignores_node_eligibility() {
        let h = ProxierHealth::default();
        h.set_node_eligible(false);
        assert!(h.report(at(0), T, true).healthy);
        assert!(!h.report(at(0), T, false).healthy);
    }
}
