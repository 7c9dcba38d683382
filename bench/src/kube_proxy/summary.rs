//! The report: Markdown tables and the chart under `target/bench/`.
use std::{fmt::Write as _, time::Duration};

use anyhow::Result;

use super::{chart, ms, restore::Backend, rss::Rss, Options, Size};
use crate::report;

/// p50 and p99 (nearest rank) of `samples`; `None` without samples.
fn p50_p99(samples: &[Duration]) -> Option<(Duration, Duration)> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort();
    Some((report::quantile(&s, 0.5), report::quantile(&s, 0.99)))
}

/// Two cells: p50 and p99 in ms (`scale` 1) or µs (`scale` 1000).
fn cells(samples: &[Duration], scale: f64) -> [String; 2] {
    match p50_p99(samples) {
        Some((a, b)) if samples.len() > 1 => [
            format!("{:.2}", ms(a) * scale),
            format!("{:.2}", ms(b) * scale),
        ],
        Some((a, _)) => [format!("{:.2}", ms(a) * scale), "—".into()],
        None => ["—".into(), "—".into()],
    }
}

fn row(n: usize, what: &str, lines: String, full: &[Duration], update: &[Duration]) -> Vec<String> {
    let mut r = vec![n.to_string(), what.to_string(), lines];
    r.extend(cells(full, 1.0));
    r.extend(cells(update, 1.0));
    r.push(format!("{}/{}", full.len(), update.len()));
    r
}

fn load_table(opts: &Options, sizes: &[Size]) -> String {
    let header: Vec<String> = [
        "Services",
        "backend",
        "input lines",
        "full p50 ms",
        "full p99 ms",
        "1-Service update p50 ms",
        "p99 ms",
        "rounds",
    ]
    .map(String::from)
    .to_vec();
    let mut rows = Vec::new();
    for s in sizes {
        for (b, t) in &s.loads {
            let mut r = row(s.n, b.label(), t.lines.to_string(), &t.full, &t.partial);
            if t.timed_out {
                r[3] = format!("> {} s", opts.load_timeout.as_secs());
            }
            rows.push(r);
        }
        let p = &s.pipeline;
        rows.push(row(
            s.n,
            "bpfproxy pipeline (fake maps)",
            "—".into(),
            &p.cold,
            &p.cached,
        ));
        if let Some(a) = &s.api {
            rows.push(row(
                s.n,
                "bpfproxy agent, API server (write sent → map)",
                "—".into(),
                &[a.cold],
                &a.changes,
            ));
            rows.push(row(
                s.n,
                "bpfproxy agent, API server (watch event → map)",
                "—".into(),
                &[a.cold],
                &a.from_event,
            ));
        }
        let cold = [s.connect.agent_cold];
        rows.push(row(
            s.n,
            "bpfproxy agent, manifest dir",
            "—".into(),
            &cold,
            &[],
        ));
    }
    report::table(&header, &rows, 2)
}

fn connect_table(sizes: &[Size]) -> String {
    let mut header = vec!["Services".to_string()];
    let mut names = vec!["direct".to_string()];
    names.extend(Backend::ALL.iter().map(|b| b.label().to_string()));
    names.push("bpfproxy socket LB".into());
    for name in &names {
        header.push(format!("{name} p50 µs"));
        header.push("p99 µs".into());
    }
    let rows: Vec<Vec<String>> = sizes
        .iter()
        .map(|s| {
            let c = &s.connect;
            let mut r = vec![s.n.to_string()];
            r.extend(cells(&c.direct, 1000.0));
            for (_, t) in &c.rules {
                r.extend(cells(t, 1000.0));
            }
            r.extend(cells(&c.socket_lb, 1000.0));
            r
        })
        .collect();
    report::table(&header, &rows, 1)
}

fn memory_table(sizes: &[Size]) -> String {
    let header: Vec<String> = [
        "Services",
        "agent (manifest dir) VmRSS MiB",
        "RssAnon MiB",
        "VmHWM MiB",
        "agent (API server) VmRSS MiB",
        "RssAnon MiB",
        "VmHWM MiB",
    ]
    .map(String::from)
    .to_vec();
    let mib = |r: Option<Rss>, field: fn(&Rss) -> u64| match r {
        Some(r) => format!("{:.1}", Rss::mib(field(&r))),
        None => "—".into(),
    };
    let rows: Vec<Vec<String>> = sizes
        .iter()
        .map(|s| {
            let dir = Some(s.connect.agent_rss);
            let api = s.api.as_ref().map(|a| a.rss);
            vec![
                s.n.to_string(),
                mib(dir, |r| r.rss_kib),
                mib(dir, |r| r.anon_kib),
                mib(dir, |r| r.hwm_kib),
                mib(api, |r| r.rss_kib),
                mib(api, |r| r.anon_kib),
                mib(api, |r| r.hwm_kib),
            ]
        })
        .collect();
    report::table(&header, &rows, 1)
}

/// Writes the Markdown report and the chart.
pub fn write(opts: &Options, sizes: &[Size]) -> Result<()> {
    let mut body = String::new();
    let _ = writeln!(body, "{}", method(opts));
    let _ = writeln!(
        body,
        "## Full load and one-Service update\n\n{}",
        load_table(opts, sizes)
    );
    let _ = writeln!(body, "{}\n", LOAD_NOTES);
    let _ = writeln!(
        body,
        "## connect() to the last Service\n\n{}\n{CONNECT_NOTES}\n",
        connect_table(sizes)
    );
    let _ = writeln!(
        body,
        "## bpfproxy agent memory\n\n{}\n{MEMORY_NOTES}\n",
        memory_table(sizes)
    );
    let png = report::dir()?.join("kube-proxy-backends.png");
    chart::draw(&png, &panels(sizes))?;
    let _ = writeln!(
        body,
        "Chart: `kube-proxy-backends.png` (next to this file)."
    );
    report::write(
        "kube-proxy-backends",
        "kube-proxy backends vs bpfproxy",
        &body,
    )
}

fn method(opts: &Options) -> String {
    format!(
        "Services with one TCP port and two endpoints each. kube-proxy's rulesets are generated by the bench in \
         kube-proxy's layout (iptables: KUBE-SERVICES → KUBE-SVC-… → KUBE-SEP-… in the nat table; nftables: \
         the `kube-proxy` table with the `service-ips` verdict map, a chain per Service with `numgen random` \
         and a DNAT chain per endpoint) and loaded with the real tools in fresh network namespaces: \
         full load = up to {} loads of the whole ruleset, each into a new namespace; 1-Service update = up to {} \
         single endpoint changes on top (fewer once a backend's rounds took 3 minutes: see `rounds`, \
         full/updates). bpfproxy: the sync pipeline on fake maps (cold full sync, one sync per \
         change), a real agent on a real API server for {:?} Services (agent start → last Service in the \
         kernel maps; EndpointSlice change accepted → in the maps), and a real agent on a manifest \
         directory for every count (start → last Service in the maps). connect(): {} samples per column.\n",
        opts.full_rounds, opts.rounds, opts.api_services, opts.samples
    ) + if opts.bpfproxy_only {
        "\nThis run measured bpfproxy only (`--bpfproxy-only`): no kube-proxy ruleset was loaded.\n"
    } else {
        ""
    }
}

const LOAD_NOTES: &str = "The iptables update is kube-proxy's partial sync (`iptables-restore --noflush`): \
kube-proxy rewrites the top-level chains, KUBE-SERVICES with a rule for every Service, on every sync, and of \
the per-Service chains only the changed Service's (departed endpoints' chains are deleted). The nftables \
update is one transaction touching only the changed Service's chains. For bpfproxy the update is one \
EndpointSlice change; `> T s`: a full load took longer than the timeout and was killed (no updates, no \
connect() column for it at that count); the pipeline row is its CPU cost alone, the API-server row the whole path through \
watch, sync and map writes (the objects are created first, 16 writes at a time). Counts without an \
API-server row ran no API server (`--api-services`); their one-change cost is the pipeline row.";

const CONNECT_NOTES: &str = "Blocking connect() from a client namespace over a veth to a listener in a \
second namespace: direct = to the backend's address with no rules; the kube-proxy columns = to the last \
Service's ClusterIP with that backend's full ruleset loaded in the client namespace (the first packet of a \
connection walks the nat rules: linearly for iptables, one map lookup for nftables); socket LB = the \
bpfproxy agent's cgroup connect hook rewrites the address before any packet exists.";

const MEMORY_NOTES: &str =
    "VmRSS once the agent has programmed every Service (manifest dir: after the \
connect() samples; API server: after the single changes); RssAnon is the part of it that is the \
agent's own (heap and stacks; the rest is file pages such as the binary's code, shared by every \
process running it); VmHWM is its peak so far.";

/// Series labels by their color in the chart.
const COLORS: [&str; 6] = [
    "iptables-legacy",
    "iptables-nft",
    "nftables",
    "bpfproxy pipeline",
    "bpfproxy agent",
    "direct",
];

/// Full load, update and connect() p50 over the Service count.
fn panels(sizes: &[Size]) -> Vec<chart::Panel> {
    let series = |label: &str, f: &dyn Fn(&Size) -> Option<f64>| chart::Series {
        label: label.to_string(),
        color: COLORS
            .iter()
            .position(|c| label.starts_with(c))
            .unwrap_or(COLORS.len()),
        points: sizes
            .iter()
            .filter_map(|s| Some((s.n as f64, f(s)?)))
            .collect(),
    };
    let p50 = |d: &[Duration]| p50_p99(d).map(|(a, _)| ms(a));
    let load = |b: Backend, full: bool| {
        move |s: &Size| {
            let t = &s.loads.iter().find(|(x, _)| *x == b)?.1;
            p50(if full { &t.full } else { &t.partial })
        }
    };
    let mut full = Vec::new();
    let mut update = Vec::new();
    let mut conn = vec![series("direct", &|s| {
        p50(&s.connect.direct).map(|v| v * 1000.0)
    })];
    for b in Backend::ALL {
        full.push(series(b.label(), &load(b, true)));
        update.push(series(b.label(), &load(b, false)));
        let at = move |s: &Size| {
            let t = &s.connect.rules.iter().find(|(x, _)| *x == b)?.1;
            p50(t).map(|v| v * 1000.0)
        };
        conn.push(series(b.label(), &at));
    }
    full.push(series("bpfproxy pipeline", &|s| {
        p50_p99(&s.pipeline.cold).map(|(p50, _)| ms(p50))
    }));
    full.push(series("bpfproxy agent (manifest dir)", &|s| {
        Some(ms(s.connect.agent_cold))
    }));
    update.push(series("bpfproxy pipeline", &|s| p50(&s.pipeline.cached)));
    update.push(series("bpfproxy agent (API server event)", &|s| {
        p50(&s.api.as_ref()?.from_event)
    }));
    conn.push(series("bpfproxy agent: socket LB", &|s| {
        p50(&s.connect.socket_lb).map(|v| v * 1000.0)
    }));
    let panel = |title: &str, y: &str, series| chart::Panel {
        title: title.into(),
        y_desc: y.into(),
        series,
    };
    vec![
        panel("full load / cold sync (p50)", "ms", full),
        panel("one-Service update (p50)", "ms", update),
        panel("connect() to the last Service (p50)", "µs", conn),
    ]
}
