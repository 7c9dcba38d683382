//! Datapath counters: a per-CPU array indexed by reason. The agent sums the
//! CPUs for metrics and `bpfproxy dump`.

/// A connect/sendmsg to a frontend was translated to a backend.
pub const TRANSLATED: u32 = 0;
/// A frontend with no endpoints refused a connect/sendmsg.
pub const REJECTED_NO_ENDPOINTS: u32 = 1;
/// The master entry named a slot that does not exist (fails open).
pub const ERR_SLOT_MISSING: u32 = 2;
/// A slot named a backend that does not exist (fails open).
pub const ERR_BACKEND_MISSING: u32 = 3;
/// The socket revNAT entry could not be written (translation still done).
pub const ERR_SOCK_REV_NAT_UPDATE: u32 = 4;
/// recvmsg/getpeername restored the frontend address.
pub const REV_TRANSLATED: u32 = 5;
/// A connection went to the client's previous backend (session affinity).
pub const AFFINITY_HIT: u32 = 6;

/// The affinity entry could not be written (translation still done).
pub const ERR_AFFINITY_UPDATE: u32 = 7;

/// Size of the counters array.
pub const MAX: u32 = 8;

/// Names for metrics labels and dump, indexed like the constants above.
pub const NAMES: [&str; MAX as usize] = [
    "translated",
    "rejected_no_endpoints",
    "err_slot_missing",
    "err_backend_missing",
    "err_sock_rev_nat_update",
    "rev_translated",
    "affinity_hit",
    "err_affinity_update",
];
