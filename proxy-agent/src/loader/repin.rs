//! Puts the pins back when they disappear under a running agent: the
//! bpffs unmounted, the pin directory removed, a stray `bpfproxy cleanup`.
//!
//! The programs keep running meanwhile: the agent holds a descriptor of
//! every map (the loaded object) and of every link ([`Loaded::hold_links`]),
//! and the kernel keeps an object alive while anything refers to it. What
//! would be lost is the next restart: without pins a new agent finds
//! nothing to take over, so the links would go with this process and
//! sockets would be untranslated until the new agent attaches again. So
//! the same objects are pinned again under the same names, and a restart
//! stays seamless.
use std::{
    collections::BTreeSet,
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use proxy_common::maps as names;
use tracing::warn;

use super::{link_update, Loaded};

/// Why the pins cannot be put back (the agent keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum RepinError {
    #[error("the pin root is not usable (is a bpffs mounted there?)")]
    Bpffs(#[source] anyhow::Error),
    #[error("another agent has taken over the pin directory; not re-pinning")]
    Taken(#[source] anyhow::Error),
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Loaded {
    /// Opens our own descriptor of the links pinned as `pins` (names under
    /// the links directory). `tc`: these are all the TC links now, so held
    /// TC links not among them (devices no longer served) are let go.
    pub(super) fn hold_links(&mut self, pins: BTreeSet<String>, tc: bool) {
        if tc {
            self.held
                .retain(|name, _| !super::tc::is_tc_pin(name) || pins.contains(name));
        }
        for name in pins {
            match link_update::open_pinned(&self.links.join(&name)) {
                Ok(fd) => {
                    self.held.insert(name, fd);
                }
                Err(e) => {
                    warn!(link = %name, error = %e, "cannot hold the pinned link; it will not be re-pinned if its pin goes")
                }
            }
        }
    }

    /// Keeps the one-agent lock, to be taken again on a re-created pin
    /// directory.
    pub fn keep_lock(&mut self, lock: fs::File) {
        self.lock = Some(lock);
    }

    /// The pin directory (the versioned one, holding maps and `links`).
    fn pin_dir(&self) -> &Path {
        self.links.parent().unwrap_or(&self.links)
    }

    /// Every pin we should have, as a path.
    fn expected_pins(&self) -> Vec<PathBuf> {
        let dir = self.pin_dir();
        let maps = self.pinned_maps().map(|(name, _)| dir.join(name));
        let links = self.held.keys().chain(&self.markers);
        maps.chain(links.map(|n| self.links.join(n))).collect()
    }

    /// The object's maps that are pinned by name.
    fn pinned_maps(&self) -> impl Iterator<Item = (&str, &aya::maps::Map)> {
        self.ebpf
            .maps()
            .filter(|(name, _)| names::ALL.contains(name))
    }

    /// Pins again whatever of ours is no longer pinned; how many objects
    /// that was (0: all in place, the common case, a few stat calls).
    pub fn repin(&mut self) -> Result<usize, RepinError> {
        if self.expected_pins().iter().all(|p| p.exists()) {
            return Ok(0);
        }
        crate::bpffs::check_bpffs(&self.bpffs).map_err(RepinError::Bpffs)?;
        self.relock()?;
        let links = self.links.clone();
        fs::create_dir_all(&links).map_err(|source| RepinError::Pin {
            path: links.clone(),
            source,
        })?;
        let mut done = 0;
        let dir = self.pin_dir().to_path_buf();
        for (name, map) in self.pinned_maps() {
            let path = dir.join(name);
            if !path.exists() {
                map.pin(&path).map_err(|e| RepinError::Pin {
                    path: path.clone(),
                    source: io::Error::other(e),
                })?;
                done += 1;
            }
        }
        for (name, fd) in &self.held {
            let path = links.join(name);
            if !path.exists() {
                link_update::pin_fd(fd.as_fd(), &path)
                    .map_err(|source| RepinError::Pin { path, source })?;
                done += 1;
            }
        }
        for name in &self.markers {
            let path = links.join(name);
            if !path.exists() {
                fs::create_dir_all(&path).map_err(|source| RepinError::Pin { path, source })?;
                done += 1;
            }
        }
        Ok(done)
    }

    /// Takes the one-agent lock on the pin directory again when it is a
    /// new directory (the old one, which our lock is on, was removed).
    fn relock(&mut self) -> Result<(), RepinError> {
        let dir = self.pin_dir().to_path_buf();
        if dir.exists() && self.lock.as_ref().is_some_and(|l| same_file(l, &dir)) {
            return Ok(());
        }
        let lock = crate::bpffs::lock_pins(&dir).map_err(RepinError::Taken)?;
        self.lock = Some(lock);
        Ok(())
    }
}

/// Whether the open `file` is the file at `path`.
fn same_file(file: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
