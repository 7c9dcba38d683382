//! Follows the node after start-up: its addresses (which NodePorts answer
//! on and which SNAT uses) and, with `--devices` left to auto-detection,
//! the devices the TC programs sit on. Addresses come and go on real nodes
//! (DHCP renewals, a Wi-Fi link coming up on a Raspberry Pi, a VIP moved by
//! keepalived), so they are re-read every [`REFRESH_EVERY`]; reading them
//! costs one `getifaddrs`, and the device map and links change only on a
//! difference. The node-address map is not written here: the addresses are
//! published to the sync loop, its one writer (`sync::run`).
use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use proxy_common::DeviceValue;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    loader::{Loaded, TcDevices},
    metrics::Metrics,
    node_addrs::{self, InterfaceAddr, Ipv4Cidr, NodeAddrEntries},
    node_links::{self, Link},
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
    /// The node-address map entries the interfaces ask for (none until
    /// they were first read), for the sync loop to write.
    addrs: watch::Sender<Option<NodeAddrEntries>>,
    /// What was last written to the device map.
    programmed_links: Option<BTreeMap<u32, DeviceValue>>,
    /// The last refresh error, logged once rather than every period.
    last_error: Option<String>,
    /// The last re-pin error, likewise.
    repin_error: Option<String>,
    metrics: Arc<Metrics>,
}

impl NodeWatch {
    pub fn new(
        loaded: Loaded,
        pin_dir: PathBuf,
        filter: Vec<Ipv4Cidr>,
        devices: Devices,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            loaded,
            pin_dir,
            filter,
            devices,
            addrs: watch::Sender::new(None),
            programmed_links: None,
            last_error: None,
            repin_error: None,
            metrics,
        }
    }

    /// The node-address map entries, as the interfaces last read ask for.
    pub fn addresses(&self) -> watch::Receiver<Option<NodeAddrEntries>> {
        self.addrs.subscribe()
    }

    /// Re-reads the interfaces; publishes the addresses, rewrites the
    /// device map and moves the TC programs where something changed.
    pub fn refresh(&mut self) -> anyhow::Result<()> {
        let ifaddrs = node_addrs::interface_addrs().context("listing the node's addresses")?;
        let addrs: Vec<Ipv4Addr> = ifaddrs.iter().map(|i| i.addr).collect();
        let selected = node_addrs::select(&addrs, &self.filter);
        self.publish(&selected);
        let links = node_links::read_links(&ifaddrs);
        let entries = node_links::entries(&ifaddrs, &links);
        if self.programmed_links.as_ref() != Some(&entries) {
            node_links::program(&self.pin_dir, &entries).context("writing the device map")?;
            self.programmed_links = Some(entries);
        }
        let serving = match &self.devices {
            Devices::Auto => node_addrs::auto_devices(&ifaddrs, &selected),
            Devices::Listed(names) => names.clone(),
        };
        let devices = tc_devices(serving, &ifaddrs, &links);
        let changed = self
            .loaded
            .set_devices(&devices)
            .with_context(|| format!("attaching the TC programs to {devices:?}"))?;
        if let Some(done) = changed {
            info!(serving = ?devices.serving, replies = ?devices.replies, l3_replies = ?devices.l3_replies, ?done, "TC programs on these devices");
            if devices.serving.is_empty() && self.devices == Devices::Auto {
                warn!("no device carries a node address: outside clients are not served NodePorts, externalIPs or LoadBalancer IPs");
            }
        }
        Ok(())
    }

    /// Refreshes every [`REFRESH_EVERY`], each time on the blocking pool
    /// (the work is a few syscalls; aya's loader types are not async), and
    /// puts back pins that are gone first, so a device change never
    /// attaches a second program next to a link that lost its pin. A
    /// failure is logged once until it changes, and the next period tries
    /// again; only a panic ends the task (the agent then exits).
    pub async fn run(mut self) -> anyhow::Result<()> {
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            self = tokio::task::spawn_blocking(move || {
                self.check_pins();
                self.refresh_logged();
                self
            })
            .await
            .context("refreshing the node's addresses and devices")?;
        }
    }

    /// Hands the entries for `selected` to the sync loop, waking it only
    /// when they changed.
    fn publish(&self, selected: &[Ipv4Addr]) {
        let want = node_addrs::entries(selected);
        let changed = self.addrs.send_if_modified(|cur| {
            if cur.as_ref() == Some(&want) {
                return false;
            }
            *cur = Some(want.clone());
            true
        });
        if changed {
            info!(addresses = ?selected, "NodePorts answer on these addresses");
        }
    }

    /// [`NodeWatch::refresh`], its errors logged once until they change.
    fn refresh_logged(&mut self) {
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
    }

    /// Re-pins maps and links whose pins are gone (see `loader::repin`).
    /// When that is impossible the datapath keeps serving: the agent holds
    /// every map and link; only a restart would lose them.
    fn check_pins(&mut self) {
        match self.loaded.repin() {
            Ok(0) => {
                if self.repin_error.take().is_some() {
                    info!("pins are in place again");
                }
            }
            Ok(n) => {
                warn!(objects = n, pin_dir = %self.pin_dir.display(), "pins were gone (bpffs unmounted, pin directory removed, or `bpfproxy cleanup`); pinned the maps and links again");
                self.metrics.repins.inc();
                self.repin_error = None;
            }
            Err(e) => {
                let text = format!("{:#}", anyhow::Error::from(e));
                if self.repin_error.as_deref() != Some(text.as_str()) {
                    error!(error = %text, pin_dir = %self.pin_dir.display(), "cannot re-pin the maps and links; still serving (this agent holds them), but a restart now would start from scratch; retrying");
                    self.repin_error = Some(text);
                }
            }
        }
    }
}

/// The TC devices: `serving` (none: no TC datapath at all), and the other
/// devices replies of forwarded flows come back by, those without an
/// Ethernet header (WireGuard, an IPIP tunnel) apart. The serving programs
/// parse Ethernet frames, so an L3 device named to serve (a VPN such as
/// `wg0` carrying a node address) only gets the L3 reply program.
fn tc_devices(serving: Vec<String>, ifaddrs: &[InterfaceAddr], links: &[Link]) -> TcDevices {
    if serving.is_empty() {
        return TcDevices::default();
    }
    let is_l3 = |d: &String| links.iter().any(|l| &l.name == d && !l.ethernet);
    let (l3_serving, serving): (Vec<String>, Vec<String>) = serving.into_iter().partition(is_l3);
    let (mut l3_replies, replies): (Vec<String>, Vec<String>) =
        node_addrs::reply_devices(ifaddrs, &serving)
            .into_iter()
            .filter(|d| links.iter().any(|l| &l.name == d))
            .partition(is_l3);
    for d in l3_serving {
        if !l3_replies.contains(&d) {
            l3_replies.push(d);
        }
    }
    TcDevices {
        serving,
        replies,
        l3_replies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(v: &[&str]) -> Result<Devices, String> {
        Devices::from_flag(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
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

    #[test]
    fn reply_devices_are_the_other_devices_l3_ones_apart_and_none_without_serving_ones() {
        let ia = |device: &str, a: [u8; 4]| InterfaceAddr {
            device: device.to_string(),
            addr: Ipv4Addr::from(a),
        };
        let l = |name: &str, ethernet: bool| Link {
            name: name.to_string(),
            ifindex: 1,
            mtu: 1500,
            ethernet,
        };
        let ifaddrs = [
            ia("eth0", [192, 168, 1, 10]),
            ia("eth1", [192, 168, 2, 10]),
            ia("tunl0", [10, 244, 0, 1]),
            ia("cni0", [10, 244, 0, 1]),
        ];
        let links = [
            l("eth0", true),
            l("eth1", true),
            l("tunl0", false),
            l("cni0", true),
        ];
        let d = tc_devices(vec!["eth0".into()], &ifaddrs, &links);
        assert_eq!(d.serving, ["eth0"]);
        assert_eq!(d.replies, ["eth1"]);
        assert_eq!(d.l3_replies, ["tunl0"]);
        let vpn = tc_devices(vec!["eth0".into(), "tunl0".into()], &ifaddrs, &links);
        assert_eq!(vpn.serving, ["eth0"], "an L3 device cannot serve");
        assert_eq!(vpn.l3_replies, ["tunl0"]);
        let none = tc_devices(vec![], &ifaddrs, &links);
        assert!(none.is_empty(), "--devices none: no TC program anywhere");
    }
}
