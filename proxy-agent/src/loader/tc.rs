//! Attaches the TC programs to the node devices: TCX links (kernel ≥ 6.6)
//! pinned per device and direction, whose program is swapped in place on
//! restart (BPF_LINK_UPDATE, as for the cgroup links), so packets never
//! cross a device without a program. Older kernels get a clsact filter.
use std::{fs, path::Path};

use aya::{
    programs::{tc, tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType},
    util::KernelVersion,
    Ebpf,
};
use tracing::{info, warn};

use super::{link_update, Attachment, LoadError};

/// The TC programs, by function name in `proxy-ebpf`, and their hook.
pub const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    ("tc_ingress", TcAttachType::Ingress),
    ("tc_egress", TcAttachType::Egress),
];

/// Pin names of TC links start with this; anything else in the links
/// directory belongs to the socket programs.
const PIN_PREFIX: &str = "tc-";

/// `tc-<device>-<ingress|egress>`.
fn pin_name(device: &str, attach: TcAttachType) -> String {
    let dir = match attach {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    format!("{PIN_PREFIX}{device}-{dir}")
}

/// Puts `tc_ingress`/`tc_egress` on every device of `devices` except those
/// of `already` (this process attached them before) and removes the pinned
/// links of devices no longer listed (which detaches them).
pub fn attach_devices(
    ebpf: &mut Ebpf,
    devices: &[String],
    already: &[String],
    links: &Path,
) -> Result<Vec<(String, Attachment)>, LoadError> {
    let mut done = Vec::new();
    let mut wanted = Vec::new();
    for (name, attach) in TC_PROGRAMS {
        let prog_err = |source| LoadError::Program { name, source };
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { name })?
            .try_into()
            .map_err(prog_err)?;
        // Loaded once per process; later calls only attach.
        if prog.fd().is_err() {
            prog.load().map_err(prog_err)?;
        }
        for device in devices {
            let pin = links.join(pin_name(device, attach));
            wanted.push(pin_name(device, attach));
            if already.contains(device) {
                continue;
            }
            let how = attach_one(prog, name, device, attach, &pin)?;
            info!(program = name, device = %device, ?how, "TC program in place");
            done.push((format!("{name}@{device}"), how));
        }
    }
    prune_links(links, &wanted);
    Ok(done)
}

fn attach_one(
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
    // An unreadable kernel version is taken as new: TCX attach then fails
    // with a clear error instead of silently falling back.
    let tcx = KernelVersion::current().map_or(true, |v| v >= KernelVersion::new(6, 6, 0));
    if tcx {
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
    } else {
        // clsact fallback (not exercised on the project's 6.x test
        // machines): a netlink filter cannot be pinned; it lives on the
        // device until removed, so the link is leaked on purpose instead of
        // being detached when the program is dropped.
        if let Err(e) = tc::qdisc_add_clsact(device) {
            // EEXIST: the qdisc is already there, which is what we want.
            warn!(device = %device, error = %e, "adding clsact qdisc");
        }
        let id = prog.attach(device, attach).map_err(prog_err)?;
        let link = prog.take_link(id).map_err(prog_err)?;
        std::mem::forget(link);
    }
    Ok(Attachment::Attached)
}

/// Removes pinned TC links not in `wanted`: the device left `--devices`.
fn prune_links(links: &Path, wanted: &[String]) {
    let Ok(entries) = fs::read_dir(links) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(PIN_PREFIX) && !wanted.contains(&name) {
            info!(link = %name, "detaching TC link of a device no longer listed");
            if let Err(e) = link_update::detach_pinned(&entry.path()) {
                warn!(link = %name, error = %e, "detaching stale TC link; removing its pin");
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_are_per_device_and_direction() {
        assert_eq!(pin_name("eth0", TcAttachType::Ingress), "tc-eth0-ingress");
        assert_eq!(pin_name("eth0", TcAttachType::Egress), "tc-eth0-egress");
    }
}
