//! Test tiers run inside VMs: the host-built libtest binaries run directly
//! in the guest (no cargo, no build there), one tier after another in one
//! boot, and the output is split by tier and read.
//!
//! Not nextest: its process per test re-reads a debug test binary of
//! hundreds of MB over 9p each time; `tc_prog` took 270 s under nextest and
//! 45 s as one libtest process on 6.12.

use std::fmt::Write as _;
use std::time::Duration;

/// A tier: a set of the privileged tests, chosen by a nextest filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// The TC programs through BPF_PROG_TEST_RUN (tests/tests/tc_prog.rs).
    Prog,
    /// TCX and clsact attachment (tests/tests/tc_attach.rs).
    Attach,
    /// Socket load balancing end to end (tests/tests/socket_lb.rs), without
    /// the JVM client (a JVM start takes minutes under TCG).
    SocketLb,
    /// NodePorts across the multi-node sandbox on the shapes whose devices
    /// need kernel modules the host lacks, real IPIP and WireGuard
    /// (tests/tests/nodeport.rs `ipip::`, `wireguard::`); it includes an
    /// agent restart with its pins.
    Nodeport,
    /// The container image's exported root runs `bpfproxy --version` and
    /// `preflight` (every program loads) by chroot (tests/tests/image_root.rs).
    Image,
}

impl Tier {
    /// The tiers `--kernel` runs by default. `image` needs an exported
    /// image root: the arm64 plans build theirs; on amd64, `--tier image`
    /// uses the host's (`cargo xtask test` exports it).
    pub const ALL: [Tier; 4] = [Tier::Prog, Tier::Attach, Tier::SocketLb, Tier::Nodeport];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Prog => "prog",
            Tier::Attach => "attach",
            Tier::SocketLb => "socket-lb",
            Tier::Nodeport => "nodeport",
            Tier::Image => "image",
        }
    }

    /// The test target (`tests/tests/NAME.rs`).
    pub fn target(self) -> &'static str {
        match self {
            Tier::Prog => "tc_prog",
            Tier::Attach => "tc_attach",
            Tier::SocketLb => "socket_lb",
            Tier::Nodeport => "nodeport",
            Tier::Image => "image_root",
        }
    }

    /// libtest arguments: two threads, as the repository's nextest profile.
    pub fn args(self) -> String {
        match self {
            // libtest's filters: names containing any of them.
            // One at a time: three agents start per test, and their program
            // loads under TCG starve a second test's past its waits.
            Tier::Nodeport => format!("--test-threads 1 {}", NODEPORT_TESTS.join(" ")),
            _ => self.fixed_args().to_string(),
        }
    }

    fn fixed_args(self) -> &'static str {
        match self {
            Tier::SocketLb => "--test-threads 2 --skip jvm",
            Tier::Nodeport => "",
            Tier::Image => "--test-threads 1",
            _ => "--test-threads 2",
        }
    }
}

/// The NodePort tier under TCG (over a minute a test, so a chosen few): on
/// the real IPIP and WireGuard devices, 180 connections through every node
/// with the SNAT address each backend sees, a 5 MB download through the
/// tunnel's MTU, and a connection across endpoint removal and an agent
/// restart with its pins. The host runs the whole suite on every shape it
/// can build.
const NODEPORT_TESTS: &[&str] = &[
    "ipip::etp_cluster_a_remote_backend",
    "ipip::a_5_mb_download",
    "ipip::a_long_lived_connection_survives",
    "wireguard::etp_cluster_a_remote_backend",
    "wireguard::a_5_mb_download",
    "wireguard::a_long_lived_connection_survives",
];

/// Marks the start of a tier's output in the guest's stdout.
const MARK: &str = "@@bpfproxy-tier ";

/// The guest's commands that run each tier's test binary (`runs`: tier
/// name and command line). Every tier runs even when an earlier one
/// failed; the line exits non-zero if any failed.
pub fn commands(runs: &[(&str, String)]) -> String {
    let mut s = String::from("rc=0; ");
    for (tier, command) in runs {
        // Failures' details go to stderr: merged so that the host reads them.
        let _ = write!(s, "echo '{MARK}{tier}'; {command} 2>&1 || rc=1; ");
    }
    s += "exit $rc";
    s
}

/// One tier's result in one VM.
#[derive(Debug, Default, PartialEq)]
pub struct TierResult {
    pub tier: String,
    pub run: u32,
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    /// nextest's own time for the tier (in the guest).
    pub wall: Option<Duration>,
    /// `FAIL`/`TIMEOUT` lines: binary and test name.
    pub failures: Vec<String>,
}

/// Splits the guest's output at the tier marks and reads each tier.
pub fn results(stdout: &str) -> Vec<TierResult> {
    stdout
        .split(MARK)
        .skip(1)
        .map(|chunk| {
            let (name, body) = chunk.split_once('\n').unwrap_or((chunk, ""));
            let mut r = summary(body).unwrap_or_default();
            r.tier = name.trim().to_string();
            r.failures = failures(body);
            r
        })
        .collect()
}

/// nextest's `Summary [  12.345s] 30 tests run: 28 passed, 2 failed, 1 skipped`.
fn summary(body: &str) -> Option<TierResult> {
    if let Some(r) = libtest_summary(body) {
        return Some(r);
    }
    let line = body
        .lines()
        .rev()
        .find(|l| l.contains("tests run:") || l.contains("test run:"))?;
    let mut r = TierResult::default();
    let secs = line
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once("s]"));
    r.wall = secs
        .and_then(|(s, _)| s.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    let (before, counts) = line.split_once(" run:")?;
    r.run = before.split_whitespace().rev().nth(1)?.parse().ok()?;
    for part in counts.split(',') {
        let mut words = part.split_whitespace();
        let n: u32 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        match words.next() {
            Some("passed") => r.passed = n,
            Some("failed") => r.failed += n,
            Some("timed") => r.failed += n,
            Some("skipped") => r.skipped = n,
            _ => {}
        }
    }
    Some(r)
}

/// libtest's `test result: FAILED. 23 passed; 2 failed; 0 ignored; 0
/// measured; 0 filtered out; finished in 98.76s`.
fn libtest_summary(body: &str) -> Option<TierResult> {
    let line = body
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("test result: "))?;
    let mut r = TierResult::default();
    for part in line.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        let n = |i: usize| {
            words
                .get(i)
                .and_then(|w| w.parse::<u32>().ok())
                .unwrap_or(0)
        };
        match words.as_slice() {
            [.., "passed"] => r.passed = n(words.len() - 2),
            [_, "failed"] => r.failed = n(0),
            [_, "ignored"] => r.skipped = n(0),
            ["finished", "in", secs] => {
                r.wall = secs
                    .trim_end_matches('s')
                    .parse::<f64>()
                    .ok()
                    .map(Duration::from_secs_f64);
            }
            _ => {}
        }
    }
    r.run = r.passed + r.failed;
    Some(r)
}

/// The failed tests nextest lists after its summary (`FAIL [ 1.2s] bin test`).
fn failures(body: &str) -> Vec<String> {
    let after = body
        .rsplit_once("tests run:")
        .or_else(|| body.rsplit_once("test run:"))
        .map_or(body, |(_, a)| a);
    after
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            if l.starts_with("FAIL") || l.starts_with("TIMEOUT") || l.starts_with("SIGSEGV") {
                // `FAIL [  1.2s] (3/25) bin test`: the counter is not the name.
                let (_, t) = l.split_once("] ")?;
                let t = t.trim();
                let t = t
                    .strip_prefix('(')
                    .and_then(|r| r.split_once(") "))
                    .map_or(t, |(_, name)| name);
                return Some(t.to_string());
            }
            // libtest: `test name ... FAILED`
            l.strip_prefix("test ")?
                .strip_suffix(" ... FAILED")
                .map(str::to_string)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tier_runs_and_a_failure_fails_the_line() {
        let runs = [
            ("prog", "/t/tc_prog --test-threads 2".to_string()),
            ("lb", "/t/lb".to_string()),
        ];
        let c = commands(&runs);
        let first = "rc=0; echo '@@bpfproxy-tier prog'; /t/tc_prog --test-threads 2 2>&1 || rc=1; ";
        assert!(c.starts_with(first), "{c}");
        assert!(c.ends_with("/t/lb 2>&1 || rc=1; exit $rc"), "{c}");
    }

    #[test]
    fn tier_output_is_read() {
        let out = "boot noise\n@@bpfproxy-tier prog\n    PASS [ 0.1s] bpfproxy-tests::tc_prog a\n\
            ------------\n     Summary [  12.345s] 30 tests run: 28 passed, 2 failed, 1 skipped\n\
            \x20       FAIL [   1.2s] (2/30) bpfproxy-tests::tc_prog b\n\
            \x20    TIMEOUT [ 480.0s] bpfproxy-tests::tc_prog c\n\
            @@bpfproxy-tier attach\n     Summary [   3.000s] 2 tests run: 2 passed, 0 skipped\n\
            @@bpfproxy-tier socket-lb\nerror: no binary list\n";
        let r = results(out);
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].run, r[0].passed, r[0].failed, r[0].skipped),
            (30, 28, 2, 1)
        );
        assert_eq!(r[0].wall, Some(Duration::from_millis(12345)));
        assert_eq!(
            r[0].failures,
            ["bpfproxy-tests::tc_prog b", "bpfproxy-tests::tc_prog c"]
        );
        assert_eq!(
            (r[1].tier.as_str(), r[1].run, r[1].passed),
            ("attach", 2, 2)
        );
        assert_eq!((r[2].tier.as_str(), r[2].run), ("socket-lb", 0));
    }

    #[test]
    fn libtest_output_is_read() {
        let out = "@@bpfproxy-tier prog\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\
            test result: FAILED. 23 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 98.50s\n";
        let r = results(out);
        assert_eq!(
            (r[0].run, r[0].passed, r[0].failed, r[0].skipped),
            (25, 23, 2, 1)
        );
        assert_eq!(r[0].wall, Some(Duration::from_millis(98500)));
        assert_eq!(r[0].failures, ["b"]);
    }
}
