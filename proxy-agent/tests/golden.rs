//! Golden tests: Service/EndpointSlice YAML in, `bpfproxy dump` text out.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p proxy-agent --test golden`
//! and review the diff.
mod common;

use std::{fs, path::Path};

#[test]
fn every_golden_case_matches_its_expected_dump() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> = fs::read_dir(&dir)
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 4,
        "golden cases missing in {}",
        dir.display()
    );
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for input in cases {
        let expected_path = input.with_extension("txt");
        let actual = common::dump_text(&fs::read_to_string(&input).expect("read input"));
        if update {
            fs::write(&expected_path, &actual).expect("write golden");
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                input.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
