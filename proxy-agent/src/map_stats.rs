//! Entries and capacity of every BPF map, for `bpfproxy_map_entries` and
//! `bpfproxy_map_capacity_entries`.
//!
//! The maps the agent writes from its own state (frontends, backends,
//! revNAT, names, source ranges) are counted by the sync from what it
//! wrote. The others have no mirror in the agent: conntrack, affinity and
//! socket revNAT and the per-backend traffic counters, which the kernel
//! fills per connection; the node-address and device maps the node watch
//! rewrites; the counter arrays. Their keys
//! are walked here, every [`REFRESH_EVERY`] on the blocking pool, never on
//! the sync path. A walk visits at most max_entries keys (a map cannot hold
//! more, so a map churning under the walk cannot keep it going); under
//! churn the count is approximate, as any snapshot of an LRU map is.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::maps::MapInfo;
use proxy_common::maps as names;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// How often the maps without a mirror are counted: a walk of a full
/// conntrack map is a quarter million syscalls.
pub const REFRESH_EVERY: Duration = Duration::from_secs(15);

/// The maps whose keys are walked.
const WALKED: [&str; 7] = [
    names::BACKEND_STATS,
    names::SOCK_REV_NAT,
    names::AFFINITY,
    names::CONNTRACK,
    names::CT_NEW,
    names::NODE_ADDRS,
    names::DEVICES,
];

/// One map's numbers; `entries` None when the sync reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapStat {
    pub map: &'static str,
    pub entries: Option<u64>,
    pub capacity: u32,
}

/// The numbers of every map pinned in `dir`; maps that cannot be read
/// (pins gone while the agent re-pins them) are missing, with the error.
pub fn read(dir: &Path) -> (Vec<MapStat>, Vec<(&'static str, io::Error)>) {
    let mut stats = Vec::new();
    let mut errors = Vec::new();
    for map in names::ALL {
        match read_one(dir, map) {
            Ok(s) => stats.push(s),
            Err(e) => errors.push((map, e)),
        }
    }
    (stats, errors)
}

fn read_one(dir: &Path, map: &'static str) -> io::Result<MapStat> {
    let info = MapInfo::from_pin(dir.join(map)).map_err(io::Error::other)?;
    let capacity = info.max_entries();
    let entries = if [names::COUNTERS, names::SERVICE_STATS, names::CT_FILTER].contains(&map) {
        // An array always holds all its entries.
        Some(u64::from(capacity))
    } else if WALKED.contains(&map) {
        let fd = info.fd().map_err(io::Error::other)?;
        Some(count_keys(fd.as_fd(), info.key_size() as usize, capacity)?)
    } else {
        None
    };
    Ok(MapStat {
        map,
        entries,
        capacity,
    })
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// bpf_attr for BPF_MAP_GET_NEXT_KEY.
#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

/// Keys of the map `fd` (keys of `key_size` bytes), at most `max`.
fn count_keys(fd: BorrowedFd<'_>, key_size: usize, max: u32) -> io::Result<u64> {
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut n = 0u64;
    while n < u64::from(max) {
        let mut attr = NextKeyAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            // No key: the first key.
            key: if n == 0 { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: attr is a valid bpf_attr prefix; key and next point to
        // buffers of the map's key size that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &mut attr as *mut NextKeyAttr as *mut libc::c_void,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                break; // the last key
            }
            return Err(e);
        }
        n += 1;
        std::mem::swap(&mut key, &mut next);
    }
    Ok(n)
}

/// Sets the gauges from `stats`.
pub fn publish(metrics: &Metrics, stats: &[MapStat]) {
    for s in stats {
        metrics.set_map_gauge(&metrics.map_capacity, s.map, u64::from(s.capacity));
        if let Some(n) = s.entries {
            metrics.set_map_gauge(&metrics.map_entries, s.map, n);
        }
    }
}

/// Counts every [`REFRESH_EVERY`] until the task is dropped (the first
/// count at once). A map that cannot be read is logged once until it can
/// again; only a panic in a walk ends the task.
pub async fn run(dir: PathBuf, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let mut failing = false;
    loop {
        let d = dir.clone();
        let (stats, errors) = tokio::task::spawn_blocking(move || read(&d)).await?;
        publish(&metrics, &stats);
        match errors.first() {
            Some((map, e)) if !failing => {
                warn!(map, error = %e, "counting map entries; retrying");
                failing = true;
            }
            Some(_) => {}
            None => {
                if failing {
                    debug!("map entries counted again");
                }
                failing = false;
            }
        }
        tokio::time::sleep(REFRESH_EVERY).await;
    }
}
