//! Judging and showing who answered: which backends, how often, and the
//! client address each saw. Pure checks (they only return errors) and the
//! printing of the spread, shared by every traffic check.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Result};
use bpfproxy_tests::multinode::PeerAnswers;
use bpfproxy_tests::TcpReport;

/// Fails unless all `requests` connections of `r` to `to` were answered,
/// by exactly `want` (each at least once), and every backend saw only
/// `peer` as the client.
pub(super) fn check_connections(
    r: &TcpReport,
    answers: &BTreeMap<String, PeerAnswers>,
    requests: u64,
    want: &BTreeSet<String>,
    peer: &str,
    to: &str,
) -> Result<()> {
    ensure!(
        r.ok == requests && r.failed == 0,
        "{to}: {} of {requests} connections answered: {:?}",
        r.ok,
        r.errors
    );
    check_all_reached(answers, want, to)?;
    check_peers(answers, peer, to)
}

/// Fails unless the answers came from exactly `want`, each at least once.
pub(super) fn check_all_reached(
    answers: &BTreeMap<String, PeerAnswers>,
    want: &BTreeSet<String>,
    to: &str,
) -> Result<()> {
    let seen: BTreeSet<String> = answers.keys().cloned().collect();
    ensure!(
        &seen == want,
        "{to}: answered by {seen:?}, expected each of {want:?} (and nothing else)"
    );
    Ok(())
}

/// Fails unless every backend saw only `peer` as the client.
fn check_peers(answers: &BTreeMap<String, PeerAnswers>, peer: &str, to: &str) -> Result<()> {
    for (name, a) in answers {
        ensure!(
            a.peers.iter().all(|p| p == peer),
            "{to}: {name} saw the client as {:?}, expected only {peer}",
            a.peers
        );
    }
    Ok(())
}

/// Answers per backend as bars, with the client addresses each saw; every
/// backend of `want` gets a line (also one that was never reached, so a
/// gap shows), and any other that answered is marked unexpected.
fn spread_lines(
    answers: &BTreeMap<String, PeerAnswers>,
    want: &BTreeSet<String>,
    ok: u64,
) -> Vec<String> {
    let total = ok.max(1) as f64;
    let empty = PeerAnswers::default();
    let names: BTreeSet<&String> = want.iter().chain(answers.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let a = answers.get(name).unwrap_or(&empty);
            let share = a.count as f64 / total;
            let bar = "#".repeat((share * 40.0).round() as usize);
            let peers = if a.peers.is_empty() {
                String::new()
            } else {
                format!(
                    "  saw {}",
                    a.peers.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            let unexpected = if want.contains(name) {
                ""
            } else {
                "  (unexpected!)"
            };
            let line = format!(
                "    {name:<12} {:>5}  {:>5.1}%  {bar:<40}{peers}{unexpected}",
                a.count,
                share * 100.0
            );
            line.trim_end().to_string()
        })
        .collect()
}

/// Prints [`spread_lines`].
pub(super) fn print_spread(
    answers: &BTreeMap<String, PeerAnswers>,
    want: &BTreeSet<String>,
    ok: u64,
) {
    for line in spread_lines(answers, want, ok) {
        println!("{line}");
    }
}

/// The first few errors of a probe run (the rest are alike).
pub(super) fn show_errors(errors: &[String]) {
    for e in errors.iter().take(3) {
        println!("    error: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[(&str, u64, &[&str])]) -> BTreeMap<String, PeerAnswers> {
        list.iter()
            .map(|&(name, count, peers)| {
                (
                    name.to_string(),
                    PeerAnswers {
                        count,
                        peers: peers.iter().map(|p| p.to_string()).collect(),
                    },
                )
            })
            .collect()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_spread_shows_missing_and_unexpected_backends() {
        let a = answers(&[("node1-pod1", 3, &["10.0.0.1"]), ("node9-pod9", 1, &[])]);
        let lines = spread_lines(&a, &names(&["node1-pod1", "node1-pod2"]), 4);
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("    node1-pod1       3   75.0%  ##############################")
        );
        assert!(lines[0].ends_with("  saw 10.0.0.1"));
        assert_eq!(lines[1], "    node1-pod2       0    0.0%");
        assert!(lines[2].ends_with("(unexpected!)"));
    }

    #[test]
    fn connections_must_reach_exactly_the_wanted_backends_with_one_peer() {
        let r = TcpReport {
            ok: 4,
            failed: 0,
            by_backend: BTreeMap::new(),
            errors: Vec::new(),
            failed_at_ms: Vec::new(),
            elapsed_ms: 1.0,
        };
        let want = names(&["a", "b"]);
        let good = answers(&[("a", 2, &["1.1.1.1"]), ("b", 2, &["1.1.1.1"])]);
        assert!(check_connections(&r, &good, 4, &want, "1.1.1.1", "x").is_ok());
        assert!(check_connections(&r, &good, 5, &want, "1.1.1.1", "x").is_err());
        assert!(check_connections(&r, &good, 4, &want, "2.2.2.2", "x").is_err());
        let one = answers(&[("a", 4, &["1.1.1.1"])]);
        assert!(check_connections(&r, &one, 4, &want, "1.1.1.1", "x").is_err());
    }
}
