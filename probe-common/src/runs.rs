//! Run counts of the programs whose runs no other figure gives, so the
//! agent can price its programs without keeping CAP_SYS_ADMIN for the
//! kernel's run-time statistics: runs this interval x the cost per run
//! measured once at start-up. `sys_enter`/`sys_exit` run once per system
//! call (counted exactly in the syscall maps) and `sched_switch` once per
//! context switch (`ctxt` in /proc/stat), so they need no slot here.

/// Name of the per-CPU array of run counts, indexed by [`COUNTED`] order.
pub const RUNS_MAP: &str = "PROG_RUNS";

/// The programs with a slot, in slot order.
pub const COUNTED: [&str; 12] = [
    "sched_wakeup",
    "sched_wakeup_new",
    "sched_process_exec",
    "sched_process_exit",
    "sock_send_length",
    "sock_recv_length",
    "tcp_probe",
    "inet_sock_set_state",
    "tcp_retransmit_skb",
    "tcp_send_reset",
    "tcp_receive_reset",
    "tcp_destroy_sock",
];

/// Slots of the array (a power of two, at least `COUNTED.len()`).
pub const RUNS_SLOTS: u32 = 16;

const _: () = assert!(COUNTED.len() as u32 <= RUNS_SLOTS);

/// The slot of a program named in [`COUNTED`] (compile-time lookups in the
/// kernel programs; a name not in the list fails the build).
pub const fn slot(name: &str) -> u32 {
    let mut i = 0;
    while i < COUNTED.len() {
        if eq(COUNTED[i].as_bytes(), name.as_bytes()) {
            return i as u32;
        }
        i += 1;
    }
    panic!("program without a run-count slot")
}

const fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
