//! Loads the kernel programs, pins maps and links under the versioned pin
//! directory, and attaches — or, when a previous agent left pinned links,
//! atomically swaps the programs inside them, so sockets are never without
//! a program and established connections are never touched.
mod link_update;
mod repin;
mod tc;

pub use repin::RepinError;

pub use tc::{Hook, TcDevices, TcMode, TC_PROGRAMS};

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use aya::{
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr, Program},
    Ebpf, EbpfLoader,
};
use tracing::info;

use crate::{
    kernel::Features,
    maps::sizes::{self, MapSizes},
    snat_ports::SnatPorts,
};

/// The compiled kernel object, built by aya-build in build.rs. Public so the
/// program-test tier loads exactly what the agent ships.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// The socket programs, by function name in `proxy-ebpf`: AF_INET sockets,
/// and AF_INET6 sockets addressing IPv4-mapped addresses (JVM, .NET).
pub const SOCK_PROGRAMS: [&str; 8] = [
    "sock4_connect",
    "sock4_sendmsg",
    "sock4_recvmsg",
    "sock4_getpeername",
    "sock6_connect",
    "sock6_sendmsg",
    "sock6_recvmsg",
    "sock6_getpeername",
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("creating pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object (maps pinned in {pin_dir})")]
    Object {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("mapping the conntrack filter {path}")]
    CtFilter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("program {name} missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link of program {name}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("opening cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning link {path}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("replacing the program in pinned link {path}")]
    Replace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How each program got in place, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    Attached,
    Replaced,
}

/// The versioned directory under the pin root holding maps and links.
pub fn pin_dir(bpffs: &Path) -> PathBuf {
    bpffs.join(proxy_common::maps::PIN_DIR)
}

/// The loaded object, kept alive so the TC programs can follow the node's
/// devices after start-up (`--devices` auto-detection).
pub struct Loaded {
    ebpf: Ebpf,
    links: PathBuf,
    tc_mode: TcMode,
    /// The TC hooks in place, with the ifindex each device had then; None
    /// before the first [`Loaded::set_devices`].
    hooks: Option<Vec<(Hook, u32)>>,
    /// What the maps really hold (a pinned map keeps its size).
    sizes: MapSizes,
    /// The pin root (`--bpffs`), for re-pinning after it is gone.
    bpffs: PathBuf,
    /// Our own descriptor of every pinned link, by pin name under `links`:
    /// while we hold it the link (and its program) stays attached even if
    /// its pin is removed, and it can be pinned again.
    held: BTreeMap<String, OwnedFd>,
    /// Pin names of the clsact markers (netlink filters have no link).
    markers: BTreeSet<String>,
    /// The one-agent lock on the pin directory, taken again on a new
    /// directory after re-pinning.
    lock: Option<fs::File>,
}

/// Loads the object with its maps pinned in (or reused from) the pin
/// directory, sized as `sizes` asks where they are new, in the variant
/// `kernel` can run, SNATing to `snat` ports, and attaches the socket
/// programs to `cgroup`. The TC programs wait for [`Loaded::set_devices`].
pub fn load(
    bpffs: &Path,
    cgroup: &Path,
    tc_mode: TcMode,
    kernel: &Features,
    sizes: &MapSizes,
    snat: SnatPorts,
) -> Result<(Loaded, Vec<(String, Attachment)>), LoadError> {
    let dir = pin_dir(bpffs);
    let links = dir.join("links");
    fs::create_dir_all(&links).map_err(|source| LoadError::PinDir {
        path: links.clone(),
        source,
    })?;
    let mut ebpf = load_object(&dir, kernel, sizes, snat)?;
    distrust_ct_filter(&dir)?;
    note_shared_ct_new_lru(&dir);
    remove_retired_pins(&dir);
    let sizes = effective_sizes(&dir, sizes);
    let cgroup_file = fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
        path: cgroup.to_path_buf(),
        source,
    })?;
    let mut done = Vec::new();
    for name in SOCK_PROGRAMS {
        let how = attach_one(&mut ebpf, name, &cgroup_file, &links.join(name))?;
        info!(program = name, ?how, cgroup = %cgroup.display(), "socket program in place");
        done.push((name.to_string(), how));
    }
    let mut loaded = Loaded {
        ebpf,
        links,
        tc_mode,
        hooks: None,
        sizes,
        bpffs: bpffs.to_path_buf(),
        held: BTreeMap::new(),
        markers: BTreeSet::new(),
        lock: None,
    };
    loaded.hold_links(SOCK_PROGRAMS.iter().map(|n| n.to_string()).collect(), false);
    Ok((loaded, done))
}

/// Before any program of ours attaches: the pinned conntrack filter may
/// have been left by an agent before an older version ran, whose programs
/// filled the confirmed table without marking it. Until the conntrack
/// sweeper's first rebuild (after the programs are attached), the programs
/// probe the confirmed table for every key.
pub fn distrust_ct_filter(dir: &Path) -> Result<(), LoadError> {
    let filter =
        crate::ct_filter::PinnedFilter::open(dir).map_err(|source| LoadError::CtFilter {
            path: dir.join(proxy_common::maps::CT_FILTER),
            source,
        })?;
    filter.filter().invalidate();
    Ok(())
}

/// Removes the pins of maps only earlier versions used
/// (`proxy_common::maps::RETIRED`), each logged; a failure is logged and
/// leaves the pin (it costs memory, not service).
fn remove_retired_pins(dir: &Path) {
    for name in proxy_common::maps::RETIRED {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => info!(map = name, "removed the pin of a map earlier versions used"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(map = name, error = %e, "removing the pin of a retired map"),
        }
    }
}

/// The new-flow conntrack table pinned by a version from before its
/// per-CPU LRU lists is kept (same layout, live entries); the log says how
/// to get the faster one.
fn note_shared_ct_new_lru(dir: &Path) {
    let flags = aya::maps::MapInfo::from_pin(dir.join(proxy_common::maps::CT_NEW))
        .map(|info| info.map_flags());
    if let Ok(flags) = flags {
        if flags & proxy_common::maps::CT_NEW_FLAGS == 0 {
            info!(
                map = proxy_common::maps::CT_NEW,
                "new-flow conntrack table pinned by an earlier version, with one shared LRU list: kept; `bpfproxy cleanup` and a restart give it per-CPU lists (cheaper new flows)"
            );
        }
    }
}

/// The object with its maps pinned in (or reused from) `dir`. Maps are
/// pinned ByName in the object: an existing pin is reused, so a restarted
/// agent keeps the state the kernel has been using; `sizes` only applies to
/// maps created now. The object's read-only constants say which helpers
/// `kernel` has; the verifier skips the code that needs the others. The
/// SNAT port range is a constant too.
fn load_object(
    dir: &Path,
    kernel: &Features,
    sizes: &MapSizes,
    snat: SnatPorts,
) -> Result<Ebpf, LoadError> {
    load_object_bytes(OBJECT, dir, kernel, sizes, snat)
}

/// [`load_object`] of another build of the object (`object`).
fn load_object_bytes(
    object: &[u8],
    dir: &Path,
    kernel: &Features,
    sizes: &MapSizes,
    snat: SnatPorts,
) -> Result<Ebpf, LoadError> {
    let set_retval = u8::from(kernel.set_retval);
    let coarse_clock = u8::from(kernel.coarse_clock);
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(dir)
        .override_global("HAVE_SET_RETVAL", &set_retval, true)
        // Not required: the TC benchmark loads builds from before it.
        .override_global("HAVE_COARSE_CLOCK", &coarse_clock, false)
        .override_global("SNAT_PORT_MIN", &snat.min, true)
        .override_global("SNAT_PORT_MAX", &snat.max, true);
    for (map, n) in sizes.by_map() {
        loader.map_max_entries(map, n);
    }
    loader.load(object).map_err(|source| LoadError::Object {
        pin_dir: dir.to_path_buf(),
        source: Box::new(source),
    })
}

/// The sizes the maps pinned in `dir` really have. A map pinned by an
/// earlier run with another size is kept as it is, with a warning: its
/// entries are live state (conntrack, affinity and socket revNAT entries
/// the kernel writes per connection, the frontends every socket reads), and
/// the programs in the pinned links use it. Migrating would mean a second
/// map filled while the datapath keeps writing the first, then swapping
/// every program: entries written in between would be lost and established
/// flows broken, on every agent restart with a changed flag. Keeping it is
/// safe, and never a crash loop; `bpfproxy cleanup` and a restart apply the
/// new size, as the operator's explicit choice. Capacity checks and metrics
/// use the kernel's sizes, so they are true either way.
fn effective_sizes(dir: &Path, configured: &MapSizes) -> MapSizes {
    let pinned = match sizes::read_pinned(dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "reading the pinned maps' sizes; assuming the configured ones");
            return *configured;
        }
    };
    let (effective, mismatches) = sizes::effective(configured, &pinned);
    for m in mismatches {
        tracing::warn!(
            map = m.map,
            pinned = m.pinned,
            configured = m.configured,
            flag = sizes::flag_of(m.map).unwrap_or_default(),
            "map pinned by an earlier run has another size; keeping it (and its entries): the new size takes effect after `bpfproxy cleanup` and a restart"
        );
    }
    effective
}

/// The object with its maps pinned in `bpffs` and the TC programs through
/// the verifier but attached nowhere: for BPF_PROG_TEST_RUN (the program
/// tests and the TC benchmark).
pub fn load_tc_unattached(bpffs: &Path) -> Result<Ebpf, LoadError> {
    load_tc_unattached_with(bpffs, &MapSizes::default(), SnatPorts::default())
}

/// [`load_tc_unattached`] with other map sizes and SNAT ports.
pub fn load_tc_unattached_with(
    bpffs: &Path,
    sizes: &MapSizes,
    snat: SnatPorts,
) -> Result<Ebpf, LoadError> {
    load_tc_unattached_object(OBJECT, bpffs, sizes, snat)
}

/// [`load_tc_unattached_with`] for another build of the object: the TC
/// benchmark measures an earlier build next to this one in the same run.
/// Its maps must be laid out as this build's (the agent programs them).
pub fn load_tc_unattached_object(
    object: &[u8],
    bpffs: &Path,
    sizes: &MapSizes,
    snat: SnatPorts,
) -> Result<Ebpf, LoadError> {
    let dir = pin_dir(bpffs);
    fs::create_dir_all(&dir).map_err(|source| LoadError::PinDir {
        path: dir.clone(),
        source,
    })?;
    // The TC programs' helpers as this kernel has them (the VM tiers run
    // them on 5.10); the socket programs' are not loaded here.
    let kernel = Features {
        coarse_clock: crate::kernel::has_coarse_clock(),
        ..Features::default()
    };
    let mut ebpf = load_object_bytes(object, &dir, &kernel, sizes, snat)?;
    tc::load_programs(&mut ebpf)?;
    Ok(ebpf)
}

/// Every program of the object through the verifier, attached nowhere, in
/// the variant `kernel` calls for, with its maps pinned in the scratch
/// directory `dir` (on a bpffs; the caller removes it): what `bpfproxy
/// preflight` reports per program.
pub fn verify_programs(dir: &Path, kernel: &Features) -> Vec<(&'static str, Result<(), String>)> {
    let mut ebpf = match load_object(dir, kernel, &MapSizes::default(), SnatPorts::default()) {
        Ok(ebpf) => ebpf,
        Err(e) => return vec![("(object)", Err(error_chain(&e)))],
    };
    let mut verify = |name: &str| -> Result<(), String> {
        let loaded = match ebpf.program_mut(name) {
            Some(Program::CgroupSockAddr(p)) => p.load(),
            Some(Program::SchedClassifier(p)) => p.load(),
            Some(_) => return Err("unexpected program type".to_string()),
            None => return Err("missing from the object".to_string()),
        };
        loaded.map_err(|e| error_chain(&e))
    };
    let tc = TC_PROGRAMS.iter().map(|(name, _)| *name);
    SOCK_PROGRAMS
        .into_iter()
        .chain(tc)
        .map(|name| (name, verify(name)))
        .collect()
}

/// An error and its sources on one line (the verifier's message is the
/// innermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// [`load`], then the TC programs on `devices` (none: no per-packet
/// datapath; TC links of devices no longer listed are removed).
pub fn load_and_attach(
    bpffs: &Path,
    cgroup: &Path,
    tc_mode: TcMode,
    devices: &TcDevices,
) -> Result<Vec<(String, Attachment)>, LoadError> {
    let (mut loaded, mut done) = load(
        bpffs,
        cgroup,
        tc_mode,
        &Features::probe(),
        &MapSizes::default(),
        SnatPorts::default(),
    )?;
    done.extend(loaded.set_devices(devices)?.unwrap_or_default());
    // Dropping the object is fine: pinned links keep the programs alive
    // and pinned maps keep the state.
    Ok(done)
}

impl Loaded {
    /// What the maps really hold: the configured sizes, except for maps
    /// pinned earlier with another size.
    pub fn sizes(&self) -> MapSizes {
        self.sizes
    }

    /// Puts the TC programs on exactly `devices`: hooks new since the
    /// last call get their program (on the first call every hook, its
    /// pinned link of an earlier agent swapped in place), hooks no longer
    /// wanted lose it. None when nothing changed since the last call.
    ///
    /// A device is known by name and ifindex: one that came back under the
    /// same name (driver reload, USB NIC replugged) is a new device with
    /// empty hooks, so it is attached again; its old pinned link is found
    /// defunct on the way and replaced.
    pub fn set_devices(
        &mut self,
        devices: &TcDevices,
    ) -> Result<Option<Vec<(String, Attachment)>>, LoadError> {
        let hooks = devices.hooks();
        let wanted: Vec<(Hook, u32)> = hooks
            .iter()
            .map(|h| (h.clone(), ifindex(&h.device)))
            .collect();
        if self.hooks.as_ref() == Some(&wanted) {
            return Ok(None);
        }
        let already: Vec<Hook> = self
            .hooks
            .iter()
            .flatten()
            .filter(|h| wanted.contains(h))
            .map(|(h, _)| h.clone())
            .collect();
        let done = tc::attach_hooks(&mut self.ebpf, self.tc_mode, &hooks, &already, &self.links)?;
        self.hooks = Some(wanted);
        let names: BTreeSet<String> = hooks
            .iter()
            .map(|h| tc::pin_name(&h.device, h.attach))
            .collect();
        if self.tc_mode.uses_tcx() {
            self.hold_links(names, true);
        } else {
            self.markers = names;
        }
        Ok(Some(done))
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

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &fs::File,
    link_pin: &Path,
) -> Result<Attachment, LoadError> {
    let prog_err = |source| LoadError::Program { name, source };
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(prog_err)?;
    prog.load().map_err(prog_err)?;
    if link_pin.exists() {
        let prog_fd = prog.fd().map_err(prog_err)?;
        match link_update::replace_program(link_pin, prog_fd) {
            Ok(()) => return Ok(Attachment::Replaced),
            // The link's cgroup is gone (ENOLINK) or the pin is stale: start
            // over with a fresh link below.
            Err(e) if link_update::is_defunct(&e) => {
                tracing::warn!(link = %link_pin.display(), error = %e, "pinned link is defunct; re-attaching");
                let _ = fs::remove_file(link_pin);
            }
            Err(source) => {
                return Err(LoadError::Replace {
                    path: link_pin.to_path_buf(),
                    source,
                })
            }
        }
    }
    // With bpf_link (kernel >= 5.7) cgroup attachments are always
    // multi-program, so other software's programs on the same cgroup stay;
    // the kernel rejects any explicit flag here (EINVAL), hence Single (0).
    let id = prog
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(prog_err)?;
    pin_link(name, prog.take_link(id).map_err(prog_err)?, link_pin)?;
    Ok(Attachment::Attached)
}

/// Pins a freshly attached link, so it (and its program) outlive the agent.
pub(crate) fn pin_link<L>(name: &'static str, link: L, pin: &Path) -> Result<(), LoadError>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    let fd_link: FdLink = link
        .try_into()
        .map_err(|source| LoadError::Link { name, source })?;
    fd_link.pin(pin).map_err(|source| LoadError::PinLink {
        path: pin.to_path_buf(),
        source,
    })?;
    Ok(())
}
