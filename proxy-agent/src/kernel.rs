//! What the running kernel offers the programs, probed once at start-up so
//! the agent loads the variant that works there instead of crash-looping
//! on a verifier error. bpfproxy supports kernels from 5.10.
use aya::{
    programs::ProgramType,
    sys::{is_helper_supported, BpfHelper},
    util::KernelVersion,
};

/// The kernel features whose absence changes what bpfproxy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `bpf_set_retval` in the socket programs (5.18+): a connect() to a
    /// Service without endpoints fails with ECONNREFUSED; without it, with
    /// EPERM (at once either way).
    pub set_retval: bool,
    /// `bpf_ktime_get_coarse_ns` (5.11+): conntrack and affinity
    /// timestamps read the cheap clock; without it, the precise one.
    pub coarse_clock: bool,
}

impl Default for Features {
    /// Everything present: what the object was built for.
    fn default() -> Self {
        Self {
            set_retval: true,
            coarse_clock: true,
        }
    }
}

impl Features {
    /// Probes the running kernel. A probe that cannot decide counts as
    /// absent: the degraded variant loads everywhere.
    pub fn probe() -> Self {
        let helper =
            |h: BpfHelper| is_helper_supported(ProgramType::CgroupSockAddr, h).unwrap_or(false);
        Self {
            set_retval: helper(BpfHelper::BPF_FUNC_set_retval),
            coarse_clock: has_coarse_clock(),
        }
    }
}

/// Whether the TC programs may read `bpf_ktime_get_coarse_ns` (5.11+): the
/// one probe loading them alone needs (the socket programs' helpers are
/// probed by [`Features::probe`]).
pub fn has_coarse_clock() -> bool {
    is_helper_supported(
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
    )
    .unwrap_or(false)
}

/// The running kernel's version, when it can be read.
pub fn version() -> Option<KernelVersion> {
    KernelVersion::current().ok()
}
