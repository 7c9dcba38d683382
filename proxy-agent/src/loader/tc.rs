//! Attaches the TC programs to the node devices, in one of two ways:
//!
//! - TCX links (kernel ≥ 6.6), pinned per device and direction, whose
//!   program is swapped in place on restart (BPF_LINK_UPDATE, as for the
//!   cgroup links), so packets never cross a device without a program.
//! - Older kernels: a `cls_bpf` filter on the device's clsact qdisc at a
//!   fixed priority and handle, so a restarted agent finds its filter again
//!   and replaces the program in it atomically (a netlink change of the
//!   same filter) instead of stacking a second one. A netlink filter cannot
//!   be pinned, so an empty directory under the same pin name marks the
//!   device for the next agent's clean-up.
use std::{fs, path::Path};

use aya::{
    programs::{
        links::Link,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf,
};
use tracing::{debug, info, warn};

use super::{link_update, Attachment, LoadError};

/// The TC programs, by function name in `proxy-ebpf`, and their hook.
pub const TC_PROGRAMS: [(&str, TcAttachType); 4] = [
    ("tc_ingress", TcAttachType::Ingress),
    ("tc_egress", TcAttachType::Egress),
    ("tc_reply", TcAttachType::Ingress),
    ("tc_reply_l3", TcAttachType::Ingress),
];

/// The programs of a device that serves clients (NodePorts, externalIPs,
/// LoadBalancer IPs): the first two of [`TC_PROGRAMS`].
const SERVING: &[(&str, TcAttachType)] = &[
    ("tc_ingress", TcAttachType::Ingress),
    ("tc_egress", TcAttachType::Egress),
];
/// The program of a device replies of forwarded flows come back by.
const REPLIES: &[(&str, TcAttachType)] = &[("tc_reply", TcAttachType::Ingress)];
/// The same for an L3 device (no link-layer header: WireGuard, IPIP).
const L3_REPLIES: &[(&str, TcAttachType)] = &[("tc_reply_l3", TcAttachType::Ingress)];

/// Which devices get which TC programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcDevices {
    /// Client-facing devices (`--devices`): NodePorts, externalIPs and
    /// LoadBalancer IPs are served on them.
    pub serving: Vec<String>,
    /// Every other device the node forwards to backends by (an overlay, a
    /// second NIC): the replies of flows the programs forwarded come back
    /// by them and must be translated there.
    pub replies: Vec<String>,
    /// The same for L3 devices, whose packets have no link-layer header.
    pub l3_replies: Vec<String>,
}

impl TcDevices {
    /// Only client-facing devices.
    pub fn serving(devices: &[String]) -> Self {
        Self {
            serving: devices.to_vec(),
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.serving.is_empty() && self.replies.is_empty() && self.l3_replies.is_empty()
    }

    /// Every (device, program, hook) these devices need, serving devices
    /// first; a device named in both lists serves.
    pub fn hooks(&self) -> Vec<Hook> {
        let serving = self.serving.iter().map(|d| (d, SERVING));
        let not_serving = |d: &&String| !self.serving.contains(d);
        let replies = self
            .replies
            .iter()
            .filter(not_serving)
            .map(|d| (d, REPLIES));
        let l3 = self
            .l3_replies
            .iter()
            .filter(not_serving)
            .map(|d| (d, L3_REPLIES));
        serving
            .chain(replies)
            .chain(l3)
            .flat_map(|(device, programs)| {
                programs.iter().map(move |&(program, attach)| Hook {
                    device: device.clone(),
                    program,
                    attach,
                })
            })
            .collect()
    }
}

/// One TC program on one hook of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub device: String,
    pub program: &'static str,
    pub attach: TcAttachType,
}

/// Pin names of TC links start with this; anything else in the links
/// directory belongs to the socket programs.
const PIN_PREFIX: &str = "tc-";

/// Priority and handle of our clsact filters: fixed, so a restarted agent
/// finds them. Priority 1 runs before filters other software adds with the
/// kernel's default priorities.
const CLSACT_PRIORITY: u16 = 1;
const CLSACT_HANDLE: u16 = 0xb9f;

/// How the TC programs attach (`--tc-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcMode {
    /// TCX where the kernel has it (≥ 6.6), clsact otherwise.
    #[default]
    Auto,
    Tcx,
    /// The pre-6.6 path, also on newer kernels (to test it there).
    Clsact,
}

impl TcMode {
    pub(super) fn uses_tcx(self) -> bool {
        match self {
            // An unreadable kernel version is taken as new: TCX attach then
            // fails with a clear error instead of silently falling back.
            TcMode::Auto => {
                KernelVersion::current().map_or(true, |v| v >= KernelVersion::new(6, 6, 0))
            }
            TcMode::Tcx => true,
            TcMode::Clsact => false,
        }
    }
}

/// `tc-<device>-<ingress|egress>`, the device name escaped: bpffs refuses
/// names with a dot (`flannel.1`, VLAN devices such as `eth0.100`).
/// Whether a pin name under the links directory is a TC hook's.
pub(super) fn is_tc_pin(name: &str) -> bool {
    name.starts_with(PIN_PREFIX)
}

pub(super) fn pin_name(device: &str, attach: TcAttachType) -> String {
    let dir = match attach {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    let device = device.replace('%', "%25").replace('.', "%2e");
    format!("{PIN_PREFIX}{device}-{dir}")
}

/// Puts every hook of `hooks` in place except those of `already` (this
/// process attached them before) and removes the pinned links of hooks no
/// longer wanted (which detaches them). A hook whose device changed role
/// keeps its pin and gets the other program swapped in.
pub fn attach_hooks(
    ebpf: &mut Ebpf,
    mode: TcMode,
    hooks: &[Hook],
    already: &[Hook],
    links: &Path,
) -> Result<Vec<(String, Attachment)>, LoadError> {
    let tcx = mode.uses_tcx();
    load_programs(ebpf)?;
    let mut done = Vec::new();
    let mut wanted = Vec::new();
    for hook in hooks {
        let Hook {
            device,
            program: name,
            attach,
        } = hook;
        let pin = links.join(pin_name(device, *attach));
        wanted.push(pin_name(device, *attach));
        if already.contains(hook) {
            continue;
        }
        let prog = program(ebpf, name)?;
        let how = if tcx {
            attach_tcx(prog, name, device, *attach, &pin)?
        } else {
            attach_clsact(prog, name, device, *attach, &pin)?
        };
        info!(program = name, device = %device, ?how, "TC program in place");
        done.push((format!("{name}@{device}"), how));
    }
    prune_links(links, &wanted);
    Ok(done)
}

/// Puts the TC programs through the verifier, once per process (later
/// calls find them loaded).
pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    for (name, _) in TC_PROGRAMS {
        let prog = program(ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| LoadError::Program { name, source })?;
        }
    }
    Ok(())
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

fn attach_tcx(
    prog: &mut SchedClassifier,
    name: &'static str,
    device: &str,
    attach: TcAttachType,
    pin: &Path,
) -> Result<Attachment, LoadError> {
    let prog_err = |source| LoadError::Program { name, source };
    if pin.exists() {
        let prog_fd = prog.fd().map_err(prog_err)?;
        match link_update::replace_program(pin, prog_fd) {
            Ok(()) => return Ok(Attachment::Replaced),
            // The device is gone (ENOLINK) or the pin is stale: attach anew.
            Err(e) if link_update::is_defunct(&e) => {
                warn!(link = %pin.display(), error = %e, "pinned TC link is defunct; re-attaching");
                let _ = fs::remove_file(pin);
            }
            Err(source) => {
                return Err(LoadError::Replace {
                    path: pin.to_path_buf(),
                    source,
                })
            }
        }
    }
    // TCX: multi-program per hook, so other software's TC programs stay;
    // the default order appends after them.
    let id = prog
        .attach_with_options(
            device,
            attach,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(prog_err)?;
    super::pin_link(name, prog.take_link(id).map_err(prog_err)?, pin)?;
    Ok(Attachment::Attached)
}

/// The clsact path: replaces the program in our filter when there is one,
/// else adds the filter (and the qdisc) and leaves the marker directory.
fn attach_clsact(
    prog: &mut SchedClassifier,
    name: &'static str,
    device: &str,
    attach: TcAttachType,
    marker: &Path,
) -> Result<Attachment, LoadError> {
    let prog_err = |source| LoadError::Program { name, source };
    if let Ok(existing) = our_filter(device, attach) {
        // Without NLM_F_CREATE this only changes an existing filter: it
        // fails (and we add one below) when there is none.
        if let Ok(id) = prog.attach_to_link(existing) {
            keep_filter(prog, id, name)?;
            return Ok(Attachment::Replaced);
        }
    }
    if let Err(e) = tc::qdisc_add_clsact(device) {
        // Mostly EEXIST: the qdisc is already there, which is what we want;
        // anything worse makes the filter attach below fail loudly.
        debug!(device = %device, error = %e, "adding clsact qdisc");
    }
    let options = NlOptions {
        priority: CLSACT_PRIORITY,
        handle: TcHandle::new(0, CLSACT_HANDLE),
        ..Default::default()
    };
    let id = prog
        .attach_with_options(device, attach, TcAttachOptions::Netlink(options))
        .map_err(prog_err)?;
    keep_filter(prog, id, name)?;
    fs::create_dir_all(marker).map_err(|source| LoadError::PinDir {
        path: marker.to_path_buf(),
        source,
    })?;
    Ok(Attachment::Attached)
}

/// A netlink filter is removed when aya drops its link: the link is leaked
/// on purpose, the filter then lives on the device until removed.
fn keep_filter(
    prog: &mut SchedClassifier,
    id: tc::SchedClassifierLinkId,
    name: &'static str,
) -> Result<(), LoadError> {
    let link = prog
        .take_link(id)
        .map_err(|source| LoadError::Program { name, source })?;
    std::mem::forget(link);
    Ok(())
}

/// Our clsact filter on `device`'s hook, named by its fixed priority and
/// handle (whether it exists shows only when it is used).
fn our_filter(device: &str, attach: TcAttachType) -> std::io::Result<SchedClassifierLink> {
    let handle = TcHandle::new(0, CLSACT_HANDLE);
    SchedClassifierLink::attached(device, attach, CLSACT_PRIORITY, handle, None)
}

/// Removes our clsact filter from `device`'s hook (the device left
/// `--devices`); a device or filter already gone is fine.
fn detach_clsact(device: &str, attach: TcAttachType) {
    if let Ok(link) = our_filter(device, attach) {
        if let Err(e) = link.detach() {
            warn!(device = %device, error = %e, "removing the clsact filter");
        }
    }
}

/// Removes pinned TC links (and clsact markers) not in `wanted`: the
/// device left `--devices`.
fn prune_links(links: &Path, wanted: &[String]) {
    let Ok(entries) = fs::read_dir(links) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PIN_PREFIX) || wanted.contains(&name) {
            continue;
        }
        info!(link = %name, "detaching the TC programs of a device no longer listed");
        if entry.path().is_dir() {
            if let Some((device, attach)) = parse_pin_name(&name) {
                detach_clsact(&device, attach);
            }
            let _ = fs::remove_dir(entry.path());
        } else if let Err(e) = link_update::detach_pinned(&entry.path()) {
            warn!(link = %name, error = %e, "detaching stale TC link; removing its pin");
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The device and hook of a pin name (the inverse of [`pin_name`]).
fn parse_pin_name(name: &str) -> Option<(String, TcAttachType)> {
    let rest = name.strip_prefix(PIN_PREFIX)?;
    let unescape = |d: &str| d.replace("%2e", ".").replace("%25", "%");
    if let Some(device) = rest.strip_suffix("-ingress") {
        return Some((unescape(device), TcAttachType::Ingress));
    }
    rest.strip_suffix("-egress")
        .map(|device| (unescape(device), TcAttachType::Egress))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_are_per_device_and_direction_and_parse_back() {
        assert_eq!(pin_name("eth0", TcAttachType::Ingress), "tc-eth0-ingress");
        assert_eq!(pin_name("eth0", TcAttachType::Egress), "tc-eth0-egress");
        assert_eq!(
            pin_name("flannel.1", TcAttachType::Ingress),
            "tc-flannel%2e1-ingress",
            "bpffs refuses dots"
        );
        for (dev, attach) in [
            ("eth0", TcAttachType::Ingress),
            ("br-lan-egress", TcAttachType::Egress),
            ("flannel.1", TcAttachType::Ingress),
            ("eth0.100%", TcAttachType::Egress),
        ] {
            let name = pin_name(dev, attach);
            let parsed = parse_pin_name(&name).unwrap();
            assert_eq!(parsed.0, dev);
            assert_eq!(
                parsed.1 == TcAttachType::Ingress,
                attach == TcAttachType::Ingress
            );
        }
        assert!(parse_pin_name("sock4_connect").is_none());
    }

    #[test]
    fn serving_devices_get_both_hooks_and_reply_devices_only_tc_reply() {
        let d = TcDevices {
            serving: vec!["eth0".into()],
            replies: vec!["flannel.1".into(), "eth0".into()],
            l3_replies: vec!["wg0".into()],
        };
        let hooks: Vec<(String, &str)> = d
            .hooks()
            .into_iter()
            .map(|h| (h.device, h.program))
            .collect();
        assert_eq!(
            hooks,
            [
                ("eth0".to_string(), "tc_ingress"),
                ("eth0".to_string(), "tc_egress"),
                ("flannel.1".to_string(), "tc_reply"),
                ("wg0".to_string(), "tc_reply_l3"),
            ]
        );
        assert!(TcDevices::default().hooks().is_empty());
    }
}
