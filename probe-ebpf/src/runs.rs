//! One run counter per program that no other figure counts (see
//! probe_common::runs): the agent prices its programs from these.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use probe_common::runs::RUNS_SLOTS;

#[map(name = "PROG_RUNS")]
static PROG_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RUNS_SLOTS, 0);

/// Counts one run of the program in `slot` (`probe_common::runs::slot`).
#[inline(always)]
pub fn count(slot: u32) {
    if let Some(n) = PROG_RUNS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and our programs
        // do not nest on one CPU.
        unsafe { *n += 1 };
    }
}
