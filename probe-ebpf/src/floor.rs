//! Empty programs on the same hooks as the system-call programs. The
//! benchmark attaches them to measure the floor: the cost any syscall
//! tracer pays because an attached `sys_enter`/`sys_exit` moves every system
//! call onto the kernel's slow path. The agent never attaches them.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_sys_exit(_ctx: RawTracePointContext) -> i32 {
    0
}
