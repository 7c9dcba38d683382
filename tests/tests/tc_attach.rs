//! The agent's loader puts the TC programs on `--devices` as pinned TCX
//! links, swaps the program inside them on restart (the link and its place
//! on the device stay) and detaches devices no longer listed; the clsact
//! path of kernels before 6.6 (forced here with `TcMode::Clsact`) does the
//! same with one `cls_bpf` filter per hook.
//!
//! The loader runs in this test's thread after it joined a test network
//! namespace (setns is per thread), so the only devices it can see are the
//! test's own veths.
use std::path::Path;

use anyhow::{ensure, Context, Result};
use aya::programs::{links::PinnedLink, SchedClassifier, TcAttachType};
use bpfproxy_tests::{require_root, Netns, PrivateBpffs, TestCgroup, VethPair};
use proxy_agent::loader::{self, Attachment, TcDevices, TcMode};

/// (program id, program name) of every TCX program on `dev`'s hook.
fn tcx_programs(dev: &str, attach: TcAttachType) -> Result<Vec<(u32, String)>> {
    let (_, progs) = SchedClassifier::query_tcx(dev, attach)?;
    Ok(progs
        .iter()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string()))
        .collect())
}

fn link_id(pin: &Path) -> Result<u32> {
    let link = PinnedLink::from_pin(pin).with_context(|| format!("{}", pin.display()))?;
    // Closing this fd leaves the pin (and the link) alone.
    let fd = aya::programs::links::FdLink::from(link);
    Ok(fd.info()?.id())
}

/// A "node" namespace with one veth to a peer, a private bpffs and a
/// cgroup; the calling thread has joined the node's namespace.
struct Node {
    dev: String,
    bpffs: PrivateBpffs,
    cgroup: TestCgroup,
    // Dropped last: the veth goes with the namespaces.
    _veth: VethPair,
    _peer: Netns,
    _node: Netns,
}

impl Node {
    /// `tag` names the resources; the veth gets `10.<subnet>.0.1/24`.
    fn enter(tag: &str, subnet: &str) -> Result<Self> {
        require_root()?;
        let node = Netns::new(&format!("{tag}node"))?;
        let peer = Netns::new(&format!("{tag}peer"))?;
        let veth = VethPair::new(
            &node,
            &[&format!("10.{subnet}.0.1/24")],
            &peer,
            &[&format!("10.{subnet}.0.2/24")],
        )?;
        let bpffs = PrivateBpffs::new(&format!("{tag}attach"))?;
        let cgroup = TestCgroup::new(&format!("{tag}attach"))?;
        node.join_this_thread()?;
        Ok(Self {
            dev: veth.a().to_string(),
            bpffs,
            cgroup,
            _veth: veth,
            _peer: peer,
            _node: node,
        })
    }
}

/// Whether this kernel has TCX (6.6 on).
fn kernel_has_tcx() -> Result<bool> {
    let v = aya::util::KernelVersion::current().context("reading the kernel version")?;
    Ok(v >= aya::util::KernelVersion::new(6, 6, 0))
}

#[test]
fn tc_programs_are_attached_replaced_in_place_and_detached_with_their_device() -> Result<()> {
    let n = Node::enter("tc", "231")?;
    let (bpffs, cgroup, dev) = (&n.bpffs, &n.cgroup, n.dev.clone());
    if !kernel_has_tcx()? {
        // Kernels before 6.6 (5.10, 6.1 in the kernel matrix): forcing TCX
        // fails with an error, and the default mode takes the clsact path.
        let serving = TcDevices::serving(std::slice::from_ref(&dev));
        let forced = loader::load_and_attach(bpffs.path(), cgroup.path(), TcMode::Tcx, &serving);
        ensure!(forced.is_err(), "TCX attached on a kernel without it");
        loader::load_and_attach(bpffs.path(), cgroup.path(), TcMode::Auto, &serving)?;
        let ingress = clsact_filters(&dev, "ingress")?;
        ensure!(
            ingress.len() == 1 && ingress[0].1.starts_with("tc_ingress"),
            "auto mode falls back to one clsact filter: {ingress:?}"
        );
        return Ok(());
    }
    let links = loader::pin_dir(bpffs.path()).join("links");

    let serving = TcDevices::serving(std::slice::from_ref(&dev));
    let first = loader::load_and_attach(bpffs.path(), cgroup.path(), TcMode::Tcx, &serving)?;
    for prog in ["tc_ingress", "tc_egress"] {
        let name = format!("{prog}@{dev}");
        ensure!(
            first.contains(&(name.clone(), Attachment::Attached)),
            "{name} not attached: {first:?}"
        );
    }
    let ingress = tcx_programs(&dev, TcAttachType::Ingress)?;
    let egress = tcx_programs(&dev, TcAttachType::Egress)?;
    ensure!(
        ingress.len() == 1 && ingress[0].1 == "tc_ingress",
        "{ingress:?}"
    );
    ensure!(
        egress.len() == 1 && egress[0].1 == "tc_egress",
        "{egress:?}"
    );
    let ingress_pin = links.join(format!("tc-{dev}-ingress"));
    let link_before = link_id(&ingress_pin)?;

    // A restart: the same links, now running newly loaded programs.
    let second = loader::load_and_attach(bpffs.path(), cgroup.path(), TcMode::Tcx, &serving)?;
    ensure!(
        second.contains(&(format!("tc_ingress@{dev}"), Attachment::Replaced)),
        "{second:?}"
    );
    let ingress2 = tcx_programs(&dev, TcAttachType::Ingress)?;
    ensure!(
        ingress2.len() == 1,
        "replace must not add a program: {ingress2:?}"
    );
    ensure!(
        ingress2[0].0 != ingress[0].0,
        "program not swapped: {ingress2:?}"
    );
    ensure!(
        link_id(&ingress_pin)? == link_before,
        "the link itself must stay"
    );

    // The device becomes a reply device (it left --devices but forwarded
    // flows still come back by it): the same ingress link now runs
    // tc_reply, and its egress program goes.
    let replies = TcDevices {
        replies: vec![dev.clone()],
        ..TcDevices::default()
    };
    let third = loader::load_and_attach(bpffs.path(), cgroup.path(), TcMode::Tcx, &replies)?;
    ensure!(
        third.contains(&(format!("tc_reply@{dev}"), Attachment::Replaced)),
        "{third:?}"
    );
    let ingress3 = tcx_programs(&dev, TcAttachType::Ingress)?;
    ensure!(
        ingress3.len() == 1 && ingress3[0].1 == "tc_reply",
        "{ingress3:?}"
    );
    ensure!(link_id(&ingress_pin)? == link_before, "the link stays");
    ensure!(tcx_programs(&dev, TcAttachType::Egress)?.is_empty());

    // The device leaves altogether: its links go, the programs with them.
    loader::load_and_attach(
        bpffs.path(),
        cgroup.path(),
        TcMode::Tcx,
        &TcDevices::default(),
    )?;
    ensure!(!ingress_pin.exists(), "stale pin left");
    ensure!(tcx_programs(&dev, TcAttachType::Ingress)?.is_empty());
    ensure!(tcx_programs(&dev, TcAttachType::Egress)?.is_empty());
    Ok(())
}

/// (handle, program name, program id) of every `cls_bpf` filter on `dev`'s
/// clsact `hook` ("ingress"/"egress"), from `tc filter show`.
fn clsact_filters(dev: &str, hook: &str) -> Result<Vec<(String, String, u32)>> {
    let out = std::process::Command::new("tc")
        .args(["filter", "show", "dev", dev, hook])
        .output()
        .context("running tc filter show")?;
    ensure!(out.status.success(), "tc filter show: {out:?}");
    let mut filters = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |w: &str| {
            words
                .iter()
                .position(|x| *x == w)
                .and_then(|i| words.get(i + 1))
        };
        if let (Some(handle), Some(id)) = (after("handle"), after("id")) {
            let name = after(handle).copied().unwrap_or("?");
            filters.push((handle.to_string(), name.to_string(), id.parse()?));
        }
    }
    Ok(filters)
}

#[test]
fn the_clsact_path_replaces_its_one_filter_in_place_and_removes_it() -> Result<()> {
    let n = Node::enter("cls", "232")?;
    let (bpffs, cgroup, dev) = (&n.bpffs, &n.cgroup, n.dev.clone());
    let marker = loader::pin_dir(bpffs.path()).join(format!("links/tc-{dev}-ingress"));
    let attach = |devices: &[String]| {
        loader::load_and_attach(
            bpffs.path(),
            cgroup.path(),
            TcMode::Clsact,
            &TcDevices::serving(devices),
        )
    };

    let first = attach(std::slice::from_ref(&dev))?;
    ensure!(
        first.contains(&(format!("tc_ingress@{dev}"), Attachment::Attached)),
        "{first:?}"
    );
    let ingress = clsact_filters(&dev, "ingress")?;
    ensure!(
        ingress.len() == 1 && ingress[0].1.starts_with("tc_ingress"),
        "one filter: {ingress:?}"
    );
    let egress = clsact_filters(&dev, "egress")?;
    ensure!(
        egress.len() == 1 && egress[0].1.starts_with("tc_egress"),
        "{egress:?}"
    );
    ensure!(marker.is_dir(), "the device is marked for clean-up");

    // A restart: the same filter, now running the newly loaded program.
    let second = attach(std::slice::from_ref(&dev))?;
    ensure!(
        second.contains(&(format!("tc_ingress@{dev}"), Attachment::Replaced)),
        "{second:?}"
    );
    let ingress2 = clsact_filters(&dev, "ingress")?;
    ensure!(
        ingress2.len() == 1,
        "a restart must not stack filters: {ingress2:?}"
    );
    ensure!(ingress2[0].0 == ingress[0].0, "same filter handle");
    ensure!(
        ingress2[0].2 != ingress[0].2,
        "program not swapped: {ingress2:?}"
    );

    // The device leaves --devices: the filters go.
    attach(&[])?;
    ensure!(clsact_filters(&dev, "ingress")?.is_empty());
    ensure!(clsact_filters(&dev, "egress")?.is_empty());
    ensure!(!marker.exists(), "marker left");
    Ok(())
}
