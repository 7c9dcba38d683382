//! The backends a new connection may get: the frontend view's slots
//! `1..=count`, each equally likely (`lb::pick`), so a backend's weight is
//! the number of slots that name it.
use proxy_common::{ServiceKey, ServiceValue, BACKEND_FLAG_LOCAL};

use super::{report::Candidate, Snapshot};

/// The candidates of the view `key` heads, in slot order, and the problems
/// a kernel lookup would hit (a missing slot or backend: it fails open).
pub(super) fn of(
    snap: &Snapshot,
    key: ServiceKey,
    master: &ServiceValue,
) -> (Vec<Candidate>, Vec<String>) {
    let mut out: Vec<Candidate> = Vec::new();
    let mut problems = Vec::new();
    for slot in 1..=master.count {
        let Some(value) = snap.maps.services.get(&key.with_slot(slot)) else {
            problems.push(format!(
                "slot {slot} is missing: a connection that picks it passes untouched"
            ));
            continue;
        };
        let id = value.backend_id;
        if let Some(c) = out.iter_mut().find(|c| c.backend_id == id) {
            c.weight += 1;
            continue;
        }
        let Some(be) = snap.maps.backends.get(&id) else {
            problems.push(format!(
                "slot {slot}: backend {id} is missing: a connection that picks it passes untouched"
            ));
            continue;
        };
        out.push(Candidate {
            backend: format!("{}:{}", be.ip(), be.port()),
            backend_id: id,
            local: be.state & BACKEND_FLAG_LOCAL != 0,
            weight: 1,
            of: master.count,
        });
    }
    (out, problems)
}
