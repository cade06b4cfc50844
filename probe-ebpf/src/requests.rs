//! Application-level requests: which protocol a connection speaks, and
//! each request's method, route and outcome, from the first bytes of the
//! request and of its answer.
//!
//! The socket programs (`tcp.rs`) run inside the system call that moves
//! the bytes; that call's number and buffer argument are in the registers
//! the thread saved on entry (`struct pt_regs`, see [`call_buffer`]), so
//! the first [`PEEK_LEN`] bytes are read from user memory once per request
//! and once per answer, never per segment. No system-call program is
//! needed for it: the budget may detach those and keep requests whole.
//! Parsing is bounded loops over those bytes: HTTP/1.x request lines and
//! status lines, RESP (Redis) command names and error replies, and the
//! PostgreSQL frontend/backend messages (start-up, queries, errors).
//!
//! A route is normalized as it is hashed: a path segment that looks like
//! an identifier (all digits; 8 or more hex digits and dashes with a
//! digit; 20 or more characters with a digit) becomes `{id}`, and the query
//! string is left out. Its text is stored once per route id in
//! `ROUTE_NAMES`, for the agent to name it.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_probe_read_user_buf, bpf_task_pt_regs,
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use probe_common::requests::{
    PEEK_LEN, ROUTE_NAME_LEN, ROUTE_NAMES_MAX_ENTRIES, ROUTE_NONE, ROUTE_OTHER, RouteName, io,
    proto, status,
};

/// Per-CPU scratch: the bytes peeked at, and the route name being made.
#[repr(C)]
pub struct Scratch {
    pub buf: [u8; PEEK_LEN],
    pub name: RouteName,
    walk: Walk,
}

#[map(name = "REQ_SCRATCH")]
static REQ_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "ROUTE_NAMES")]
// LRU: a name the agent has read may be forgotten by the kernel (the agent
// keeps it); a full map never stops new routes from being named.
static ROUTE_NAMES: LruHashMap<u32, RouteName> =
    LruHashMap::with_max_entries(ROUTE_NAMES_MAX_ENTRIES, 0);

/// What a request's first bytes said.
pub struct Request {
    pub proto: u8,
    /// Index into `requests::METHODS` plus one (HTTP), else 0.
    pub method: u8,
    pub route: u32,
    /// Not a request: a start-up, authentication or termination message
    /// (PostgreSQL), which is not counted.
    pub skip: bool,
}

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

// The read and write family's numbers on the running architecture, and
// where `struct pt_regs` holds a call's number and its second argument
// (set by the loader from the kernel's BTF: x86_64 `orig_ax` and `si`,
// arm64 `syscallno` and `regs[1]`). Unset, no call matches.
#[unsafe(no_mangle)]
static NR_READ: u32 = u32::MAX;
#[unsafe(no_mangle)]
static NR_WRITE: u32 = u32::MAX;
#[unsafe(no_mangle)]
static NR_READV: u32 = u32::MAX;
#[unsafe(no_mangle)]
static NR_WRITEV: u32 = u32::MAX;
#[unsafe(no_mangle)]
static NR_RECVFROM: u32 = u32::MAX;
#[unsafe(no_mangle)]
static NR_SENDTO: u32 = u32::MAX;
#[unsafe(no_mangle)]
static NR_RECVMSG: u32 = u32::MAX;
#[unsafe(no_mangle)]
static NR_SENDMSG: u32 = u32::MAX;
#[unsafe(no_mangle)]
static REGS_NR_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static REGS_ARG1_OFF: u32 = u32::MAX;

#[inline(always)]
fn global(g: &u32) -> u32 {
    // SAFETY: a read of a loader-set constant (.rodata, frozen).
    unsafe { core::ptr::read_volatile(g) }
}

/// The buffer argument of the current thread's system call, if it is one
/// of the read or write family: what it is (`io::*`) and its address.
///
/// The registers a thread saved on entering the kernel stay at the top of
/// its kernel stack for the whole call (`bpf_task_pt_regs`, Linux 5.15+;
/// the socket programs need 6.3+), so the socket programs, which run
/// inside the call, read its number and buffer there, rather than each
/// system call stashing them at entry for the few that move socket bytes.
#[inline(always)]
fn call_buffer() -> Option<(u32, u64)> {
    let (nr_off, arg_off) = (global(&REGS_NR_OFF), global(&REGS_ARG1_OFF));
    if nr_off == u32::MAX || arg_off == u32::MAX {
        return None;
    }
    // SAFETY: helpers on the current task, which is running this program.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    // The number is an s32 on arm64 and the low half of a u64 on x86_64
    // (both little-endian).
    // SAFETY: bpf_probe_read_kernel checks the address.
    let nr: u32 =
        unsafe { bpf_probe_read_kernel((regs + u64::from(nr_off)) as *const u32) }.ok()?;
    let kind = if nr == global(&NR_READ)
        || nr == global(&NR_WRITE)
        || nr == global(&NR_RECVFROM)
        || nr == global(&NR_SENDTO)
    {
        io::BUF
    } else if nr == global(&NR_READV) || nr == global(&NR_WRITEV) {
        io::IOV
    } else if nr == global(&NR_RECVMSG) || nr == global(&NR_SENDMSG) {
        io::MSG
    } else {
        return None;
    };
    // SAFETY: as above.
    let arg: u64 =
        unsafe { bpf_probe_read_kernel((regs + u64::from(arg_off)) as *const u64) }.ok()?;
    Some((kind, arg))
}

/// The user address holding a call's first bytes, and how many it may hold.
#[inline(always)]
fn user_data(kind: u32, arg: u64) -> Option<(u64, u64)> {
    match kind {
        io::BUF => Some((arg, u64::MAX)),
        io::IOV => {
            // SAFETY: bpf_probe_read_user checks the address.
            let v: Iovec = unsafe { bpf_probe_read_user(arg as *const Iovec) }.ok()?;
            Some((v.base, v.len))
        }
        io::MSG => {
            // struct user_msghdr: msg_name (8), msg_namelen (4 + 4 padding),
            // then msg_iov at 16 (include/linux/socket.h).
            // SAFETY: as above.
            let iov: u64 = unsafe { bpf_probe_read_user((arg + 16) as *const u64) }.ok()?;
            // SAFETY: as above.
            let v: Iovec = unsafe { bpf_probe_read_user(iov as *const Iovec) }.ok()?;
            Some((v.base, v.len))
        }
        _ => None,
    }
}

/// Where a request's or answer's bytes are in user memory.
#[derive(Clone, Copy)]
pub enum Data {
    /// The buffer of the thread's current read or write call.
    Syscall,
    /// Plaintext at this address (OpenSSL's `SSL_read`/`SSL_write` buffer).
    User(u64),
}

impl Data {
    /// Reads the first bytes (at most [`PEEK_LEN`], at most `len`) into this
    /// CPU's scratch; returns it and how many were read.
    #[inline(always)]
    pub fn peek(self, len: u64) -> Option<(*mut Scratch, usize)> {
        let (addr, room) = match self {
            Data::Syscall => {
                let (kind, arg) = call_buffer()?;
                user_data(kind, arg)?
            }
            Data::User(addr) => (addr, u64::MAX),
        };
        let n = len.min(room).min(PEEK_LEN as u64) as usize;
        if n == 0 || n > PEEK_LEN {
            return None;
        }
        let s = REQ_SCRATCH.get_ptr_mut(0)?;
        // SAFETY: a per-CPU value, used by one program at a time on its CPU;
        // bpf_probe_read_user checks the source, and `n` is within the buffer.
        unsafe { bpf_probe_read_user_buf(addr as *const u8, &mut (&mut (*s).buf)[..n]) }.ok()?;
        Some((s, n))
    }
}

/// Whether the bytes start a TLS handshake record (content type 22,
/// version 3.x: SSL 3.0 to TLS 1.3 all say 3.0 to 3.4 on the record). A
/// connection's first bytes are its handshake; one made before the agent
/// started has no role, so no requests, whatever its bytes.
#[inline(always)]
pub fn tls_record(s: *mut Scratch, n: usize) -> bool {
    // SAFETY: the per-CPU scratch `peek` filled, used by this program alone.
    let b = unsafe { &(*s).buf };
    n >= 3 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04
}

#[inline(always)]
fn word(b: &[u8; PEEK_LEN]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

#[inline(always)]
const fn tag(t: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < t.len() {
        v |= (t[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

#[inline(always)]
const fn mask(n: usize) -> u64 {
    if n >= 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 }
}

/// An HTTP/1.x request line's method (index + 1) and where its target starts.
#[inline(always)]
fn http_method(b: &[u8; PEEK_LEN], n: usize) -> Option<(u8, usize)> {
    if n < 8 {
        return None;
    }
    let w = word(b);
    const M: [(&[u8], u8); 9] = [
        (b"GET ", 1),
        (b"POST ", 2),
        (b"PUT ", 3),
        (b"DELETE ", 4),
        (b"HEAD ", 5),
        (b"PATCH ", 6),
        (b"OPTIONS ", 7),
        (b"CONNECT ", 8),
        (b"TRACE ", 9),
    ];
    let mut i = 0;
    while i < M.len() {
        let (t, m) = M[i];
        if w & mask(t.len()) == tag(t) {
            return Some((m, t.len()));
        }
        i += 1;
    }
    None
}

/// The class (1 to 5) of an HTTP/1.x status line, if the bytes are one.
#[inline(always)]
pub fn http_status(b: &[u8; PEEK_LEN], n: usize) -> Option<u8> {
    if n < 12 || word(b) & mask(7) != tag(b"HTTP/1.") || b[8] != b' ' {
        return None;
    }
    let c = b[9];
    (b'1'..=b'5').contains(&c).then(|| c - b'0')
}

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// Appends a byte to the route name and its hash.
#[inline(always)]
fn push(name: &mut RouteName, h: &mut u32, c: u8) {
    let j = name.len as usize;
    if j < ROUTE_NAME_LEN {
        name.bytes[j] = c;
        name.len += 1;
        *h = (*h ^ u32::from(c)).wrapping_mul(FNV_PRIME);
    }
}

#[inline(always)]
fn finish(name: &RouteName, h: u32) -> u32 {
    if name.len == 0 {
        return ROUTE_NONE;
    }
    if h <= ROUTE_OTHER { h + 2 } else { h }
}

/// The state of a route being read, in map memory: the verifier then
/// checks `route_step` once (as a `bpf_loop` callback) instead of
/// following every path through every byte, which a path of 100 bytes
/// would multiply past its limit.
#[repr(C)]
pub struct Walk {
    /// The next byte, and the bytes read.
    i: u32,
    n: u32,
    /// The hash so far, and at the start of the current segment.
    h: u32,
    seg_h: u32,
    /// Where the current segment starts in the name.
    seg_at: u32,
    seg_len: u32,
    digits: u32,
    hexdash: u32,
    other: u32,
    /// `scan_step`'s mode and its byte.
    mode: u32,
    target: u32,
    /// Set when the bytes ended inside the target before the buffer was
    /// full: the send cut the request line, so the route is not known.
    cut: u32,
}

/// One byte of a request target: appended to the route, or, at a `/` or
/// the end, the segment just read is kept or made `{id}`. A `bpf_loop`
/// callback; returns 1 to stop.
unsafe extern "C" fn route_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = REQ_SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: the per-CPU scratch, used by the one program running on this
    // CPU (a bpf_loop callback runs inside it).
    let (b, name, w) = unsafe { (&(*s).buf, &mut (*s).name, &mut (*s).walk) };
    let i = w.i as usize;
    let c = if i < w.n as usize && i < PEEK_LEN {
        b[i]
    } else {
        if (w.n as usize) < PEEK_LEN {
            w.cut = 1;
        }
        b' '
    };
    w.i += 1;
    let end = c == b' ' || c == b'?' || c == b'#' || c == b'\r' || c == b'\n';
    if !end && c != b'/' {
        w.seg_len += 1;
        if c.is_ascii_digit() {
            w.digits += 1;
            w.hexdash += 1;
        } else if c.is_ascii_hexdigit() || c == b'-' {
            w.hexdash += 1;
        } else {
            w.other += 1;
        }
        push(name, &mut w.h, c);
        return 0;
    }
    // A segment ends: keep it, or make it `{id}`.
    let len = w.seg_len;
    let id = len > 0
        && (w.digits == len
            || (len >= 8 && w.other == 0 && w.digits > 0 && w.hexdash == len)
            || (len >= 20 && w.digits > 0));
    if id && w.seg_at < ROUTE_NAME_LEN as u32 {
        name.len = w.seg_at as u8;
        w.h = w.seg_h;
        push(name, &mut w.h, b'{');
        push(name, &mut w.h, b'i');
        push(name, &mut w.h, b'd');
        push(name, &mut w.h, b'}');
    }
    if end {
        return 1;
    }
    push(name, &mut w.h, b'/');
    w.seg_at = u32::from(name.len);
    w.seg_h = w.h;
    w.seg_len = 0;
    w.digits = 0;
    w.hexdash = 0;
    w.other = 0;
    0
}

/// The route of an HTTP request target at `start`: the path without its
/// query, identifier-like segments replaced by `{id}` (see the module).
/// Hashes exactly what it writes, so the id is the hash of the name.
#[inline(always)]
fn http_route(s: *mut Scratch, n: usize, start: usize) -> u32 {
    // SAFETY: the per-CPU scratch, used by this program alone.
    unsafe {
        (*s).name.len = 0;
        (*s).walk = Walk {
            i: start as u32,
            n: n as u32,
            h: FNV_OFFSET,
            seg_h: FNV_OFFSET,
            seg_at: 0,
            seg_len: 0,
            digits: 0,
            hexdash: 0,
            other: 0,
            mode: 0,
            target: 0,
            cut: 0,
        };
        bpf_loop(PEEK_LEN as u32, route_step as *mut core::ffi::c_void, core::ptr::null_mut(), 0);
        if (*s).walk.cut != 0 {
            return ROUTE_NONE;
        }
        finish(&(*s).name, (*s).walk.h)
    }
}

/// `scan_step` modes: skip to a byte, skip to a letter, or copy a word
/// (upper case) into the name.
const SCAN_UNTIL: u32 = 1;
const SCAN_TO_ALPHA: u32 = 2;
const COPY_WORD: u32 = 3;
/// `COPY_WORD`'s classes: letters (SQL keywords), or letters, digits, `_`
/// and `.` (Redis commands).
const LETTERS: u32 = 1;
const NAME_CHARS: u32 = 2;

/// One byte of a scan (see the modes); a `bpf_loop` callback with its
/// state in the scratch, as `route_step`. Returns 1 to stop.
unsafe extern "C" fn scan_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = REQ_SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: as in `route_step`.
    let (b, name, w) = unsafe { (&(*s).buf, &mut (*s).name, &mut (*s).walk) };
    let i = w.i as usize;
    if i >= w.n as usize || i >= PEEK_LEN {
        return 1;
    }
    let c = b[i];
    let stop = match w.mode {
        SCAN_UNTIL => c == w.target as u8,
        SCAN_TO_ALPHA => c.is_ascii_alphabetic(),
        _ => {
            let word = c.is_ascii_alphabetic()
                || (w.target == NAME_CHARS && (c.is_ascii_digit() || c == b'_' || c == b'.'));
            if word {
                push(name, &mut w.h, c.to_ascii_uppercase());
            }
            !word
        }
    };
    if stop {
        return 1;
    }
    w.i += 1;
    0
}

/// Runs `scan_step` in `mode` for at most `max` bytes from the walk's `i`.
#[inline(always)]
fn scan(s: *mut Scratch, mode: u32, target: u32, max: u32) {
    // SAFETY: the per-CPU scratch, used by this program alone.
    unsafe {
        (*s).walk.mode = mode;
        (*s).walk.target = target;
        bpf_loop(max, scan_step as *mut core::ffi::c_void, core::ptr::null_mut(), 0);
    }
}

/// Starts a walk of the peeked bytes at `at`, with an empty name.
#[inline(always)]
fn begin(s: *mut Scratch, n: usize, at: usize) {
    // SAFETY: as in `scan`.
    unsafe {
        (*s).name.len = 0;
        (*s).walk.i = at as u32;
        (*s).walk.n = n as u32;
        (*s).walk.h = FNV_OFFSET;
    }
}

/// The byte at the walk's position, if within the peeked bytes.
#[inline(always)]
fn at_walk(s: *mut Scratch) -> Option<u8> {
    // SAFETY: as in `scan`.
    unsafe {
        let i = (*s).walk.i as usize;
        (i < (*s).walk.n as usize && i < PEEK_LEN).then(|| (*s).buf[i])
    }
}

/// The name made by the walk, as a route id.
#[inline(always)]
fn walked(s: *mut Scratch) -> u32 {
    // SAFETY: as in `scan`.
    unsafe { finish(&(*s).name, (*s).walk.h) }
}

/// A Redis command's name (upper case) from a RESP array
/// (`*<count>\r\n$<len>\r\n<name>\r\n`) or an inline command.
#[inline(always)]
fn redis_command(s: *mut Scratch, n: usize) -> u32 {
    begin(s, n, 0);
    if at_walk(s) == Some(b'*') {
        // SAFETY: as in `scan`.
        unsafe { (*s).walk.i = 1 };
        scan(s, SCAN_UNTIL, u32::from(b'$'), 8);
        if at_walk(s) != Some(b'$') {
            return ROUTE_NONE;
        }
        scan(s, SCAN_UNTIL, u32::from(b'\n'), 8);
        // SAFETY: as in `scan`.
        unsafe { (*s).walk.i += 1 };
    }
    scan(s, COPY_WORD, NAME_CHARS, 24);
    walked(s)
}

/// `i` if it is below `limit`, checked on `i` itself after a reload the
/// compiler cannot see through, so the check stays in the program. Else
/// LLVM may fold it into a loop's own condition on `i + k`, and a verifier
/// before Linux 6.18 (seen on 6.12) then loses the lower bound of `i`:
/// "min value is negative" on the byte read.
#[inline(always)]
fn below(i: usize, limit: usize) -> Option<usize> {
    // SAFETY: a read of a local variable.
    let i = unsafe { core::ptr::read_volatile(&i) };
    (i < limit).then_some(i)
}

/// Big-endian u32 at `at` (PostgreSQL's lengths and codes).
#[inline(always)]
fn be32(b: &[u8; PEEK_LEN], at: usize) -> u32 {
    let Some(at) = below(at, PEEK_LEN - 3) else { return 0 };
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The statement's first keyword (upper case) from `at`: the route of a
/// PostgreSQL query.
#[inline(always)]
fn sql_keyword(s: *mut Scratch, n: usize, at: usize) -> u32 {
    begin(s, n, at);
    scan(s, SCAN_TO_ALPHA, 0, 16);
    scan(s, COPY_WORD, LETTERS, 16);
    walked(s)
}

/// A name made of fixed text (`EXECUTE` for a prepared statement run
/// without its text).
#[inline(always)]
fn fixed(text: &[u8], name: &mut RouteName) -> u32 {
    name.len = 0;
    let mut h = FNV_OFFSET;
    let mut i = 0;
    while i < text.len() && i < 16 {
        push(name, &mut h, text[i]);
        i += 1;
    }
    finish(name, h)
}

/// An ErrorResponse's outcome from its fields at `at`: the class of its
/// SQLSTATE (`C` field: after the severities `S` and `V` since PostgreSQL
/// 9.6, after `S` before), or a plain error if the code is not among the
/// first three fields or past the bytes peeked. The walk is a `bpf_loop`
/// callback, as the routes', so the verifier checks it once.
#[inline(always)]
fn sqlstate(s: *mut Scratch, n: usize, at: usize) -> u8 {
    begin(s, n, at);
    // SAFETY: as in `scan`.
    unsafe {
        (*s).walk.mode = FIELD_START;
        (*s).walk.target = 0;
        (*s).walk.seg_len = 0;
        bpf_loop(
            PEEK_LEN as u32,
            sqlstate_step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        );
        let found = (*s).walk.target;
        if found == 0 { status::ERROR } else { found as u8 }
    }
}

/// `sqlstate_step`'s modes: at a field's type byte, or inside its text.
const FIELD_START: u32 = 1;
const FIELD_TEXT: u32 = 2;

/// One byte of an ErrorResponse's fields (see [`sqlstate`]); the fields
/// passed are counted in `seg_len`, the outcome found left in `target`.
unsafe extern "C" fn sqlstate_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = REQ_SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: as in `route_step`.
    let (b, w) = unsafe { (&(*s).buf, &mut (*s).walk) };
    let i = w.i as usize;
    if i >= w.n as usize || i + 2 >= PEEK_LEN {
        return 1;
    }
    let c = b[i];
    if w.mode == FIELD_START {
        if c == b'C' {
            if i + 2 < w.n as usize {
                w.target = u32::from(status::SQLSTATE | status::sqlstate_code(b[i + 1], b[i + 2]));
            }
            return 1;
        }
        if c == 0 || w.seg_len >= 3 {
            return 1;
        }
        w.mode = FIELD_TEXT;
    } else if c == 0 {
        w.mode = FIELD_START;
        w.seg_len += 1;
    }
    w.i += 1;
    0
}

/// PostgreSQL start-up packets (no type byte): their protocol codes.
const PG_PROTOCOL_3: u32 = 196_608;
const PG_SSL_REQUEST: u32 = 80_877_103;
const PG_GSS_REQUEST: u32 = 80_877_104;
const PG_CANCEL: u32 = 80_877_102;

/// What a request's first bytes say, given what the connection spoke so
/// far (`known`: a `proto` value, 0 when not yet known).
#[inline(always)]
pub fn request(s: *mut Scratch, n: usize, known: u8) -> Request {
    // SAFETY: the per-CPU scratch `peek` filled, used by this program alone.
    let b = unsafe { &(*s).buf };
    let l4 = Request { proto: proto::UNKNOWN, method: 0, route: ROUTE_NONE, skip: false };
    if known == proto::UNKNOWN || known == proto::HTTP1 {
        if let Some((method, at)) = http_method(b, n) {
            let route = http_route(s, n, at);
            // SAFETY: as above.
            unsafe { (*s).name.proto = proto::HTTP1 };
            return Request { proto: proto::HTTP1, method, route, skip: false };
        }
    }
    if known == proto::UNKNOWN || known == proto::REDIS {
        let c = b[0];
        if c == b'*' || (known == proto::REDIS && c.is_ascii_alphabetic()) {
            let route = redis_command(s, n);
            if route != ROUTE_NONE {
                // SAFETY: as above.
                unsafe { (*s).name.proto = proto::REDIS };
                return Request { proto: proto::REDIS, method: 0, route, skip: false };
            }
        }
    }
    if known == proto::UNKNOWN || known == proto::POSTGRES {
        let code = be32(b, 4);
        if n >= 8
            && (8..10_000).contains(&be32(b, 0))
            && matches!(code, PG_PROTOCOL_3 | PG_SSL_REQUEST | PG_GSS_REQUEST | PG_CANCEL)
        {
            // Start-up: not a request.
            return Request { proto: proto::POSTGRES, method: 0, route: ROUTE_NONE, skip: true };
        }
        if known == proto::POSTGRES && n >= 5 {
            let route = match b[0] {
                b'Q' => sql_keyword(s, n, 5),
                b'P' => {
                    // Parse: the statement's name (a C string), then its text.
                    begin(s, n, 5);
                    scan(s, SCAN_UNTIL, 0, 64);
                    // SAFETY: as above.
                    let at = unsafe { (*s).walk.i } as usize + 1;
                    sql_keyword(s, n, at)
                }
                // Password, SASL, termination: not requests.
                b'p' | b'X' => {
                    return Request { proto: proto::POSTGRES, method: 0, route: 0, skip: true };
                }
                // SAFETY: as above.
                _ => fixed(b"EXECUTE", unsafe { &mut (*s).name }),
            };
            // SAFETY: as above.
            unsafe { (*s).name.proto = proto::POSTGRES };
            return Request { proto: proto::POSTGRES, method: 0, route, skip: false };
        }
    }
    l4
}

/// The outcome an answer's first bytes say (`status::*`, or the HTTP
/// class); `None` for an HTTP answer that is not final (1xx) or not a
/// status line at all where one is due.
#[inline(always)]
pub fn answer(s: *mut Scratch, n: usize, p: u8) -> Option<u8> {
    // SAFETY: as in `request`.
    let b = unsafe { &(*s).buf };
    match p {
        proto::HTTP1 => match http_status(b, n)? {
            1 => None,
            class => Some(class),
        },
        proto::REDIS => Some(if b[0] == b'-' { status::ERROR } else { status::OK }),
        proto::POSTGRES => {
            // Walk the messages that start within the bytes peeked: an
            // ErrorResponse ('E') before ReadyForQuery ('Z') fails it.
            let mut at = 0usize;
            let mut k = 0;
            while k < 8 && at + 5 <= n && at + 5 <= PEEK_LEN {
                let Some(i) = below(at, PEEK_LEN) else { break };
                let t = b[i];
                if t == b'E' {
                    return Some(sqlstate(s, n, at + 5));
                }
                if t == b'Z' {
                    break;
                }
                let len = be32(b, i + 1) as usize;
                if len < 4 {
                    break;
                }
                at = i + 1 + len;
                k += 1;
            }
            Some(status::OK)
        }
        _ => Some(status::UNKNOWN),
    }
}

/// Stores a route's name the first time its id is seen (the name is in
/// this CPU's scratch, from the `request` that made the id).
#[inline(always)]
pub fn remember_route(s: *mut Scratch, route: u32) -> bool {
    if route <= ROUTE_OTHER || ROUTE_NAMES.get_ptr(&route).is_some() {
        return true;
    }
    // SAFETY: as in `request`.
    let name = unsafe { (*s).name };
    ROUTE_NAMES.insert(&route, &name, 0).is_ok()
}
