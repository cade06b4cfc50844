//! probe's kernel programs. Each KPI family has its own module; `sched`
//! holds the scheduler hooks that several families share.
#![no_std]
#![no_main]

mod cpu;
mod floor;
mod maps;
mod requests;
mod runs;
mod sched;
mod syscalls;
mod tcp;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: nothing in the programs may panic (no unchecked indexing,
    // no division by a variable), and the verifier would reject a loop.
    loop {}
}

// bpf_probe_read_kernel and bpf_get_current_task are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
