//! The cgroup socket hooks: connect, sendmsg, recvmsg and getpeername, for
//! AF_INET sockets (`sock4_*`) and for AF_INET6 sockets that address IPv4
//! through IPv4-mapped addresses (`sock6_*`: `::ffff:a.b.c.d`, which the JDK
//! and .NET use whenever the kernel has IPv6). Both families run the same
//! translation of the IPv4 address; a [`Family`] only says where the
//! context keeps it.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext, Global,
};
use proxy_common::{counters, node_flags, svc_stat, SockRevNatKey, SockRevNatValue};

use crate::{
    counters::bump,
    lb::{select, Lookup},
    maps::{NODE_ADDRS, SOCK_REV_NAT},
    stats,
};

/// Whether the kernel has `bpf_set_retval` (5.18+). The agent probes the
/// kernel and sets this before loading. It lives in the object's read-only
/// data, which the loader freezes: the verifier then knows its value and
/// never walks the helper call on kernels without it, which would reject
/// the whole program ("invalid func unknown#187" on 5.10).
#[unsafe(no_mangle)]
static HAVE_SET_RETVAL: Global<u8> = Global::new(1);

#[inline(always)]
fn have_set_retval() -> bool {
    HAVE_SET_RETVAL.load() != 0
}

/// Return values of sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn sock4_connect(ctx: SockAddrContext) -> i32 {
    translate_forward::<V4>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock4_sendmsg(ctx: SockAddrContext) -> i32 {
    translate_forward::<V4>(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock4_recvmsg(ctx: SockAddrContext) -> i32 {
    translate_reverse::<V4>(&ctx);
    // recvmsg programs must allow; the kernel rejects any other value.
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock4_getpeername(ctx: SockAddrContext) -> i32 {
    translate_reverse::<V4>(&ctx);
    ALLOW
}

/// TCP and UDP connect() of an AF_INET6 socket to a mapped address run only
/// this hook (never connect4).
#[cgroup_sock_addr(connect6)]
pub fn sock6_connect(ctx: SockAddrContext) -> i32 {
    translate_forward::<V6>(&ctx)
}

/// The kernel hands UDP sendmsg() to a mapped address to sendmsg4 before
/// this hook would run; kept for completeness (and other kernels).
#[cgroup_sock_addr(sendmsg6)]
pub fn sock6_sendmsg(ctx: SockAddrContext) -> i32 {
    translate_forward::<V6>(&ctx)
}

/// Replies on an AF_INET6 socket, also to datagrams sendmsg4 translated:
/// the source arrives mapped and must read as the (mapped) VIP.
#[cgroup_sock_addr(recvmsg6)]
pub fn sock6_recvmsg(ctx: SockAddrContext) -> i32 {
    translate_reverse::<V6>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock6_getpeername(ctx: SockAddrContext) -> i32 {
    translate_reverse::<V6>(&ctx);
    ALLOW
}

/// Where a hook's context holds the IPv4 address it is about.
trait Family {
    /// The IPv4 address in network byte order, or None when the socket
    /// addresses something else (a real IPv6 address: left untouched).
    fn ip4(sa: &bpf_sock_addr) -> Option<u32>;
    /// Replaces the IPv4 address, keeping the family's spelling.
    fn set_ip4(sa: &mut bpf_sock_addr, addr_be: u32);
}

/// AF_INET: `user_ip4`.
struct V4;

impl Family for V4 {
    #[inline(always)]
    fn ip4(sa: &bpf_sock_addr) -> Option<u32> {
        Some(sa.user_ip4)
    }

    #[inline(always)]
    fn set_ip4(sa: &mut bpf_sock_addr, addr_be: u32) {
        sa.user_ip4 = addr_be;
    }
}

/// AF_INET6: the last word of `user_ip6` when the first three spell the
/// `::ffff:0:0/96` prefix.
struct V6;

/// The third word of an IPv4-mapped address (bytes 00 00 ff ff), as the
/// context holds it (network byte order read as a native u32).
const MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl Family for V6 {
    #[inline(always)]
    fn ip4(sa: &bpf_sock_addr) -> Option<u32> {
        // One 4-byte load per word: the verifier only accepts user_ip6
        // accesses of the context's own field size, and volatile keeps LLVM
        // from merging or splitting them.
        // SAFETY: reads of fields of a valid context.
        let word = |i: usize| unsafe { core::ptr::read_volatile(&sa.user_ip6[i & 3]) };
        if word(0) != 0 || word(1) != 0 || word(2) != MAPPED_PREFIX_WORD {
            return None;
        }
        Some(word(3))
    }

    #[inline(always)]
    fn set_ip4(sa: &mut bpf_sock_addr, addr_be: u32) {
        // The mapped prefix stays as it is.
        // SAFETY: a 4-byte store into a writable field of a valid context.
        unsafe { core::ptr::write_volatile(&mut sa.user_ip6[3], addr_be) };
    }
}

/// What connect()/sendmsg() to an IPv4 destination turns into.
enum Forward {
    /// Not a frontend (or an internal error, counted): untouched.
    Pass,
    /// A frontend without endpoints: ECONNREFUSED.
    Refuse,
    /// A frontend: the backend to use instead.
    To { addr_be: u32, port_be: u16 },
}

/// connect()/sendmsg() of either family to a frontend: rewrite the
/// destination to a backend, or refuse.
#[inline(always)]
fn translate_forward<F: Family>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(addr_be) = F::ip4(sa) else {
        return ALLOW;
    };
    // The port sits in the low 16 bits, in network byte order; the context
    // field must be read whole (4 bytes), then narrowed.
    let port_be = sa.user_port as u16;
    let proto = sa.protocol as u8;
    match forward(ctx, addr_be, port_be, proto) {
        Forward::Pass => ALLOW,
        Forward::Refuse => {
            // Fail fast like kube-proxy's REJECT rule: the caller sees
            // ECONNREFUSED instead of the EPERM a plain reject gives (all a
            // kernel before 5.18 can say: still at once, not a timeout).
            if have_set_retval() {
                // SAFETY: helper call allowed for connect and sendmsg hooks.
                unsafe { bpf_set_retval(-ECONNREFUSED) };
            }
            REJECT
        }
        Forward::To { addr_be, port_be } => {
            F::set_ip4(sa, addr_be);
            sa.user_port = port_be as u32;
            ALLOW
        }
    }
}

/// The translation of a connect()/sendmsg() to `addr_be:port_be/proto`,
/// whatever the socket's family: picks the backend and remembers the
/// frontend for this socket and backend (for recvmsg and getpeername).
#[inline(always)]
fn forward(ctx: &SockAddrContext, addr_be: u32, port_be: u16, proto: u8) -> Forward {
    // SAFETY: helper valid for sock_addr programs (kernel >= 5.7).
    let client = || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let mut lookup = select(addr_be, port_be, proto, client);
    // NodePorts (kept under 0.0.0.0) also answer on 127.0.0.0/8 and on the
    // node's own addresses for processes on the node, as with kube-proxy.
    if matches!(lookup, Ok(Lookup::NotAService)) && is_nodeport_address(addr_be) {
        lookup = select(0, port_be, proto, client);
    }
    match lookup {
        Ok(Lookup::NotAService) => Forward::Pass,
        Ok(Lookup::NoEndpoints { rev_nat_id }) => {
            bump(counters::REJECTED_NO_ENDPOINTS);
            stats::service(rev_nat_id, svc_stat::REFUSED, 1);
            Forward::Refuse
        }
        Ok(Lookup::Backend {
            backend_id,
            backend,
            master,
        }) => {
            stats::service(master.rev_nat_id, svc_stat::SOCK_CONNECTIONS, 1);
            stats::backend(master.rev_nat_id, backend_id);
            // SAFETY: helper valid for sock_addr programs.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let key = SockRevNatKey {
                cookie,
                addr_be: backend.addr_be,
                port_be: backend.port_be,
                _pad: 0,
            };
            let value = SockRevNatValue {
                addr_be,
                port_be,
                rev_nat_id: master.rev_nat_id,
            };
            if SOCK_REV_NAT.insert(key, value, 0).is_err() {
                bump(counters::ERR_SOCK_REV_NAT_UPDATE);
            }
            bump(counters::TRANSLATED);
            Forward::To {
                addr_be: backend.addr_be,
                port_be: backend.port_be,
            }
        }
        Err(reason) => {
            bump(reason);
            Forward::Pass
        }
    }
}

/// Loopback, or a node address NodePorts answer on.
#[inline(always)]
fn is_nodeport_address(addr_be: u32) -> bool {
    // The first byte in memory is the first octet (network byte order).
    if addr_be.to_ne_bytes()[0] == 127 {
        return true;
    }
    // SAFETY: copied out at once.
    unsafe { NODE_ADDRS.get(addr_be) }
        .copied()
        .is_some_and(|n| n.flags & node_flags::NODEPORT != 0)
}

/// recvmsg()/getpeername() of either family: if this socket was translated
/// to the backend it now sees, show the frontend instead.
#[inline(always)]
fn translate_reverse<F: Family>(ctx: &SockAddrContext) {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(addr_be) = F::ip4(sa) else {
        return;
    };
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNatKey {
        cookie,
        addr_be,
        port_be: sa.user_port as u16,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(front) = unsafe { SOCK_REV_NAT.get(key) }.copied() {
        F::set_ip4(sa, front.addr_be);
        sa.user_port = front.port_be as u32;
        bump(counters::REV_TRANSLATED);
    }
}
