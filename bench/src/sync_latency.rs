//! EndpointSlice change at a real API server → kernel map update, for two
//! agents watching the same server at once (side by side under the same
//! load): `--min-sync-period 0s` (the default) and `100ms`.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bpfproxy_tests::{
    apiserver::ApiServer, cluster::Cluster, event_clock::EventClock, Agent, AgentConfig,
    PrivateBpffs, TestCgroup,
};
use proxy_agent::{loader::pin_dir, maps::pinned::PinnedMaps};
use proxy_common::{proto, ServiceKey};

use crate::{objects, report};

const VARIANTS: [&str; 2] = ["0s", "100ms"];

/// One agent under test with its own cgroup and pins.
struct Subject {
    name: &'static str,
    agent: Agent,
    bpffs: PrivateBpffs,
    _cgroup: TestCgroup,
    maps: Option<PinnedMaps>,
}

impl Subject {
    fn start(name: &'static str, api: &ApiServer, n: usize) -> Result<Self> {
        let suffix = format!("bench{}", name.replace("ms", "").replace('s', ""));
        let cgroup = TestCgroup::new(&suffix)?;
        let bpffs = PrivateBpffs::new(&suffix)?;
        let free = || -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let mut cfg = AgentConfig::new(
            std::path::Path::new("/nonexistent"),
            cgroup.path(),
            bpffs.path(),
        )?
        .for_api_server(&api.kubeconfig(), free()?, free()?);
        cfg.node_name = Some("bench-node".into());
        cfg.extra_args.push(format!("--min-sync-period={name}"));
        // A master and two slots per Service.
        cfg.extra_args
            .extend(objects::map_size_args(n, 3 * n, 2 * n));
        let agent = Agent::start(cfg)?;
        let mut s = Subject {
            name,
            agent,
            bpffs,
            _cgroup: cgroup,
            maps: None,
        };
        // Ready when the last Service is in the maps.
        s.wait_for(n - 1, 0, Duration::from_secs(300))?;
        Ok(s)
    }

    fn maps(&mut self) -> Result<&PinnedMaps> {
        if self.maps.is_none() {
            self.maps = Some(PinnedMaps::open(&pin_dir(self.bpffs.path()))?);
        }
        self.maps.as_ref().context("maps")
    }

    /// Whether Service `i` leads to its `version` endpoints now.
    fn shows(&mut self, i: usize, version: usize) -> Result<bool> {
        let Ok(maps) = self.maps() else {
            return Ok(false);
        };
        let want = objects::endpoint(i, version);
        let key = |slot| ServiceKey::new(objects::vip(i), 80, proto::TCP, slot);
        Ok([1, 2]
            .iter()
            .filter_map(|s| maps.slot_backend(&key(*s)))
            .any(|b| b.ip() == want))
    }
}

/// Polls every subject in turn until each shows all of `changes`; returns
/// for each the time from `t0` to when it was first seen complete, so
/// neither agent is favoured by the order of polling.
fn wait_all(
    subjects: &mut [Subject],
    changes: &[(usize, usize)],
    t0: Instant,
    timeout: Duration,
) -> Result<Vec<Duration>> {
    let mut seen: Vec<Option<Duration>> = vec![None; subjects.len()];
    let mut pending: Vec<Vec<(usize, usize)>> = vec![changes.to_vec(); subjects.len()];
    while seen.iter().any(Option::is_none) {
        if t0.elapsed() > timeout {
            bail!("changes not in the maps within {timeout:?}: {pending:?}");
        }
        for (k, s) in subjects.iter_mut().enumerate() {
            if seen[k].is_some() {
                continue;
            }
            let mut still = Vec::new();
            for &(i, v) in &pending[k] {
                if !s.shows(i, v)? {
                    still.push((i, v));
                }
            }
            pending[k] = still;
            if pending[k].is_empty() {
                seen[k] = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(seen.into_iter().flatten().collect())
}

impl Subject {
    fn wait_for(&mut self, i: usize, version: usize, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.shows(i, version)? {
                return Ok(start.elapsed());
            }
            self.agent.check_alive()?;
            std::thread::sleep(Duration::from_micros(500));
        }
        bail!(
            "{}: svc-{i} v{version} not in the maps within {timeout:?}",
            self.name
        )
    }
}

/// One agent (`--min-sync-period 0s`) on an API server holding `n`
/// Services: its cold start and single-change latencies.
pub struct Single {
    /// Agent start → the last Service in the maps.
    pub cold: Duration,
    /// EndpointSlice change sent → in the maps, one per round.
    pub changes: Vec<Duration>,
    /// The API server's watch event → in the maps, one per round.
    pub from_event: Vec<Duration>,
    /// The agent's pid while it runs (for its memory).
    pub rss: crate::kube_proxy::rss::Rss,
}

/// [`Single`] for `n` Services and `rounds` changes.
pub fn single(n: usize, rounds: usize) -> Result<Single> {
    bpfproxy_tests::require_root()?;
    let api = ApiServer::start(&[], &[])?;
    let cluster = Cluster::connect(&api.kubeconfig())?;
    let created = objects::create(&cluster, n)?;
    eprintln!(
        "{n} Services: {} objects created at the API server in {:.1} s",
        2 * n,
        created.as_secs_f64()
    );
    let t = Instant::now();
    let mut subject = [Subject::start(VARIANTS[0], &api, n)?];
    let cold = t.elapsed();
    let clock = EventClock::start(&api.kubeconfig(), "bench")?;
    let (mut changes, mut from_event) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let i = (r * 7919 + 13) % n;
        let t0 = Instant::now();
        cluster.apply_yaml(&objects::slice_yaml(i, r + 1))?;
        let took = wait_all(&mut subject, &[(i, r + 1)], t0, Duration::from_secs(60))?;
        from_event.extend(since_event(&clock, i, r + 1, t0, &took)?);
        changes.extend(took);
    }
    let pid = subject[0].agent.pid().context("the agent has no pid")?;
    Ok(Single {
        cold,
        changes,
        from_event,
        rss: crate::kube_proxy::rss::Rss::of(pid)?,
    })
}

/// The times from the watch event of Service `i`'s `version` to each
/// agent's map, given the times `took` from `t0`.
fn since_event(
    clock: &EventClock,
    i: usize,
    version: usize,
    t0: Instant,
    took: &[Duration],
) -> Result<Vec<Duration>> {
    let event = clock
        .seen(&objects::slice_key(i, version), Duration::from_secs(10))
        .context("the watch never saw the change")?;
    Ok(took
        .iter()
        .map(|d| (t0 + *d).saturating_duration_since(event))
        .collect())
}

pub fn run(sizes: &[usize], rounds: usize) -> Result<()> {
    bpfproxy_tests::require_root()?;
    let mut body = String::new();
    let _ = writeln!(
        body,
        "EndpointSlice change (server-side apply accepted) → backend visible in the kernel map,\n\
         two agents on the same API server at once, {rounds} single changes + one burst of 50:\n"
    );
    for &n in sizes {
        let api = ApiServer::start(&[], &[])?;
        let cluster = Cluster::connect(&api.kubeconfig())?;
        let created = objects::create(&cluster, n)?;
        let t = Instant::now();
        let mut subjects = VARIANTS
            .iter()
            .map(|v| Subject::start(v, &api, n))
            .collect::<Result<Vec<_>>>()?;
        let initial = t.elapsed();
        let _ = writeln!(
            body,
            "## {n} Services\n\ncreated {} objects in {:.1} s; both agents programmed all in {:.2} s (start, watch, first sync)\n",
            2 * n,
            created.as_secs_f64(),
            initial.as_secs_f64()
        );

        let clock = EventClock::start(&api.kubeconfig(), "bench")?;
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); subjects.len()];
        let mut from_event: Vec<Vec<Duration>> = vec![Vec::new(); subjects.len()];
        for r in 0..rounds {
            let i = (r * 7919 + 13) % n;
            let version = r + 1;
            let t0 = Instant::now();
            cluster.apply_yaml(&objects::slice_yaml(i, version))?;
            let took = wait_all(&mut subjects, &[(i, version)], t0, Duration::from_secs(60))?;
            let since = since_event(&clock, i, version, t0, &took)?;
            for (out, d) in from_event.iter_mut().zip(since) {
                out.push(d);
            }
            for (out, d) in samples.iter_mut().zip(took) {
                out.push(d);
            }
        }
        for (k, s) in subjects.iter().enumerate() {
            let _ = writeln!(
                body,
                "- single change, min-sync-period {:>5}: sent → map {}\n  {:>39} watch event → map {}",
                s.name,
                report::summary(&mut samples[k]),
                "",
                report::summary(&mut from_event[k])
            );
        }

        // A burst: 50 slices changed back to back; time until the last one
        // is in the maps (coalescing pays off here).
        let burst: Vec<usize> = (0..50).map(|k| (k * 104_729 + 7) % n).collect();
        let version = rounds + 1000;
        let t0 = Instant::now();
        for i in &burst {
            cluster.apply_yaml(&objects::slice_yaml(*i, version))?;
        }
        let applied = t0.elapsed();
        let changes: Vec<(usize, usize)> = burst.iter().map(|i| (*i, version)).collect();
        let took = wait_all(&mut subjects, &changes, t0, Duration::from_secs(120))?;
        for (s, d) in subjects.iter().zip(took) {
            let _ = writeln!(
                body,
                "- burst of 50, min-sync-period {:>5}: all in the maps {:8.2} ms after the first change ({:.2} ms to send them all)",
                s.name,
                report::ms(d),
                report::ms(applied)
            );
        }
        body.push('\n');
    }
    report::write(
        "sync-latency",
        "bpfproxy EndpointSlice → map latency",
        &body,
    )
}
