//! The source ports the TC programs give flows they SNAT to a backend on
//! another node (`run --snat-port-range`). They must never be a port one of
//! the node's own sockets uses towards the same backend, or replies would
//! go to the wrong one: the default range lies above Linux's default
//! ephemeral ports, and the agent adds it to
//! `net.ipv4.ip_local_reserved_ports`, so the kernel never hands it out
//! even where the ephemeral range was widened.
use std::{fmt, fs, io, path::Path, str::FromStr};

use tracing::{info, warn};

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatPorts {
    pub min: u16,
    pub max: u16,
}

impl Default for SnatPorts {
    fn default() -> Self {
        Self {
            min: proxy_common::SNAT_PORT_MIN,
            max: proxy_common::SNAT_PORT_MAX,
        }
    }
}

impl fmt::Display for SnatPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// Fewer ports than this is a mistake, not a choice: each (node address,
/// backend) pair can have only this many SNATed flows at once.
const MIN_PORTS: u32 = 256;

impl FromStr for SnatPorts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 61000-65535"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|e| format!("{p:?} is not a port: {e}"))
        };
        let (min, max) = (port(a)?, port(b)?);
        if min < 1024 {
            return Err(format!(
                "{s}: SNAT ports start at 1024 or above (below are services' ports)"
            ));
        }
        if min > max || u32::from(max - min) + 1 < MIN_PORTS {
            return Err(format!(
                "{s}: at least {MIN_PORTS} ports, FIRST before LAST"
            ));
        }
        Ok(Self { min, max })
    }
}

const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
const EPHEMERAL: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// `existing` (the sysctl's comma-separated ports and ranges) with `ports`
/// added; None when it already covers them.
pub fn with_reserved(existing: &str, ports: SnatPorts) -> Option<String> {
    let mut ranges: Vec<(u16, u16)> = existing
        .trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| match p.split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => p.trim().parse().ok().map(|n| (n, n)),
        })
        .collect();
    if ranges
        .iter()
        .any(|&(a, b)| a <= ports.min && ports.max <= b)
    {
        return None;
    }
    ranges.push((ports.min, ports.max));
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let parts: Vec<String> = merged
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    Some(parts.join(","))
}

/// Whether the ephemeral range `a b` (the sysctl's text) meets `ports`.
pub fn overlaps_ephemeral(range: &str, ports: SnatPorts) -> bool {
    let mut it = range
        .split_whitespace()
        .filter_map(|n| n.parse::<u16>().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) => lo <= ports.max && ports.min <= hi,
        _ => false,
    }
}

/// Reserves `ports` in this network namespace (the node's: the agent runs
/// with the host network). Failing to is logged, not fatal: with the
/// default range and ephemeral ports, nothing overlaps anyway.
pub fn reserve(ports: SnatPorts) {
    if let Err(e) = reserve_in(Path::new(RESERVED), ports) {
        warn!(error = %e, %ports, "could not reserve the SNAT ports in net.ipv4.ip_local_reserved_ports");
    }
    let ephemeral = fs::read_to_string(EPHEMERAL).unwrap_or_default();
    if overlaps_ephemeral(&ephemeral, ports) {
        info!(%ports, ephemeral = ephemeral.trim(), "the SNAT ports lie inside the ephemeral range; reserved, so the node's sockets skip them");
    }
}

fn reserve_in(file: &Path, ports: SnatPorts) -> io::Result<()> {
    let existing = fs::read_to_string(file)?;
    if let Some(new) = with_reserved(&existing, ports) {
        fs::write(file, new)?;
        info!(%ports, "SNAT ports reserved (net.ipv4.ip_local_reserved_ports)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_say_why() {
        assert_eq!(
            "61000-65535".parse::<SnatPorts>(),
            Ok(SnatPorts {
                min: 61000,
                max: 65535
            })
        );
        for bad in ["61000", "100-2000", "65000-61000", "61000-61010", "x-y"] {
            assert!(bad.parse::<SnatPorts>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_reservation_merges_into_what_is_there() {
        let p = SnatPorts::default();
        assert_eq!(with_reserved("", p).as_deref(), Some("61000-65535"));
        assert_eq!(
            with_reserved("8080,30000-32767\n", p).as_deref(),
            Some("8080,30000-32767,61000-65535")
        );
        assert_eq!(
            with_reserved("60000-61500,65535", p).as_deref(),
            Some("60000-65535")
        );
        assert_eq!(with_reserved("1024-65535", p), None, "already covered");
    }

    #[test]
    fn overlap_with_the_ephemeral_range_is_seen() {
        let p = SnatPorts::default();
        assert!(!overlaps_ephemeral("32768\t60999\n", p));
        assert!(overlaps_ephemeral("1024\t65535\n", p));
    }
}
