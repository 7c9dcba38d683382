//! A background request loop that can be stopped at any moment: one `probe`
//! process per request (`probe tcp --count 1`, `probe udp --count 1`), so
//! every request is a fresh connection or a fresh socket (a new flow for
//! conntrack), started every `interval` until [`RequestLoop::finish`].
//!
//! A request that fails (no answer within the probe's timeout, a reset, a
//! refusal) is counted; a probe that cannot run or prints no report is a
//! harness error and ends the loop with that error, so a broken harness is
//! never mistaken for a broken datapath or hidden among successes.
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;

use crate::process;

/// Failure messages kept per loop.
const MAX_KEPT: usize = 20;

/// Builds the command of one request (the probe with its arguments, in the
/// client's namespace and cgroup).
pub type MakeRequest = Box<dyn Fn() -> Result<Command> + Send>;

/// What one probe run printed (the fields `probe tcp` and `probe udp`
/// share).
#[derive(Debug, Deserialize)]
struct OneReport {
    ok: u64,
    failed: u64,
    by_backend: BTreeMap<String, u64>,
    errors: Vec<String>,
}

/// What a loop counted.
#[derive(Debug, Clone, Default)]
pub struct LoopTally {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Answers per backend name.
    pub by_backend: BTreeMap<String, u64>,
    /// The first failures, each `t=<ms since epoch> <error>`.
    pub failures: Vec<String>,
    /// The longest a request took (the probe process included).
    pub slowest: Duration,
}

/// See the module documentation. Dropping it stops the loop.
pub struct RequestLoop {
    name: String,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<LoopTally>>>,
}

impl RequestLoop {
    /// Starts requests every `interval`; failure times are reported in ms
    /// since `epoch` (the test's own clock, to line them up with its
    /// events). `timeout` bounds one probe run.
    pub fn spawn(
        name: &str,
        make: MakeRequest,
        interval: Duration,
        timeout: Duration,
        epoch: Instant,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || run(&make, interval, timeout, epoch, &flag));
        RequestLoop {
            name: name.to_string(),
            stop,
            handle: Some(handle),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the loop after the request in flight and returns its tally.
    pub fn finish(mut self) -> Result<LoopTally> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().context("loop already finished")?;
        h.join()
            .map_err(|_| anyhow!("request loop {} panicked", self.name))?
            .with_context(|| format!("request loop {}", self.name))
    }
}

impl Drop for RequestLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    make: &MakeRequest,
    interval: Duration,
    timeout: Duration,
    epoch: Instant,
    stop: &AtomicBool,
) -> Result<LoopTally> {
    let mut t = LoopTally::default();
    let start = Instant::now();
    let mut runs: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let mut cmd = make()?;
        let shown = process::describe(&cmd);
        let out = process::run_with_timeout(&mut cmd, timeout)?;
        let r: OneReport = serde_json::from_str(&out)
            .with_context(|| format!("parsing the output of `{shown}`: {out}"))?;
        t.slowest = t.slowest.max(began.elapsed());
        t.sent += r.ok + r.failed;
        t.ok += r.ok;
        t.failed += r.failed;
        for (name, n) in r.by_backend {
            *t.by_backend.entry(name).or_default() += n;
        }
        let at = began.duration_since(epoch).as_millis();
        for e in r.errors {
            if t.failures.len() < MAX_KEPT {
                t.failures.push(format!("t={at}ms {e}"));
            }
        }
        // A steady rate: the next request starts `interval` after the
        // previous one did, or at once if that one took longer.
        runs = runs.saturating_add(1);
        let next = start + interval * runs;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(t)
}
