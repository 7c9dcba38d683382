//! The datapath invariant: what the kernel programs rely on at every moment.
use proxy_common::ServiceKey;

use super::MapState;

/// Every master entry's slots 1..=count exist and name existing backends.
/// Returns the first violation found.
pub fn check_invariant(state: &MapState) -> Result<(), String> {
    for (key, master) in state.masters() {
        for slot in 1..=master.count {
            let slot_key = ServiceKey { slot, ..*key };
            let Some(value) = state.services.get(&slot_key) else {
                return Err(format!(
                    "{}:{}/{} count {} but slot {slot} missing",
                    key.ip(),
                    key.port(),
                    key.proto,
                    master.count
                ));
            };
            if !state.backends.contains_key(&value.backend_id) {
                return Err(format!(
                    "{}:{}/{} slot {slot} names missing backend {}",
                    key.ip(),
                    key.port(),
                    key.proto,
                    value.backend_id
                ));
            }
        }
    }
    Ok(())
}
