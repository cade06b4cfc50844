//! Map helpers shared by every KPI family, one per pattern (as
//! libbpf-tools keeps them), so no copy drifts from the others.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};

/// `-EEXIST`: another CPU created the entry between our lookup and insert.
const EEXIST: i64 = 17;

/// What [`upsert`] did.
pub enum Upserted {
    Updated,
    /// The entry is new (first use of a key: callers may record more).
    Created,
    /// The map is full: nothing was recorded.
    Full,
}

/// Adds to `key`'s value on this CPU: `update` on the existing value, or
/// a new entry holding `first`. In a per-CPU hash an entry created by
/// another CPU exists on this CPU too, zeroed: that race ends in `update`.
#[inline(always)]
pub fn upsert<K, V>(
    map: &PerCpuHashMap<K, V>,
    key: &K,
    first: V,
    update: impl Fn(&mut V),
) -> Upserted {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: a per-CPU value: only this CPU writes it, and our
        // programs do not nest on one CPU.
        update(unsafe { &mut *v });
        return Upserted::Updated;
    }
    match map.insert(key, first, BPF_NOEXIST as u64) {
        Ok(()) => Upserted::Created,
        Err(err) if err as i64 == -EEXIST => match map.get_ptr_mut(key) {
            Some(v) => {
                // SAFETY: as above.
                update(unsafe { &mut *v });
                Upserted::Updated
            }
            None => Upserted::Full,
        },
        Err(_) => Upserted::Full,
    }
}

/// Stores `value` for `key` in a (shared) hash: in place when the entry
/// exists, else a new entry. Returns false when the map is full.
#[inline(always)]
pub fn store<K, V: Copy>(map: &HashMap<K, V>, key: &K, value: V) -> bool {
    if let Some(slot) = map.get_ptr_mut(key) {
        // SAFETY: a plain store of a Copy value into the map's memory; a
        // racing writer on another CPU can only store a value of its own.
        unsafe { *slot = value };
        return true;
    }
    match map.insert(key, value, BPF_NOEXIST as u64) {
        Ok(()) => true,
        Err(err) => err as i64 == -EEXIST,
    }
}

/// Inserts `value` for `key` unless an entry exists (then it is kept).
/// Returns false when the map is full.
#[inline(always)]
pub fn insert_new<K, V>(map: &HashMap<K, V>, key: &K, value: V) -> bool {
    match map.insert(key, value, BPF_NOEXIST as u64) {
        Ok(()) => true,
        Err(err) => err as i64 == -EEXIST,
    }
}

/// Adds one to a per-CPU counter (loss counters, run counts).
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(n) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: only this CPU writes it.
        unsafe { *n += 1 };
    }
}
