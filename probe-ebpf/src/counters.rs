//! Loss counters: one per-CPU slot per reason, summed by the agent.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use probe_common::syscalls::{COUNTERS, Counter};

#[map(name = "SYSCALL_CNT")]
static SYSCALL_CNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// Counts one event lost for `reason`.
#[inline(always)]
pub fn bump(reason: Counter) {
    if let Some(slot) = SYSCALL_CNT.get_ptr_mut(reason as u32) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}
