//! `bpfproxy dump`: what the kernel holds, read from the pins by any process.
use std::path::Path;

use crate::{
    ct_filter::PinnedFilter,
    ct_sweeper::PinnedCt,
    datapath::{ct_gc::monotonic_now_s, flows, CtFilterView, DeviceView, DumpView},
    loader::pin_dir,
    maps::{pinned::PinnedMaps, LbMaps, MapsError},
    node_addrs, node_links, service_stats,
};

pub fn read(bpffs: &Path) -> Result<DumpView, MapsError> {
    let dir = pin_dir(bpffs);
    let maps = PinnedMaps::open(&dir)?;
    let mut view = DumpView::from_state(&maps.read_all()?);
    view.counters = maps.read_counters()?;
    let ids = view.frontends.iter().map(|fe| fe.rev_nat_id).collect();
    let stats = service_stats::read(&dir, &ids)?;
    for fe in &mut view.frontends {
        if let Some(s) = stats.get(&fe.rev_nat_id) {
            fe.traffic = service_stats::named(s);
        }
    }
    view.node_addresses = node_addrs::read(&dir)?
        .iter()
        .map(|a| a.to_string())
        .collect();
    view.devices = node_links::read(&dir)?
        .into_iter()
        .map(|(ifindex, d)| DeviceView {
            ifindex,
            snat: d.snat_ip().to_string(),
            mtu: d.mtu,
        })
        .collect();
    let (entries, unconfirmed) = PinnedCt::open(&dir)?.read()?;
    view.flows = flows(&entries, &unconfirmed, monotonic_now_s());
    // A pin from before the filter (programs not yet upgraded) has none.
    if let Ok(pinned) = PinnedFilter::open(&dir) {
        let filter = pinned.filter();
        view.conntrack_filter = Some(CtFilterView {
            trusted: filter.active().is_some(),
            cells_set: filter.set_cells(),
            cells: proxy_common::ct_filter::CELLS,
        });
    }
    Ok(view)
}
