//! Per-packet cost of `tc_ingress` and `tc_egress` by packet class, with
//! the service map holding few vs many Services, side by side in one run.
//!
//! Why: kube-proxy's iptables mode walks its KUBE-SERVICES chain rule by
//! rule, so every packet through the node pays more as Services are added.
//! The eBPF datapath does a fixed number of hash lookups per packet; this
//! bench shows whether its cost indeed stays flat.
//!
//! How: every datapath (one per Service count) is loaded at once, each in
//! its own private bpffs with its own maps, programs attached nowhere; the
//! kernel times the programs under BPF_PROG_TEST_RUN (no packet is sent).
//! Each round measures every class on every datapath back to back, the
//! datapaths' order alternating between rounds, so machine noise hits all
//! variants alike; the report gives the median and p90 over rounds of each
//! round's mean per-packet time. See `tc_classes` for the classes.
use std::fmt::Write as _;

use anyhow::{ensure, Context, Result};

use crate::{
    datapath::Prog,
    report,
    tc_classes::{Class, Subject, MAX_NEW_FLOWS},
};

pub struct Options {
    pub services: Vec<usize>,
    pub rounds: usize,
    /// Single runs per class, program and round.
    pub batch: usize,
    /// Runs per sample of [`Class::ForeignRepeat`].
    pub repeat: u32,
    /// Another build of the eBPF object (e.g. the one before a change),
    /// measured next to the agent's own for every Service count.
    pub baseline: Option<std::path::PathBuf>,
}

/// Per-round samples (ns per packet) by class, subject and program.
type Samples = Vec<Vec<[Vec<f64>; 2]>>;

pub fn run(opts: &Options) -> Result<()> {
    bpfproxy_tests::require_root().context(
        "bpfproxy-bench tc-datapath loads BPF programs: run it as root \
         (sudo ./target/release/bpfproxy-bench tc-datapath, or sudo -E cargo xtask bench)",
    )?;
    ensure!(
        opts.rounds >= 1 && opts.batch >= 1,
        "rounds and batch must be ≥ 1"
    );
    // One warm-up round, whose samples are dropped, plus the rounds.
    ensure!(
        (opts.rounds + 1) * opts.batch <= MAX_NEW_FLOWS,
        "(rounds + 1) × batch new flows must stay ≤ {MAX_NEW_FLOWS} per datapath"
    );
    // The programs' route lookups see this namespace's routes, not the
    // host's (the backends are behind the node's NIC there).
    let _net = bpfproxy_tests::node_net::NodeNet::new("tcb")?;
    let baseline = match &opts.baseline {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let mut objects: Vec<Option<&[u8]>> = vec![None];
    objects.extend(baseline.as_deref().map(Some));
    let mut subjects = objects
        .iter()
        .flat_map(|&obj| opts.services.iter().map(move |&n| (obj, n)))
        .enumerate()
        .map(|(k, (obj, n))| Subject::new(k, n, obj))
        .collect::<Result<Vec<_>>>()?;
    let mut samples: Samples = vec![vec![Default::default(); subjects.len()]; Class::ALL.len()];
    for round in 0..=opts.rounds {
        let mut order: Vec<usize> = (0..subjects.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (c, class) in Class::ALL.into_iter().enumerate() {
            for &k in &order {
                let ns = subjects[k].measure(class, opts.batch, opts.repeat)?;
                if round > 0 {
                    for (p, v) in ns.into_iter().enumerate() {
                        samples[c][k][p].push(v);
                    }
                }
            }
        }
    }
    for s in &subjects {
        s.check()
            .with_context(|| format!("after the run, {}", s.label()))?;
    }
    report::write(
        "tc-datapath",
        "bpfproxy TC datapath: cost per packet",
        &body(opts, &subjects, &mut samples),
    )
}

/// The columns the report divides (numerator, denominator): with a
/// baseline, each count's datapath by its baseline's; else the last count
/// by the first (how the cost grows with Services).
fn ratio_pairs(subjects: &[Subject]) -> Vec<(usize, usize)> {
    let own = subjects.iter().filter(|s| !s.baseline).count();
    if own < subjects.len() {
        return (0..own).map(|k| (k, k + own)).collect();
    }
    match own {
        0 | 1 => Vec::new(),
        n => vec![(n - 1, 0)],
    }
}

fn body(opts: &Options, subjects: &[Subject], samples: &mut Samples) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Kernel-measured time per packet (BPF_PROG_TEST_RUN), ns: median and p90 over \
         {} rounds of each round's mean over {} single runs (`foreign (repeat)`: one \
         run of {} repeats). Each datapath holds N Services: N − 1 ClusterIP Services \
         and the NodePort Service (two endpoints on other nodes) the packets go to. \
         Flows to other nodes are translated whole at ingress (route lookup, DNAT, \
         SNAT, redirect); egress only sees them leave.\n",
        opts.rounds, opts.batch, opts.repeat
    );
    if let Some(path) = &opts.baseline {
        let _ = writeln!(
            out,
            "`base` columns: the object {} loaded instead of the agent's own, \
             measured in the same rounds.\n",
            path.display()
        );
    }
    let sizes = crate::datapath::Datapath::sizes();
    let _ = writeln!(
        out,
        "Map sizes as the agent's defaults on this machine: new-flow conntrack table \
         {} entries, confirmed table {}.\n",
        sizes.conntrack_new, sizes.conntrack
    );
    for s in subjects {
        let _ = writeln!(
            out,
            "- {}: {} frontends, {} service-map entries (read back from the kernel)",
            s.label(),
            s.frontends,
            s.entries
        );
    }
    out.push('\n');
    let mut header = vec!["packet".to_string(), "program".to_string()];
    for s in subjects {
        header.push(format!("{} p50", s.label()));
        header.push(format!("{} p90", s.label()));
    }
    let pairs = ratio_pairs(subjects);
    for &(a, b) in &pairs {
        header.push(format!(
            "p50 {} / {}",
            subjects[a].label(),
            subjects[b].label()
        ));
    }
    let mut rows = Vec::new();
    for (c, class) in Class::ALL.into_iter().enumerate() {
        for (p, prog) in Prog::BOTH.into_iter().enumerate() {
            let mut row = vec![class.label().to_string(), prog.name().to_string()];
            let mut medians = Vec::new();
            for per_subject in samples[c].iter_mut() {
                let v = &mut per_subject[p];
                v.sort_by(f64::total_cmp);
                let (p50, p90) = (report::quantile(v, 0.5), report::quantile(v, 0.9));
                row.push(format!("{p50:.0}"));
                row.push(format!("{p90:.0}"));
                medians.push(p50);
            }
            for &(a, b) in &pairs {
                row.push(format!("{:.2}", medians[a] / medians[b]));
            }
            rows.push(row);
        }
    }
    out.push_str(&report::table(&header, &rows, 2));
    out.push_str(
        "\nSingle runs include the test-run harness around one program run (two clock \
         reads, bottom-half disable); `foreign (repeat)` spreads it over many runs, so \
         the difference between the two `foreign` rows is that overhead. New flows each \
         come from a fresh client port (a 5-tuple conntrack has not seen); the other \
         classes rerun the same packet, so their map entries stay in the CPU cache: \
         the comparison shows how the work grows with the Service count, not the cache \
         misses of a real traffic mix.\n",
    );
    out
}
