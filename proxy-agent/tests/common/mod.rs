//! Shared by the pure test files: manifests in, map state / dump text out.
#![allow(dead_code)]

use proxy_agent::{
    datapath::{apply, plan, render, DumpView, Ids, MapState},
    maps::FakeMaps,
    model::{BuildOutput, Model, ModelConfig, NodeContext},
    source::{manifest::parse_documents, Snapshot},
};

pub fn snapshot(yaml: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    parse_documents("test.yaml", yaml, &mut snap);
    snap
}

pub fn build(yaml: &str) -> BuildOutput {
    build_with(yaml, &ModelConfig::default())
}

/// [`build`] on a node with a name and zone.
pub fn build_on(yaml: &str, node: &str, zone: Option<&str>) -> BuildOutput {
    let config = ModelConfig {
        node: NodeContext {
            name: node.to_string(),
            zone: zone.map(str::to_string),
        },
        ..ModelConfig::default()
    };
    build_with(yaml, &config)
}

pub fn build_with(yaml: &str, config: &ModelConfig) -> BuildOutput {
    let snap = snapshot(yaml);
    let mut out = Model::build(
        snap.services.iter().map(|s| s.as_ref()),
        snap.slices.iter().map(|s| s.as_ref()),
        config,
    )
    .output();
    out.skips.extend(snap.skips);
    out.skips.sort();
    out
}

/// The full pure pipeline into fresh fake maps.
pub fn program(yaml: &str) -> (MapState, BuildOutput) {
    let out = build(yaml);
    let mut ids = Ids::default();
    let desired = render(&out.state, &mut ids).state;
    let mut maps = FakeMaps::new(65_536);
    let report = apply(&plan(&desired, &maps.state), &mut maps);
    assert!(report.ok(), "{report:?}");
    (maps.state, out)
}

/// The dump text golden files hold: the map view plus the skips.
pub fn dump_text(yaml: &str) -> String {
    let (state, out) = program(yaml);
    let mut text = DumpView::from_state(&state).to_string();
    for s in &out.skips {
        text.push_str(&format!("{s}\n"));
    }
    text
}
