//! System-call latency, count and errors per (process, system call).
//!
//! Hooks: the raw tracepoints `sys_enter(regs, id)` and `sys_exit(regs, ret)`
//! (include/trace/events/syscalls.h, raw since Linux 4.17; no tracefs
//! needed). Enter writes the start time into this CPU's `SYSCALL_CUR` slot;
//! exit finds it there when the thread never left the CPU (the common case:
//! no hashing), or in `SYSCALL_START` when `sched_switch` moved it there
//! because the thread was switched out mid-call. Exit then adds the call to
//! one `SYSCALL_STATS` slot (count, errors, latency sum and max, keyed by
//! latency bucket); a failed call also counts in an errno slot. The
//! scheduler hooks that call into this module are in `sched.rs`.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use probe_common::{
    Comm,
    hist::bucket_of,
    syscalls::{
        COMM_MAX_ENTRIES, COUNTERS, Counter, DETAIL_OFF, EAGAIN, MAX_ERRNO, MAX_NR, SHED,
        SLOT_ERRNO, SLOT_UNTIMED, START_MAX_ENTRIES, STATS_MAX_ENTRIES, SyscallCurrent, SyscallKey,
        SyscallStart, SyscallValue, UNTIMED,
    },
};

use crate::maps::{self, Upserted};

#[map(name = "SYSCALL_STATS")]
static SYSCALL_STATS: PerCpuHashMap<SyscallKey, SyscallValue> =
    PerCpuHashMap::with_max_entries(STATS_MAX_ENTRIES, 0);

#[map(name = "SYSCALL_CUR")]
static SYSCALL_CUR: PerCpuArray<SyscallCurrent> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SYSCALL_CTL")]
static SYSCALL_CTL: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "SYSCALL_START")]
static SYSCALL_START: HashMap<u32, SyscallStart> = HashMap::with_max_entries(START_MAX_ENTRIES, 0);

#[map(name = "PROC_COMM")]
static PROC_COMM: HashMap<u32, Comm> = HashMap::with_max_entries(COMM_MAX_ENTRIES, 0);

#[map(name = "SYSCALL_CNT")]
static SYSCALL_CNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// Counts one event lost for `reason`.
#[inline(always)]
fn bump(reason: Counter) {
    maps::bump(&SYSCALL_CNT, reason as u32);
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    try_sys_enter(&ctx);
    0
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) {
    let id: i64 = ctx.arg(1);
    if id < 0 || id as u64 > MAX_NR {
        // Counted at exit, where the call is seen without a start.
        return;
    }
    let Some(cur) = SYSCALL_CUR.get_ptr_mut(0) else { return };
    let tid = bpf_get_current_pid_tgid() as u32;
    // Load shedding: time only calls whose sequence matches the mask the
    // agent set (0: all); the others are still counted, untimed. With the
    // detail off, the call is only counted at exit.
    let ctl = SYSCALL_CTL.get(0).copied().unwrap_or(0);
    let mask = ctl & !DETAIL_OFF;
    let start_ns = if ctl & DETAIL_OFF != 0 {
        SHED
    // Random, not every n-th: a periodic pattern of calls could otherwise
    // line up with the sampling and never be timed.
    // SAFETY: a helper with no arguments.
    } else if mask == 0 || unsafe { bpf_get_prandom_u32() } & mask == 0 {
        // SAFETY: a helper with no arguments.
        unsafe { bpf_ktime_get_ns() }
    } else {
        UNTIMED
    };
    // SAFETY: a per-CPU slot: only this CPU writes it, and no program of
    // ours runs nested inside another on one CPU.
    unsafe {
        (*cur).start_ns = start_ns;
        (*cur).nr = id as u32;
        (*cur).tid = tid;
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

    let Some((start_ns, nr)) = take_start(tid) else {
        // Entered before the agent attached, the start map was full, or
        // the number was out of range.
        bump(Counter::NoStart);
        return;
    };
    if start_ns == SHED {
        bump(Counter::Shed);
        return;
    }
    if nr as u64 > MAX_NR {
        bump(Counter::BadNr);
        return;
    }
    // -ERESTARTSYS..-ERESTART_RESTARTBLOCK (512..=516, include/linux/errno.h)
    // mean "interrupted, the kernel restarts the call": not a failure the
    // program sees. They still show in the errno breakdown.
    let errno = ret.unsigned_abs();
    let restarted = (512..=516).contains(&errno);
    let failed = ret < 0 && errno <= MAX_ERRNO && !restarted;
    let (delta, slot) = if start_ns == UNTIMED {
        (0, SLOT_UNTIMED)
    } else {
        let delta = unsafe { bpf_ktime_get_ns() }.saturating_sub(start_ns);
        (delta, bucket_of(delta) as u16)
    };
    let key = SyscallKey { tgid, nr: nr as u16, slot };
    let eagain = ret == -i64::from(EAGAIN);
    add(&key, delta, failed as u64, eagain as u64);
    if ret < 0 && errno <= MAX_ERRNO && !eagain {
        let key = SyscallKey { slot: SLOT_ERRNO | errno as u16, ..key };
        add(&key, 0, 0, 0);
    }
}

/// The start of `tid`'s call in flight, removed from wherever it was.
#[inline(always)]
fn take_start(tid: u32) -> Option<(u64, u32)> {
    if let Some(cur) = SYSCALL_CUR.get_ptr_mut(0) {
        let c = unsafe { *cur };
        if c.tid == tid && tid != 0 {
            unsafe { (*cur).tid = 0 };
            return Some((c.start_ns, c.nr));
        }
    }
    // The thread was switched out mid-call: sched_switch moved its start.
    // The entry stays (emptied) until the thread exits, so the next spill
    // is a store, not an allocation.
    let start = SYSCALL_START.get_ptr_mut(tid)?;
    let s = unsafe { *start };
    if s.start_ns == 0 {
        return None;
    }
    unsafe { (*start).start_ns = 0 };
    Some((s.start_ns, s.nr))
}

/// Adds one call of `delta_ns` (`errors` is 1 if it failed, `eagain` if
/// with EAGAIN) to `key`'s per-CPU slot, creating it if new.
#[inline(always)]
fn add(key: &SyscallKey, delta_ns: u64, errors: u64, eagain: u64) {
    let first = SyscallValue { count: 1, errors, sum_ns: delta_ns, max_ns: delta_ns, eagain };
    match maps::upsert(&SYSCALL_STATS, key, first, |v| {
        v.count += 1;
        v.errors += errors;
        v.eagain += eagain;
        v.sum_ns += delta_ns;
        v.max_ns = v.max_ns.max(delta_ns);
    }) {
        Upserted::Created => remember_comm(key.tgid),
        Upserted::Updated => {}
        Upserted::Full => bump(Counter::StatsFull),
    }
}

/// Records the process's name the first time it is seen (rare path: only
/// when a new stats slot is created).
#[inline(always)]
fn remember_comm(tgid: u32) {
    let Ok(bytes) = bpf_get_current_comm() else { return };
    if !maps::insert_new(&PROC_COMM, &tgid, Comm { bytes }) {
        bump(Counter::CommFull);
    }
}

/// Called from `sched_switch` for the outgoing thread `tid`: if it is
/// inside a system call, its start moves from the CPU slot to the hash.
#[inline(always)]
pub fn on_switch_out(tid: u32) {
    let Some(cur) = SYSCALL_CUR.get_ptr_mut(0) else { return };
    let c = unsafe { *cur };
    if c.tid == 0 || c.tid != tid {
        return;
    }
    unsafe { (*cur).tid = 0 };
    let start = SyscallStart { start_ns: c.start_ns, nr: c.nr, _pad: 0 };
    if !maps::store(&SYSCALL_START, &c.tid, start) {
        bump(Counter::StartFull);
    }
}

/// Called from `sched_process_exec`: the process's name is now its new image's.
#[inline(always)]
pub fn on_exec(tgid: u32) {
    if let Ok(bytes) = bpf_get_current_comm()
        && PROC_COMM.insert(tgid, Comm { bytes }, BPF_ANY as u64).is_err()
    {
        bump(Counter::CommFull);
    }
}

/// Called from `sched_process_exit`: a thread that dies inside a call
/// (`exit_group` never returns) leaves nothing behind; a process's main
/// thread leaves its final name (it may have renamed itself since its
/// first call), which the agent reports once /proc no longer has it.
#[inline(always)]
pub fn on_thread_exit(tid: u32, tgid: u32) {
    if tid == tgid
        && let Some(comm) = PROC_COMM.get_ptr_mut(tgid)
        && let Ok(bytes) = bpf_get_current_comm()
    {
        unsafe { (*comm).bytes = bytes };
    }
    if let Some(cur) = SYSCALL_CUR.get_ptr_mut(0)
        && unsafe { (*cur).tid } == tid
    {
        unsafe { (*cur).tid = 0 };
    }
    let _ = SYSCALL_START.remove(tid);
}
