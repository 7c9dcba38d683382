//! One TC datapath under test: the object the agent ships, its maps pinned
//! in a private bpffs and programmed by the agent's own sync pipeline, its
//! `tc_ingress`/`tc_egress` loaded but attached nowhere. Packets reach them
//! only through BPF_PROG_TEST_RUN, which hands them back to us: nothing is
//! sent anywhere.
use std::{net::Ipv4Addr, sync::Arc};

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, MapData, MapError},
    programs::{ProgramFd, SchedClassifier},
    Ebpf,
};
use bpfproxy_tests::{prog_test_run, PrivateBpffs};
use proxy_agent::{
    ct_filter::PinnedFilter,
    ct_sweeper, loader,
    maps::{
        pinned::{self, PinnedMaps},
        sizes::MapSizes,
        LbMaps,
    },
    metrics::Metrics,
    model::ModelConfig,
    node_addrs, node_links,
    snat_ports::SnatPorts,
    source::Snapshot,
    sync::Syncer,
};
use proxy_common::{maps as names, CtKey, CtValue};

/// The two TC programs.
#[derive(Clone, Copy, Debug)]
pub enum Prog {
    Ingress,
    Egress,
}

impl Prog {
    pub const BOTH: [Prog; 2] = [Prog::Ingress, Prog::Egress];

    pub fn name(self) -> &'static str {
        match self {
            Prog::Ingress => "tc_ingress",
            Prog::Egress => "tc_egress",
        }
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    // Dropped after `ebpf`: unmounting releases the pins.
    bpffs: PrivateBpffs,
}

impl Datapath {
    /// The map sizes the agent would use on this machine with no
    /// `--map-size-*` flag (the new-flow table's depends on the CPUs).
    pub fn sizes() -> MapSizes {
        MapSizes::default().for_this_machine()
    }

    /// Loads the object into a fresh private bpffs named after `suffix`:
    /// the agent's own, or `object` (another build, see `--baseline`),
    /// with the maps sized as [`Datapath::sizes`].
    pub fn load(suffix: &str, object: Option<&[u8]>) -> Result<Self> {
        let bpffs = PrivateBpffs::new(suffix)?;
        let (path, sizes) = (bpffs.path(), &Self::sizes());
        let ebpf = match object {
            None => loader::load_tc_unattached_with(path, sizes, SnatPorts::default()),
            Some(obj) => loader::load_tc_unattached_object(obj, path, sizes, SnatPorts::default()),
        }
        .context("loading the eBPF object and its TC programs")?;
        Ok(Self { ebpf, bpffs })
    }

    /// Programs the Services of `snap` exactly as the agent does (one full
    /// sync through the pinned maps), with `node` as the node address that
    /// answers NodePorts and that remote-backend traffic is SNATed to.
    /// Returns the service map's frontends and entries, read back from the
    /// kernel (proof that the maps hold what the bench claims).
    pub fn program(&self, snap: &Snapshot, node: Ipv4Addr) -> Result<(usize, usize)> {
        let dir = loader::pin_dir(self.bpffs.path());
        node_addrs::program(&dir, &node_addrs::entries(&[node]))?;
        node_links::program_current(&dir)?;
        let maps = PinnedMaps::open(&dir)?;
        let mut syncer = Syncer::new(maps, Arc::new(Metrics::new()), ModelConfig::default())?;
        let out = syncer.sync(snap, true)?;
        anyhow::ensure!(
            out.complete(),
            "sync left work undone ({} failed, {} held back)",
            out.failed,
            out.held_back
        );
        let services = syncer.maps().read_all()?.services;
        let frontends = services.keys().filter(|k| k.slot == 0).count();
        Ok((frontends, services.len()))
    }

    /// Rebuilds the conntrack filter as the agent's sweeper does on each
    /// pass, so new flows see a trusted filter as on a node with an agent
    /// running. False for an object without the filter (a `--baseline`
    /// from before it), whose programs always probe.
    pub fn rebuild_ct_filter(&self) -> Result<bool> {
        let dir = loader::pin_dir(self.bpffs.path());
        if !dir.join(names::CT_FILTER).exists() {
            return Ok(false);
        }
        ct_sweeper::rebuild_pinned_filter(&dir)?;
        anyhow::ensure!(
            PinnedFilter::open(&dir)?.filter().active().is_some(),
            "the conntrack filter is still untrusted after a rebuild"
        );
        Ok(true)
    }

    fn fd(&self, prog: Prog) -> Result<&ProgramFd> {
        let p: &SchedClassifier = self
            .ebpf
            .program(prog.name())
            .with_context(|| format!("{} missing", prog.name()))?
            .try_into()?;
        Ok(p.fd()?)
    }

    /// One run, for checking what a packet class does: (verdict, packet).
    pub fn run(&self, prog: Prog, pkt: &[u8]) -> Result<(u32, Vec<u8>)> {
        let r = prog_test_run::run(self.fd(prog)?, pkt, None)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", prog.name()))?;
        Ok((r.retval, r.data))
    }

    /// The kernel's time for running `prog` `repeat` times on `pkt`, per
    /// run, in ns. Each call starts from a fresh copy of `pkt`, but within
    /// one call every run sees the packet as the previous run left it.
    pub fn time(&self, prog: Prog, pkt: &[u8], repeat: u32) -> Result<u32> {
        prog_test_run::mean_ns(self.fd(prog)?, pkt, repeat)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", prog.name()))
    }

    /// The conntrack entry under `key`, if any: in the new-flow table
    /// (where a SYN's entries stay until the flow is confirmed) or the
    /// confirmed one.
    pub fn conntrack(&self, key: &CtKey) -> Result<Option<CtValue>> {
        for name in [names::CT_NEW, names::CONNTRACK] {
            let map = self
                .ebpf
                .map(name)
                .with_context(|| format!("map {name} missing"))?;
            let ct: HashMap<&MapData, CtKey, CtValue> = HashMap::try_from(map)?;
            match ct.get(key, 0) {
                Ok(v) => return Ok(Some(v)),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("reading map {name}")),
            }
        }
        Ok(None)
    }

    /// Removes the entries under `keys` from the new-flow table, as the
    /// agent's sweeper does once a flow expires (absent ones are skipped).
    pub fn forget(&mut self, keys: &[CtKey]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(names::CT_NEW)
            .context("new-flow conntrack map missing")?;
        let mut ct: HashMap<&mut MapData, CtKey, CtValue> = HashMap::try_from(map)?;
        for key in keys {
            pinned::remove(&mut ct, key, names::CT_NEW)?;
        }
        Ok(())
    }
}
