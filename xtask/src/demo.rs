//! `cargo xtask demo` (placeholder until the demo is written).

/// The demo's command-line options.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("demo not written yet")
}
