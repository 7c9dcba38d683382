//! The cgroup socket hooks: connect4, sendmsg4, recvmsg4, getpeername4.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use proxy_common::{counters, node_flags, SockRevNatKey, SockRevNatValue};

use crate::{
    counters::bump,
    lb::{select, Lookup},
    maps::{NODE_ADDRS, SOCK_REV_NAT},
};

/// Return values of sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn sock4_connect(ctx: SockAddrContext) -> i32 {
    translate_forward(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock4_sendmsg(ctx: SockAddrContext) -> i32 {
    translate_forward(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock4_recvmsg(ctx: SockAddrContext) -> i32 {
    translate_reverse(&ctx);
    // recvmsg programs must allow; the kernel rejects any other value.
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock4_getpeername(ctx: SockAddrContext) -> i32 {
    translate_reverse(&ctx);
    ALLOW
}

/// connect()/sendmsg() to a frontend: rewrite the destination to a backend
/// and remember the frontend for this socket and backend.
#[inline(always)]
fn translate_forward(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    let addr_be = sa.user_ip4;
    // The port sits in the low 16 bits, in network byte order; the context
    // field must be read whole (4 bytes), then narrowed.
    let port_be = sa.user_port as u16;
    let proto = sa.protocol as u8;
    // SAFETY: helper valid for sock_addr programs (kernel >= 5.7).
    let client = || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let mut lookup = select(addr_be, port_be, proto, client);
    // NodePorts (kept under 0.0.0.0) also answer on 127.0.0.0/8 and on the
    // node's own addresses for processes on the node, as with kube-proxy.
    if matches!(lookup, Ok(Lookup::NotAService)) && is_nodeport_address(addr_be) {
        lookup = select(0, port_be, proto, client);
    }
    match lookup {
        Ok(Lookup::NotAService) => ALLOW,
        Ok(Lookup::NoEndpoints) => {
            bump(counters::REJECTED_NO_ENDPOINTS);
            // Fail fast like kube-proxy's REJECT rule: the caller sees
            // ECONNREFUSED instead of the EPERM a plain reject gives.
            // SAFETY: helper call allowed for connect4/sendmsg4.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REJECT
        }
        Ok(Lookup::Backend { backend, master }) => {
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
            sa.user_ip4 = backend.addr_be;
            sa.user_port = backend.port_be as u32;
            bump(counters::TRANSLATED);
            ALLOW
        }
        Err(reason) => {
            bump(reason);
            ALLOW
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

/// recvmsg()/getpeername(): if this socket was translated to the backend it
/// now sees, show the frontend instead.
#[inline(always)]
fn translate_reverse(ctx: &SockAddrContext) {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNatKey {
        cookie,
        addr_be: sa.user_ip4,
        port_be: sa.user_port as u16,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(front) = unsafe { SOCK_REV_NAT.get(key) }.copied() {
        sa.user_ip4 = front.addr_be;
        sa.user_port = front.port_be as u32;
        bump(counters::REV_TRANSLATED);
    }
}
