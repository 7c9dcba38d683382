//! Reads Kubernetes manifests: several documents per file separated by
//! `---`, `kind: List` wrappers, `.yaml`, `.yml` and `.json` files.
use std::{
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    io::{self, Read},
    path::{Path, PathBuf},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize;

use super::Snapshot;
use crate::model::{ServiceObject, Skip, SkipReason, SliceObject};

/// Reads every manifest file directly in `dir` (not recursive; hidden and
/// editor temp files are ignored). Unreadable documents become skips; only
/// a directory that cannot be listed is an error.
pub fn load_dir(dir: &Path) -> io::Result<Snapshot> {
    Ok(load_dir_fingerprinted(dir)?.1)
}

/// [`load_dir`], with the [`fingerprint`] of exactly the bytes it parsed.
pub fn load_dir_fingerprinted(dir: &Path) -> io::Result<(u64, Snapshot)> {
    let mut snap = Snapshot::default();
    let mut hasher = DefaultHasher::new();
    for file in manifest_files(dir)? {
        let name = file.display().to_string();
        name.hash(&mut hasher);
        match fs::read(&file) {
            Ok(bytes) => {
                hasher.write(&bytes);
                hasher.write_u64(bytes.len() as u64);
                match std::str::from_utf8(&bytes) {
                    Ok(text) => parse_documents(&name, text, &mut snap),
                    Err(e) => snap.skips.push(unparsable(&name, &e.to_string())),
                }
            }
            // A file removed between listing and reading is not an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                hash_error(&e, &mut hasher);
                snap.skips.push(unparsable(&name, &e.to_string()));
            }
        }
    }
    Ok((hasher.finish(), snap))
}

/// A hash of the names and contents of the manifest files in `dir`, equal
/// to the one [`load_dir_fingerprinted`] returns for the same files: equal
/// fingerprints parse into equal snapshots, so a periodic re-read that finds
/// nothing changed needs neither to parse nor to keep a copy of the objects
/// to compare with. Files are streamed, never held whole.
pub fn fingerprint(dir: &Path) -> io::Result<u64> {
    let mut hasher = DefaultHasher::new();
    for file in manifest_files(dir)? {
        let name = file.display().to_string();
        name.hash(&mut hasher);
        if let Err(e) = stream_into(&file, &mut hasher) {
            if e.kind() != io::ErrorKind::NotFound {
                hash_error(&e, &mut hasher);
            }
        }
    }
    Ok(hasher.finish())
}

/// Feeds the bytes of `file`, then their count, into `hasher` (the hasher
/// is a stream: chunks hash as their concatenation would).
fn stream_into(file: &Path, hasher: &mut DefaultHasher) -> io::Result<()> {
    let mut f = fs::File::open(file)?;
    let mut buf = [0u8; 16 * 1024];
    let mut len = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.write(&buf[..n]);
        len += n as u64;
    }
    hasher.write_u64(len);
    Ok(())
}

fn hash_error(e: &io::Error, hasher: &mut DefaultHasher) {
    e.kind().hash(hasher);
}

/// The manifest files directly in `dir`, in name order.
fn manifest_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_manifest(p))
        .collect();
    files.sort();
    Ok(files)
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
            Ok(svc) => snap.services.push(ServiceObject::new(&svc).into()),
            Err(e) => snap.skips.push(unparsable(where_, &e.to_string())),
        },
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            match serde_yaml::from_value::<EndpointSlice>(value) {
                Ok(slice) => snap.slices.push(SliceObject::new(&slice).into()),
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

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::{fingerprint, load_dir_fingerprinted, parse_documents, Snapshot};

    /// A fresh directory of its own under the system's temp dir.
    fn temp_dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bpfproxy-manifest-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  \
        managedFields: [{manager: kubectl, operation: Update}]\n  \
        annotations: {note: x}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    #[test]
    fn the_fingerprint_follows_the_bytes_parsed() {
        let dir = temp_dir("fingerprint");
        fs::write(dir.join("a.yaml"), SERVICE).expect("write");
        fs::write(dir.join("b.json"), "{not yaml").expect("write");
        let (loaded, snap) = load_dir_fingerprinted(&dir).expect("load");
        assert_eq!(snap.services.len(), 1);
        assert_eq!(fingerprint(&dir).expect("fingerprint"), loaded);
        fs::write(
            dir.join("a.yaml"),
            SERVICE.replace("10.96.0.1", "10.96.0.2"),
        )
        .expect("write");
        let changed = fingerprint(&dir).expect("fingerprint");
        assert_ne!(changed, loaded);
        assert_eq!(load_dir_fingerprinted(&dir).expect("load").0, changed);
        fs::rename(dir.join("b.json"), dir.join("c.json")).expect("rename");
        assert_ne!(fingerprint(&dir).expect("fingerprint"), changed);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn manifest_objects_are_kept_parsed() {
        let mut snap = Snapshot::default();
        parse_documents("t.yaml", SERVICE, &mut snap);
        let key = snap.services[0].key();
        assert_eq!(key, Some(&("default".into(), "web".into())));
    }
}
