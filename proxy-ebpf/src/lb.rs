//! Frontend lookup and backend selection, shared by every hook.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use proxy_common::{
    counters, svc_flags, AffinityKey, AffinityValue, BackendValue, ServiceKey, ServiceValue,
};

use crate::{
    clock::now_s,
    counters::bump,
    maps::{AFFINITY, BACKENDS, SERVICES},
};

/// What the service map says about a destination.
pub enum Lookup {
    /// Not a frontend: leave the socket alone.
    NotAService,
    /// A frontend without endpoints: refuse.
    NoEndpoints { rev_nat_id: u16 },
    /// A frontend and the backend picked for this connection.
    Backend {
        backend_id: u32,
        backend: BackendValue,
        master: ServiceValue,
    },
}

/// Picks a backend for a socket connection to `addr_be:port_be/proto`: the
/// client's previous one when the frontend has session affinity and it is
/// still fresh, else uniformly at random among the frontend's slots.
/// `client` names the client for affinity (its netns cookie); it is only
/// called when the frontend has affinity.
///
/// Sockets are in-cluster clients: an `externalTrafficPolicy: Local`
/// frontend serves them from its in-cluster view (every endpoint of the
/// Service) when the agent wrote one, as kube-proxy does; without it they
/// get the node-local view, as before that view existed.
///
/// Err carries a counter reason; callers fail open on it.
#[inline(always)]
pub fn select(
    addr_be: u32,
    port_be: u16,
    proto: u8,
    client: impl FnOnce() -> u64,
) -> Result<Lookup, u32> {
    let mut key = ServiceKey::master_raw(addr_be, port_be, proto);
    // SAFETY: the value is copied out at once; entries are replaced whole by
    // the agent, never edited in place.
    let Some(mut master) = (unsafe { SERVICES.get(key) }).copied() else {
        return Ok(Lookup::NotAService);
    };
    if master.flags & svc_flags::ETP_LOCAL != 0 {
        let inner = key.in_cluster();
        // SAFETY: as above.
        if let Some(view) = unsafe { SERVICES.get(inner) }.copied() {
            key = inner;
            master = view;
        }
    }
    if master.count == 0 {
        return Ok(Lookup::NoEndpoints {
            rev_nat_id: master.rev_nat_id,
        });
    }
    let (backend_id, backend) = pick_in(key, &master, client)?;
    Ok(Lookup::Backend {
        backend_id,
        backend,
        master,
    })
}

/// A backend for a new connection of `client` to the frontend `master`
/// heads (its scope-0 view): the client's previous one while its affinity
/// is fresh (when the frontend has session affinity), else a random one.
/// `client` is only called when the frontend has affinity.
#[inline(always)]
pub fn pick_for(
    addr_be: u32,
    port_be: u16,
    proto: u8,
    master: &ServiceValue,
    client: impl FnOnce() -> u64,
) -> Result<(u32, BackendValue), u32> {
    pick_in(
        ServiceKey::master_raw(addr_be, port_be, proto),
        master,
        client,
    )
}

/// [`pick_for`] for the frontend view whose master key is `key` (any scope).
#[inline(always)]
fn pick_in(
    key: ServiceKey,
    master: &ServiceValue,
    client: impl FnOnce() -> u64,
) -> Result<(u32, BackendValue), u32> {
    if master.affinity_timeout_s == 0 {
        return pick(key, master);
    }
    let now = now_s();
    let aff = AffinityKey {
        client: client(),
        rev_nat_id: master.rev_nat_id as u32,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(prev) = unsafe { AFFINITY.get(aff) }.copied() {
        // wrapping: the clock may not have moved, never backwards.
        if now.wrapping_sub(prev.last_used_s) <= master.affinity_timeout_s {
            // The agent deletes entries whose backend left the frontend; a
            // backend gone from the map entirely is re-picked.
            if let Some(backend) = unsafe { BACKENDS.get(prev.backend_id) }.copied() {
                remember(aff, prev.backend_id, now);
                bump(counters::AFFINITY_HIT);
                return Ok((prev.backend_id, backend));
            }
        }
    }
    let (backend_id, backend) = pick(key, master)?;
    remember(aff, backend_id, now);
    Ok((backend_id, backend))
}

/// kube-proxy's affinity timeout counts from the client's last new
/// connection, so every use refreshes the entry.
#[inline(always)]
fn remember(key: AffinityKey, backend_id: u32, now: u32) {
    let value = AffinityValue {
        backend_id,
        last_used_s: now,
    };
    if AFFINITY.insert(key, value, 0).is_err() {
        bump(counters::ERR_AFFINITY_UPDATE);
    }
}

/// A uniformly random backend among the `count` slots of the frontend view
/// whose master key is `key`.
#[inline(always)]
fn pick(key: ServiceKey, master: &ServiceValue) -> Result<(u32, BackendValue), u32> {
    // Multiply-shift maps a 32-bit random number onto 0..count without a
    // division (no divide-by-zero path for the verifier to reject) and with
    // a bias below count/2^32.
    // SAFETY: helper without preconditions.
    let rand = unsafe { bpf_get_prandom_u32() };
    let idx = ((rand as u64 * master.count as u64) >> 32) as u16;
    let slot_key = key.with_slot(idx + 1);
    let Some(slot) = (unsafe { SERVICES.get(slot_key) }).copied() else {
        return Err(counters::ERR_SLOT_MISSING);
    };
    let Some(backend) = (unsafe { BACKENDS.get(slot.backend_id) }).copied() else {
        return Err(counters::ERR_BACKEND_MISSING);
    };
    Ok((slot.backend_id, backend))
}
