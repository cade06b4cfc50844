//! One run counter per program that no other figure counts (see
//! probe_common::runs): the agent prices its programs from these.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use probe_common::runs::RUNS_SLOTS;

#[map(name = "PROG_RUNS")]
static PROG_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RUNS_SLOTS, 0);

/// Counts one run of the program in `slot` (`probe_common::runs::slot`).
#[inline(always)]
pub fn count(slot: u32) {
    crate::maps::bump(&PROG_RUNS, slot);
}
