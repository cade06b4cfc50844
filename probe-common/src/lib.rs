//! Types shared by probe's kernel programs (`probe-ebpf`) and its agent
//! (`probe-agent`): map keys and values exactly as they sit in kernel
//! memory, and the histogram layout both sides must agree on.
//!
//! Everything here is `#[repr(C)]`, `Copy`, fixed-width and padded by hand:
//! no `bool`, `Option` or enums cross the kernel boundary.
#![no_std]

pub mod cpu;
pub mod hist;
pub mod requests;
pub mod runs;
pub mod syscalls;
pub mod tcp;
pub mod tls;

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`, include/linux/sched.h).
pub const COMM_LEN: usize = 16;

/// A process's command name as the kernel saw it (`task_struct::comm`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comm {
    pub bytes: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
// every byte is initialized and any bit pattern is a valid value.
unsafe impl aya::Pod for Comm {}

const _: () = assert!(core::mem::size_of::<Comm>() == 16);
