//! `nft -f` transactions laid out as kube-proxy's nftables mode writes them:
//! a `kube-proxy` table whose `services` chain looks the destination up in
//! the `service-ips` verdict map, a chain per Service port choosing an
//! endpoint with `numgen random mod N vmap`, a chain per endpoint that
//! DNATs.
use std::{fmt::Write as _, net::SocketAddrV4};

use super::model::{hash, SvcPort, CLUSTER_CIDR};

const T: &str = "ip kube-proxy";

/// `<ns>/<name>/tcp/<port>`, kube-proxy's readable part of chain names.
fn base(s: &SvcPort) -> String {
    format!("{}/{}/tcp/{}", s.namespace, s.name, s.port_name)
}

pub fn service_chain(s: &SvcPort) -> String {
    let b = base(s);
    format!("service-{}-{b}", hash(&b, 8))
}

pub fn endpoint_chain(s: &SvcPort, ep: &SocketAddrV4) -> String {
    let b = format!("{}__{}/{}", base(s), ep.ip(), ep.port());
    format!("endpoint-{}-{b}", hash(&b, 8))
}

/// The whole table, created from nothing in one transaction.
pub fn full(svcs: &[SvcPort]) -> String {
    let mut out = String::new();
    skeleton(&mut out);
    for s in svcs {
        service(&mut out, s, &s.endpoints);
        let _ = writeln!(
            out,
            "add element {T} cluster-ips {{ {} }}\n\
             add element {T} service-ips {{ {} . tcp . {} : goto {} }}",
            s.vip,
            s.vip,
            s.port,
            service_chain(s)
        );
    }
    out
}

/// One Service's endpoints changed from `old` to `new`: one transaction
/// that rewrites its service chain, adds the new endpoints' chains and
/// deletes the chains of endpoints that went away; nothing else is touched
/// (the map element still points to the same service chain).
pub fn partial(old: &SvcPort, new: &SvcPort) -> String {
    let mut out = String::new();
    let added: Vec<SocketAddrV4> = new
        .endpoints
        .iter()
        .filter(|ep| !old.endpoints.contains(ep))
        .copied()
        .collect();
    let _ = writeln!(out, "flush chain {T} {}", service_chain(new));
    service(&mut out, new, &added);
    for ep in old
        .endpoints
        .iter()
        .filter(|ep| !new.endpoints.contains(ep))
    {
        let c = endpoint_chain(old, ep);
        let _ = writeln!(out, "flush chain {T} {c}\ndelete chain {T} {c}");
    }
    out
}

/// The table, its base chains, maps and sets, as kube-proxy sets them up
/// (with no NodePorts and no Service lacking endpoints).
fn skeleton(out: &mut String) {
    let _ = writeln!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}\n\
         add chain {T} mark-for-masquerade\n\
         add rule {T} mark-for-masquerade mark set mark or 0x4000\n\
         add chain {T} masquerading\n\
         add rule {T} masquerading mark and 0x4000 == 0 return\n\
         add rule {T} masquerading mark set mark xor 0x4000\n\
         add rule {T} masquerading masquerade fully-random\n\
         add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {T} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n\
         add chain {T} services\n\
         add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {T} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n\
         add chain {T} nat-prerouting {{ type nat hook prerouting priority -100 ; }}\n\
         add rule {T} nat-prerouting jump services\n\
         add chain {T} nat-output {{ type nat hook output priority -100 ; }}\n\
         add rule {T} nat-output jump services\n\
         add chain {T} nat-postrouting {{ type nat hook postrouting priority 100 ; }}\n\
         add rule {T} nat-postrouting jump masquerading\n\
         add chain {T} filter-forward {{ type filter hook forward priority -110 ; }}\n\
         add rule {T} filter-forward ct state new ip daddr @cluster-ips reject"
    );
}

/// A Service's chain (its rules: the chain itself must exist or be added
/// here) and the chains of `new_endpoints` (the ones not there yet).
fn service(out: &mut String, s: &SvcPort, new_endpoints: &[SocketAddrV4]) {
    let chain = service_chain(s);
    let _ = writeln!(
        out,
        "add chain {T} {chain}\n\
         add rule {T} {chain} ip daddr {} tcp dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        s.vip, s.port
    );
    let choices: Vec<String> = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(k, ep)| format!("{k} : goto {}", endpoint_chain(s, ep)))
        .collect();
    for ep in new_endpoints {
        let c = endpoint_chain(s, ep);
        let _ = writeln!(
            out,
            "add chain {T} {c}\n\
             add rule {T} {c} ip saddr {} jump mark-for-masquerade\n\
             add rule {T} {c} meta l4proto tcp dnat to {ep}",
            ep.ip()
        );
    }
    // After the endpoint chains: a vmap may only name existing chains.
    let _ = writeln!(
        out,
        "add rule {T} {chain} numgen random mod {} vmap {{ {} }}",
        s.endpoints.len(),
        choices.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::super::model::cluster;
    use super::*;

    fn count(text: &str, prefix: &str) -> usize {
        text.lines().filter(|l| l.starts_with(prefix)).count()
    }

    #[test]
    fn full_has_a_verdict_map_entry_and_chains_per_service() {
        let svcs = cluster(100);
        let text = full(&svcs);
        assert_eq!(count(&text, "add element ip kube-proxy service-ips {"), 100);
        assert_eq!(count(&text, "add chain ip kube-proxy service-"), 100);
        assert_eq!(count(&text, "add chain ip kube-proxy endpoint-"), 200);
        assert_eq!(text.matches("numgen random mod 2 vmap").count(), 100);
        assert_eq!(text.matches(" dnat to ").count(), 200);
        let last = &svcs[99];
        assert!(text.contains(&format!(
            "10.96.1.100 . tcp . 80 : goto {}",
            service_chain(last)
        )));
        assert!(service_chain(last).starts_with("service-"));
        assert!(service_chain(last).ends_with("-bench/svc-99/tcp/http"));
    }

    #[test]
    fn partial_touches_one_service() {
        let (old, new) = (SvcPort::synthetic(3, 0), SvcPort::synthetic(3, 1));
        let text = partial(&old, &new);
        assert!(text.starts_with(&format!(
            "flush chain ip kube-proxy {}",
            service_chain(&new)
        )));
        // Only the new endpoint gets a chain; the departed one's is deleted.
        let added = endpoint_chain(&new, &new.endpoints[1]);
        let gone = endpoint_chain(&old, &old.endpoints[0]);
        assert_eq!(count(&text, "add chain ip kube-proxy endpoint-"), 1);
        assert!(text.contains(&format!("add chain ip kube-proxy {added}\n")));
        assert!(text.contains(&format!("delete chain ip kube-proxy {gone}\n")));
        assert!(!text.contains("svc-4/"), "no other Service is touched");
        assert!(!text.contains("element"), "the map entry stays");
    }
}
