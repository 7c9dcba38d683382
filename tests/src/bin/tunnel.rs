//! tunnel: an L3 tunnel between the sandbox's nodes, shaped as WireGuard
//! makes one (flannel's `wireguard-native` backend names it `flannel-wg`):
//! a device without link-layer header whose packets travel to the peer
//! nodes inside UDP datagrams. This machine's kernel has no wireguard (or
//! ipip) module, so a TUN device and this relay stand in for it: what the
//! TC programs see on the device is the same (IP packets at offset 0).
//!
//!   tunnel --dev NAME --listen IP:PORT --peer CIDR=IP:PORT [--peer …]
//!
//! Creates the TUN device NAME in the calling network namespace (it lives
//! as long as this process), then relays: a packet read from the device
//! goes to the peer whose CIDR holds its destination (WireGuard's
//! allowed-IPs), a datagram received is written to the device. Unencrypted,
//! std and libc only; run only inside the test namespaces.
use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::ExitCode,
    thread,
};

/// Largest IP packet relayed (the device's MTU is lower).
const MAX_PACKET: usize = 65_535;

struct Peer {
    net: u32,
    mask: u32,
    to: SocketAddr,
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunnel: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let (mut dev, mut listen, mut peers) = (None, None, Vec::new());
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dev" => dev = Some(value.clone()),
            "--listen" => listen = Some(value.parse::<SocketAddr>().map_err(|e| e.to_string())?),
            "--peer" => peers.push(peer(value)?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let dev = dev.ok_or("--dev is required")?;
    let sock = UdpSocket::bind(listen.ok_or("--listen is required")?).map_err(|e| e.to_string())?;
    let tun = open_tun(&dev).map_err(|e| format!("creating TUN device {dev}: {e}"))?;
    let (mut tun_in, mut tun_out) = (tun.try_clone().map_err(|e| e.to_string())?, tun);
    let sock_in = sock.try_clone().map_err(|e| e.to_string())?;
    let from_peers = thread::spawn(move || {
        let mut buf = vec![0u8; MAX_PACKET];
        while let Ok((n, _)) = sock_in.recv_from(&mut buf) {
            let _ = tun_out.write(&buf[..n]);
        }
    });
    let mut buf = vec![0u8; MAX_PACKET];
    while let Ok(n) = tun_in.read(&mut buf) {
        let pkt = &buf[..n];
        if let Some(to) = route(&peers, pkt) {
            let _ = sock.send_to(pkt, to);
        }
    }
    let _ = from_peers.join();
    Ok(())
}

/// `CIDR=IP:PORT`.
fn peer(s: &str) -> Result<Peer, String> {
    let bad = || format!("--peer {s:?} is not CIDR=IP:PORT");
    let (cidr, to) = s.split_once('=').ok_or_else(bad)?;
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
    Ok(Peer {
        net: u32::from(addr) & mask,
        mask,
        to: to.parse().map_err(|_| bad())?,
    })
}

/// The peer an IPv4 packet goes to, by its destination.
fn route(peers: &[Peer], pkt: &[u8]) -> Option<SocketAddr> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let dst = u32::from_be_bytes([pkt[16], pkt[17], pkt[18], pkt[19]]);
    peers.iter().find(|p| dst & p.mask == p.net).map(|p| p.to)
}

/// `/dev/net/tun` attached to a new TUN device `name` (IFF_TUN: IP
/// packets; IFF_NO_PI: without the packet-information prefix).
fn open_tun(name: &str) -> std::io::Result<File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is a plain C struct; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(std::io::Error::other("device name too long"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: a valid fd and ifreq for TUNSETIFF.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}
