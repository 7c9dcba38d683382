//! The packet classes of the `tc-datapath` bench on one datapath: the
//! packets each program sees, a check that each class really takes the
//! path it is named after (a bench that silently measured the wrong path
//! would still print plausible numbers), and the timing of one batch.
use std::{collections::VecDeque, net::Ipv4Addr};

use anyhow::{bail, ensure, Context, Result};
use bpfproxy_tests::packet::{view, Spec, TCP, TCP_ACK, TCP_SYN};
use proxy_common::{ct_dir, CtKey};

use crate::{
    datapath::{Datapath, Prog},
    objects,
};

/// This node's address (NodePorts answer on it; SNAT source). Addresses
/// here only ever live inside packets handed to BPF_PROG_TEST_RUN.
pub const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// An external client (TEST-NET-2, never routed).
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// The NodePort Service's endpoints, on other nodes (so egress SNATs).
const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 2, 6), Ipv4Addr::new(10, 244, 2, 7)];
const NODE_PORT: u16 = 30080;
const TARGET_PORT: u16 = 8080;
/// The client port of the one long-lived flow (established and reply).
const ESTABLISHED_PORT: u16 = 2000;
/// Client ports of new flows: one fresh port per flow, all above this.
const NEW_FLOW_PORTS: u16 = 10_000;
/// New flows one datapath may be asked for: each takes a client port.
pub const MAX_NEW_FLOWS: usize = 40_000;
/// New flows whose entries stay in the new-flow table; older ones are
/// removed, as the agent's sweeper ends flows. A steady state: a few
/// hundred flows per backend hold SNAT ports (the default range has 4,536
/// per backend, and a SYN-only run never confirms a flow), so the port
/// search sees a realistic occupancy instead of an ever fuller range.
const LIVE_NEW_FLOWS: usize = 1_000;
/// A typical small data segment.
const PAYLOAD: [u8; 64] = [0x5a; 64];
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

#[derive(Clone, Copy, Debug)]
pub enum Class {
    /// Not addressed to any frontend (SSH to the node, and its answer):
    /// the cost every other packet on the node pays. Timed with `repeat`.
    ForeignRepeat,
    /// The same, timed with single runs like the classes below.
    Foreign,
    /// The SYN of a new NodePort flow: backend pick, route lookup,
    /// conntrack create, DNAT and SNAT and redirect at ingress; egress sees
    /// the translated packet leave and leaves it alone.
    NewFlow,
    /// A data segment of a known flow: conntrack hit, route lookup, DNAT,
    /// SNAT and redirect (ingress); egress passes it.
    Established,
    /// The backend's answer: client and NodePort back, route lookup and
    /// redirect (ingress); egress passes it on its way to the client.
    Reply,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::ForeignRepeat,
        Class::Foreign,
        Class::NewFlow,
        Class::Established,
        Class::Reply,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Class::ForeignRepeat => "foreign (repeat)",
            Class::Foreign => "foreign",
            Class::NewFlow => "new flow (SYN)",
            Class::Established => "established",
            Class::Reply => "reply",
        }
    }
}

/// The ingress and the egress packet of a class.
type Pair = [Vec<u8>; 2];

/// A datapath holding `services` Services and one established flow.
pub struct Subject {
    pub services: usize,
    /// Measures the `--baseline` object rather than the agent's own.
    pub baseline: bool,
    /// Frontends and entries of the service map, as the kernel holds them.
    pub frontends: usize,
    pub entries: usize,
    dp: Datapath,
    foreign: Pair,
    established: Pair,
    reply: Pair,
    /// The established flow's backend and SNAT source, for the checks.
    backend: (Ipv4Addr, u16),
    new_flows: u16,
    /// The entries of the live new flows, oldest first.
    live: VecDeque<[CtKey; 2]>,
}

impl Subject {
    /// `services` Services in the maps: `services - 1` ClusterIP ones and
    /// the NodePort Service the packets go to. `index` tells the
    /// datapaths of one run apart.
    /// `object`: another build to load instead of the agent's own.
    pub fn new(index: usize, services: usize, object: Option<&[u8]>) -> Result<Self> {
        ensure!(services >= 1, "the NodePort Service counts: at least 1");
        let dp = Datapath::load(&format!("tcb{index}-{services}"), object)?;
        let mut snap = objects::snapshot(services - 1)?;
        let (svc, slice) = objects::nodeport_yaml(NODE_PORT, TARGET_PORT, &BACKENDS);
        objects::push(&mut snap, &svc, &slice)?;
        let (frontends, entries) = dp
            .program(&snap, NODE)
            .with_context(|| format!("programming {services} Services"))?;
        ensure!(
            frontends > services,
            "{services} Services gave only {frontends} frontends in the service map"
        );

        // The long-lived flow, opened as a client would.
        let syn = Spec::tcp((CLIENT, ESTABLISHED_PORT), (NODE, NODE_PORT), TCP_SYN).build();
        let (rc, out_syn) = dp.run(Prog::Ingress, &syn)?;
        let (backend, snat) = (view(&out_syn)?.dst, view(&out_syn)?.src);
        ensure!(
            rc == TC_ACT_REDIRECT && BACKENDS.contains(&backend.0) && backend.1 == TARGET_PORT,
            "the SYN was not translated and forwarded to an endpoint ({rc}): {backend:?}"
        );
        ensure!(
            snat.0 == NODE,
            "the SYN left with source {snat:?}, not SNATed"
        );

        let data = |src, dst| Spec::tcp(src, dst, TCP_ACK).payload(&PAYLOAD).build();
        let est_in = data((CLIENT, ESTABLISHED_PORT), (NODE, NODE_PORT));
        let reply_in = data(backend, snat);
        // What the egress hook of the device they are redirected to sees.
        let est_out = dp.run(Prog::Ingress, &est_in)?.1;
        let reply_out = dp.run(Prog::Ingress, &reply_in)?.1;
        // The agent's sweeper rebuilds the conntrack filter within a pass
        // of its start; new flows are measured with it trusted.
        dp.rebuild_ct_filter()?;
        let s = Subject {
            services,
            baseline: object.is_some(),
            frontends,
            entries,
            dp,
            foreign: [
                data((CLIENT, 40080), (NODE, 22)),
                data((NODE, 22), (CLIENT, 40080)),
            ],
            established: [est_in, est_out],
            reply: [reply_in, reply_out],
            backend,
            new_flows: 0,
            live: VecDeque::new(),
        };
        s.check()?;
        Ok(s)
    }

    /// Checks that every fixed packet takes the path of its class. Run
    /// before and after measuring: afterwards it proves the established
    /// flow's entries survived the run.
    pub fn check(&self) -> Result<()> {
        let run = |prog, pkt: &[u8], want: u32| -> Result<Vec<u8>> {
            let (rc, out) = self.dp.run(prog, pkt)?;
            ensure!(rc == want, "{} returned {rc}, not {want}", Prog::name(prog));
            Ok(out)
        };
        for (prog, pkt) in Prog::BOTH.into_iter().zip(&self.foreign) {
            ensure!(
                run(prog, pkt, TC_ACT_OK)? == *pkt,
                "foreign packet changed by {prog:?}"
            );
        }
        let est = view(&run(Prog::Ingress, &self.established[0], TC_ACT_REDIRECT)?)?;
        ensure!(
            est.dst == self.backend && est.src.0 == NODE,
            "established: not DNATed and SNATed: {est:?}"
        );
        let client = (CLIENT, ESTABLISHED_PORT);
        let reply = view(&run(Prog::Ingress, &self.reply[0], TC_ACT_REDIRECT)?)?;
        ensure!(
            reply.src == (NODE, NODE_PORT) && reply.dst == client,
            "reply: not from the NodePort to the client: {reply:?}"
        );
        for pkt in [&self.established[1], &self.reply[1]] {
            ensure!(
                run(Prog::Egress, pkt, TC_ACT_OK)? == *pkt,
                "egress changed a packet ingress translated"
            );
        }
        Ok(())
    }

    /// The mean per-packet time (ns) of `batch` packets of `class` at
    /// ingress and at egress; `repeat` runs per sample for
    /// [`Class::ForeignRepeat`].
    pub fn measure(&mut self, class: Class, batch: usize, repeat: u32) -> Result<[f64; 2]> {
        let fixed = match class {
            Class::ForeignRepeat => {
                // Nothing rewrites a foreign packet, so every run of the
                // repeat loop sees the same packet: sound here only.
                let t = |prog, pkt: &[u8]| self.dp.time(prog, pkt, repeat).map(f64::from);
                return Ok([
                    t(Prog::Ingress, &self.foreign[0])?,
                    t(Prog::Egress, &self.foreign[1])?,
                ]);
            }
            Class::NewFlow => return self.new_flows(batch),
            Class::Foreign => &self.foreign,
            Class::Established => &self.established,
            Class::Reply => &self.reply,
        };
        // Single runs: the programs rewrite these packets in place, and the
        // kernel's repeat loop would hand the rewritten packet to the next
        // run. Each call starts from a fresh copy.
        let mut sum = [0u64; 2];
        for _ in 0..batch {
            for (k, prog) in Prog::BOTH.into_iter().enumerate() {
                sum[k] += u64::from(self.dp.time(prog, &fixed[k], 1)?);
            }
        }
        Ok(sum.map(|s| s as f64 / batch.max(1) as f64))
    }

    /// New flows: single runs, each SYN from a client port no flow used
    /// before, which is what a real new flow is (a 5-tuple conntrack has
    /// not seen). The kernel's repeat loop cannot change the port between
    /// runs. The egress packet is the SYN as ingress translated it, from
    /// the SNAT address to the backend its new conntrack entry names; a
    /// missing entry fails the bench. Afterwards the oldest live flow's
    /// entries (the forward one and its partner, as `CtKey::partner` names
    /// it) go, untimed (see [`LIVE_NEW_FLOWS`]).
    fn new_flows(&mut self, batch: usize) -> Result<[f64; 2]> {
        let mut sum = [0u64; 2];
        for _ in 0..batch {
            let port = self.next_port()?;
            let syn = Spec::tcp((CLIENT, port), (NODE, NODE_PORT), TCP_SYN).build();
            sum[0] += u64::from(self.dp.time(Prog::Ingress, &syn, 1)?);
            let key = CtKey::new(CLIENT, port, NODE, NODE_PORT, TCP, ct_dir::FORWARD);
            let Some(entry) = self.dp.conntrack(&key)? else {
                bail!("the SYN from port {port} created no conntrack entry: not a new flow");
            };
            let fwd = Spec::tcp(entry.nat_addr(), entry.addr(), TCP_SYN).build();
            sum[1] += u64::from(self.dp.time(Prog::Egress, &fwd, 1)?);
            let reply = key
                .partner(&entry)
                .context("a new flow's entry names no reply entry")?;
            self.live.push_back([key, reply]);
            if self.live.len() > LIVE_NEW_FLOWS {
                if let Some(old) = self.live.pop_front() {
                    self.dp.forget(&old)?;
                }
            }
        }
        Ok(sum.map(|s| s as f64 / batch.max(1) as f64))
    }

    /// The column name of this datapath in the report.
    pub fn label(&self) -> String {
        match self.baseline {
            false => format!("{} Svc", self.services),
            true => format!("{} Svc base", self.services),
        }
    }

    fn next_port(&mut self) -> Result<u16> {
        ensure!(
            usize::from(self.new_flows) < MAX_NEW_FLOWS,
            "more than {MAX_NEW_FLOWS} new flows asked of one datapath"
        );
        self.new_flows += 1;
        Ok(NEW_FLOW_PORTS + self.new_flows)
    }
}
