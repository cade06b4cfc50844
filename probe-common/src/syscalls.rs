//! System-call KPIs: the maps the `sys_enter`/`sys_exit` programs fill.
//!
//! One per-CPU hash, `SYSCALL_STATS`, holds everything, keyed by
//! (tgid, syscall nr, slot). A slot is either a latency bucket
//! ([`crate::hist`]) or an errno. Keeping the histogram sparse in the key,
//! rather than a fixed array in the value, keeps the map small on hosts with
//! many CPUs (a per-CPU value is copied per CPU) and costs one lookup per
//! system call exit for count, latency sum, max and histogram together.

use crate::hist;

/// Name of the per-CPU hash of [`SyscallKey`] -> [`SyscallValue`].
pub const STATS_MAP: &str = "SYSCALL_STATS";
/// Name of the per-CPU array (one slot) of [`SyscallCurrent`]: the call in
/// flight on each CPU.
pub const CURRENT_MAP: &str = "SYSCALL_CUR";
/// Name of the hash of thread id -> [`SyscallStart`]: calls whose thread
/// was switched out while in the kernel.
pub const START_MAP: &str = "SYSCALL_START";
/// Name of the array (one slot) holding the latency sampling mask: a call
/// is timed when `(per-CPU call sequence & mask) == 0`; 0 times every call.
/// The agent raises it to shed load when over its overhead budget; every
/// call is still counted.
pub const CONTROL_MAP: &str = "SYSCALL_CTL";
/// `start_ns` of a call counted but not timed (sampled out).
pub const UNTIMED: u64 = 1;
/// `start_ns` of a call entered while the detail was off ([`DETAIL_OFF`]).
pub const SHED: u64 = 2;
/// Slot counting calls (and their errors) that were not timed.
pub const SLOT_UNTIMED: u16 = 0x7ffe;

/// Name of the hash of tgid -> [`crate::Comm`].
pub const COMM_MAP: &str = "PROC_COMM";
/// Name of the per-CPU array of loss counters, indexed by [`Counter`].
pub const COUNTER_MAP: &str = "SYSCALL_CNT";

/// Default bound of [`STATS_MAP`]. A process typically touches a few dozen
/// system calls in a handful of latency buckets each.
pub const STATS_MAX_ENTRIES: u32 = 32768;
/// Default bound of [`START_MAP`]: live threads that were ever switched out
/// inside a system call.
pub const START_MAX_ENTRIES: u32 = 65536;
/// Default bound of [`COMM_MAP`]: processes seen since their last reclaim.
pub const COMM_MAX_ENTRIES: u32 = 16384;

/// Highest syscall number tracked. Numbers above it (x32's `__X32_SYSCALL_BIT`
/// calls, or -1 for an invalid call) are counted in [`Counter::BadNr`].
pub const MAX_NR: u64 = 1023;

/// Slots `SLOT_ERRNO | errno` count failed calls by errno (1..=4095).
pub const SLOT_ERRNO: u16 = 0x8000;
/// The kernel returns errors as -errno with errno in 1..=4095 (`MAX_ERRNO`,
/// include/linux/err.h); every other value, however large, is a result.
pub const MAX_ERRNO: u64 = 4095;

const _: () = assert!(hist::BUCKETS < SLOT_ERRNO as u32);

/// Key of [`STATS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    pub tgid: u32,
    pub nr: u16,
    pub slot: u16,
}

/// Value of [`STATS_MAP`], per CPU, cumulative since the entry was created.
/// A latency slot counts calls and, of those, failures (so that one read
/// always sees count and errors of the same calls), and of the failures
/// those with `EAGAIN`; an errno slot only uses `count`, for the breakdown
/// by every other errno.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallValue {
    pub count: u64,
    pub errors: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    /// Calls that failed with `EAGAIN`: an event loop's every read ends
    /// with one, so they are counted here rather than in an errno slot of
    /// their own, which would double the map work of those calls.
    pub eagain: u64,
}

/// `EAGAIN` (include/uapi/asm-generic/errno-base.h; the same number on
/// x86_64 and arm64).
pub const EAGAIN: u16 = 11;

/// The call in flight on one CPU: written at `sys_enter`, read at
/// `sys_exit` when the same thread is still on that CPU (most calls), or
/// moved to [`START_MAP`] when the thread is switched out before it exits.
/// `tid == 0` means the slot is empty (thread 0 is the idle task, which
/// makes no system calls).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallCurrent {
    pub tid: u32,
    pub nr: u32,
    /// Entry time, or [`UNTIMED`].
    pub start_ns: u64,
}

/// Value of [`START_MAP`]: when the thread's current call entered, and which.
/// `start_ns == 0` means none: the entry outlives the call until the thread
/// exits, so that switching out mid-call costs a store, not an allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallStart {
    pub start_ns: u64,
    pub nr: u32,
    pub _pad: u32,
}

/// Indexes of [`COUNTER_MAP`]: everything the kernel side could not record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A new (tgid, nr, slot) could not be inserted: `SYSCALL_STATS` full.
    /// The call is lost.
    StatsFull = 0,
    /// A thread's start could not be recorded: `SYSCALL_START` full. Its
    /// calls then also count in [`Counter::NoStart`].
    StartFull = 1,
    /// A process's name could not be recorded: `PROC_COMM` full.
    CommFull = 2,
    /// A call with a number above [`MAX_NR`] (or -1): not recorded.
    BadNr = 3,
    /// A call whose entry was not seen: in flight when the agent attached,
    /// or its thread's start could not be stored. Not recorded.
    NoStart = 4,
    /// A call counted here alone: the overhead budget switched the
    /// per-(process, system call) detail off ([`DETAIL_OFF`]).
    Shed = 5,
}

/// Number of counters in [`COUNTER_MAP`].
pub const COUNTERS: u32 = 6;

/// The bit of the control word (`SYSCALL_CTL`, below the sampling mask)
/// that switches the per-(process, system call) detail off: each call is
/// then only counted in [`Counter::Shed`], and `sys_enter` keeps only what
/// the socket programs need (the call's buffer).
pub const DETAIL_OFF: u32 = 1 << 31;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for SyscallKey {}
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for SyscallValue {}
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for SyscallStart {}
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for SyscallCurrent {}
}

const _: () = assert!(core::mem::size_of::<SyscallKey>() == 8);
const _: () = assert!(core::mem::size_of::<SyscallValue>() == 40);
const _: () = assert!(core::mem::size_of::<SyscallStart>() == 16);
const _: () = assert!(core::mem::size_of::<SyscallCurrent>() == 16);
const _: () = assert!((SLOT_UNTIMED as u32) > hist::BUCKETS && SLOT_UNTIMED < SLOT_ERRNO);
