//! Follows the node after start-up: its addresses (which NodePorts answer
//! on and which SNAT uses) and, with `--devices` left to auto-detection,
//! the devices the TC programs sit on. Addresses come and go on real nodes
//! (DHCP renewals, a Wi-Fi link coming up on a Raspberry Pi, a VIP moved by
//! keepalived), so they are re-read every [`REFRESH_EVERY`]; reading them
//! costs one `getifaddrs`, and the maps and links change only on a
//! difference.
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::Context;
use tracing::{info, warn};

use crate::{
    loader::Loaded,
    node_addrs::{self, Ipv4Cidr},
};

/// How often the node's interfaces are re-read.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// What `--devices` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Devices {
    /// The devices carrying the node's addresses, followed as they change.
    Auto,
    /// Exactly these (empty: no TC datapath).
    Listed(Vec<String>),
}

impl Devices {
    /// From the flag's values: none given or `auto` → [`Devices::Auto`];
    /// `none` → no devices; else the names.
    pub fn from_flag(values: &[String]) -> Result<Self, String> {
        let values: Vec<&str> = values
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        match values.as_slice() {
            [] | ["auto"] => Ok(Self::Auto),
            ["none"] => Ok(Self::Listed(Vec::new())),
            names if names.iter().any(|n| *n == "auto" || *n == "none") => Err(format!(
                "--devices: `auto` and `none` stand alone, got {names:?}"
            )),
            names => Ok(Self::Listed(names.iter().map(|n| n.to_string()).collect())),
        }
    }
}

/// The node's addresses and TC devices, kept in step with its interfaces.
pub struct NodeWatch {
    loaded: Loaded,
    pin_dir: PathBuf,
    filter: Vec<Ipv4Cidr>,
    devices: Devices,
    /// The addresses last written to the node-address map.
    programmed: Option<Vec<Ipv4Addr>>,
    /// The devices the TC programs were last put on, with their ifindex.
    attached: Option<Vec<(String, u32)>>,
    /// The last refresh error, logged once rather than every period.
    last_error: Option<String>,
}

impl NodeWatch {
    pub fn new(loaded: Loaded, pin_dir: PathBuf, filter: Vec<Ipv4Cidr>, devices: Devices) -> Self {
        Self {
            loaded,
            pin_dir,
            filter,
            devices,
            programmed: None,
            attached: None,
            last_error: None,
        }
    }

    /// Re-reads the interfaces; rewrites the node-address map and moves
    /// the TC programs where something changed.
    pub fn refresh(&mut self) -> anyhow::Result<()> {
        let ifaddrs = node_addrs::interface_addrs().context("listing the node's addresses")?;
        let addrs: Vec<Ipv4Addr> = ifaddrs.iter().map(|i| i.addr).collect();
        let selected = node_addrs::select(&addrs, &self.filter);
        if self.programmed.as_ref() != Some(&selected) {
            node_addrs::program(&self.pin_dir, &node_addrs::entries(&selected))
                .context("writing the node-address map")?;
            info!(addresses = ?selected, "NodePorts answer on these addresses");
            self.programmed = Some(selected.clone());
        }
        let devices = match &self.devices {
            Devices::Auto => node_addrs::auto_devices(&ifaddrs, &selected),
            Devices::Listed(names) => names.clone(),
        };
        let wanted: Vec<(String, u32)> = devices.iter().map(|d| (d.clone(), ifindex(d))).collect();
        if self.attached.as_ref() != Some(&wanted) {
            // A device that came back under the same name (driver reload,
            // USB NIC replugged) is a new device whose hooks are empty: its
            // old link died with the old one. Detach it first, so the next
            // call attaches it afresh.
            let recreated = recreated(self.attached.as_deref().unwrap_or_default(), &wanted);
            if !recreated.is_empty() {
                info!(devices = ?recreated, "devices came back with a new ifindex; re-attaching");
                let others: Vec<String> = devices
                    .iter()
                    .filter(|d| !recreated.contains(d))
                    .cloned()
                    .collect();
                self.loaded
                    .set_devices(&others)
                    .context("detaching the TC programs from recreated devices")?;
            }
            let done = self
                .loaded
                .set_devices(&devices)
                .with_context(|| format!("attaching the TC programs to {devices:?}"))?;
            info!(?devices, ?done, "TC programs on these devices");
            if devices.is_empty() && self.devices == Devices::Auto {
                warn!("no device carries a node address: outside clients are not served NodePorts, externalIPs or LoadBalancer IPs");
            }
            self.attached = Some(wanted);
        }
        Ok(())
    }

    /// Refreshes every [`REFRESH_EVERY`] on a thread of its own (the work
    /// is a few syscalls; aya's loader types are not async). A failure is
    /// logged once until it changes, and the next period tries again.
    pub fn spawn(mut self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("node-watch".to_string())
            .spawn(move || loop {
                std::thread::sleep(REFRESH_EVERY);
                match self.refresh() {
                    Ok(()) => {
                        if self.last_error.take().is_some() {
                            info!("node addresses and devices are followed again");
                        }
                    }
                    Err(e) => {
                        let text = format!("{e:#}");
                        if self.last_error.as_deref() != Some(text.as_str()) {
                            warn!(error = %text, "following the node's addresses and devices");
                            self.last_error = Some(text);
                        }
                    }
                }
            })
    }
}

/// The interface index of `device`; 0 when there is no such device.
fn ifindex(device: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(device) else {
        return 0;
    };
    // SAFETY: a NUL-terminated name; the call only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Devices of `wanted` that were attached under another ifindex.
fn recreated(attached: &[(String, u32)], wanted: &[(String, u32)]) -> Vec<String> {
    wanted
        .iter()
        .filter(|(name, index)| attached.iter().any(|(n, i)| n == name && i != index))
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(v: &[&str]) -> Result<Devices, String> {
        Devices::from_flag(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn a_device_back_under_another_ifindex_counts_as_recreated() {
        let before = [("eth0".to_string(), 2), ("usb0".to_string(), 7)];
        let after = [("eth0".to_string(), 2), ("usb0".to_string(), 9)];
        assert_eq!(recreated(&before, &after), ["usb0"]);
        assert!(recreated(&before, &before).is_empty());
        assert!(
            recreated(&[], &after).is_empty(),
            "new devices are not recreated"
        );
    }

    #[test]
    fn the_devices_flag_defaults_to_auto_and_knows_none() {
        assert_eq!(flag(&[]), Ok(Devices::Auto));
        assert_eq!(flag(&["auto"]), Ok(Devices::Auto));
        assert_eq!(flag(&["none"]), Ok(Devices::Listed(vec![])));
        assert_eq!(
            flag(&["eth0", " wlan0"]),
            Ok(Devices::Listed(vec!["eth0".into(), "wlan0".into()]))
        );
        assert!(flag(&["eth0", "none"]).is_err());
        assert!(flag(&["auto", "eth0"]).is_err());
    }
}
