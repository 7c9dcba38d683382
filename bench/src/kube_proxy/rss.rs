//! A process' memory from `/proc/PID/status`.
use anyhow::{Context, Result};

/// Resident memory now and at its peak, in KiB; `anon_kib` is the part
/// that is the process' own (heap, stacks), the rest being file pages such
/// as the binary's code, which every process running it shares.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
}

impl Rss {
    pub fn of(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Ok(parse(&text))
    }

    pub fn mib(kib: u64) -> f64 {
        kib as f64 / 1024.0
    }
}

/// `VmRSS` and `VmHWM` of a `/proc/PID/status` text (0 when absent).
fn parse(status: &str) -> Rss {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        anon_kib: field("RssAnon:"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_vmrss_and_vmhwm() {
        let r = super::parse(
            "Name:\tbpfproxy\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nRssAnon:\t   30720 kB\n",
        );
        assert_eq!((r.rss_kib, r.hwm_kib, r.anon_kib), (40960, 51200, 30720));
    }
}
