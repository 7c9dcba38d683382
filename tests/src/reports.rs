//! What the `probe` client modes print (JSON on stdout), as typed structs.
//!
//! The probe asserts nothing itself: tests decide what a good spread, a good
//! source address or a good error is.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `probe tcp` and `probe loop`: one result per fresh connection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TcpReport {
    pub ok: u64,
    pub failed: u64,
    /// Replies per backend name (`backend-1`, …).
    pub by_backend: BTreeMap<String, u64>,
    /// The first few errors, each prefixed with `t=<ms>ms`.
    pub errors: Vec<String>,
    /// When (ms since start) each failed attempt began (capped list).
    #[serde(default)]
    pub failed_at_ms: Vec<u64>,
    pub elapsed_ms: f64,
}

impl TcpReport {
    /// Replies from `name`.
    pub fn count(&self, name: &str) -> u64 {
        self.by_backend.get(name).copied().unwrap_or(0)
    }
}

/// `probe udp`: datagrams from one unconnected socket.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct UdpReport {
    pub ok: u64,
    pub failed: u64,
    pub by_backend: BTreeMap<String, u64>,
    /// Distinct source addresses (`ip:port`) of the replies: with a working
    /// recvmsg4 (recvmsg6 for `[::ffff:…]` destinations) hook only the VIP
    /// shows up here.
    pub sources: Vec<String>,
    pub errors: Vec<String>,
    pub elapsed_ms: f64,
}

impl UdpReport {
    pub fn count(&self, name: &str) -> u64 {
        self.by_backend.get(name).copied().unwrap_or(0)
    }
}

/// `probe udp-connected`: connect(), getpeername(), one exchange.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct UdpConnectedReport {
    pub ok: bool,
    /// getpeername() after connect(): the VIP if getpeername4 (or
    /// getpeername6, as `[::ffff:VIP]:PORT`) works.
    pub peer: Option<String>,
    pub local: Option<String>,
    pub reply: Option<String>,
    pub error: Option<String>,
}

/// `probe tcp-connect-time`: how connect() ended and how long it took.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ConnectTimeReport {
    pub ok: bool,
    pub error: Option<String>,
    /// errno of the failure (e.g. 111 ECONNREFUSED, 101 ENETUNREACH); absent
    /// on success or on our own timeout.
    pub errno: Option<i32>,
    pub elapsed_ms: f64,
    /// getpeername() when connected.
    pub peer: Option<String>,
}
