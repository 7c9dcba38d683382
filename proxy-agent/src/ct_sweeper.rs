//! Conntrack garbage collection, beside the sync: its own task with its own
//! handles of the two conntrack tables, so a Service change never waits for
//! a walk of a quarter million entries. The sync publishes which (revNAT id,
//! backend id) pairs its frontends hold; a pass runs every [`PERIOD`] and at
//! once when those pairs change (a UDP flow to a departed backend goes
//! within a pass, not a period). Each pass reads at most twice a table's
//! capacity of keys: an LRU churning under the walk restarts the kernel's
//! key iteration, and this bound ends it anyway. A pass also rebuilds the
//! confirmed-table filter from its walk (see [`ct_filter`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use proxy_common::{maps as names, CtKey, CtValue};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{
    ct_filter::{self, Filter, PinnedFilter},
    datapath::ct_gc::{self, CtExpiry, CtTimeouts},
    maps::{pinned, MapsError},
    metrics::{Metrics, ReasonLabels},
    service_stats,
};

/// How often a pass runs when nothing changes: a tenth of the shortest
/// timeout, so an idle flow outlives its timeout by at most that much.
pub const PERIOD: Duration = Duration::from_secs(12);

/// Which backends the frontends hold after a sync, for the cleanups that
/// run beside it (this one, and the closing of connected UDP sockets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// (revNAT id, backend id) of every frontend slot.
    pub pairs: BTreeSet<(u32, u32)>,
    /// (revNAT id, backend address, backend port) of every frontend slot.
    pub endpoints: BTreeSet<(u32, Ipv4Addr, u16)>,
    /// revNAT ids of the frontends that are not UDP: their sockets are
    /// none of the connected UDP sockets' business.
    pub not_udp: BTreeSet<u32>,
}

/// What the sync publishes; None until the first sync (before it, every
/// UDP flow would look orphaned).
pub type LivePairs = Option<Arc<Live>>;

/// Conntrack entries by key.
pub type CtEntries = BTreeMap<CtKey, CtValue>;

/// Both conntrack tables, as a pass sees them.
pub trait CtTables {
    /// The entries of both tables, each walk bounded (see the module
    /// docs); a key in both (a flow being confirmed) shows its confirmed
    /// entry.
    fn snapshot(&self) -> Result<CtEntries, MapsError>;
    /// Deletes `k` from both tables; a missing key is success.
    fn delete(&mut self, k: &CtKey) -> Result<(), MapsError>;
}

/// A snapshot of one table in a test, or a table nobody else writes.
impl CtTables for CtEntries {
    fn snapshot(&self) -> Result<CtEntries, MapsError> {
        Ok(self.clone())
    }
    fn delete(&mut self, k: &CtKey) -> Result<(), MapsError> {
        self.remove(k);
        Ok(())
    }
}

/// The kernel's tables, opened from their pins.
pub struct PinnedCt {
    confirmed: HashMap<MapData, CtKey, CtValue>,
    new: HashMap<MapData, CtKey, CtValue>,
    /// Walk bounds of the two tables.
    limits: (usize, usize),
}

impl PinnedCt {
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        Ok(Self {
            confirmed: pinned::open(dir, names::CONNTRACK)?,
            new: pinned::open(dir, names::CT_NEW)?,
            limits: (
                pinned::walk_limit(dir, names::CONNTRACK),
                pinned::walk_limit(dir, names::CT_NEW),
            ),
        })
    }

    /// The entries of both tables, each walk bounded (a key in both, a
    /// flow being confirmed, shows its confirmed entry), and the keys that
    /// came from the new-flow table alone.
    pub fn read(&self) -> Result<(CtEntries, BTreeSet<CtKey>), MapsError> {
        let (all, unconfirmed, _) = self.walk()?;
        Ok((all, unconfirmed))
    }

    /// [`PinnedCt::read`], and whether the walk of the confirmed table
    /// reached its end (what a filter rebuild needs).
    fn walk(&self) -> Result<(CtEntries, BTreeSet<CtKey>, bool), MapsError> {
        let mut all = pinned::bounded_read(&self.new, names::CT_NEW, self.limits.1)?;
        let (confirmed, complete) =
            pinned::bounded_walk(&self.confirmed, names::CONNTRACK, self.limits.0)?;
        let unconfirmed = all
            .keys()
            .filter(|k| !confirmed.contains_key(k))
            .copied()
            .collect();
        all.extend(confirmed);
        Ok((all, unconfirmed, complete))
    }
}

impl CtTables for PinnedCt {
    fn snapshot(&self) -> Result<CtEntries, MapsError> {
        Ok(self.read()?.0)
    }

    fn delete(&mut self, k: &CtKey) -> Result<(), MapsError> {
        // From both: the entry may have moved tables since the snapshot.
        pinned::remove(&mut self.confirmed, k, names::CONNTRACK)?;
        pinned::remove(&mut self.new, k, names::CT_NEW)
    }
}

/// One pass over `tables`: deletes what [`ct_gc::expired_flows`] names
/// and returns how many by reason.
pub fn pass(
    tables: &mut dyn CtTables,
    live: &BTreeSet<(u32, u32)>,
    now_s: u32,
    timeouts: &CtTimeouts,
) -> Result<BTreeMap<CtExpiry, usize>, MapsError> {
    let entries = tables.snapshot()?;
    expire(tables, &entries, live, now_s, timeouts)
}

/// [`pass`] over the kernel's tables that also rebuilds the confirmed-table
/// filter from the same walk (see [`ct_filter`]); a walk the bound cut
/// leaves the filter as it was (still right, only less sharp).
pub fn pass_with_filter(
    tables: &mut PinnedCt,
    filter: &Filter<'_>,
    live: &BTreeSet<(u32, u32)>,
    now_s: u32,
    timeouts: &CtTimeouts,
) -> Result<BTreeMap<CtExpiry, usize>, MapsError> {
    let entries = rebuild_filter(tables, filter)?;
    expire(tables, &entries, live, now_s, timeouts)
}

/// Rebuilds the filter's inactive generation from a walk of both tables
/// and makes it the active one if the walk was complete; returns what the
/// walk read.
pub fn rebuild_filter(tables: &PinnedCt, filter: &Filter<'_>) -> Result<CtEntries, MapsError> {
    let rebuild = filter.begin();
    std::thread::sleep(ct_filter::IN_FLIGHT);
    let (entries, _, complete) = tables.walk()?;
    if complete {
        filter.finish(rebuild, entries.keys());
    } else {
        debug!("conntrack walk cut by its bound; the filter keeps its generation");
    }
    Ok(entries)
}

/// [`rebuild_filter`] over the tables and filter pinned in `dir`: the
/// state after an agent's first sweep, for datapaths loaded without an
/// agent (program tests, the TC benchmark).
pub fn rebuild_pinned_filter(dir: &Path) -> anyhow::Result<()> {
    let filter = PinnedFilter::open(dir).context("mapping the conntrack filter")?;
    rebuild_filter(&PinnedCt::open(dir)?, &filter.filter())?;
    Ok(())
}

/// Deletes what [`ct_gc::expired_flows`] names among `entries`.
fn expire(
    tables: &mut dyn CtTables,
    entries: &CtEntries,
    live: &BTreeSet<(u32, u32)>,
    now_s: u32,
    timeouts: &CtTimeouts,
) -> Result<BTreeMap<CtExpiry, usize>, MapsError> {
    let mut done = BTreeMap::new();
    for (k, why) in ct_gc::expired_flows(entries, now_s, live, timeouts) {
        tables.delete(&k)?;
        *done.entry(why).or_insert(0) += 1;
    }
    Ok(done)
}

/// Passes until the sync's sender is gone: every [`PERIOD`], and when the
/// live pairs change. A failed pass is logged and tried again next time.
pub async fn run(
    pin_dir: PathBuf,
    metrics: Arc<Metrics>,
    mut live: watch::Receiver<LivePairs>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = live.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
        let Some(live_now) = live.borrow_and_update().clone() else {
            continue;
        };
        let dir = pin_dir.clone();
        let started = Instant::now();
        let done = tokio::task::spawn_blocking(move || {
            let mut tables = PinnedCt::open(&dir)?;
            let now = ct_gc::monotonic_now_s();
            // The per-backend traffic counters of departed pairs go too.
            if let Err(e) = service_stats::prune_backends(&dir, &live_now.pairs) {
                warn!(error = %e, "pruning per-backend counters failed; retrying next pass");
            }
            let timeouts = CtTimeouts::default();
            match PinnedFilter::open(&dir) {
                Ok(f) => pass_with_filter(&mut tables, &f.filter(), &live_now.pairs, now, &timeouts),
                Err(e) => {
                    // The programs keep marking it: it stays right, only
                    // fills up until a pass can rebuild it again.
                    warn!(error = %e, "opening the conntrack filter failed; sweeping without rebuilding it");
                    pass(&mut tables, &live_now.pairs, now, &timeouts)
                }
            }
        })
        .await?;
        match done {
            Ok(done) => record(&metrics, &done, started.elapsed()),
            Err(e) => warn!(error = %e, "conntrack cleanup failed; retrying next pass"),
        }
    }
}

fn record(metrics: &Metrics, done: &BTreeMap<CtExpiry, usize>, took: Duration) {
    for (why, n) in done {
        debug!(
            reason = why.as_str(),
            entries = n,
            ?took,
            "conntrack entries removed"
        );
        metrics
            .conntrack_gc
            .get_or_create(&ReasonLabels {
                reason: why.as_str().to_string(),
            })
            .inc_by(*n as u64);
    }
}
