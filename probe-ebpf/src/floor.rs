//! Empty programs on the same hooks as the system-call programs. The
//! benchmark attaches them to measure the floor: the cost any syscall
//! tracer pays because an attached `sys_enter`/`sys_exit` moves every system
//! call onto the kernel's slow path. The agent never attaches them.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::raw_tracepoint, programs::RawTracePointContext};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_sys_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

/// The floor of any syscall *latency* tracer: read the clock at entry and
/// at exit and nothing else (the result is discarded).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_clk_enter(_ctx: RawTracePointContext) -> i32 {
    let t = unsafe { bpf_ktime_get_ns() };
    // Depend on the clock so the call cannot be dropped; always 0.
    (t >> 63) as i32 & 0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_clk_exit(_ctx: RawTracePointContext) -> i32 {
    let t = unsafe { bpf_ktime_get_ns() };
    (t >> 63) as i32 & 0
}
