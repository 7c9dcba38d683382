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

/// TC: a packet to an external frontend was DNATed (new flow).
pub const TC_NEW_FLOW: u32 = 8;
/// TC: a packet of a known flow was translated (either direction).
pub const TC_TRANSLATED: u32 = 9;
/// TC: a packet to an external frontend without endpoints was dropped.
pub const TC_DROP_NO_ENDPOINTS: u32 = 10;
/// TC: an IPv4 fragment passed untouched (no fragment tracking yet).
pub const TC_PASS_FRAGMENT: u32 = 11;
/// TC: a malformed or truncated IPv4 packet passed untouched.
pub const TC_PASS_MALFORMED: u32 = 12;
/// TC: a conntrack entry could not be written (the packet passed untouched).
pub const ERR_CT_UPDATE: u32 = 13;
/// TC: a packet rewrite helper failed (the packet may be half-rewritten and
/// is dropped rather than sent with wrong addresses or checksums).
pub const ERR_REWRITE: u32 = 14;
/// TC: no free SNAT port was found for a new flow (passed untouched).
pub const ERR_SNAT_PORT: u32 = 15;
/// TC: no SNAT address is configured for a remote backend (passed untouched).
pub const ERR_NO_SNAT_ADDR: u32 = 16;
/// TC: a packet to a frontend without any endpoint was refused (TCP RST,
/// ICMP port unreachable) as kube-proxy's REJECT: by the node's stack for a
/// NodePort, by the program itself for an externalIP or LoadBalancer IP.
pub const TC_REJECT_NO_ENDPOINTS: u32 = 17;

/// TC: no route leads to the backend (or, for a reply, back to the client)
/// of a flow the program forwards itself; the packet is dropped, as the
/// stack would drop it.
pub const TC_DROP_NO_ROUTE: u32 = 18;
/// TC: a packet of a forwarded flow does not fit the egress device's MTU:
/// with DF set it is answered with ICMP "fragmentation needed" (the
/// sender's path MTU discovery then shrinks its packets), without DF it is
/// dropped.
pub const TC_FRAG_NEEDED: u32 = 19;

/// TC: a new connection to a LoadBalancer IP came from outside its
/// `loadBalancerSourceRanges` and was dropped.
pub const TC_DROP_SOURCE_RANGE: u32 = 20;

/// TC: an ICMP error (destination unreachable, fragmentation needed
/// included; time exceeded; parameter problem) quoting a packet of a
/// translated flow was reverse-translated for its receiver: the client sees
/// its own packet to the frontend, a backend its own to the SNAT address.
pub const TC_ICMP_TRANSLATED: u32 = 21;
/// TC: an ICMP error quoting no flow the programs translated (or a quote
/// too short to tell, or a non-first fragment) passed untouched.
pub const TC_ICMP_PASS_UNKNOWN: u32 = 22;

/// TC: a new flow was confirmed (the client's ACK after its SYN, a second
/// packet of a UDP flow) and moved to the table of confirmed flows.
pub const TC_CT_CONFIRMED: u32 = 23;
/// TC: a confirmed SNAT flow found its SNAT port held by another flow (its
/// reservation was evicted): the flow was ended rather than mixed up.
pub const ERR_SNAT_LOST: u32 = 24;

/// Size of the counters array.
pub const MAX: u32 = 25;

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
    "tc_new_flow",
    "tc_translated",
    "tc_drop_no_endpoints",
    "tc_pass_fragment",
    "tc_pass_malformed",
    "err_ct_update",
    "err_rewrite",
    "err_snat_port",
    "err_no_snat_addr",
    "tc_reject_no_endpoints",
    "tc_drop_no_route",
    "tc_frag_needed",
    "tc_drop_source_range",
    "tc_icmp_translated",
    "tc_icmp_pass_unknown",
    "tc_ct_confirmed",
    "err_snat_lost",
];
