//! When the sync runs, as a pure state machine over explicit instants (the
//! shape of kube-proxy's bounded-frequency runner): the async loop in
//! `sync::run` only feeds it events and sleeps until the instant it names,
//! so every timing rule is unit-tested without sleeping.
//!
//! The rules:
//! - a change after a quiet period runs at once; one right after a run waits
//!   until `min_interval` has passed since that run ended, and all the
//!   changes of that wait coalesce into one run (no fixed sleep after every
//!   run);
//! - a run that left work undone is retried `retry` after it ended, sooner
//!   than the period;
//! - `period` after the last full run, a full run re-reads the maps and
//!   repairs drift, even while changes keep coming (a busy cluster would
//!   otherwise never repair its maps);
//! - writes of a run only the period called for are drift, counted as such;
//!   not those of the first run, of a retry, or of a run a change called for.
use std::time::{Duration, Instant};

/// The runner's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Least time from the end of one run to the start of the next.
    pub min_interval: Duration,
    /// Most time between two full runs.
    pub period: Duration,
    /// Time from a run that left work undone to its retry.
    pub retry: Duration,
}

/// One run to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Re-read the maps instead of trusting the last complete write.
    pub full: bool,
    /// Whatever this run writes is drift: nothing asked for a change.
    pub count_drift: bool,
}

/// What the loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run now, then report with [`Runner::finished`].
    Run(Run),
    /// Nothing is due before this instant (unless a change arrives).
    WaitUntil(Instant),
}

/// The state machine: what happened so far, nothing about how to sleep.
#[derive(Debug)]
pub struct Runner {
    timing: Timing,
    /// A change arrived that no run has started with yet.
    pending: bool,
    /// When the last run ended (none yet: the first run waits for nothing).
    last_end: Option<Instant>,
    /// When the last full run ended (or the runner was made): the period
    /// counts from here.
    last_full: Instant,
    /// When the retry of an incomplete run is due.
    retry_at: Option<Instant>,
    /// The run started and not yet reported.
    running: Option<Run>,
}

impl Runner {
    /// A runner whose first run is due at once: the initial state (the node
    /// addresses, the maps left by a previous agent) is itself a change.
    pub fn new(timing: Timing, now: Instant) -> Self {
        Self {
            timing,
            pending: true,
            last_end: None,
            last_full: now,
            retry_at: None,
            running: None,
        }
    }

    /// The objects or the node addresses changed.
    pub fn changed(&mut self) {
        self.pending = true;
    }

    /// What to do at `now`: run (and then report with [`Runner::finished`])
    /// or wait.
    pub fn poll(&mut self, now: Instant) -> Next {
        let when = self.next_due();
        if when > now {
            return Next::WaitUntil(when);
        }
        let first = self.last_end.is_none();
        let retry_due = self.retry_at.is_some_and(|t| t <= now);
        let period_due = self.last_full + self.timing.period <= now;
        let run = Run {
            full: first || retry_due || period_due || !self.pending,
            count_drift: !first && !retry_due && !self.pending,
        };
        self.pending = false;
        self.retry_at = None;
        self.running = Some(run);
        Next::Run(run)
    }

    /// The run from the last [`Runner::poll`] ended at `now`; `complete`:
    /// it left no work undone (else it is retried).
    pub fn finished(&mut self, now: Instant, complete: bool) {
        if self.running.take().is_some_and(|r| r.full) {
            self.last_full = now;
        }
        self.last_end = Some(now);
        self.retry_at = (!complete).then(|| now + self.timing.retry);
    }

    /// The earliest instant a run is due: a pending change, a retry or the
    /// period, but never sooner than `min_interval` after the last run.
    fn next_due(&self) -> Instant {
        let period = self.last_full + self.timing.period;
        let earliest = self.last_end.map(|t| t + self.timing.min_interval);
        let due = match (self.pending, self.retry_at) {
            (true, _) => earliest.unwrap_or(self.last_full),
            (false, Some(retry)) => retry.min(period),
            (false, None) => period,
        };
        earliest.map_or(due, |e| due.max(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const PERIOD: Duration = Duration::from_secs(30);
    const RETRY: Duration = Duration::from_secs(2);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timing(min_interval: Duration) -> Timing {
        Timing {
            min_interval,
            period: PERIOD,
            retry: RETRY,
        }
    }

    /// A runner made at `t0` whose first run (at `t0`, taking no time)
    /// is over: the state every later test starts from.
    fn after_first_run(t0: Instant, min_interval: Duration) -> Runner {
        let mut r = Runner::new(timing(min_interval), t0);
        let first = r.poll(t0);
        assert_eq!(
            first,
            Next::Run(Run {
                full: true,
                count_drift: false
            }),
            "the first run is at once, re-reads the maps and is no drift"
        );
        r.finished(t0, true);
        r
    }

    const CHANGE: Next = Next::Run(Run {
        full: false,
        count_drift: false,
    });
    const RESYNC: Next = Next::Run(Run {
        full: true,
        count_drift: true,
    });
    const RETRYING: Next = Next::Run(Run {
        full: true,
        count_drift: false,
    });

    #[test]
    fn a_burst_runs_once_at_once_and_once_more_after_min_interval() {
        let t0 = Instant::now();
        let mut r = after_first_run(t0, MIN);
        let quiet = t0 + ms(5000);
        r.changed();
        assert_eq!(r.poll(quiet), CHANGE, "after a quiet period: at once");
        r.finished(quiet, true);
        // 100 changes over the next 10 ms.
        for i in 0..100 {
            r.changed();
            let now = quiet + Duration::from_micros(100 * i);
            assert_eq!(r.poll(now), Next::WaitUntil(quiet + MIN), "change {i}");
        }
        assert_eq!(r.poll(quiet + MIN - ms(1)), Next::WaitUntil(quiet + MIN));
        assert_eq!(r.poll(quiet + MIN), CHANGE, "the burst, coalesced");
        r.finished(quiet + MIN, true);
        assert_eq!(
            r.poll(quiet + MIN + ms(1)),
            Next::WaitUntil(t0 + PERIOD),
            "then nothing until the period"
        );
    }

    #[test]
    fn without_a_min_interval_every_change_runs_at_once() {
        let t0 = Instant::now();
        let mut r = after_first_run(t0, Duration::ZERO);
        for i in 1..5 {
            let now = t0 + ms(i);
            r.changed();
            assert_eq!(r.poll(now), CHANGE);
            r.finished(now, true);
        }
    }

    #[test]
    fn the_min_interval_counts_from_the_end_of_a_long_run() {
        let t0 = Instant::now();
        let mut r = after_first_run(t0, MIN);
        let start = t0 + ms(5000);
        r.changed();
        assert_eq!(r.poll(start), CHANGE);
        r.changed(); // arrives while the run takes 3 s
        let end = start + ms(3000);
        r.finished(end, true);
        assert_eq!(r.poll(end), Next::WaitUntil(end + MIN));
        assert_eq!(r.poll(end + MIN), CHANGE);
    }

    #[test]
    fn an_incomplete_run_is_retried_after_retry_and_its_writes_are_no_drift() {
        let t0 = Instant::now();
        let mut r = after_first_run(t0, MIN);
        let fail = t0 + ms(4000);
        r.changed();
        assert_eq!(r.poll(fail), CHANGE);
        r.finished(fail, false);
        assert_eq!(r.poll(fail + ms(10)), Next::WaitUntil(fail + RETRY));
        assert_eq!(
            r.poll(fail + RETRY),
            RETRYING,
            "re-reads what the failure left"
        );
        r.finished(fail + RETRY, true);
        assert_eq!(r.poll(fail + RETRY), Next::WaitUntil(fail + RETRY + PERIOD));
    }

    #[test]
    fn a_retry_is_never_sooner_than_min_interval() {
        let t0 = Instant::now();
        let slow = Duration::from_secs(5);
        let mut r = after_first_run(t0, slow);
        let fail = t0 + ms(10_000);
        r.changed();
        assert_eq!(r.poll(fail), CHANGE);
        r.finished(fail, false);
        assert_eq!(r.poll(fail + RETRY), Next::WaitUntil(fail + slow));
        assert_eq!(r.poll(fail + slow), RETRYING);
    }

    #[test]
    fn a_change_does_not_wait_for_a_pending_retry_and_a_due_retry_reads_the_maps() {
        let t0 = Instant::now();
        let mut r = after_first_run(t0, Duration::ZERO);
        r.changed();
        assert_eq!(r.poll(t0 + ms(10)), CHANGE);
        r.finished(t0 + ms(10), false);
        r.changed();
        assert_eq!(r.poll(t0 + ms(20)), CHANGE, "a change does not wait");
        r.finished(t0 + ms(20), false);
        r.changed();
        assert_eq!(r.poll(t0 + ms(20) + RETRY), RETRYING);
    }

    #[test]
    fn a_quiet_runner_resyncs_every_period_and_counts_drift() {
        let t0 = Instant::now();
        let mut r = after_first_run(t0, MIN);
        assert_eq!(r.poll(t0 + ms(1)), Next::WaitUntil(t0 + PERIOD));
        assert_eq!(r.poll(t0 + PERIOD), RESYNC);
        r.finished(t0 + PERIOD, true);
        assert_eq!(r.poll(t0 + PERIOD), Next::WaitUntil(t0 + PERIOD * 2));
        // A late wake-up (a loaded machine) still resyncs once.
        assert_eq!(r.poll(t0 + PERIOD * 3), RESYNC);
    }

    #[test]
    fn steady_changes_do_not_hold_off_the_full_resync() {
        let t0 = Instant::now();
        let mut r = after_first_run(t0, Duration::ZERO);
        let mut now = t0;
        let mut full = 0;
        // A change every 5 s for two periods.
        while now < t0 + PERIOD * 2 {
            now += ms(5000);
            r.changed();
            let Next::Run(run) = r.poll(now) else {
                panic!("a change after 5 s runs at once")
            };
            assert!(!run.count_drift, "a change's writes are no drift");
            full += usize::from(run.full);
            r.finished(now, true);
        }
        assert_eq!(full, 2, "one full run per period");
    }

    #[test]
    fn an_incomplete_first_run_is_retried_and_is_not_drift() {
        let t0 = Instant::now();
        let mut r = Runner::new(timing(MIN), t0);
        assert!(matches!(r.poll(t0), Next::Run(_)));
        r.finished(t0, false);
        assert_eq!(r.poll(t0), Next::WaitUntil(t0 + RETRY));
        assert_eq!(r.poll(t0 + RETRY), RETRYING);
    }
}
