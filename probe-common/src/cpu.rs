//! CPU KPIs: on-CPU time and run-queue latency, from the scheduler's
//! `sched_switch`, `sched_wakeup` and `sched_wakeup_new` events.

/// Name of the per-CPU hash of [`CpuKey`] -> [`CpuValue`]: on-CPU time.
pub const TIME_MAP: &str = "CPU_TIME";
/// Name of the per-CPU array (one slot) of [`SchedCurrent`].
pub const CURRENT_MAP: &str = "SCHED_CUR";
/// Name of the per-CPU hash of [`RunqKey`] -> [`RunqValue`]: run-queue latency.
pub const RUNQ_MAP: &str = "RUNQ_LAT";
/// Name of the control array: 1 at index 0 switches run-queue latency off.
pub const RUNQ_CONTROL_MAP: &str = "RUNQ_CTL";
/// Name of the hash of task pointer -> time it became runnable.
pub const WAKE_MAP: &str = "RUNQ_WAKE";
/// Name of the per-CPU array of loss counters, indexed by [`Counter`].
pub const COUNTER_MAP: &str = "CPU_CNT";
/// Name of the global holding `offsetof(struct task_struct, tgid)`, set by
/// the loader from the kernel's BTF (0: unknown).
pub const TGID_OFFSET_GLOBAL: &str = "TASK_TGID_OFF";
/// Name of the global that is 1 when the raw `sched_switch` tracepoint
/// passes `prev_state` as its fourth argument (Linux 5.18+), set by the
/// loader from the kernel's BTF.
pub const SWITCH_STATE_ARG_GLOBAL: &str = "SWITCH_STATE_ARG";
/// Name of the global holding `offsetof(struct task_struct, __state)`
/// (`state` before 5.14), from the kernel's BTF (0: unknown): where the
/// switch reads the outgoing task's state when the tracepoint does not
/// pass it.
pub const STATE_OFFSET_GLOBAL: &str = "TASK_STATE_OFF";

/// Default bound of [`TIME_MAP`]: (process, cgroup) pairs that ran.
pub const TIME_MAX_ENTRIES: u32 = 16384;
/// Default bound of [`RUNQ_MAP`]: (process, latency bucket) pairs.
pub const RUNQ_MAX_ENTRIES: u32 = 32768;
/// Default bound of [`WAKE_MAP`]: live threads that were ever runnable.
pub const WAKE_MAX_ENTRIES: u32 = 65536;

/// Key of [`TIME_MAP`]: a process in a cgroup (cgroup v2 id, the inode
/// number of its directory).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuKey {
    pub tgid: u32,
    pub _pad: u32,
    pub cgroup: u64,
}

/// Value of [`TIME_MAP`], per CPU, cumulative.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuValue {
    /// On-CPU time of runs that ended (switched out), in ns.
    pub run_ns: u64,
    /// Runs that ended.
    pub runs: u64,
}

/// What runs on one CPU now: since when, and which process (0 for idle or
/// unknown). The agent adds `now - in_ns` for runs not yet ended, so a
/// process that never leaves its CPU is still counted every interval.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedCurrent {
    pub in_ns: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Key of [`RUNQ_MAP`]: a process and a latency bucket ([`crate::hist`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunqKey {
    pub tgid: u32,
    pub bucket: u32,
}

/// Value of [`RUNQ_MAP`], per CPU, cumulative.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqValue {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
}

/// Indexes of [`COUNTER_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A new (process, cgroup) could not be inserted: `CPU_TIME` full. The run is lost.
    TimeFull = 0,
    /// A new (process, bucket) could not be inserted: `RUNQ_LAT` full.
    RunqFull = 1,
    /// A wakeup could not be stored: `RUNQ_WAKE` full.
    WakeFull = 2,
}

/// Number of counters in [`COUNTER_MAP`].
pub const COUNTERS: u32 = 3;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for CpuKey {}
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for CpuValue {}
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for SchedCurrent {}
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for RunqKey {}
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for RunqValue {}
}

const _: () = assert!(core::mem::size_of::<CpuKey>() == 16);
const _: () = assert!(core::mem::size_of::<CpuValue>() == 16);
const _: () = assert!(core::mem::size_of::<SchedCurrent>() == 16);
const _: () = assert!(core::mem::size_of::<RunqKey>() == 8);
const _: () = assert!(core::mem::size_of::<RunqValue>() == 24);
