//! WireGuard devices for the sandbox's `wireguard` shape, configured with
//! `wg` (wireguard-tools) as a user would. Each node's key pair is derived
//! from its number, so any node can name any peer's public key without a
//! key exchange between the sandbox's builders.

use std::io::Write as _;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use crate::netns::Netns;

/// Node `i`'s private key: 32 bytes derived from `i` (WireGuard clamps any
/// 32 bytes into a valid Curve25519 scalar), base64 as `wg` reads keys.
fn private_key(i: usize) -> String {
    let byte = 0x40u8.wrapping_add(i as u8);
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// Runs `wg` with `stdin` fed to it; its stdout comes back.
fn wg(ns: Option<&Netns>, args: &[&str], stdin: &str) -> Result<String> {
    let mut c = match ns {
        Some(ns) => ns.command("wg")?,
        None => std::process::Command::new("wg"),
    };
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .context("running wg (Debian package wireguard-tools; `cargo xtask setup` installs it)")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "wg {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Node `i`'s public key.
pub fn public_key(i: usize) -> Result<String> {
    wg(None, &["pubkey"], &private_key(i))
}

/// Gives `dev` in `ns` node `i`'s private key and its listening port.
pub fn set_private_key(ns: &Netns, i: usize, dev: &str, port: u16) -> Result<()> {
    let port = port.to_string();
    let args = [
        "set",
        dev,
        "private-key",
        "/dev/stdin",
        "listen-port",
        &port,
    ];
    wg(Some(ns), &args, &private_key(i)).map(drop)
}

/// Adds node `peer` to `dev` in `ns`: its pod subnet through it, reached at
/// `endpoint`.
pub fn add_peer(ns: &Netns, dev: &str, peer: usize, subnet: &str, endpoint: &str) -> Result<()> {
    let key = public_key(peer)?;
    let args = [
        "set",
        dev,
        "peer",
        &key,
        "allowed-ips",
        subnet,
        "endpoint",
        endpoint,
    ];
    wg(Some(ns), &args, "").map(drop)
}
