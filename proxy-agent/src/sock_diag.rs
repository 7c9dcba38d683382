//! The kernel's socket diagnostics (NETLINK_SOCK_DIAG), for UDP only: list
//! the connected UDP sockets of the calling thread's network namespace and
//! close one with SOCK_DESTROY (what `ss -K` does). A closed socket's owner
//! gets ECONNABORTED from its next call and must open a new socket.
//!
//! Needs CAP_NET_ADMIN and a kernel built with CONFIG_INET_DIAG_DESTROY
//! (Debian's and Ubuntu's kernels are); `udp_diag` is loaded on demand.
use std::{
    io,
    net::{IpAddr, Ipv4Addr},
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// Both address families: a JVM's or .NET's UDP socket is an IPv6 socket,
/// connected to an IPv4-mapped address.
pub const FAMILIES: [u8; 2] = [AF_INET, AF_INET6];

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sock_diag {op}: the kernel answered: {source}")]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sock_diag {op}: unreadable answer: {detail}")]
    Decode { op: &'static str, detail: String },
}

impl DiagError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn kernel_errno(&self) -> Option<i32> {
        match self {
            DiagError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One connected UDP socket as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpSock {
    pub family: u8,
    pub id: SocketId,
}

impl UdpSock {
    /// The socket's cookie: what `bpf_get_socket_cookie` returned for it.
    pub fn cookie(&self) -> u64 {
        // The kernel stores it as two native-endian u32s, low half first.
        let c = self.id.cookie;
        let lo = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        let hi = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Where it sends: the IPv4 address and port (also for an IPv6 socket
    /// connected to an IPv4-mapped address); None for real IPv6.
    pub fn destination(&self) -> Option<(Ipv4Addr, u16)> {
        let ip = match self.id.destination_address {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => a.to_ipv4_mapped()?,
        };
        Some((ip, self.id.destination_port))
    }
}

/// A sock_diag socket in the calling thread's network namespace.
pub struct Diag {
    sock: Socket,
    seq: u32,
}

impl Diag {
    pub fn open() -> Result<Self, DiagError> {
        let io = |source| DiagError::Io { op: "open", source };
        let mut sock = Socket::new(NETLINK_SOCK_DIAG).map_err(io)?;
        sock.bind_auto().map_err(io)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        set_receive_timeout(&sock, RECEIVE_TIMEOUT).map_err(io)?;
        Ok(Self { sock, seq: 0 })
    }

    /// The connected UDP sockets of `family` (AF_INET or AF_INET6).
    pub fn connected_udp(&mut self, family: u8) -> Result<Vec<UdpSock>, DiagError> {
        let op = "dump";
        let request = SockDiagMessage::InetRequest(request(family, any_socket(family)));
        self.send(op, request, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(op, |msg| {
            if let SockDiagMessage::InetResponse(r) = msg {
                out.push(UdpSock {
                    family: r.header.family,
                    id: r.header.socket_id.clone(),
                });
            }
        })?;
        Ok(out)
    }

    /// Closes `s`: the kernel finds it by its addresses and checks its
    /// cookie, so a socket that went away meanwhile is never mistaken for
    /// a new one on the same addresses (that answers ENOENT).
    pub fn destroy(&mut self, s: &UdpSock) -> Result<(), DiagError> {
        let op = "destroy";
        let mut req = request(s.family, s.id.clone());
        req.states = StateFlags::all();
        let msg = SockDiagDestroy::new(SockDiagMessage::InetRequest(req));
        self.send(op, msg, NLM_F_REQUEST | NLM_F_ACK)?;
        self.receive(op, |_| {})
    }

    fn send<M: NetlinkSerializable>(
        &mut self,
        op: &'static str,
        msg: M,
        flags: u16,
    ) -> Result<(), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .map(drop)
            .map_err(|source| DiagError::Io { op, source })
    }

    /// Reads answers to the last request until its end (a dump's DONE or
    /// an acknowledgement), handing each message to `each`.
    fn receive(
        &mut self,
        op: &'static str,
        mut each: impl FnMut(SockDiagMessage),
    ) -> Result<(), DiagError> {
        loop {
            let (buf, _) = self
                .sock
                .recv_from_full()
                .map_err(|source| DiagError::Io { op, source })?;
            let mut rest = &buf[..];
            while !rest.is_empty() {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(rest).map_err(|e| {
                    DiagError::Decode {
                        op,
                        detail: e.to_string(),
                    }
                })?;
                let len = (msg.header.length as usize).max(1).min(rest.len());
                rest = &rest[len..];
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => each(m),
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(DiagError::Kernel {
                                op,
                                source: io::Error::from_raw_os_error(-code.get()),
                            }),
                        }
                    }
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
            }
        }
    }
}

fn request(family: u8, socket_id: SocketId) -> InetRequest {
    InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        // A connected UDP socket is in TCP_ESTABLISHED.
        states: StateFlags::ESTABLISHED,
        socket_id,
    }
}

/// Whether this kernel can close a connected UDP socket through sock_diag:
/// closes one of its own (on loopback, in the calling thread's namespace;
/// a UDP connect() sends nothing) and checks that the socket saw it.
pub fn probe_destroy() -> Result<(), String> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    sock.connect("127.0.0.1:9")
        .map_err(|e| format!("connect: {e}"))?;
    let cookie = socket_cookie(&sock).map_err(|e| format!("SO_COOKIE: {e}"))?;
    let mut diag = Diag::open().map_err(|e| e.to_string())?;
    let found = diag.connected_udp(AF_INET).map_err(|e| e.to_string())?;
    let ours = found
        .iter()
        .find(|s| s.cookie() == cookie)
        .ok_or("the kernel did not list our own connected UDP socket")?;
    diag.destroy(ours).map_err(|e| e.to_string())?;
    match sock.take_error() {
        Ok(Some(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
        other => Err(format!("the socket did not see its closing: {other:?}")),
    }
}

/// The socket's cookie (SO_COOKIE): what `bpf_get_socket_cookie` returns.
fn socket_cookie(sock: &impl std::os::fd::AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The kernel answers at once; a pass must never wait on it for ever.
const RECEIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn set_receive_timeout(sock: &Socket, t: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(t.subsec_micros() as i32),
    };
    // SAFETY: setsockopt reads `size_of::<timeval>()` bytes from `tv`.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The socket id of a dump request (which matches every socket).
fn any_socket(family: u8) -> SocketId {
    if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(dst: IpAddr, cookie: [u8; 8]) -> UdpSock {
        let mut id = SocketId::new_v6();
        id.destination_address = dst;
        id.destination_port = 53;
        id.cookie = cookie;
        UdpSock {
            family: AF_INET6,
            id,
        }
    }

    #[test]
    fn mapped_destinations_read_as_ipv4_and_real_ipv6_as_none() {
        let mapped = sock("::ffff:10.244.1.5".parse().unwrap(), [0; 8]);
        assert_eq!(
            mapped.destination(),
            Some((Ipv4Addr::new(10, 244, 1, 5), 53))
        );
        assert_eq!(sock("fd00::5".parse().unwrap(), [0; 8]).destination(), None);
    }

    #[test]
    fn the_cookie_is_two_native_u32_halves_low_first() {
        let c: u64 = 0x0000_0012_3456_789a;
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(c as u32).to_ne_bytes());
        bytes[4..].copy_from_slice(&((c >> 32) as u32).to_ne_bytes());
        assert_eq!(sock("::1".parse().unwrap(), bytes).cookie(), c);
    }
}
