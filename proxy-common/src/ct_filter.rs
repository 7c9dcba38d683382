//! The confirmed-table filter: which conntrack keys the confirmed table
//! (`maps::CONNTRACK`) may hold. A new flow's SYN asks the confirmed table
//! twice (is its tuple a closed flow's, reused? does a confirmed flow hold
//! the SNAT port it wants?) and the answer is almost always no; each probe
//! of that table (megabytes of buckets) is a cache miss. A cell here that
//! is clear says no for certain, from a few kilobytes that stay in cache.
//!
//! Two generations of cells, so the agent can rebuild one while the
//! programs read the other:
//! - the programs set a key's cell in both generations just before every
//!   insert into the confirmed table, and read the active generation only;
//! - the agent clears the inactive generation, waits until every program
//!   run that started before has ended, walks the confirmed table to its
//!   end, sets the cell of every key it saw, then makes that generation the
//!   active one. A key whose mark the clear undid was inserted before the
//!   walk began, so the walk saw it; a key marked after the clear keeps
//!   its mark.
//!
//! A set cell only means "look": keys share cells, and cells of flows that
//! ended stay set until the next rebuild. [`INVALID`] (the state a new map
//! starts in, and the one an agent sets before it attaches its programs)
//! means "always look": the table may hold entries no program marked
//! (written by an earlier version) until the first rebuild.
use crate::CtKey;

/// log2 of the cells per generation.
pub const CELL_BITS: u32 = 14;
/// Cells per generation: 16 KiB, small enough to stay in a CPU's cache.
pub const CELLS: usize = 1 << CELL_BITS;

/// [`CtFilter::state`]: no generation may be trusted.
pub const INVALID: u32 = 0;
/// [`CtFilter::state`] when generation `g` is active.
pub const fn active(g: usize) -> u32 {
    g as u32 + 1
}

/// The single value of the filter map (an mmapable array of one entry).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CtFilter {
    /// [`INVALID`] or [`active`]`(g)`.
    pub state: u32,
    pub _pad: u32,
    /// A byte per cell: a byte store never disturbs its neighbours, so the
    /// programs on several CPUs and the agent need no atomic read-modify-
    /// write (which 5.10's BPF lacks).
    pub cells: [[u8; CELLS]; 2],
}

impl CtFilter {
    /// The generation the programs read, None when [`INVALID`].
    #[inline(always)]
    pub fn active_gen(state: u32) -> Option<usize> {
        match state {
            1 => Some(0),
            2 => Some(1),
            _ => None,
        }
    }
}

/// The cell of `k`: a multiplicative hash of the whole key, top bits.
#[inline(always)]
pub fn cell(k: &CtKey) -> usize {
    let addrs = (u64::from(k.saddr_be) << 32) | u64::from(k.daddr_be);
    let rest = (u64::from(k.sport_be) << 48)
        | (u64::from(k.dport_be) << 32)
        | (u64::from(k.proto) << 8)
        | u64::from(k.dir);
    // Two multiply-xorshift rounds: one leaves consecutive ports in
    // clumps of cells.
    let mut h = (addrs ^ rest.rotate_left(21)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (h >> (64 - CELL_BITS)) as usize
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::BTreeSet;

    use super::*;
    use crate::{ct_dir, proto};

    fn k(sport: u16) -> CtKey {
        CtKey {
            saddr_be: u32::from_be_bytes([198, 51, 100, 7]).to_be(),
            daddr_be: u32::from_be_bytes([10, 0, 0, 1]).to_be(),
            sport_be: sport.to_be(),
            dport_be: 30080u16.to_be(),
            proto: proto::TCP,
            dir: ct_dir::FORWARD,
            _pad: 0,
        }
    }

    #[test]
    fn consecutive_client_ports_spread_over_the_cells() {
        let cells: BTreeSet<usize> = (10_000..12_000).map(|p| cell(&k(p))).collect();
        assert!(cells.iter().all(|&c| c < CELLS));
        // 2000 keys in 16384 cells: about 1880 distinct if spread at random.
        assert!(cells.len() > 1800, "only {} distinct cells", cells.len());
    }

    #[test]
    fn the_direction_changes_the_cell() {
        let fwd = k(10_001);
        let reply = CtKey {
            dir: ct_dir::REPLY_SNAT,
            ..fwd
        };
        let differ = (10_000..10_100)
            .filter(|&p| {
                cell(&k(p))
                    != cell(&CtKey {
                        dir: ct_dir::REPLY_SNAT,
                        ..k(p)
                    })
            })
            .count();
        assert!(differ > 95, "{differ}");
        assert_ne!(cell(&fwd), cell(&reply));
    }

    #[test]
    fn states_name_generations() {
        assert_eq!(CtFilter::active_gen(INVALID), None);
        assert_eq!(CtFilter::active_gen(active(0)), Some(0));
        assert_eq!(CtFilter::active_gen(active(1)), Some(1));
        assert_eq!(CtFilter::active_gen(7), None);
    }
}
