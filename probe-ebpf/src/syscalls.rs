//! System-call latency, count and errors per (process, system call).
//!
//! Hooks (all raw tracepoints, no tracefs needed, Linux 4.17+):
//! - `sys_enter(regs, id)` and `sys_exit(regs, ret)`
//!   (include/trace/events/syscalls.h): the start time of the thread's call
//!   goes into `SYSCALL_START`, and on exit one `SYSCALL_STATS` slot gets the
//!   count, latency sum and max, keyed by the latency bucket; failed calls
//!   also count in an errno slot.
//! - `sched_process_exit(task)` (include/trace/events/sched.h): fires in
//!   `do_exit()` for every exiting thread, in its own context; it removes the
//!   thread's start entry so the map holds live threads only.
//! - `sched_process_exec(task, old_pid, bprm)`: records the new command
//!   name, so a forked child that execs is named after what it runs.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};
use probe_common::{
    Comm,
    hist::bucket_of,
    syscalls::{
        COMM_MAX_ENTRIES, Counter, MAX_ERRNO, MAX_NR, SLOT_ERRNO, START_MAX_ENTRIES,
        STATS_MAX_ENTRIES, SyscallKey, SyscallStart, SyscallValue,
    },
};

use crate::counters::bump;

const EEXIST: i64 = 17;

#[map(name = "SYSCALL_STATS")]
static SYSCALL_STATS: PerCpuHashMap<SyscallKey, SyscallValue> =
    PerCpuHashMap::with_max_entries(STATS_MAX_ENTRIES, 0);

#[map(name = "SYSCALL_START")]
static SYSCALL_START: HashMap<u32, SyscallStart> = HashMap::with_max_entries(START_MAX_ENTRIES, 0);

#[map(name = "PROC_COMM")]
static PROC_COMM: HashMap<u32, Comm> = HashMap::with_max_entries(COMM_MAX_ENTRIES, 0);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    try_sys_enter(&ctx);
    0
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) {
    let id: i64 = ctx.arg(1);
    if id < 0 || id as u64 > MAX_NR {
        // Counted at exit, where every call is seen once.
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    // The entry outlives the call: updating it in place is a lookup and two
    // stores, where delete-on-exit and insert-on-enter would allocate.
    match SYSCALL_START.get_ptr_mut(tid) {
        Some(start) => unsafe {
            (*start).start_ns = now;
            (*start).nr = id as u32;
        },
        None => {
            let start = SyscallStart {
                start_ns: now,
                nr: id as u32,
                _pad: 0,
            };
            if let Err(err) = SYSCALL_START.insert(tid, start, BPF_NOEXIST as u64)
                && err as i64 != -EEXIST
            {
                bump(Counter::StartFull);
            }
        }
    }
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    try_sys_exit(&ctx);
    0
}

#[inline(always)]
fn try_sys_exit(ctx: &RawTracePointContext) {
    let ret: i64 = ctx.arg(1);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let now = unsafe { bpf_ktime_get_ns() };

    let Some(start) = SYSCALL_START.get_ptr_mut(tid) else {
        // Entered before the agent attached, or the start map was full.
        bump(Counter::NoStart);
        return;
    };
    let (start_ns, nr) = unsafe { ((*start).start_ns, (*start).nr) };
    if start_ns == 0 {
        bump(Counter::NoStart);
        return;
    }
    unsafe { (*start).start_ns = 0 };
    if nr as u64 > MAX_NR {
        bump(Counter::BadNr);
        return;
    }
    let delta = now.saturating_sub(start_ns);
    let key = SyscallKey {
        tgid,
        nr: nr as u16,
        slot: bucket_of(delta) as u16,
    };
    add(&key, delta);

    if ret < 0 && ret.unsigned_abs() <= MAX_ERRNO {
        let key = SyscallKey {
            slot: SLOT_ERRNO | ret.unsigned_abs() as u16,
            ..key
        };
        add(&key, 0);
    }
}

/// Adds one call of `delta_ns` to `key`'s per-CPU slot, creating it if new.
#[inline(always)]
fn add(key: &SyscallKey, delta_ns: u64) {
    if let Some(value) = SYSCALL_STATS.get_ptr_mut(key) {
        unsafe { update(value, delta_ns) };
        return;
    }
    let first = SyscallValue {
        count: 1,
        sum_ns: delta_ns,
        max_ns: delta_ns,
    };
    match SYSCALL_STATS.insert(key, first, BPF_NOEXIST as u64) {
        Ok(()) => remember_comm(key.tgid),
        // Another CPU created it between our lookup and insert; our CPU's
        // copy is zero and now exists.
        Err(err) if err as i64 == -EEXIST => match SYSCALL_STATS.get_ptr_mut(key) {
            Some(value) => unsafe { update(value, delta_ns) },
            None => bump(Counter::StatsFull),
        },
        Err(_) => bump(Counter::StatsFull),
    }
}

#[inline(always)]
unsafe fn update(value: *mut SyscallValue, delta_ns: u64) {
    // Per-CPU value: only this CPU writes it, and programs do not nest here.
    unsafe {
        (*value).count += 1;
        (*value).sum_ns += delta_ns;
        if delta_ns > (*value).max_ns {
            (*value).max_ns = delta_ns;
        }
    }
}

/// Records the process's name the first time it is seen (rare path: only
/// when a new stats slot is created).
#[inline(always)]
fn remember_comm(tgid: u32) {
    let Ok(bytes) = bpf_get_current_comm() else {
        return;
    };
    if let Err(err) = PROC_COMM.insert(tgid, Comm { bytes }, BPF_NOEXIST as u64)
        && err as i64 != -EEXIST
    {
        bump(Counter::CommFull);
    }
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    // Runs in the exec'ing task after begin_new_exec() set the new comm.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Ok(bytes) = bpf_get_current_comm()
        && PROC_COMM
            .insert(tgid, Comm { bytes }, BPF_ANY as u64)
            .is_err()
    {
        bump(Counter::CommFull);
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = SYSCALL_START.remove(tid);
    0
}
