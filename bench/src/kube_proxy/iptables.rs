//! `iptables-restore` input laid out as kube-proxy's iptables mode writes it:
//! in the nat table one `KUBE-SERVICES` rule per Service port jumping to its
//! `KUBE-SVC-…` chain, which picks a `KUBE-SEP-…` chain per endpoint with
//! `-m statistic --mode random --probability`, which DNATs. The same text
//! feeds iptables-legacy-restore and iptables-nft-restore.
use std::{fmt::Write as _, net::SocketAddrV4};

use super::model::{hash, SvcPort, CLUSTER_CIDR};

/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000/0x4000";

pub fn svc_chain(s: &SvcPort) -> String {
    format!("KUBE-SVC-{}", hash(&format!("{}tcp", s.port_name()), 16))
}

pub fn sep_chain(s: &SvcPort, ep: &SocketAddrV4) -> String {
    format!(
        "KUBE-SEP-{}",
        hash(&format!("{}tcp{ep}", s.port_name()), 16)
    )
}

/// The whole ruleset, for `iptables-restore` without `--noflush`: both
/// tables are replaced, built-in chains included.
pub fn full(svcs: &[SvcPort]) -> String {
    let mut out = filter_table();
    out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n");
    out.push_str(":OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    declare_top_chains(&mut out);
    for s in svcs {
        declare(&mut out, &svc_chain(s));
        for ep in &s.endpoints {
            declare(&mut out, &sep_chain(s, ep));
        }
    }
    let portals = "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    let _ = writeln!(out, "-A PREROUTING {portals}");
    let _ = writeln!(out, "-A OUTPUT {portals}");
    out.push_str(
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    );
    top_rules(&mut out, svcs);
    for s in svcs {
        service_rules(&mut out, s);
    }
    out.push_str("COMMIT\n");
    out
}

/// One Service's endpoints changed from `old` to `new`, as kube-proxy's
/// partial sync writes it for `iptables-restore --noflush`: the top-level
/// chains (`KUBE-SERVICES` with every Service) are rewritten on every sync,
/// but of the per-Service chains only the changed Service's; endpoint chains
/// that went away are deleted.
pub fn partial(svcs: &[SvcPort], old: &SvcPort, new: &SvcPort) -> String {
    let mut out = filter_table();
    out.push_str("*nat\n");
    declare_top_chains(&mut out);
    declare(&mut out, &svc_chain(new));
    let gone: Vec<&SocketAddrV4> = old
        .endpoints
        .iter()
        .filter(|ep| !new.endpoints.contains(ep))
        .collect();
    for ep in &new.endpoints {
        declare(&mut out, &sep_chain(new, ep));
    }
    for ep in &gone {
        // Declared (so flushed) before it is deleted.
        declare(&mut out, &sep_chain(old, ep));
    }
    top_rules(&mut out, svcs);
    service_rules(&mut out, new);
    for ep in gone {
        let _ = writeln!(out, "-X {}", sep_chain(old, ep));
    }
    out.push_str("COMMIT\n");
    out
}

/// The filter table's kube-proxy chains, which every sync rewrites; with no
/// Service lacking endpoints and no NodePorts they hold only the forwarding
/// rules.
fn filter_table() -> String {
    let mut out = String::from("*filter\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        declare(&mut out, c);
    }
    out.push_str(
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n",
    );
    out
}

fn declare(out: &mut String, chain: &str) {
    let _ = writeln!(out, ":{chain} - [0:0]");
}

fn declare_top_chains(out: &mut String) {
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        declare(out, c);
    }
}

/// Masquerading and the `KUBE-SERVICES` dispatch, one rule per Service.
fn top_rules(out: &mut String, svcs: &[SvcPort]) {
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"
    );
    for s in svcs {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} -j {}",
            s.port_name(),
            s.vip,
            s.port,
            svc_chain(s)
        );
    }
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
}

/// A Service's `KUBE-SVC` chain and its endpoints' `KUBE-SEP` chains.
fn service_rules(out: &mut String, s: &SvcPort) {
    let svc = svc_chain(s);
    let name = s.port_name();
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
        s.vip, s.port
    );
    let n = s.endpoints.len();
    for (k, ep) in s.endpoints.iter().enumerate() {
        // Endpoint k of n is taken with probability 1/(n-k) of what the
        // earlier ones left: uniform overall; the last one takes the rest.
        let pick = if k + 1 < n {
            format!(
                "-m statistic --mode random --probability {:.10} ",
                1.0 / (n - k) as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "-A {svc} -m comment --comment \"{name} -> {ep}\" {pick}-j {}",
            sep_chain(s, ep)
        );
    }
    for ep in &s.endpoints {
        let sep = sep_chain(s, ep);
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -s {}/32 -j KUBE-MARK-MASQ\n\
             -A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT --to-destination {ep}",
            ep.ip()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::cluster;
    use super::*;

    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn full_has_kube_proxys_chains_per_service() {
        let svcs = cluster(100);
        let text = full(&svcs);
        // One dispatch rule per Service plus the NodePort rule.
        assert_eq!(
            lines(&text, "-A KUBE-SERVICES -m comment --comment \"bench/").len(),
            100
        );
        assert_eq!(lines(&text, ":KUBE-SVC-").len(), 100);
        assert_eq!(lines(&text, ":KUBE-SEP-").len(), 200);
        assert_eq!(lines(&text, "-A KUBE-SVC-").len(), 300);
        assert_eq!(lines(&text, "-A KUBE-SEP-").len(), 400);
        assert_eq!(text.matches("-j DNAT --to-destination").count(), 200);
        assert_eq!(text.matches("COMMIT").count(), 2);
        let last = svcs.last().map(svc_chain).unwrap_or_default();
        assert!(text.contains(&format!("-d 10.96.1.100/32 --dport 80 -j {last}")));
        assert!(text.contains(
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        // iptables chain names are at most 28 characters.
        assert!(text
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .all(|l| { l.split(' ').next().is_some_and(|c| c.len() <= 28) }));
    }

    #[test]
    fn probabilities_make_a_uniform_choice() {
        let mut s = SvcPort::synthetic(0, 0);
        s.endpoints = (0..4)
            .map(|k| SocketAddrV4::new(std::net::Ipv4Addr::new(10, 201, 9, k + 1), 8080))
            .collect();
        let mut text = String::new();
        service_rules(&mut text, &s);
        let probs: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("--probability ").nth(1))
            .filter_map(|p| p.split(' ').next()?.parse().ok())
            .collect();
        assert_eq!(probs.len(), 3, "the last endpoint takes the rest");
        // Share of endpoint k: p_k times what the earlier ones left over.
        let (mut left, mut shares) = (1.0, Vec::new());
        for p in probs.iter().chain([1.0].iter()) {
            shares.push(left * p);
            left *= 1.0 - p;
        }
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(shares.iter().all(|s| (s - 0.25).abs() < 1e-9), "{shares:?}");
    }

    #[test]
    fn partial_rewrites_the_top_chains_and_one_service() {
        let mut svcs = cluster(50);
        let (old, new) = (svcs[7].clone(), SvcPort::synthetic(7, 1));
        svcs[7] = new.clone();
        let text = partial(&svcs, &old, &new);
        assert_eq!(
            lines(&text, "-A KUBE-SERVICES -m comment --comment \"bench/").len(),
            50
        );
        assert_eq!(
            lines(&text, ":KUBE-SVC-"),
            vec![format!(":{} - [0:0]", svc_chain(&new))]
        );
        // Both new endpoint chains are written; the one that went away is
        // flushed and deleted.
        assert_eq!(lines(&text, ":KUBE-SEP-").len(), 3);
        assert_eq!(
            lines(&text, "-X "),
            vec![format!("-X {}", sep_chain(&old, &old.endpoints[0]))]
        );
        assert!(
            !text.contains(":OUTPUT"),
            "built-in chains stay as they are"
        );
        assert_eq!(lines(&text, "-A KUBE-SEP-").len(), 4);
    }
}
