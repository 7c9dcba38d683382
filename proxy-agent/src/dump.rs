//! `bpfproxy dump`: what the kernel holds, read from the pins by any process.
use std::path::Path;

use crate::{
    datapath::DumpView,
    loader::pin_dir,
    maps::{pinned::PinnedMaps, LbMaps, MapsError},
};

pub fn read(bpffs: &Path) -> Result<DumpView, MapsError> {
    let maps = PinnedMaps::open(&pin_dir(bpffs))?;
    let mut view = DumpView::from_state(&maps.read_all()?);
    view.counters = maps.read_counters()?;
    Ok(view)
}
