//! A spoofed SYN flood, as an attacker on the Internet sends one: TCP SYNs
//! from made-up sources (100.64.0.0/10, none of them a real client), each
//! its own would-be flow. Sent from a test namespace through a raw socket,
//! never from the root namespace.
use std::{net::Ipv4Addr, os::fd::FromRawFd, os::fd::OwnedFd, time::Duration};

use anyhow::{bail, Result};

use crate::{
    netns::Netns,
    packet::{Spec, ETH_HLEN, TCP_SYN},
};

/// The `i`-th spoofed source: an address in 100.64.0.0/10 and a port, so
/// that every `i` below 2^22 × 16 is a distinct 4-tuple.
pub fn spoofed_source(i: u32) -> (Ipv4Addr, u16) {
    let addr = 0x6440_0000 | ((i >> 4) & 0x003f_ffff);
    (Ipv4Addr::from(addr), 1024 + (i & 0xf) as u16 * 4000)
}

/// Sends `count` SYNs from spoofed sources to `to` out of namespace `ns`;
/// returns how many the kernel took.
pub fn spoofed_syn_flood(ns: &Netns, to: (Ipv4Addr, u16), count: u32) -> Result<u32> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<u32> {
            ns.join_this_thread()?;
            send_all(to, count)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?
    })
}

fn send_all(to: (Ipv4Addr, u16), count: u32) -> Result<u32> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.0.octets()),
        },
        sin_zero: [0; 8],
    };
    let mut sent = 0;
    for i in 0..count {
        let pkt = Spec::tcp(spoofed_source(i), to, TCP_SYN).build();
        let ip = &pkt[ETH_HLEN..];
        let mut tries = 0;
        loop {
            // SAFETY: the buffer and address outlive the call.
            let rc = unsafe {
                libc::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    ip.as_ptr().cast(),
                    ip.len(),
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                sent += 1;
                break;
            }
            let e = std::io::Error::last_os_error();
            // A full device queue: wait for it, as a flooder would.
            if e.raw_os_error() == Some(libc::ENOBUFS) && tries < 100 {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            bail!("sendto after {sent} SYNs: {e}");
        }
    }
    Ok(sent)
}
