//! The agent's half of the confirmed-table filter (see
//! `proxy_common::ct_filter`): rebuilding a generation from a complete walk
//! of the confirmed table, so cells of flows that ended clear again.
//!
//! The filter is shared memory (an mmapable array): the programs store
//! single bytes, and so does the agent, through atomics, never a whole
//! value that would overwrite a cell a program just set.
use std::{
    io,
    os::fd::AsFd,
    path::Path,
    sync::atomic::{fence, AtomicU32, AtomicU8, Ordering},
    time::Duration,
};

use aya::maps::MapData;
use memmap2::{MmapMut, MmapOptions};
use proxy_common::{
    ct_filter::{self, CtFilter, CELLS, INVALID},
    maps as names, CtKey,
};

/// Between clearing a generation and walking the table: longer than any
/// program run, so a program that marked a key just before the clear
/// (which may undo the mark) has inserted the key by the time the walk
/// starts; keys marked after the clear keep their marks.
pub const IN_FLIGHT: Duration = Duration::from_millis(2);

/// The filter's memory as the agent accesses it: [`CtFilter`]'s layout,
/// every field atomic (the kernel's programs write the same bytes).
#[repr(C)]
pub struct SharedFilter {
    state: AtomicU32,
    _pad: AtomicU32,
    cells: [[AtomicU8; CELLS]; 2],
}

// The view must match the kernel's value byte for byte.
const _: () = assert!(size_of::<SharedFilter>() == size_of::<CtFilter>());
const _: () = assert!(align_of::<SharedFilter>() == align_of::<CtFilter>());

impl SharedFilter {
    /// A zeroed filter (no generation trusted), e.g. for tests.
    pub fn new() -> Box<Self> {
        Box::new(Self {
            state: AtomicU32::new(INVALID),
            _pad: AtomicU32::new(0),
            cells: [const { [const { AtomicU8::new(0) }; CELLS] }; 2],
        })
    }
}

/// The filter's cells and state, wherever they live (the kernel's map, or
/// a buffer in tests).
pub struct Filter<'a> {
    state: &'a AtomicU32,
    gens: [&'a [AtomicU8]; 2],
}

/// A generation being rebuilt: cleared by [`Filter::begin`], made active
/// by [`Filter::finish`].
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct Rebuild {
    gen: usize,
}

impl<'a> Filter<'a> {
    /// The filter in `mem`.
    pub fn new(mem: &'a SharedFilter) -> Self {
        let [g0, g1] = &mem.cells;
        Self {
            state: &mem.state,
            gens: [g0, g1],
        }
    }

    /// No generation trusted: the programs probe the confirmed table for
    /// every key until the next [`Filter::finish`].
    pub fn invalidate(&self) {
        self.state.store(INVALID, Ordering::SeqCst);
    }

    /// The active generation, None when invalid.
    pub fn active(&self) -> Option<usize> {
        CtFilter::active_gen(self.state.load(Ordering::SeqCst))
    }

    /// Clears the generation the programs do not read. The walk that
    /// feeds [`Filter::finish`] must start [`IN_FLIGHT`] after this.
    pub fn begin(&self) -> Rebuild {
        let gen = match self.active() {
            Some(g) => 1 - g,
            None => 0,
        };
        for cell in self.gens[gen] {
            cell.store(0, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        Rebuild { gen }
    }

    /// Sets the cell of every key of a complete walk of the confirmed
    /// table in the rebuilt generation, then makes it the active one.
    pub fn finish<'k>(&self, rebuild: Rebuild, keys: impl IntoIterator<Item = &'k CtKey>) {
        let gen = self.gens[rebuild.gen];
        for k in keys {
            gen[ct_filter::cell(k)].store(1, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        self.state
            .store(ct_filter::active(rebuild.gen), Ordering::SeqCst);
    }

    /// What a program does just before inserting `k` into the confirmed
    /// table; for tests and tools that write that table themselves.
    pub fn mark(&self, k: &CtKey) {
        for g in self.gens {
            g[ct_filter::cell(k)].store(1, Ordering::Relaxed);
        }
    }

    /// Whether the confirmed table may hold `k`, as the programs decide.
    pub fn may_hold(&self, k: &CtKey) -> bool {
        match self.active() {
            Some(g) => self.gens[g][ct_filter::cell(k)].load(Ordering::Relaxed) != 0,
            None => true,
        }
    }

    /// Set cells of the active generation (all of them when invalid).
    pub fn set_cells(&self) -> usize {
        match self.active() {
            Some(g) => self.gens[g]
                .iter()
                .filter(|c| c.load(Ordering::Relaxed) != 0)
                .count(),
            None => CELLS,
        }
    }
}

/// The kernel's filter, pinned in the pin directory, mapped into memory.
pub struct PinnedFilter {
    mmap: MmapMut,
}

impl PinnedFilter {
    pub fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(names::CT_FILTER);
        let data = MapData::from_pin(&path).map_err(io::Error::other)?;
        // SAFETY: the mapping is the map's value memory, which the kernel
        // keeps while mapped; every access goes through the atomics of
        // `SharedFilter` (the programs' plain byte stores are single-copy
        // atomic), so concurrent writers never tear a cell.
        let mmap = unsafe {
            MmapOptions::new()
                .len(size_of::<CtFilter>())
                .map_mut(&data.fd().as_fd())
        }?;
        // What `filter` relies on: checked once, here.
        if mmap.len() < size_of::<SharedFilter>()
            || !mmap.as_ptr().cast::<SharedFilter>().is_aligned()
        {
            return Err(io::Error::other(format!(
                "{}: mapping of {} bytes does not hold the filter",
                path.display(),
                mmap.len()
            )));
        }
        Ok(Self { mmap })
    }

    pub fn filter(&self) -> Filter<'_> {
        // SAFETY: `open` checked that the mapping holds a SharedFilter at
        // an aligned address; the mapping never moves and lives as long
        // as `self`. The memory is shared with the kernel, which is why
        // it is only ever accessed atomically.
        let shared = unsafe { &*self.mmap.as_ptr().cast::<SharedFilter>() };
        Filter::new(shared)
    }
}

#[cfg(test)]
mod tests {
    use proxy_common::{ct_dir, proto};

    use super::*;

    fn buffer() -> Box<SharedFilter> {
        SharedFilter::new()
    }

    fn view(buf: &mut SharedFilter) -> Filter<'_> {
        Filter::new(buf)
    }

    /// A rebuild with nothing happening between its two steps.
    fn rebuild(f: &Filter<'_>, keys: &[CtKey]) {
        let r = f.begin();
        f.finish(r, keys);
    }

    fn k(port: u16) -> CtKey {
        CtKey {
            saddr_be: 0x0a00_0001,
            daddr_be: 0x0a00_0002,
            sport_be: port.to_be(),
            dport_be: 80u16.to_be(),
            proto: proto::TCP,
            dir: ct_dir::FORWARD,
            _pad: 0,
        }
    }

    #[test]
    fn a_new_filter_is_not_trusted() {
        let mut buf = buffer();
        let f = view(&mut buf);
        assert_eq!(f.active(), None);
        assert!(f.may_hold(&k(1)));
    }

    #[test]
    fn a_rebuild_clears_ended_flows_and_keeps_every_key_of_the_walk() {
        let mut buf = buffer();
        let f = view(&mut buf);
        let ended: Vec<_> = (1..200).map(k).collect();
        let live: Vec<_> = (1000..1200).map(k).collect();
        for key in ended.iter().chain(&live) {
            f.mark(key);
        }
        rebuild(&f, &live);
        assert_eq!(f.active(), Some(0));
        assert!(live.iter().all(|key| f.may_hold(key)));
        // Cells shared with a live key stay set; most others clear.
        let cleared = ended.iter().filter(|key| !f.may_hold(key)).count();
        assert!(cleared > 190, "only {cleared} of 199 cleared");
    }

    #[test]
    fn keys_the_programs_confirm_during_a_rebuild_are_kept() {
        let mut buf = buffer();
        let f = view(&mut buf);
        rebuild(&f, &[]);
        assert_eq!(f.active(), Some(0));
        // The next rebuild clears generation 1 while the programs read 0.
        let r = f.begin();
        assert_eq!(r, Rebuild { gen: 1 });
        // Confirmed after the clear, after the walk passed its bucket.
        f.mark(&k(7));
        f.finish(r, &[k(8)]);
        assert_eq!(f.active(), Some(1));
        assert!(f.may_hold(&k(7)) && f.may_hold(&k(8)));
        assert!(!f.may_hold(&k(9)));
    }

    #[test]
    fn invalidating_makes_every_key_a_maybe_until_the_next_rebuild() {
        let mut buf = buffer();
        let f = view(&mut buf);
        rebuild(&f, &[]);
        assert!(!f.may_hold(&k(3)));
        f.invalidate();
        assert!(f.may_hold(&k(3)));
        assert_eq!(f.set_cells(), CELLS);
        rebuild(&f, &[k(3)]);
        assert!(f.may_hold(&k(3)));
        assert_eq!(f.set_cells(), 1);
    }
}
