//! HTTPS and other TLS through OpenSSL: uprobes on the libssl each process
//! maps (`SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex`,
//! `SSL_do_handshake`) give the plaintext of each read and write, and the
//! socket programs (`tcp.rs`) say which socket a call used.
//!
//! OpenSSL's socket BIO moves the ciphertext with `read`/`write` (or
//! `recv`/`send`) in the calling thread, inside the `SSL_*` call: the entry
//! probe stashes the call (per thread) and the socket program that runs
//! during it records its socket there (and per `SSL *`, for a later
//! `SSL_read` served from bytes OpenSSL already holds). The return probe
//! then feeds the plaintext to the request state machine of that socket,
//! as the socket programs do with a plaintext socket's bytes. A socket
//! seen inside such a call (the handshake included) is left to these
//! probes from then on.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use probe_common::tcp::Counter;

use crate::{maps, tcp};

/// What a thread is doing inside OpenSSL.
const READ: u32 = 1;
const WRITE: u32 = 2;
const HANDSHAKE: u32 = 3;

/// A thread's OpenSSL call in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    /// The `SSL *`.
    ssl: u64,
    /// The plaintext buffer.
    buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the byte count is written (0 for
    /// `SSL_read`/`SSL_write`, which return it).
    out: u64,
    /// The socket the call used (0: none yet).
    sk: u64,
    kind: u32,
    /// Calls nested inside this one (a handshake driven by another call).
    depth: u32,
}

/// Threads inside a probed OpenSSL call (removed at its return or the
/// thread's exit).
#[map(name = "SSL_CALLS")]
static SSL_CALLS: HashMap<u32, SslCall> =
    HashMap::with_max_entries(probe_common::tls::CALLS_MAX_ENTRIES, 0);

/// `SSL *` -> the socket it last used: for an `SSL_read` that returns bytes
/// an earlier call already received (no system call of its own).
#[map(name = "SSL_SOCKS")]
static SSL_SOCKS: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(probe_common::tls::SOCKS_MAX_ENTRIES, 0);

/// Stashes the current thread's call (read and write calls replace a
/// stale one; a handshake inside another call only nests).
#[inline(always)]
fn enter(kind: u32, ssl: u64, buf: u64, out: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if kind == HANDSHAKE
        && let Some(c) = SSL_CALLS.get_ptr_mut(&tid)
    {
        // SAFETY: this thread's own entry; only this thread writes it
        // (and the map deletes it only on this thread's return or exit).
        unsafe { (*c).depth += 1 };
        return;
    }
    let call = SslCall { ssl, buf, out, sk: 0, kind, depth: 0 };
    if !maps::store(&SSL_CALLS, &tid, call) {
        tcp::bump(Counter::SslCallsFull);
    }
}

/// Called by the socket programs: whether thread `tid` is inside a probed
/// OpenSSL call; if so the call notes that it uses socket `sk`.
#[inline(always)]
pub fn in_call(tid: u32, sk: u64) -> bool {
    let Some(c) = SSL_CALLS.get_ptr_mut(&tid) else { return false };
    // SAFETY: as in `enter`.
    let ssl = unsafe {
        (*c).sk = sk;
        (*c).ssl
    };
    // SAFETY: a u64 in the map's memory.
    if ssl != 0 && SSL_SOCKS.get_ptr(&ssl).is_none_or(|known| unsafe { *known } != sk) {
        // An LRU: it never refuses, it forgets the least used `SSL *`.
        let _ = SSL_SOCKS.insert(&ssl, &sk, 0);
    }
    true
}

/// The thread exits: a call it never returned from is forgotten.
#[inline(always)]
pub fn on_thread_exit(tid: u32) {
    let _ = SSL_CALLS.remove(&tid);
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`.
#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(READ, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), 0);
    0
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(READ, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), ctx.arg(3).unwrap_or(0));
    0
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(WRITE, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), 0);
    0
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(WRITE, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), ctx.arg(3).unwrap_or(0));
    0
}

/// `int SSL_do_handshake(SSL *s)` (`SSL_connect` and `SSL_accept` call
/// it): its system calls mark the socket as one OpenSSL serves.
#[uprobe]
pub fn ssl_do_handshake(ctx: ProbeContext) -> u32 {
    enter(HANDSHAKE, ctx.arg(0).unwrap_or(0), 0, 0);
    0
}

/// The return of any of the calls above: the plaintext it moved, if any,
/// goes to its socket's request state machine.
#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(c) = SSL_CALLS.get_ptr_mut(&tid) else { return 0 };
    // SAFETY: as in `enter`.
    let call = unsafe {
        if (*c).depth > 0 {
            (*c).depth -= 1;
            return 0;
        }
        *c
    };
    let _ = SSL_CALLS.remove(&tid);
    if call.kind == HANDSHAKE {
        return 0;
    }
    // Both flavours return an int: a byte count, or (`_ex`) 1 on success
    // with the count written to `out`.
    let ret = ctx.ret::<u64>() as i32;
    let len = if call.out != 0 {
        if ret != 1 {
            return 0;
        }
        // SAFETY: bpf_probe_read_user checks the address.
        unsafe { bpf_probe_read_user(call.out as *const u64) }.unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    if len == 0 {
        return 0;
    }
    let sk = match call.sk {
        0 => match SSL_SOCKS.get_ptr(&call.ssl) {
            // SAFETY: a u64 in the map's memory.
            Some(sk) => unsafe { *sk },
            None => {
                tcp::bump(Counter::SslNoSocket);
                return 0;
            }
        },
        sk => sk,
    };
    tcp::on_ssl(sk, call.kind == READ, call.buf, len);
    0
}
