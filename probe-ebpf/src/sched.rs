//! Scheduler hooks shared by the KPI families (raw tracepoints from
//! include/trace/events/sched.h). One program per hook: attaching one per
//! family would pay the tracepoint's dispatch cost once per family.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};

use probe_common::runs::slot;

use crate::{cpu, runs, syscalls, tls};

/// `sched_switch(preempt, prev, next, prev_state)`: runs on the switching
/// CPU with `current` still `prev`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    syscalls::on_switch_out(pid_tgid as u32);
    cpu::on_switch(&ctx, pid_tgid);
    0
}

/// `sched_wakeup(p)`: `p` became runnable (runs in the waker's context).
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> i32 {
    runs::count(const { slot("sched_wakeup") });
    cpu::on_wakeup(ctx.arg(0));
    0
}

/// `sched_wakeup_new(p)`: a new task became runnable for the first time.
#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: RawTracePointContext) -> i32 {
    runs::count(const { slot("sched_wakeup_new") });
    cpu::on_wakeup(ctx.arg(0));
    0
}

/// `sched_process_exec(p, old_pid, bprm)`: runs in the exec'ing task after
/// `begin_new_exec()` set its new comm.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    runs::count(const { slot("sched_process_exec") });
    syscalls::on_exec((bpf_get_current_pid_tgid() >> 32) as u32);
    0
}

/// `sched_process_exit(p)`: fires in `do_exit()` for every exiting thread,
/// in its own context.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    runs::count(const { slot("sched_process_exit") });
    let pid_tgid = bpf_get_current_pid_tgid();
    syscalls::on_thread_exit(pid_tgid as u32, (pid_tgid >> 32) as u32);
    cpu::on_thread_exit();
    tls::on_thread_exit(pid_tgid as u32);
    0
}
