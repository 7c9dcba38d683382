//! Harness for bpfproxy's privileged test tiers, benches and the demo.
//!
//! Every resource a test creates is a guard that removes it on drop: network
//! namespaces ([`netns::Netns`]), veth pairs ([`veth::VethPair`]), cgroups
//! ([`cgroup::TestCgroup`]), bpffs mounts ([`bpffs::PrivateBpffs`]), agent
//! processes ([`agent::Agent`]), and the whole [`sandbox::Sandbox`] built from
//! them. Names carry the pid (`bpfpt-<pid>-…`), so tests running in parallel
//! processes (nextest) never collide, and leftovers of a crashed run can be
//! found by prefix ([`NAME_PREFIX`]).
//!
//! Network safety: clients only run inside test namespaces whose only link is
//! the test's veth and which have no default route; programs attach to a
//! child cgroup, never the root; nothing is sent from the root namespace.

pub mod agent;
pub mod apiserver;
pub mod bpffs;
pub mod cgroup;
pub mod cluster;
pub mod container;
pub mod event_clock;
pub mod flood;
pub mod forward;
pub mod interrupt;
pub mod manifest;
pub mod multinode;
pub mod netns;
pub mod node_net;
pub mod packet;
pub mod paths;
pub mod privilege;
pub mod probe_server;
pub mod process;
pub mod prog_test_run;
pub mod reports;
pub mod request_loop;
pub mod sandbox;
pub mod shapes;
pub mod veth;
pub mod wireguard;

pub use agent::{Agent, AgentConfig};
pub use bpffs::PrivateBpffs;
pub use cgroup::TestCgroup;
pub use netns::Netns;
pub use paths::{bpfproxy_bin, probe_bin};
pub use privilege::require_root;
pub use reports::{ConnectTimeReport, TcpReport, UdpConnectedReport, UdpReport};
pub use sandbox::{HoldConn, Sandbox, SandboxConfig};
pub use veth::VethPair;

use std::collections::BTreeSet;
use std::sync::Mutex;

use anyhow::{bail, Result};

/// Names (by kind) held by live guards of this process.
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// A name held by a live guard of this process; released on drop.
///
/// Guards remove a *stale* object of their name (left by a crashed process
/// that had our pid) before creating theirs; the claim makes sure they never
/// mistake a live object of this very process for a stale one.
#[derive(Debug)]
pub(crate) struct NameClaim(String);

impl Drop for NameClaim {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.remove(&self.0);
        }
    }
}

/// Claims `bpfpt-<pid>-<suffix>` for a guard of `kind`; fails if a live
/// guard of this process holds it.
pub(crate) fn claim(kind: &str, suffix: &str) -> Result<(String, NameClaim)> {
    let name = unique_name(suffix)?;
    let key = format!("{kind}:{name}");
    let mut live = LIVE
        .lock()
        .map_err(|_| anyhow::anyhow!("name registry poisoned"))?;
    if !live.insert(key.clone()) {
        bail!("{kind} {name} is already in use in this process; pick another suffix");
    }
    Ok((name, NameClaim(key)))
}

/// Every namespace, cgroup and mount of this harness starts with this
/// (cleanup sweeps look for it).
pub const NAME_PREFIX: &str = "bpfpt-";

/// `bpfpt-<pid>-<suffix>`: unique per process, ≤ 28 bytes.
pub fn unique_name(suffix: &str) -> Result<String> {
    if suffix.is_empty()
        || suffix.len() > 12
        || !suffix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        bail!("name suffix {suffix:?} must be 1-12 characters of [A-Za-z0-9-]");
    }
    Ok(format!("{NAME_PREFIX}{}-{suffix}", std::process::id()))
}
