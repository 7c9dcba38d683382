//! Connected UDP sockets whose backend left their Service are closed.
//!
//! The socket LB translates a connected UDP socket once, at connect(): such
//! a socket keeps sending to the backend it was given, even after that
//! backend left the Service (a resolver stays on a DNS pod that is gone).
//! After every sync that changes which backends the frontends hold, this
//! task finds the translations whose backend is no longer behind their
//! frontend (the socket revNAT map records each one with its socket's
//! cookie), visits every network namespace of the node's processes, and
//! closes the connected UDP sockets with those cookies and destinations
//! through sock_diag's SOCK_DESTROY. The application's next call fails with
//! ECONNABORTED and its reconnect gets a live backend. A socket that was
//! not translated by us (a pod talking to a pod IP) is never touched: only
//! a socket whose cookie our connect4 program recorded matches.
//!
//! Why not `bpf_sock_destroy` from a socket iterator (Linux 6.5+): aya
//! cannot relocate kfunc calls yet, an iterator too sees one namespace at a
//! time, and SOCK_DESTROY works on every kernel from 5.10 up that has
//! CONFIG_INET_DIAG_DESTROY (Debian's and Ubuntu's have).
//!
//! The agent must see the node's processes (`hostPID: true` in the
//! DaemonSet) to find the pods' namespaces.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs::File,
    io,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use proxy_common::{maps as names, SockRevNatKey, SockRevNatValue};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    ct_sweeper::{Live, LivePairs},
    maps::pinned,
    metrics::{Metrics, ReasonLabels},
    sock_diag::{Diag, DiagError, UdpSock, FAMILIES},
};

/// (socket cookie, backend address, backend port) of a translation.
pub type Translation = (u64, Ipv4Addr, u16);

/// The socket LB's translations whose backend no longer serves the
/// frontend they were made for. Those of frontends known not to be UDP
/// are left out: most Services are TCP, and a change to them then costs
/// no visit of the node's namespaces.
pub fn stale_translations(
    entries: &BTreeMap<SockRevNatKey, SockRevNatValue>,
    live: &Live,
) -> HashSet<Translation> {
    entries
        .iter()
        .filter(|(k, v)| {
            let rev = u32::from(v.rev_nat_id);
            !live.not_udp.contains(&rev) && !live.endpoints.contains(&(rev, k.ip(), k.port()))
        })
        .map(|(k, _)| (k.cookie, k.ip(), k.port()))
        .collect()
}

/// The sockets of `found` sending to a backend their translation lost.
pub fn to_close<'a>(
    found: &'a [UdpSock],
    stale: &'a HashSet<Translation>,
) -> impl Iterator<Item = &'a UdpSock> + 'a {
    found.iter().filter(|s| {
        s.destination()
            .is_some_and(|(ip, port)| stale.contains(&(s.cookie(), ip, port)))
    })
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Stale translations found in the socket revNAT map.
    pub stale: usize,
    /// Network namespaces visited.
    pub namespaces: usize,
    pub closed: u64,
    /// Failures by reason (setns, sock_diag, destroy, unsupported).
    pub errors: BTreeMap<&'static str, u64>,
    /// The first failure's text, for the log.
    pub first_error: Option<String>,
}

impl Outcome {
    fn failed(&mut self, reason: &'static str, e: &dyn std::fmt::Display) {
        *self.errors.entry(reason).or_insert(0) += 1;
        self.first_error
            .get_or_insert_with(|| format!("{reason}: {e}"));
    }
}

/// The network namespaces of the processes under `proc_dir`, one path
/// each (the first process found in it).
pub fn namespaces(proc_dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("ns/net");
        // A process may exit or deny us: it is simply not counted.
        if let Ok(m) = std::fs::metadata(&path) {
            if seen.insert((m.dev(), m.ino())) {
                out.push(path);
            }
        }
    }
    out
}

/// One pass: reads the translations, and if any went stale, closes their
/// sockets in every namespace on a thread of its own (setns changes only
/// the calling thread's namespace, and that thread ends with the pass).
pub fn pass(pin_dir: &Path, proc_dir: &Path, live: &Live) -> anyhow::Result<Outcome> {
    let entries: BTreeMap<SockRevNatKey, SockRevNatValue> =
        pinned::read_pinned_bounded(pin_dir, names::SOCK_REV_NAT)?;
    let stale = stale_translations(&entries, live);
    if stale.is_empty() {
        return Ok(Outcome::default());
    }
    let spaces = namespaces(proc_dir);
    let visit = std::thread::Builder::new()
        .name("udp-close".into())
        .spawn(move || close_in(&spaces, &stale))?;
    visit
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace visitor panicked"))
}

fn close_in(spaces: &[PathBuf], stale: &HashSet<Translation>) -> Outcome {
    let mut out = Outcome {
        stale: stale.len(),
        ..Outcome::default()
    };
    for path in spaces {
        match enter(path) {
            Ok(()) => {
                out.namespaces += 1;
                close_here(stale, &mut out);
            }
            // The process exited since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => out.failed("setns", &e),
        }
    }
    out
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: a plain syscall on a descriptor we own; it changes only this
    // thread's namespace (the visitor thread's, which ends with the pass).
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes the stale sockets of the calling thread's namespace.
fn close_here(stale: &HashSet<Translation>, out: &mut Outcome) {
    let mut diag = match Diag::open() {
        Ok(d) => d,
        Err(e) => return out.failed("sock_diag", &e),
    };
    for family in FAMILIES {
        let found = match diag.connected_udp(family) {
            Ok(f) => f,
            Err(e) => {
                out.failed("sock_diag", &e);
                continue;
            }
        };
        for s in to_close(&found, stale) {
            match diag.destroy(s) {
                Ok(()) => out.closed += 1,
                // Closed by its owner since the dump.
                Err(e) if e.kernel_errno() == Some(libc::ENOENT) => {}
                Err(e) => out.failed(destroy_reason(&e), &e),
            }
        }
    }
}

fn destroy_reason(e: &DiagError) -> &'static str {
    match e.kernel_errno() {
        Some(libc::EOPNOTSUPP) => "unsupported",
        _ => "destroy",
    }
}

/// Passes until the sync's sender is gone: one after each sync that
/// changed which backends the frontends hold (the first sync included, so
/// a restarted agent closes what went stale while it was away).
pub async fn run(
    pin_dir: PathBuf,
    metrics: Arc<Metrics>,
    mut live: watch::Receiver<LivePairs>,
) -> anyhow::Result<()> {
    loop {
        if live.changed().await.is_err() {
            return Ok(());
        }
        let Some(now) = live.borrow_and_update().clone() else {
            continue;
        };
        let dir = pin_dir.clone();
        let started = Instant::now();
        let done =
            tokio::task::spawn_blocking(move || pass(&dir, Path::new("/proc"), &now)).await?;
        match done {
            Ok(o) => record(&metrics, &o, started.elapsed()),
            Err(e) => {
                warn!(error = %e, "closing connected UDP sockets failed; retrying after the next change")
            }
        }
    }
}

fn record(metrics: &Metrics, o: &Outcome, took: Duration) {
    if o.closed > 0 {
        info!(
            closed = o.closed,
            namespaces = o.namespaces,
            ?took,
            "closed connected UDP sockets whose backend left their Service"
        );
    }
    metrics.udp_sockets_closed.inc_by(o.closed);
    for (reason, n) in &o.errors {
        metrics
            .udp_socket_close_errors
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc_by(*n);
    }
    if let Some(first) = &o.first_error {
        warn!(error = %first, failures = ?o.errors, "some connected UDP sockets could not be checked or closed");
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_sock_diag::{constants::AF_INET, inet::SocketId};
    use proptest::prelude::*;

    use super::*;

    fn key(cookie: u64, ip: [u8; 4], port: u16) -> SockRevNatKey {
        SockRevNatKey {
            cookie,
            addr_be: u32::from_ne_bytes(ip),
            port_be: port.to_be(),
            _pad: 0,
        }
    }

    fn value(rev: u16) -> SockRevNatValue {
        SockRevNatValue {
            addr_be: u32::from_ne_bytes([10, 96, 0, 10]),
            port_be: 53u16.to_be(),
            rev_nat_id: rev,
        }
    }

    fn sock(cookie: u64, ip: [u8; 4], port: u16) -> UdpSock {
        let mut id = SocketId::new_v4();
        id.destination_address = Ipv4Addr::from(ip).into();
        id.destination_port = port;
        id.cookie[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
        id.cookie[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        UdpSock {
            family: AF_INET,
            id,
        }
    }

    #[test]
    fn only_the_socket_on_the_departed_backend_is_closed() {
        let entries = BTreeMap::from([
            (key(1, [10, 244, 1, 5], 53), value(7)),
            (key(2, [10, 244, 2, 5], 53), value(7)),
        ]);
        let live = Live {
            endpoints: BTreeSet::from([(7, Ipv4Addr::new(10, 244, 2, 5), 53)]),
            ..Live::default()
        };
        let stale = stale_translations(&entries, &live);
        assert_eq!(
            stale,
            HashSet::from([(1, Ipv4Addr::new(10, 244, 1, 5), 53)])
        );
        let found = [
            sock(1, [10, 244, 1, 5], 53),
            sock(2, [10, 244, 2, 5], 53),
            // Same backend, but not a socket we translated.
            sock(3, [10, 244, 1, 5], 53),
            // Our socket, reconnected elsewhere since.
            sock(1, [10, 244, 9, 9], 53),
        ];
        let closed: Vec<_> = to_close(&found, &stale).collect();
        assert_eq!(closed, vec![&found[0]]);
    }

    #[test]
    fn translations_of_tcp_frontends_are_never_stale_for_the_udp_closer() {
        let entries = BTreeMap::from([(key(1, [10, 244, 1, 5], 80), value(9))]);
        let mut live = Live::default();
        assert_eq!(stale_translations(&entries, &live).len(), 1);
        live.not_udp.insert(9);
        assert!(stale_translations(&entries, &live).is_empty());
    }

    #[test]
    fn a_backend_that_moved_to_another_service_still_counts_as_gone_for_the_first() {
        let entries = BTreeMap::from([(key(1, [10, 244, 1, 5], 53), value(7))]);
        let live = Live {
            endpoints: BTreeSet::from([(8, Ipv4Addr::new(10, 244, 1, 5), 53)]),
            ..Live::default()
        };
        assert_eq!(stale_translations(&entries, &live).len(), 1);
    }

    #[test]
    fn the_namespaces_of_this_machine_include_our_own_once() {
        let ours = std::fs::metadata("/proc/self/ns/net").expect("own namespace");
        let all = namespaces(Path::new("/proc"));
        let same: Vec<_> = all
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .filter(|m| (m.dev(), m.ino()) == (ours.dev(), ours.ino()))
            .collect();
        assert_eq!(same.len(), 1, "{all:?}");
        assert!(namespaces(Path::new("/nonexistent")).is_empty());
    }

    proptest! {
        /// A socket whose translation is live is never closed, and every
        /// socket on a stale translation is.
        #[test]
        fn closes_exactly_the_sockets_on_stale_translations(
            flows in prop::collection::vec((0u64..20, 0u8..4, 0u16..3, any::<bool>()), 0..40),
        ) {
            let mut entries = BTreeMap::new();
            let mut live = Live::default();
            let mut found = Vec::new();
            for (cookie, host, rev, alive) in &flows {
                let ip = [10, 244, 0, *host];
                entries.insert(key(*cookie, ip, 53), value(*rev));
                if *alive {
                    live.endpoints.insert((u32::from(*rev), Ipv4Addr::from(ip), 53));
                }
                found.push(sock(*cookie, ip, 53));
            }
            let stale = stale_translations(&entries, &live);
            for s in &found {
                let (ip, port) = s.destination().expect("ipv4");
                let k = key(s.cookie(), ip.octets(), port);
                let v = entries[&k];
                let is_live = live.endpoints.contains(&(u32::from(v.rev_nat_id), ip, port));
                let closed = to_close(std::slice::from_ref(s), &stale).count() == 1;
                prop_assert_eq!(closed, !is_live);
            }
        }
    }
}
