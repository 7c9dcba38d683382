//! A veth pair created directly between two test namespaces: the devices
//! never exist in the host namespace, so nothing of ours is ever attached to
//! a host device.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::netns::Netns;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One veth pair; end `a` lives in one namespace, end `b` in another.
/// Deleted on drop (deleting a namespace also deletes its end).
#[derive(Debug)]
pub struct VethPair {
    a: String,
    a_ns: String,
    b: String,
    b_ns: String,
}

impl VethPair {
    /// Creates the pair, assigns `a_addrs` / `b_addrs` (CIDR strings such as
    /// `10.200.0.1/24`) and brings both ends up.
    ///
    /// Device names are `bt<pid%100000>a<n>` / `…b<n>` (≤ 15 bytes, IFNAMSIZ).
    pub fn new(a_ns: &Netns, a_addrs: &[&str], b_ns: &Netns, b_addrs: &[&str]) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = std::process::id() % 100_000;
        let pair = VethPair {
            a: format!("bt{tag}a{n}"),
            a_ns: a_ns.name().to_string(),
            b: format!("bt{tag}b{n}"),
            b_ns: b_ns.name().to_string(),
        };
        // On failure the pair's Drop removes what was created.
        pair.create(a_ns, a_addrs, b_ns, b_addrs)?;
        Ok(pair)
    }

    /// Deletes the pair and creates it again under the same names: new
    /// devices with new ifindexes, as a driver reload or a replugged USB
    /// NIC makes them. The namespaces must be those of [`VethPair::new`].
    pub fn recreate(
        &self,
        a_ns: &Netns,
        a_addrs: &[&str],
        b_ns: &Netns,
        b_addrs: &[&str],
    ) -> Result<()> {
        a_ns.ip(&["link", "del", &self.a])
            .with_context(|| format!("deleting veth {}", self.a))?;
        self.create(a_ns, a_addrs, b_ns, b_addrs)
    }

    fn create(&self, a_ns: &Netns, a_addrs: &[&str], b_ns: &Netns, b_addrs: &[&str]) -> Result<()> {
        let (a, b) = (&self.a, &self.b);
        a_ns.ip(&[
            "link",
            "add",
            a,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            b_ns.name(),
        ])
        .with_context(|| {
            format!(
                "creating veth {a} ({}) <-> {b} ({})",
                a_ns.name(),
                b_ns.name()
            )
        })?;
        for addr in a_addrs {
            a_ns.ip(&["addr", "add", addr, "dev", a])
                .with_context(|| format!("adding {addr} to {a}"))?;
        }
        for addr in b_addrs {
            b_ns.ip(&["addr", "add", addr, "dev", b])
                .with_context(|| format!("adding {addr} to {b}"))?;
        }
        a_ns.ip(&["link", "set", a, "up"])?;
        b_ns.ip(&["link", "set", b, "up"])?;
        Ok(())
    }

    /// Name of the end in the first namespace.
    pub fn a(&self) -> &str {
        &self.a
    }

    /// Name of the end in the second namespace.
    pub fn b(&self) -> &str {
        &self.b
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting one end deletes both. The namespace may be gone already.
        if crate::netns::exists(&self.a_ns) {
            let _ = crate::process::ip(&["-n", &self.a_ns, "link", "del", &self.a]);
        } else if crate::netns::exists(&self.b_ns) {
            let _ = crate::process::ip(&["-n", &self.b_ns, "link", "del", &self.b]);
        }
    }
}
