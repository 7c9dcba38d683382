//! `tc::source_allowed`: a frontend flagged SOURCE_RANGES admits new
//! connections from outside only from a source its LPM entries hold.
use proxy_common::{svc_flags, ServiceValue};

use super::{query::Query, report::RangeCheck, Snapshot};

pub(super) fn check(q: &Query, snap: &Snapshot, node_master: &ServiceValue) -> Option<RangeCheck> {
    if node_master.flags & svc_flags::SOURCE_RANGES == 0 {
        return None;
    }
    let rev = u32::from(node_master.rev_nat_id);
    let ranges: Vec<_> = snap
        .maps
        .source_ranges
        .iter()
        .filter(|r| r.rev_nat_id == rev)
        .collect();
    let matched = q.src.and_then(|(ip, _)| {
        // Longest prefix first, as the trie answers.
        ranges
            .iter()
            .filter(|r| r.len <= 32 && mask(u32::from(ip), r.len) == u32::from(r.net))
            .max_by_key(|r| r.len)
            .map(|r| r.to_string())
    });
    Some(RangeCheck {
        ranges: ranges.iter().map(|r| r.to_string()).collect(),
        allowed: q.src.map(|_| matched.is_some()),
        matched,
    })
}

fn mask(addr: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        n => addr & (u32::MAX << (32 - u32::from(n))),
    }
}
