//! On-CPU time per (process, cgroup) and run-queue latency per process.
//!
//! At every `sched_switch` the CPU's slot holds when the outgoing task was
//! switched in, so its run is `now - in_ns`: exact to the nanosecond, one
//! per-CPU hash update per switch. Run-queue latency is the time from
//! becoming runnable (a wakeup, or being preempted while still runnable) to
//! being switched in; it is computed when the task next switches out, in its
//! own context, so no field of another task is read for it.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use probe_common::{
    cpu::{
        COUNTERS, Counter, CpuKey, CpuValue, RUNQ_MAX_ENTRIES, RunqKey, RunqValue, SchedCurrent,
        TIME_MAX_ENTRIES, WAKE_MAX_ENTRIES,
    },
    hist::bucket_of,
};

use crate::maps::{self, Upserted};

/// `TASK_RUNNING` (include/linux/sched.h): `prev_state` of a preempted task.
const TASK_RUNNING: u32 = 0;
/// `TASK_DEAD`: `prev_state` of an exiting task's final switch.
const TASK_DEAD: u32 = 0x80;

/// `offsetof(struct task_struct, tgid)`, from the kernel's BTF, set by the
/// loader (0 when unknown: the running process is then not identified).
#[unsafe(no_mangle)]
static TASK_TGID_OFF: u32 = 0;

/// 1 when `sched_switch` passes `prev_state` as its fourth argument: added
/// in Linux 5.18 (commit fa2c3254d7cf). Before that the program must not
/// even read the argument: the kernel refuses to attach a raw tracepoint
/// program whose context reads go past the tracepoint's arguments, and
/// the verifier counts only the branch this constant leaves alive.
#[unsafe(no_mangle)]
static SWITCH_STATE_ARG: u32 = 0;

/// `offsetof(struct task_struct, __state)` (`state`, a long, before 5.14;
/// its low 32 bits on these little-endian targets), from the kernel's BTF,
/// for kernels without the argument (0: unknown).
#[unsafe(no_mangle)]
static TASK_STATE_OFF: u32 = 0;

#[map(name = "CPU_TIME")]
static CPU_TIME: PerCpuHashMap<CpuKey, CpuValue> =
    PerCpuHashMap::with_max_entries(TIME_MAX_ENTRIES, 0);

#[map(name = "SCHED_CUR")]
static SCHED_CUR: PerCpuArray<SchedCurrent> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "RUNQ_LAT")]
static RUNQ_LAT: PerCpuHashMap<RunqKey, RunqValue> =
    PerCpuHashMap::with_max_entries(RUNQ_MAX_ENTRIES, 0);

/// Set to 1 by the agent to switch run-queue latency off (its overhead
/// budget): wakeups are then not recorded and switches only count time.
#[map(name = "RUNQ_CTL")]
static RUNQ_CTL: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn runq_off() -> bool {
    RUNQ_CTL.get(0).is_some_and(|v| *v != 0)
}

#[map(name = "RUNQ_WAKE")]
static RUNQ_WAKE: HashMap<u64, u64> = HashMap::with_max_entries(WAKE_MAX_ENTRIES, 0);

#[map(name = "CPU_CNT")]
static CPU_CNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

#[inline(always)]
fn bump(reason: Counter) {
    maps::bump(&CPU_CNT, reason as u32);
}

/// Called from `sched_switch` with `current` = the outgoing task.
#[inline(always)]
pub fn on_switch(ctx: &RawTracePointContext, pid_tgid: u64) {
    let Some(cur) = SCHED_CUR.get_ptr_mut(0) else { return };
    let now = unsafe { bpf_ktime_get_ns() };
    let c = unsafe { *cur };
    let tgid = (pid_tgid >> 32) as u32;
    // Thread 0 is this CPU's idle task: idle time is not CPU use.
    if pid_tgid as u32 != 0 {
        let ran = c.in_ns != 0 && now > c.in_ns;
        if ran {
            let cgroup = unsafe { bpf_get_current_cgroup_id() };
            add_time(&CpuKey { tgid, _pad: 0, cgroup }, now - c.in_ns);
        }
        if !runq_off() {
            runq_switch_out(ctx, tgid, ran.then_some(c.in_ns), now);
        }
    }
    let next: u64 = ctx.arg(2);
    let off = unsafe { core::ptr::read_volatile(&TASK_TGID_OFF) } as u64;
    let next_tgid = if off != 0 && next != 0 {
        unsafe { bpf_probe_read_kernel((next + off) as *const u32) }.unwrap_or(0)
    } else {
        0
    };
    unsafe { *cur = SchedCurrent { in_ns: now, tgid: next_tgid, _pad: 0 } };
}

/// Run-queue latency at a switch: the outgoing task's run began at
/// `began` (if it ran): its wait was from its wakeup to then. If it is
/// still runnable (preempted), it waits again from `now`.
#[inline(always)]
fn runq_switch_out(ctx: &RawTracePointContext, tgid: u32, began: Option<u64>, now: u64) {
    let task = unsafe { bpf_get_current_task() };
    if let Some(began) = began
        && let Some(wake) = RUNQ_WAKE.get_ptr_mut(task)
    {
        let woke = unsafe { *wake };
        if woke != 0 && woke <= began {
            add_runq(tgid, began - woke);
        }
        unsafe { *wake = 0 };
    }
    let preempted = ctx.arg::<u64>(0) & 1 != 0;
    match prev_state(ctx, task) {
        // Its last switch: nothing will wake it again.
        Some(state) if state & TASK_DEAD != 0 => {
            let _ = RUNQ_WAKE.remove(task);
        }
        // Preempted (even between set_current_state() and sleeping): it
        // is still on the run queue, waiting from now.
        Some(TASK_RUNNING) => set_wake(task, now),
        _ if preempted => set_wake(task, now),
        _ => {}
    }
}

/// The outgoing task's state: the tracepoint's argument where it has one,
/// else read from the task (`task` is `current`, the outgoing task).
#[inline(always)]
fn prev_state(ctx: &RawTracePointContext, task: u64) -> Option<u32> {
    if unsafe { core::ptr::read_volatile(&SWITCH_STATE_ARG) } != 0 {
        return Some(ctx.arg::<u64>(3) as u32);
    }
    let off = unsafe { core::ptr::read_volatile(&TASK_STATE_OFF) } as u64;
    if off == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((task + off) as *const u32) }.ok()
}

/// Called from `sched_wakeup`/`sched_wakeup_new` with the woken task.
#[inline(always)]
pub fn on_wakeup(task: u64) {
    if runq_off() {
        return;
    }
    set_wake(task, unsafe { bpf_ktime_get_ns() });
}

/// Called from `sched_process_exit` in the exiting thread.
#[inline(always)]
pub fn on_thread_exit() {
    let task = unsafe { bpf_get_current_task() };
    let _ = RUNQ_WAKE.remove(task);
}

#[inline(always)]
fn set_wake(task: u64, now: u64) {
    // Entries stay until the thread exits, so a wakeup is usually a store.
    if !maps::store(&RUNQ_WAKE, &task, now) {
        bump(Counter::WakeFull);
    }
}

#[inline(always)]
fn add_time(key: &CpuKey, ns: u64) {
    let first = CpuValue { run_ns: ns, runs: 1 };
    if let Upserted::Full = maps::upsert(&CPU_TIME, key, first, |v| {
        v.run_ns += ns;
        v.runs += 1;
    }) {
        bump(Counter::TimeFull);
    }
}

#[inline(always)]
fn add_runq(tgid: u32, ns: u64) {
    let key = RunqKey { tgid, bucket: bucket_of(ns) };
    let first = RunqValue { count: 1, sum_ns: ns, max_ns: ns };
    if let Upserted::Full = maps::upsert(&RUNQ_LAT, &key, first, |v| {
        v.count += 1;
        v.sum_ns += ns;
        v.max_ns = v.max_ns.max(ns);
    }) {
        bump(Counter::RunqFull);
    }
}
