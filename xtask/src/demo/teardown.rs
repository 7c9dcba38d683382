//! The end of the demo: everything it created removed, and checked to be
//! gone by name (also after an error, for the message).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use bpfproxy_tests::multinode::ClusterSandbox;
use bpfproxy_tests::{netns, Agent, NAME_PREFIX};

/// Stops the agents, removes the sandbox and checks that nothing of this
/// process is left.
pub(super) fn tear_down(agents: Vec<Agent>, sb: ClusterSandbox) -> Result<String> {
    let namespaces = sb.namespaces().len();
    let nodes = sb.config().nodes;
    let started = Instant::now();
    drop(agents);
    drop(sb);
    let took = started.elapsed();
    let left = leftovers()?;
    if !left.is_empty() {
        bail!("teardown left {left:?} behind; `cargo xtask sweep` removes leftovers");
    }
    let text = format!(
        "{nodes} agents, {namespaces} namespaces, {nodes} cgroups, {nodes} bpffs mounts and \
         every server removed in {took:.2?}; nothing named {} is left",
        own_prefix()
    );
    println!("  {text}");
    Ok(text)
}

/// `bpfpt-<our pid>-`: every namespace, cgroup and /tmp entry the sandbox
/// creates starts with it.
fn own_prefix() -> String {
    format!("{NAME_PREFIX}{}-", std::process::id())
}

/// Namespaces, cgroups and /tmp entries (bpffs mount points, the work
/// directory) of this process that still exist.
pub(super) fn leftovers() -> Result<Vec<String>> {
    let prefix = own_prefix();
    let mut left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(|n| format!("netns {n}"))
        .collect();
    for dir in [
        bpfproxy_tests::privilege::cgroup2_root()?,
        std::env::temp_dir(),
    ] {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        left.extend(
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path().display().to_string()),
        );
    }
    Ok(left)
}
