//! Conntrack under pressure: the two tables (new flows apart from confirmed
//! ones) against a spoofed SYN flood, SNAT ports from their own range, and
//! a SNAT port's reservation that the LRU evicted or another flow took.
use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{
    flood::spoofed_source,
    packet::{view, Spec, TCP, TCP_ACK, TCP_SYN},
};
use proxy_agent::maps::sizes::MapSizes;
use proxy_common::{counters, ct_dir, maps as names, CtKey, SNAT_PORT_MAX, SNAT_PORT_MIN};

use super::nodeport_tcp;
use crate::datapath::*;

/// One TCP connection through the NodePort to a backend on another node,
/// carried through its handshake: SYN, the backend's SYN-ACK, the
/// client's ACK (which confirms the flow). Returns its SNAT port.
fn connect(dp: &Datapath, client: (Ipv4Addr, u16)) -> Result<u16> {
    let syn = Spec::tcp(client, (NODE, NODE_PORT), TCP_SYN).build();
    let (rc, out) = dp.ingress(&syn);
    ensure!(rc == TC_ACT_REDIRECT, "SYN of {client:?}: verdict {rc}");
    let snat_port = view(&out)?.src.1;
    let syn_ack = Spec::tcp(
        (REMOTE_POD, TARGET_PORT),
        (NODE, snat_port),
        TCP_SYN | TCP_ACK,
    )
    .build();
    let back = view(&dp.ingress(&syn_ack).1)?;
    ensure!(
        back.dst == client,
        "SYN-ACK of {client:?} went to {:?}",
        back.dst
    );
    let ack = Spec::tcp(client, (NODE, NODE_PORT), TCP_ACK).build();
    ensure!(dp.ingress(&ack).0 == TC_ACT_REDIRECT, "ACK of {client:?}");
    Ok(snat_port)
}

/// Data both ways on an established flow: the client's packet reaches the
/// backend from the flow's SNAT port, the backend's answer the client.
fn exchange(dp: &Datapath, client: (Ipv4Addr, u16), snat_port: u16) -> Result<()> {
    let data = Spec::tcp(client, (NODE, NODE_PORT), TCP_ACK)
        .payload(b"ping")
        .build();
    let (rc, out) = dp.ingress(&data);
    ensure!(rc == TC_ACT_REDIRECT, "data of {client:?}: verdict {rc}");
    let fwd = view(&out)?;
    ensure!(
        fwd.dst == (REMOTE_POD, TARGET_PORT) && fwd.src == (NODE, snat_port),
        "data of {client:?} left as {:?} -> {:?}",
        fwd.src,
        fwd.dst
    );
    let answer = Spec::tcp((REMOTE_POD, TARGET_PORT), (NODE, snat_port), TCP_ACK)
        .payload(b"pong")
        .build();
    let back = view(&dp.ingress(&answer).1)?;
    ensure!(
        back.dst == client && back.src == (NODE, NODE_PORT),
        "answer to {client:?} left as {:?} -> {:?}",
        back.src,
        back.dst
    );
    Ok(())
}

#[test]
fn a_spoofed_syn_flood_twice_the_table_leaves_established_flows_working() -> Result<()> {
    // Small tables so the flood is quick: 4096 confirmed entries (2048
    // flows), 1024 new ones; the flood is twice the confirmed table.
    let sizes = MapSizes {
        conntrack: 4096,
        conntrack_new: 1024,
        ..MapSizes::default()
    };
    let mut dp = Datapath::with_node_sized("tcflood", &sizes)?;
    nodeport_tcp(&mut dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    let clients: Vec<(Ipv4Addr, u16)> = (0..64)
        .map(|i| (Ipv4Addr::new(198, 51, 100, 7), 42000 + i))
        .collect();
    let mut ports = Vec::new();
    for c in &clients {
        ports.push(connect(&dp, *c)?);
    }
    assert_eq!(dp.counter(counters::TC_CT_CONFIRMED), 64);
    let flood = 2 * sizes.conntrack;
    for i in 0..flood {
        let syn = Spec::tcp(spoofed_source(i), (NODE, NODE_PORT), TCP_SYN).build();
        dp.ingress(&syn);
    }
    let new_flows = dp.counter(counters::TC_NEW_FLOW);
    ensure!(
        new_flows >= u64::from(flood),
        "the flood made {new_flows} flows"
    );
    assert_eq!(
        dp.counter(counters::TC_CT_CONFIRMED),
        64,
        "no SYN of the flood was confirmed"
    );
    let mut broken = Vec::new();
    for (c, port) in clients.iter().zip(&ports) {
        if let Err(e) = exchange(&dp, *c, *port) {
            broken.push(format!("{e:#}"));
        }
    }
    assert!(
        broken.is_empty(),
        "{} of 64 established flows broke after a {flood}-SYN flood: {broken:?}",
        broken.len()
    );
    Ok(())
}

#[test]
fn snat_ports_come_from_their_range_and_keep_the_clients_port_only_inside_it() -> Result<()> {
    let mut dp = Datapath::with_node("tcsrange")?;
    nodeport_tcp(&mut dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    let range = SNAT_PORT_MIN..=SNAT_PORT_MAX;
    let mut seen = BTreeSet::new();
    for sport in 40000..40032u16 {
        let syn = Spec::tcp((CLIENT, sport), (NODE, NODE_PORT), TCP_SYN).build();
        let port = view(&dp.ingress(&syn).1)?.src.1;
        ensure!(
            range.contains(&port),
            "client port {sport} got SNAT port {port}"
        );
        seen.insert(port);
    }
    ensure!(seen.len() == 32, "SNAT ports repeated: {seen:?}");
    let inside = SNAT_PORT_MIN + 7;
    let syn = Spec::tcp((CLIENT, inside), (NODE, NODE_PORT), TCP_SYN).build();
    assert_eq!(view(&dp.ingress(&syn).1)?.src.1, inside);
    Ok(())
}

/// A confirmed flow and the key of its reply entry (its SNAT port's
/// reservation).
fn confirmed_flow(dp: &mut Datapath, sport: u16) -> Result<((Ipv4Addr, u16), u16, CtKey)> {
    nodeport_tcp(dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    let client = (CLIENT, sport);
    let port = connect(dp, client)?;
    let reply_key = CtKey::new(REMOTE_POD, TARGET_PORT, NODE, port, TCP, ct_dir::REPLY_SNAT);
    dp.ct_in(names::CONNTRACK, &reply_key)
        .context("the reply entry is confirmed with its flow")?;
    Ok((client, port, reply_key))
}

/// The programs check a flow's reservation once a second per flow.
fn next_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn a_confirmed_flow_takes_back_its_evicted_snat_reservation() -> Result<()> {
    let mut dp = Datapath::with_node("tcsretake")?;
    let (client, port, reply_key) = confirmed_flow(&mut dp, 44000)?;
    dp.set_ct(names::CONNTRACK, &reply_key, None);
    next_second();
    exchange(&dp, client, port)?;
    let back = dp
        .ct_in(names::CONNTRACK, &reply_key)
        .context("the reservation is back")?;
    assert_eq!(back.addr(), client);
    Ok(())
}

#[test]
fn a_flow_whose_snat_port_another_flow_took_is_ended_not_mixed() -> Result<()> {
    let mut dp = Datapath::with_node("tcslost")?;
    let (client, _, reply_key) = confirmed_flow(&mut dp, 44100)?;
    let mut theirs = dp.ct(&reply_key).context("reply entry")?;
    theirs.addr_be = u32::from_ne_bytes([198, 51, 100, 99]);
    dp.set_ct(names::CONNTRACK, &reply_key, Some(theirs));
    next_second();
    let data = Spec::tcp(client, (NODE, NODE_PORT), TCP_ACK).build();
    assert_eq!(dp.ingress(&data).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(counters::ERR_SNAT_LOST), 1);
    let fwd = CtKey::new(client.0, client.1, NODE, NODE_PORT, TCP, ct_dir::FORWARD);
    assert!(dp.ct(&fwd).is_none(), "the flow's entry is gone");
    assert_eq!(
        dp.ct(&reply_key).map(|v| v.addr_be),
        Some(theirs.addr_be),
        "the other flow keeps its port"
    );
    Ok(())
}

#[test]
fn a_retransmitted_syn_does_not_confirm_a_flow_and_a_second_udp_packet_does() -> Result<()> {
    let mut dp = Datapath::with_node("tcconfirm")?;
    nodeport_tcp(&mut dp, &[Be(LOCAL_POD, TARGET_PORT, true)]);
    let syn = Spec::tcp((CLIENT, 45100), (NODE, NODE_PORT), TCP_SYN).build();
    dp.ingress(&syn);
    dp.ingress(&syn);
    let fwd = CtKey::new(CLIENT, 45100, NODE, NODE_PORT, TCP, ct_dir::FORWARD);
    ensure!(dp.ct_in(names::CT_NEW, &fwd).is_some(), "still new");
    super::nodeport_udp(&mut dp, &[Be(LOCAL_POD, 5353, true)]);
    let dgram = Spec::udp((CLIENT, 45101), (NODE, super::UDP_NODE_PORT))
        .payload(b"q")
        .build();
    dp.ingress(&dgram);
    let ufwd = CtKey::new(
        CLIENT,
        45101,
        NODE,
        super::UDP_NODE_PORT,
        proxy_common::proto::UDP,
        ct_dir::FORWARD,
    );
    ensure!(
        dp.ct_in(names::CT_NEW, &ufwd).is_some(),
        "new after one datagram"
    );
    dp.ingress(&dgram);
    ensure!(
        dp.ct_in(names::CONNTRACK, &ufwd).is_some() && dp.ct_in(names::CT_NEW, &ufwd).is_none(),
        "confirmed after the second"
    );
    let reply = CtKey::new(
        LOCAL_POD,
        5353,
        CLIENT,
        45101,
        proxy_common::proto::UDP,
        ct_dir::REPLY,
    );
    ensure!(
        dp.ct_in(names::CONNTRACK, &reply).is_some(),
        "its reply entry moved with it"
    );
    Ok(())
}

#[test]
fn the_sweeper_clears_udp_flows_of_a_departed_backend_from_both_tables() -> Result<()> {
    use proxy_agent::{
        ct_sweeper::{self, CtTables, PinnedCt},
        datapath::ct_gc::{monotonic_now_s, CtExpiry, CtTimeouts},
    };
    let mut dp = Datapath::with_node("tcsweep")?;
    super::nodeport_udp(&mut dp, &[Be(REMOTE_POD, 5353, false)]);
    let dgram = |sport: u16| {
        Spec::udp((CLIENT, sport), (NODE, super::UDP_NODE_PORT))
            .payload(b"q")
            .build()
    };
    // One confirmed flow (two datagrams), one new (one datagram).
    for sport in [46000, 46000, 46001] {
        ensure!(dp.ingress(&dgram(sport)).0 == TC_ACT_REDIRECT, "{sport}");
    }
    let mut tables = PinnedCt::open(&dp.bpffs.path().join(names::PIN_DIR))?;
    // Two entries per flow: the confirmed flow's, the new flow's.
    let (all, unconfirmed) = tables.read()?;
    assert_eq!(
        (all.len(), unconfirmed.len()),
        (4, 2),
        "{all:?} {unconfirmed:?}"
    );
    let live = BTreeSet::from([(1, 1)]);
    let now = monotonic_now_s();
    let kept = ct_sweeper::pass(&mut tables, &live, now, &CtTimeouts::default())?;
    assert!(kept.is_empty(), "the backend serves: {kept:?}");
    // The backend left its Service: every entry of its flows goes.
    let gone = ct_sweeper::pass(&mut tables, &BTreeSet::new(), now, &CtTimeouts::default())?;
    assert_eq!(gone.get(&CtExpiry::BackendGone), Some(&4), "{gone:?}");
    assert!(tables.snapshot()?.is_empty());
    Ok(())
}

/// Pins the calling thread to CPU `cpu`.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set outlives the call; 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        anyhow::bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The client's ACK and its first data reach two CPUs at once: both find
/// the new flow and confirm it, moving its entries. The one that comes
/// second must see the move as done, not as its SNAT port taken (the
/// kernel matrix's IPIP NodePort test on 5.10 once lost a flow so).
#[test]
fn a_flow_confirmed_on_two_cpus_at_once_is_kept() -> Result<()> {
    let cpus = std::thread::available_parallelism()?.get();
    ensure!(
        cpus >= 2,
        "this test needs two CPUs, the machine has {cpus}"
    );
    let mut dp = Datapath::with_node("tcrace")?;
    nodeport_tcp(&mut dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    const FLOWS: u16 = 300;
    for n in 0..FLOWS {
        let client = (CLIENT, 47000 + n);
        let syn = Spec::tcp(client, (NODE, NODE_PORT), TCP_SYN).build();
        let snat_port = view(&dp.ingress(&syn).1)?.src.1;
        let syn_ack = Spec::tcp(
            (REMOTE_POD, TARGET_PORT),
            (NODE, snat_port),
            TCP_SYN | TCP_ACK,
        )
        .build();
        dp.ingress(&syn_ack);
        let ack = Spec::tcp(client, (NODE, NODE_PORT), TCP_ACK).build();
        let data = Spec::tcp(client, (NODE, NODE_PORT), TCP_ACK)
            .payload(b"GET /")
            .build();
        let start = std::sync::Barrier::new(2);
        let verdicts: Vec<Result<u32>> = std::thread::scope(|s| {
            let runs: Vec<_> = [(0, &ack), (1, &data)]
                .into_iter()
                .map(|(cpu, pkt)| {
                    let (dp, start) = (&dp, &start);
                    s.spawn(move || -> Result<u32> {
                        pin_to_cpu(cpu)?;
                        dp.join_node_on_this_thread()?;
                        start.wait();
                        Ok(dp.ingress(pkt).0)
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| {
                    r.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
                })
                .collect()
        });
        for v in verdicts {
            ensure!(
                v? == TC_ACT_REDIRECT,
                "flow {n}: a packet was not forwarded"
            );
        }
        let fwd = CtKey::new(client.0, client.1, NODE, NODE_PORT, TCP, ct_dir::FORWARD);
        if dp.ct_in(names::CONNTRACK, &fwd).is_none() {
            let new = dp.ct_in(names::CT_NEW, &fwd);
            let lost = dp.counter(counters::ERR_SNAT_LOST);
            let ct_err = dp.counter(counters::ERR_CT_UPDATE);
            anyhow::bail!(
                "flow {n} is not confirmed: new-flow entry {new:?}, err_snat_lost {lost}, err_ct_update {ct_err}"
            );
        }
    }
    assert_eq!(dp.counter(counters::ERR_SNAT_LOST), 0);
    Ok(())
}

/// The SNAT port a SYN from `client` gets.
fn snat_port_of_syn(dp: &Datapath, client: (Ipv4Addr, u16)) -> Result<u16> {
    let syn = Spec::tcp(client, (NODE, NODE_PORT), TCP_SYN).build();
    let (rc, out) = dp.ingress(&syn);
    ensure!(rc == TC_ACT_REDIRECT, "SYN of {client:?}: verdict {rc}");
    Ok(view(&out)?.src.1)
}

#[test]
fn a_confirmed_flows_snat_port_is_not_taken_by_a_new_flow_while_the_filter_is_trusted() -> Result<()>
{
    let mut dp = Datapath::with_node("tcsfilt")?;
    ensure!(
        dp.ct_filter().filter().active().is_some(),
        "the datapath should start as after a sweep: filter trusted"
    );
    // Inside the SNAT range, so each client asks for its own port first.
    let sport = SNAT_PORT_MIN + 11;
    let (client, port, reply_key) = confirmed_flow(&mut dp, sport)?;
    assert_eq!(port, sport);
    assert!(dp.ct_filter().filter().may_hold(&reply_key));
    let other = (Ipv4Addr::new(198, 51, 100, 8), sport);
    let theirs = snat_port_of_syn(&dp, other)?;
    assert_ne!(theirs, port, "a new flow took a confirmed flow's SNAT port");
    assert_eq!(
        dp.ct_in(names::CONNTRACK, &reply_key).map(|v| v.addr()),
        Some(client),
        "the confirmed flow keeps its reservation"
    );
    exchange(&dp, client, port)
}

#[test]
fn an_older_versions_confirmed_flows_are_honoured_until_the_filter_is_rebuilt() -> Result<()> {
    let mut dp = Datapath::with_node("tcsold")?;
    nodeport_tcp(&mut dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    let port = SNAT_PORT_MIN + 21;
    // A flow an older version confirmed (no filter mark), holding `port`.
    let old_client = (Ipv4Addr::new(198, 51, 100, 50), 51000u16);
    let reply_key = CtKey::new(REMOTE_POD, TARGET_PORT, NODE, port, TCP, ct_dir::REPLY_SNAT);
    let value = proxy_common::CtValue {
        addr_be: u32::from_ne_bytes(old_client.0.octets()),
        port_be: old_client.1.to_be(),
        flags: proxy_common::ct_flags::REDIRECT,
        tcp_state: proxy_common::ct_state::ESTABLISHED,
        nat_addr_be: u32::from_ne_bytes(NODE.octets()),
        nat_port_be: NODE_PORT.to_be(),
        rev_nat_id: 1,
        backend_id: 1,
        last_seen_s: 0,
    };
    dp.set_ct_unmarked(names::CONNTRACK, &reply_key, Some(value));
    // Trusted but blind to it: the hazard a restarted agent must remove.
    assert_eq!(snat_port_of_syn(&dp, (CLIENT, port))?, port);
    dp.set_ct(names::CT_NEW, &reply_key, None);

    let dir = dp.bpffs.path().join(names::PIN_DIR);
    proxy_agent::loader::distrust_ct_filter(&dir)?;
    assert_eq!(dp.ct_filter().filter().active(), None);
    let second = (Ipv4Addr::new(198, 51, 100, 9), port);
    assert_ne!(snat_port_of_syn(&dp, second)?, port);

    // The sweeper's rebuild walks the table and finds the entry.
    proxy_agent::ct_sweeper::rebuild_pinned_filter(&dir)?;
    assert!(dp.ct_filter().filter().active().is_some());
    assert!(dp.ct_filter().filter().may_hold(&reply_key));
    let third = (Ipv4Addr::new(198, 51, 100, 10), port);
    assert_ne!(snat_port_of_syn(&dp, third)?, port);
    assert_eq!(
        dp.ct_in(names::CONNTRACK, &reply_key).map(|v| v.addr()),
        Some(old_client)
    );
    Ok(())
}

#[test]
fn the_new_flow_table_has_an_lru_list_per_cpu() -> Result<()> {
    let dp = Datapath::with_node("tcpcpu")?;
    let info =
        aya::maps::MapInfo::from_pin(dp.bpffs.path().join(names::PIN_DIR).join(names::CT_NEW))?;
    assert_eq!(
        info.map_flags() & names::CT_NEW_FLAGS,
        names::CT_NEW_FLAGS,
        "BPF_F_NO_COMMON_LRU"
    );
    Ok(())
}
