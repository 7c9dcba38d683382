//! Frontend lookup and backend selection, shared by every hook.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use proxy_common::{counters, BackendValue, ServiceKey, ServiceValue};

use crate::maps::{BACKENDS, SERVICES};

/// What the service map says about a destination.
pub enum Lookup {
    /// Not a frontend: leave the socket alone.
    NotAService,
    /// A frontend without endpoints: refuse.
    NoEndpoints,
    /// A frontend and the backend picked for this connection.
    Backend {
        backend: BackendValue,
        master: ServiceValue,
    },
}

/// Picks a backend for a connection to `addr_be:port_be/proto`, uniformly at
/// random among the frontend's slots.
///
/// Err carries a counter reason; callers fail open on it.
#[inline(always)]
pub fn select(addr_be: u32, port_be: u16, proto: u8) -> Result<Lookup, u32> {
    let key = ServiceKey::master_raw(addr_be, port_be, proto);
    // SAFETY: the value is copied out at once; entries are replaced whole by
    // the agent, never edited in place.
    let Some(master) = (unsafe { SERVICES.get(key) }).copied() else {
        return Ok(Lookup::NotAService);
    };
    if master.count == 0 {
        return Ok(Lookup::NoEndpoints);
    }
    // Multiply-shift maps a 32-bit random number onto 0..count without a
    // division (no divide-by-zero path for the verifier to reject) and with
    // a bias below count/2^32.
    // SAFETY: helper without preconditions.
    let rand = unsafe { bpf_get_prandom_u32() };
    let pick = ((rand as u64 * master.count as u64) >> 32) as u16;
    let slot_key = ServiceKey::slot_raw(addr_be, port_be, proto, pick + 1);
    let Some(slot) = (unsafe { SERVICES.get(slot_key) }).copied() else {
        return Err(counters::ERR_SLOT_MISSING);
    };
    let Some(backend) = (unsafe { BACKENDS.get(slot.backend_id) }).copied() else {
        return Err(counters::ERR_BACKEND_MISSING);
    };
    Ok(Lookup::Backend { backend, master })
}
