//! Builds the kernel programs (proxy-ebpf) with nightly and bpf-linker and
//! puts the object in OUT_DIR for `include_bytes_aligned!`.
use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = meta
        .packages
        .iter()
        .find(|p| p.name.as_str() == "proxy-ebpf")
        .ok_or_else(|| anyhow!("proxy-ebpf package not found in the workspace"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("proxy-ebpf manifest has no parent"))?;
    // aya-build watches proxy-ebpf only; the kernel programs also compile
    // proxy-common (map types, the refusal and ICMP error builders), whose
    // changes must rebuild the object too.
    if let Some(common) = meta
        .packages
        .iter()
        .find(|p| p.name.as_str() == "proxy-common")
        .and_then(|p| p.manifest_path.parent())
    {
        println!("cargo:rerun-if-changed={}", common.join("src"));
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: pkg.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
