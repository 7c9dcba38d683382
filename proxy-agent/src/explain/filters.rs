//! The traffic filters a frontend's master entry records, in words. The
//! agent applies the Service's policies when it writes the slots; the maps
//! keep their flags (eTP=Local, reject, source ranges, affinity) and the
//! result (the candidates), not every reason that shaped it.
use proxy_common::{scope, svc_flags};

use super::{frontend::Found, query::View, report::Candidate};

pub(super) fn describe(view: View, found: &Found, candidates: &[Candidate]) -> Vec<String> {
    let flags = found.node_master.flags;
    let mut out = Vec::new();
    if flags & svc_flags::EXTERNAL == 0 {
        out.push(cluster_ip(candidates));
    } else if flags & svc_flags::ETP_LOCAL != 0 {
        out.push(etp_local(view, found.key.scope).to_string());
    } else if view == View::FromOutside {
        out.push(
            "externalTrafficPolicy: Cluster: every endpoint of the Service; backends on other \
             nodes are reached with SNAT to this node's address"
                .to_string(),
        );
    }
    if flags & svc_flags::REJECT != 0 {
        out.push("no usable endpoint anywhere in the cluster: connections are refused".into());
    }
    if flags & svc_flags::SOURCE_RANGES != 0 {
        out.push(match view {
            View::FromOutside => "loadBalancerSourceRanges: new connections from outside only from the listed ranges".to_string(),
            View::Socket => "loadBalancerSourceRanges apply to traffic from outside only, not to sockets of this node".to_string(),
        });
    }
    if found.master.affinity_timeout_s > 0 {
        out.push(format!(
            "sessionAffinity: ClientIP, timeout {}s",
            found.master.affinity_timeout_s
        ));
    }
    out
}

fn cluster_ip(candidates: &[Candidate]) -> String {
    let base = "ClusterIP: internalTrafficPolicy, topology hints and the terminating fallback \
                were applied by the agent when it wrote the slots";
    if !candidates.is_empty() && candidates.iter().all(|c| c.local) {
        format!(
            "{base}; every candidate runs on this node (internalTrafficPolicy: Local, or hints \
             for this node's zone)"
        )
    } else {
        base.to_string()
    }
}

fn etp_local(view: View, key_scope: u8) -> &'static str {
    match (view, key_scope) {
        (View::FromOutside, _) => {
            "externalTrafficPolicy: Local: only this node's endpoints, and the client address \
             is kept (no SNAT)"
        }
        (View::Socket, scope::IN_CLUSTER) => {
            "externalTrafficPolicy: Local applies to traffic from outside; pods and node \
             processes get the in-cluster view: every endpoint of the Service"
        }
        (View::Socket, _) => {
            "externalTrafficPolicy: Local and no in-cluster view in the maps: sockets get this \
             node's endpoints only"
        }
    }
}

/// The master's flags by name, as `bpfproxy dump` spells them.
pub(super) fn flag_names(flags: u16) -> Vec<String> {
    [
        (svc_flags::EXTERNAL, "external"),
        (svc_flags::ETP_LOCAL, "etp-local"),
        (svc_flags::REJECT, "reject"),
        (svc_flags::SOURCE_RANGES, "source-ranges"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name.to_string())
    .collect()
}
