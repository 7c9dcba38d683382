//! The last step: what the kernel does with the connection, in the order
//! its programs decide (conntrack, source ranges, no endpoints, affinity,
//! the random pick).
use proxy_common::{svc_flags, BACKEND_FLAG_LOCAL};

use super::{
    frontend::Found,
    query::View,
    report::{Explanation, NoMatch, Verdict},
    Snapshot,
};

fn verdict(action: &'static str, backend: Option<String>, because: String) -> Verdict {
    Verdict {
        action,
        backend,
        because,
    }
}

/// A packet of a known flow follows its entry (the one flow of the client
/// port the question names).
pub(super) fn existing_flow(ex: &Explanation) -> Option<Verdict> {
    let [flow] = ex.existing_flows.as_slice() else {
        return None;
    };
    let mut because = format!(
        "existing flow: conntrack entry {} → {} sends its packets to {}",
        flow.client, ex.destination, flow.backend
    );
    if flow.state == "closing" {
        because.push_str("; it is closing: a new SYN from the same port picks a backend afresh");
    }
    Some(verdict("translate", Some(flow.backend.clone()), because))
}

pub(super) fn no_frontend(view: View, no_match: &NoMatch) -> Verdict {
    let what = match view {
        View::Socket => "connect() goes where it was addressed",
        View::FromOutside => "the packet passes untouched",
    };
    verdict("pass", None, format!("{}: {what}", no_match.code))
}

/// The verdict for a new connection to a matched frontend.
pub(super) fn new_connection(
    view: View,
    snap: &Snapshot,
    found: &Found,
    ex: &Explanation,
) -> Verdict {
    if ex.source_ranges.as_ref().and_then(|r| r.allowed) == Some(false) {
        return verdict(
            "drop",
            None,
            "the client is outside loadBalancerSourceRanges: dropped".into(),
        );
    }
    if found.master.count == 0 {
        return no_endpoints(view, found);
    }
    let pinned = ex
        .affinity
        .as_ref()
        .and_then(|a| a.entry.as_ref())
        .filter(|e| e.pins())
        .and_then(|e| e.backend.clone());
    let (backend, mut because) = match (pinned, ex.candidates.as_slice()) {
        (Some(b), _) => (
            Some(b),
            "session affinity: the client's entry pins it".to_string(),
        ),
        (None, [only]) => (Some(only.backend.clone()), "the only candidate".to_string()),
        (None, all) => (
            None,
            format!("picked at random among {} backends, by weight", all.len()),
        ),
    };
    if view == View::FromOutside {
        because.push_str("; ");
        because.push_str(nat(snap, found, backend.as_deref()));
    }
    verdict("translate", backend, because)
}

fn no_endpoints(view: View, found: &Found) -> Verdict {
    let reject = found.node_master.flags & svc_flags::REJECT != 0;
    let because = match (view, reject) {
        (View::Socket, _) => "no endpoints: connect() and sendmsg() fail with ECONNREFUSED",
        (View::FromOutside, false) => {
            "no endpoint on this node under externalTrafficPolicy: Local: dropped silently \
             (load balancers steer by health check)"
        }
        (View::FromOutside, true) if found.key.addr_be == 0 => {
            "no endpoints: passed to the node's stack, which refuses it (nothing listens there)"
        }
        (View::FromOutside, true) => "no endpoints: refused (TCP RST, ICMP port unreachable)",
    };
    let action = if view == View::FromOutside && !reject {
        "drop"
    } else {
        "refuse"
    };
    verdict(action, None, because.to_string())
}

/// How a packet from outside reaches `backend` (any candidate when None).
fn nat(snap: &Snapshot, found: &Found, backend: Option<&str>) -> &'static str {
    if found.node_master.flags & svc_flags::ETP_LOCAL != 0 {
        return "destination rewritten only, the client address is kept";
    }
    let local = backend.and_then(|b| {
        snap.maps
            .backends
            .values()
            .find(|v| format!("{}:{}", v.ip(), v.port()) == b)
            .map(|v| v.state & BACKEND_FLAG_LOCAL != 0)
    });
    match local {
        Some(true) => "the backend runs here: destination rewritten only",
        Some(false) => "the backend runs on another node: SNAT to this node's egress address",
        None => "local backends get the destination rewritten, remote ones SNAT too",
    }
}
