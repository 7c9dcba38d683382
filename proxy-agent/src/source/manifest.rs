//! Reads Kubernetes manifests: several documents per file separated by
//! `---`, `kind: List` wrappers, `.yaml`, `.yml` and `.json` files.
use std::{fs, io, path::Path};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize;

use super::{strip, Snapshot};
use crate::model::{Skip, SkipReason};

/// Reads every manifest file directly in `dir` (not recursive; hidden and
/// editor temp files are ignored). Unreadable documents become skips; only
/// a directory that cannot be listed is an error.
pub fn load_dir(dir: &Path) -> io::Result<Snapshot> {
    let mut files: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_manifest(p))
        .collect();
    files.sort();
    let mut snap = Snapshot::default();
    for file in files {
        let name = file.display().to_string();
        match fs::read_to_string(&file) {
            Ok(text) => parse_documents(&name, &text, &mut snap),
            // A file removed between listing and reading is not an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => snap.skips.push(unparsable(&name, &e.to_string())),
        }
    }
    Ok(snap)
}

fn is_manifest(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// Adds the Services and EndpointSlices found in `text` to `snap`.
pub fn parse_documents(file: &str, text: &str, snap: &mut Snapshot) {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let where_ = format!("{file}#{i}");
        match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => {} // empty document, e.g. a trailing `---`
            Ok(value) => add_object(&where_, value, snap),
            Err(e) => {
                snap.skips.push(unparsable(&where_, &e.to_string()));
                // After a syntax error the rest of the stream is unreliable.
                break;
            }
        }
    }
}

fn add_object(where_: &str, value: serde_yaml::Value, snap: &mut Snapshot) {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("");
    match (api_version, kind) {
        ("v1", "Service") => match serde_yaml::from_value::<Service>(value) {
            Ok(mut svc) => {
                strip::service(&mut svc);
                snap.services.push(svc.into())
            }
            Err(e) => snap.skips.push(unparsable(where_, &e.to_string())),
        },
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            match serde_yaml::from_value::<EndpointSlice>(value) {
                Ok(mut slice) => {
                    strip::endpoint_slice(&mut slice);
                    snap.slices.push(slice.into())
                }
                Err(e) => snap.skips.push(unparsable(where_, &e.to_string())),
            }
        }
        (_, "List") | (_, "ServiceList") | (_, "EndpointSliceList") => {
            let items = value
                .get("items")
                .and_then(|i| i.as_sequence())
                .cloned()
                .unwrap_or_default();
            for (j, item) in items.into_iter().enumerate() {
                add_object(&format!("{where_}.items[{j}]"), item, snap);
            }
        }
        _ => snap.skips.push(Skip {
            kind: "Manifest",
            object: where_.to_string(),
            reason: SkipReason::UnsupportedKind,
            detail: format!("{api_version}/{kind}"),
        }),
    }
}

fn unparsable(where_: &str, detail: &str) -> Skip {
    Skip {
        kind: "Manifest",
        object: where_.to_string(),
        reason: SkipReason::Unparsable,
        detail: detail.to_string(),
    }
}
