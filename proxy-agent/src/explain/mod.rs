//! `bpfproxy explain`: one connection's way through the running datapath,
//! step by step as the kernel programs take it: the frontend it matches (or
//! why none), the filters its master entry records, source ranges, session
//! affinity, the candidate backends, and an existing conntrack flow.
//!
//! [`explain`] is pure, over a [`Snapshot`] of the maps; [`snapshot::read`]
//! takes that snapshot from the pins, so the answer is the kernel's.
mod affinity;
mod candidates;
mod existing;
mod filters;
mod frontend;
pub mod netns;
pub mod query;
mod ranges;
pub mod report;
pub mod snapshot;
mod text;
mod verdict;

#[cfg(test)]
mod tests;

pub use query::{parse_dst, parse_src, Query, View};
pub use report::Explanation;
pub use snapshot::Snapshot;

use frontend::Found;
use report::MatchedFrontend;

/// The decision for `q` on the maps of `snap`.
pub fn explain(q: &Query, snap: &Snapshot) -> Explanation {
    let mut ex = Explanation {
        view: q.view,
        client: q.src.map(|(ip, port)| match port {
            Some(p) => format!("{ip}:{p}"),
            None => ip.to_string(),
        }),
        destination: format!("{}:{}/{}", q.dst, q.dport, q.proto),
        frontend: None,
        no_match: None,
        source_ranges: None,
        affinity: None,
        candidates: Vec::new(),
        existing_flows: existing::flows(q, snap),
        notes: Vec::new(),
        verdict: verdict::no_frontend(
            q.view,
            &report::NoMatch {
                code: "unknown-vip",
                reason: String::new(),
            },
        ),
    };
    match frontend::lookup(q, snap) {
        Ok(found) => matched(&mut ex, q, snap, &found),
        Err(no_match) => {
            ex.verdict = verdict::no_frontend(q.view, &no_match);
            ex.no_match = Some(no_match);
        }
    }
    // Conntrack comes first in the TC programs: a known flow keeps its
    // backend even when its frontend changed or is gone.
    // Only a client port names one flow; without it the question is about
    // a new connection, and the flows are shown beside it.
    if q.src.is_some_and(|(_, port)| port.is_some()) {
        if let Some(v) = verdict::existing_flow(&ex) {
            ex.verdict = v;
        }
    }
    add_notes(&mut ex, q);
    ex
}

/// Fills the steps after a frontend matched.
fn matched(ex: &mut Explanation, q: &Query, snap: &Snapshot, found: &Found) {
    let (candidates, problems) = candidates::of(snap, found.key, &found.master);
    let rev = u32::from(found.master.rev_nat_id);
    ex.frontend = Some(MatchedFrontend {
        service: snap
            .maps
            .names
            .get(&rev)
            .cloned()
            .unwrap_or_else(|| format!("<revnat {rev}>")),
        key: key_text(found),
        matched_as: matched_as(q, found),
        scope: if found.key.scope == proxy_common::scope::IN_CLUSTER {
            "in-cluster".into()
        } else {
            "node".into()
        },
        rev_nat_id: found.master.rev_nat_id,
        flags: filters::flag_names(found.node_master.flags),
        filters: filters::describe(q.view, found, &candidates),
    });
    ex.candidates = candidates;
    ex.notes.extend(problems);
    if q.view == View::FromOutside {
        ex.source_ranges = ranges::check(q, snap, &found.node_master);
    }
    ex.affinity = affinity::step(q, snap, &found.master);
    ex.verdict = verdict::new_connection(q.view, snap, found, ex);
}

fn key_text(found: &Found) -> String {
    let k = found.key;
    let proto = crate::model::Protocol::from_number(k.proto)
        .map_or_else(|| format!("proto-{}", k.proto), |p| p.to_string());
    format!("{}:{}/{proto}", k.ip(), k.port())
}

fn matched_as(q: &Query, found: &Found) -> String {
    let ext = found.node_master.flags & proxy_common::svc_flags::EXTERNAL != 0;
    match (found.via_nodeport, ext) {
        (true, _) => format!("NodePort {} on {}", q.dport, q.dst),
        (false, false) => "ClusterIP".into(),
        (false, true) => "externalIP or LoadBalancer IP".into(),
    }
}

/// What the maps cannot answer for this view.
fn add_notes(ex: &mut Explanation, q: &Query) {
    let affinity_unkeyed = ex.affinity.as_ref().is_some_and(|a| a.client_key.is_none());
    if affinity_unkeyed && q.view == View::Socket {
        ex.notes.push(
            "the socket programs key session affinity by the client's network namespace \
             cookie, not its address: give --netns or --netns-cookie to find this client's \
             entry (the entries of every namespace are listed)"
                .into(),
        );
    }
    if q.view == View::Socket && q.src.is_some_and(|(_, p)| p.is_some()) {
        ex.notes.push(
            "sockets are translated once, at connect(): there is no per-flow entry; `ss` in the \
             client's namespace shows the backend as the peer"
                .into(),
        );
    }
    if ex.frontend.is_some() {
        ex.notes.push(
            "topology hints and the terminating fallback (serving-and-terminating endpoints when \
             none is ready) shape the candidates before the agent writes them; the maps do not \
             record which applied"
                .into(),
        );
    }
}
