//! The answer of `bpfproxy explain`: one field per step of the kernel's
//! decision, the same structure for the text walk and `--json`.
use serde::Serialize;

use super::query::View;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub view: View,
    /// The client as given (`ip` or `ip:port`); None when not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// `ip:port/PROTO`.
    pub destination: String,
    /// The frontend the kernel finds, or None (then `no_match` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontend: Option<MatchedFrontend>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_match: Option<NoMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ranges: Option<RangeCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityStep>,
    /// The backends a new connection may get, from the frontend's slots.
    pub candidates: Vec<Candidate>,
    /// Conntrack entries of this client to this destination (the TC view
    /// looks them up before anything else).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub existing_flows: Vec<ExistingFlow>,
    /// What the maps cannot tell, and inconsistencies they show.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub verdict: Verdict,
}

/// The frontend entry a connection matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatchedFrontend {
    /// `namespace/name:port` from the names map.
    pub service: String,
    /// The key the kernel found: `ip:port/PROTO` (0.0.0.0 for NodePorts).
    pub key: String,
    /// How the destination led there.
    pub matched_as: String,
    /// `node` (scope 0) or `in-cluster` (scope 1, eTP=Local's view for
    /// pods and node processes).
    pub scope: String,
    pub rev_nat_id: u16,
    pub flags: Vec<String>,
    /// The traffic filters the master entry records, in words.
    pub filters: Vec<String>,
}

/// Why no frontend matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NoMatch {
    /// `unknown-vip`, `unknown-port` or `not-external`.
    pub code: &'static str,
    pub reason: String,
}

/// `loadBalancerSourceRanges` of the frontend against the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RangeCheck {
    pub ranges: Vec<String>,
    /// None when no client address was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    /// The range that admits the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
}

/// Session affinity: the timeout and the entries that pin clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityStep {
    pub timeout_s: u32,
    /// How the kernel names this client in the affinity map; None when it
    /// cannot be known (a socket client without its netns cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// This client's entry, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<AffinityEntry>,
    /// Without the client's key: every entry of this frontend for clients
    /// of the same kind (netns cookies for sockets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_entries: Vec<AffinityEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityEntry {
    /// `192.168.50.100` or `netns cookie 4097`.
    pub client: String,
    pub backend_id: u32,
    /// `ip:port`, or None when the backend id is gone from the maps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub idle_s: u32,
    /// Seconds until it stops pinning; None once expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u32>,
}

impl AffinityEntry {
    /// Whether the kernel follows it: fresh, with its backend still there.
    pub fn pins(&self) -> bool {
        self.expires_in_s.is_some() && self.backend.is_some()
    }
}

/// One backend of the frontend's slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub backend: String,
    pub backend_id: u32,
    /// Runs on this node.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// Slots naming it out of all the frontend's slots: its share of new
    /// connections.
    pub weight: u16,
    pub of: u16,
}

/// A conntrack flow of the TC datapath.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExistingFlow {
    /// `ip:port` of the client.
    pub client: String,
    pub backend: String,
    pub backend_id: u32,
    /// The source the backend sees when SNATed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat: Option<String>,
    /// TCP: syn-sent, established, closing; UDP: empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state: String,
    pub idle_s: u32,
    /// In the confirmed table (else still in the new-flow table).
    pub confirmed: bool,
}

/// What the kernel does with a new connection (or the next packet of the
/// existing flow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `translate`, `refuse`, `drop` or `pass` (left untouched).
    pub action: &'static str,
    /// The backend when it is determined (conntrack, affinity, a single
    /// candidate); None when picked at random among the candidates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Why, in words.
    pub because: String,
}
