//! TCP connection and request KPIs, from tracepoints. The rare events are
//! classic tracepoints (their records carry ports and addresses); the three
//! that fire on every send, receive and incoming segment are raw
//! tracepoints, which skip the classic record's preparation, and read the
//! few fields they need at offsets the agent takes from the kernel's BTF:
//!
//! - `sock:inet_sock_set_state` (4.16+): connect start (-> SYN_SENT), connect
//!   latency (SYN_SENT -> ESTABLISHED), connect errors (SYN_SENT -> CLOSE),
//!   accepted connections (SYN_RECV -> ESTABLISHED), and close (-> CLOSE).
//! - `sock_send_length`, `sock_recv_length` (raw, 6.3+): bytes sent and
//!   received, in the process's context; they also give each socket its
//!   owner and drive the request state machine.
//! - `tcp_probe` (raw): a segment arrived on an established socket; data
//!   (beyond the TCP header) starts a server's request, and the socket's
//!   `srtt_us` is sampled as the smoothed RTT.
//! - `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`,
//!   `tcp:tcp_destroy_sock`.
//!
//! Requests: on a server socket a request starts when data arrives while
//! none is outstanding, and ends when the server next sends; a client's is
//! the mirror image: it starts when the client sends and ends when it
//! first reads the answer. A reset or close while a request is outstanding
//! counts as a failed request. A socket used inside a probed OpenSSL call
//! (`tls.rs`) is driven by the plaintext of `SSL_read`/`SSL_write` instead
//! of its system calls, which carry ciphertext.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{
    maps::{self, Upserted},
    requests::{self, Data},
    runs, tls,
};
use probe_common::{
    hist::bucket_of,
    requests::{
        ENTRIES_PER_ENDPOINT, ROUTE_COUNT_MAX_ENTRIES, ROUTE_NONE, ROUTE_OTHER, proto, status,
    },
    runs::slot,
    tcp::{
        COUNTERS, Counter, ENDPOINT_MAX_ENTRIES, EndpointKey, Field, ROLE_CLIENT, ROLE_SERVER,
        ROLE_UNKNOWN, RTT_GAP_NS, SLOT_ERROR, SOCK_MAX_ENTRIES, STATS_MAX_ENTRIES, SockState,
        TcpKey, TcpValue, metric, set_state, tcp_events,
    },
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;
/// A close this soon after a request's first bytes is a goodbye (a TLS
/// close_notify, a protocol's QUIT) sent with the FIN, not an abandoned
/// request.
const GOODBYE_NS: u64 = 1_000_000;
// include/net/tcp_states.h
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;

// Offsets in kernel structs, from the kernel's BTF, set by the loader;
// the raw tracepoints are attached only when all are known.
/// `offsetof(struct sock, __sk_common.skc_family)`.
#[unsafe(no_mangle)]
static SK_FAMILY_OFF: u32 = 0;
/// `offsetof(struct sock, sk_protocol)`.
#[unsafe(no_mangle)]
static SK_PROTOCOL_OFF: u32 = 0;
/// `offsetof(struct tcp_sock, srtt_us)`.
#[unsafe(no_mangle)]
static TP_SRTT_OFF: u32 = 0;
/// `offsetof(struct sk_buff, len)`.
#[unsafe(no_mangle)]
static SKB_LEN_OFF: u32 = 0;
/// `offsetof(struct sk_buff, data)`.
#[unsafe(no_mangle)]
static SKB_DATA_OFF: u32 = 0;

#[inline(always)]
fn offset(global: &u32) -> u64 {
    u64::from(unsafe { core::ptr::read_volatile(global) })
}

/// Reads a `T` at a kernel address (None if it faults).
#[inline(always)]
fn kread<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[map(name = "TCP_SOCKS")]
static TCP_SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(SOCK_MAX_ENTRIES, 0);

#[map(name = "TCP_STATS")]
static TCP_STATS: PerCpuHashMap<TcpKey, TcpValue> =
    PerCpuHashMap::with_max_entries(STATS_MAX_ENTRIES, 0);

#[map(name = "TCP_ENDPOINTS")]
static TCP_ENDPOINTS: PerCpuHashMap<EndpointKey, TcpValue> =
    PerCpuHashMap::with_max_entries(ENDPOINT_MAX_ENTRIES, 0);

#[map(name = "TCP_CNT")]
static TCP_CNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// Set to 1 by the agent to shed the per-segment connection detail (its
/// overhead budget): RTT samples and byte counts. Requests, connects,
/// retransmits and resets are always measured: request counting is the
/// product's headline and is never switched off.
#[map(name = "TCP_CTL")]
static TCP_CTL: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn detail_off() -> bool {
    TCP_CTL.get(0).is_some_and(|v| *v != 0)
}

#[inline(always)]
pub(crate) fn bump(reason: Counter) {
    maps::bump(&TCP_CNT, reason as u32);
}

/// A field of the tracepoint record (see `probe_common::tcp::Field`; the
/// verifier allows direct reads of a tracepoint's context).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, f: Field) -> T {
    field_at(ctx, f.offset)
}

#[inline(always)]
fn field_at<T: Copy>(ctx: &TracePointContext, off: u32) -> T {
    // SAFETY: the offset is one of the record's fields, checked against the
    // running kernel's format before the program is attached.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(off as usize).cast::<T>()) }
}

/// Adds one sample (`sum`, and `max` of it) to a connection KPI.
#[inline(always)]
fn stat(tgid: u32, metric: u16, slot: u16, sum: u64) {
    let key = TcpKey { tgid, metric, slot };
    add(&TCP_STATS, &key, sum, Counter::StatsFull);
}

#[inline(always)]
fn add<K>(map: &PerCpuHashMap<K, TcpValue>, key: &K, sum: u64, full: Counter) {
    let first = TcpValue { count: 1, sum, max: sum };
    if let Upserted::Full = maps::upsert(map, key, first, |v| {
        v.count += 1;
        v.sum += sum;
        v.max = v.max.max(sum);
    }) {
        bump(full);
    }
}

/// Records a finished request (or, with `SLOT_ERROR`, a failed one).
#[inline(always)]
fn request(s: &SockState, slot: u16, ns: u64, status: u8) {
    if s.parsed == PARSED_SKIP {
        return; // a start-up or authentication exchange, not a request
    }
    let (port, peer) =
        if s.role == ROLE_SERVER { (s.lport, [0u8; 16]) } else { (s.rport, s.raddr) };
    let app = s.proto & !proto::TLS;
    let proto = if app == PROTO_L4 { proto::UNKNOWN } else { app } | (s.proto & proto::TLS);
    let mut key = EndpointKey {
        tgid: s.tgid,
        port,
        role: s.role,
        proto,
        peer,
        slot,
        status,
        method: s.method,
        route: s.route,
    };
    if let Some(v) = TCP_ENDPOINTS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value: only this CPU writes it.
        unsafe {
            (*v).count += 1;
            (*v).sum += ns;
            (*v).max = (*v).max.max(ns);
        }
        return;
    }
    // A new entry: within the endpoint's bound, else under "other".
    if key.route > ROUTE_OTHER && !admit(&key) {
        key.route = ROUTE_OTHER;
        key.method = 0;
        bump(Counter::RoutesCut);
    }
    add(&TCP_ENDPOINTS, &key, ns, Counter::EndpointsFull);
}

/// Entries each endpoint created in `TCP_ENDPOINTS`, to bound its routes.
#[map(name = "ROUTE_COUNT")]
static ROUTE_COUNT: HashMap<EndpointKey, u32> =
    HashMap::with_max_entries(ROUTE_COUNT_MAX_ENTRIES, 0);

/// Whether the endpoint of `key` may create one more entry (one more
/// route, status or latency bucket); counts it if so. Approximate under
/// races between CPUs, which only moves the bound by a few.
#[inline(always)]
fn admit(key: &EndpointKey) -> bool {
    let ep = EndpointKey { slot: 0, status: 0, method: 0, route: 0, ..*key };
    match ROUTE_COUNT.get_ptr_mut(&ep) {
        Some(n) => {
            // SAFETY: a u32 in the map's memory; a racing writer can only
            // lose an increment.
            unsafe {
                if *n >= ENTRIES_PER_ENDPOINT {
                    return false;
                }
                *n += 1;
            }
            true
        }
        None => maps::insert_new(&ROUTE_COUNT, &ep, 1),
    }
}

/// `proto` (without its TLS flag) of a socket whose first request matched
/// no protocol: counted as L4 request/response exchanges, and not looked
/// at again.
const PROTO_L4: u8 = 0x7f;
/// `parsed` of a socket's outstanding request: not yet read, read, or
/// read and not a request (start-up, authentication).
const PARSED_NO: u8 = 0;
const PARSED_YES: u8 = 1;
const PARSED_SKIP: u8 = 2;

/// Reads the outstanding request's first bytes (at `data`, `len` of them)
/// for its protocol, method and route.
#[inline(always)]
fn parse_request(s: *mut SockState, data: Data, len: u64) {
    // SAFETY: `s` is this socket's entry in TCP_SOCKS; programs on other
    // CPUs may write it too, which at worst mixes two requests' labels.
    unsafe {
        if (*s).parsed != PARSED_NO {
            return;
        }
        (*s).parsed = PARSED_YES;
        (*s).method = 0;
        let last_route = (*s).route;
        (*s).route = ROUTE_NONE;
        let tls = (*s).proto & proto::TLS;
        let app = (*s).proto & !proto::TLS;
        // L4, or TLS seen only encrypted: nothing to read.
        if app == PROTO_L4 || (tls != 0 && (*s).ssl == 0) {
            return;
        }
        let Some((scratch, n)) = data.peek(len) else { return };
        if app == proto::UNKNOWN && tls == 0 && requests::tls_record(scratch, n) {
            // A TLS handshake: the rest is encrypted, counted as L4
            // exchanges unless OpenSSL's probes see its plaintext.
            (*s).proto = proto::TLS;
            return;
        }
        let r = requests::request(scratch, n, app);
        if r.proto == proto::UNKNOWN {
            // A connection's first request decides: L4 from now on. On a
            // known protocol, bytes that start no request are the rest of
            // one read before (pipelined requests split across segments):
            // its answer still says the outcome; its route is not known.
            if app == proto::UNKNOWN {
                (*s).proto = PROTO_L4 | tls;
            }
            return;
        }
        (*s).proto = r.proto | tls;
        (*s).method = r.method;
        (*s).route = r.route;
        // A route the socket's previous request named is known already.
        if r.skip {
            (*s).parsed = PARSED_SKIP;
        } else if r.route != last_route && !requests::remember_route(scratch, r.route) {
            bump(Counter::RouteNamesFull);
        }
    }
}

/// What the answer at `data` (`len` bytes) says of the outstanding
/// request: its outcome, or `None` for an interim HTTP answer (1xx).
#[inline(always)]
fn parse_answer(s: *mut SockState, data: Data, len: u64) -> Option<u8> {
    // SAFETY: as in `parse_request`.
    let p = unsafe { (*s).proto } & !proto::TLS;
    if p == proto::UNKNOWN || p == PROTO_L4 {
        return Some(status::UNKNOWN);
    }
    let Some((scratch, n)) = data.peek(len) else { return Some(status::UNKNOWN) };
    requests::answer(scratch, n, p)
}

/// An outstanding request on this socket failed (reset or closed).
#[inline(always)]
fn fail_outstanding(s: *mut SockState) {
    unsafe {
        if (*s).outstanding != 0 && (*s).role != ROLE_UNKNOWN {
            (*s).outstanding = 0;
            request(&*s, SLOT_ERROR, 0, status::UNKNOWN);
        }
    }
}

/// This side closes (FIN_WAIT1, LAST_ACK or CLOSE) with a request
/// outstanding. A client's request whose answer arrived (unread) ends
/// answered. Otherwise it failed, unless it was a goodbye: bytes sent just
/// before the close that followed them (a TLS close_notify, a protocol's
/// QUIT; see [`GOODBYE_NS`]): for a server, the client's FIN, if it came,
/// else this close; for a client, its own close.
#[inline(always)]
fn on_close(s: *mut SockState, now: u64) {
    end_answered(s, now);
    unsafe {
        if (*s).outstanding == 0 {
            return;
        }
        let fin = (*s).fin_ns;
        let closed_at = if (*s).role == ROLE_SERVER && fin != 0 { fin } else { now };
        if closed_at.saturating_sub((*s).req_ns) < GOODBYE_NS {
            (*s).outstanding = 0;
            return;
        }
    }
    fail_outstanding(s);
}

/// A client's request whose answer arrived but was never read (the
/// connection closed first) ends answered, at the close.
#[inline(always)]
fn end_answered(s: *mut SockState, now: u64) {
    unsafe {
        if (*s).role == ROLE_CLIENT && (*s).outstanding != 0 && (*s).answered != 0 {
            (*s).outstanding = 0;
            (*s).answered = 0;
            let ns = now.saturating_sub((*s).req_ns);
            // Its outcome was not read: the answer stayed unread.
            request(&*s, bucket_of(ns) as u16, ns, status::UNKNOWN);
        }
    }
}

/// The remote address as IPv6 (IPv4 mapped to ::ffff:a.b.c.d).
#[inline(always)]
fn remote(ctx: &TracePointContext, family: u16) -> [u8; 16] {
    if family == AF_INET6 {
        let hi: [u8; 8] = field_at(ctx, set_state::DADDR_V6.offset);
        let lo: [u8; 8] = field_at(ctx, set_state::DADDR_V6.offset + 8);
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&hi);
        a[8..].copy_from_slice(&lo);
        a
    } else {
        let v4: [u8; 4] = field(ctx, set_state::DADDR);
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]
    }
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    runs::count(const { slot("inet_sock_set_state") });
    let protocol: u16 = field(&ctx, set_state::PROTOCOL);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let sk: u64 = field(&ctx, set_state::SKADDR);
    let old: i32 = field(&ctx, set_state::OLDSTATE);
    let new: i32 = field(&ctx, set_state::NEWSTATE);
    let now = unsafe { bpf_ktime_get_ns() };
    if new == TCP_SYN_SENT {
        // connect(): runs in the connecting process.
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let family: u16 = field(&ctx, set_state::FAMILY);
        let s = SockState {
            tgid,
            role: ROLE_CLIENT,
            lport: field(&ctx, set_state::SPORT),
            rport: field(&ctx, set_state::DPORT),
            raddr: remote(&ctx, family),
            syn_ns: now,
            ..SockState::default()
        };
        if TCP_SOCKS.insert(sk, s, 0).is_err() {
            bump(Counter::SocksFull);
        }
        stat(tgid, metric::CONNECTS, 0, 0);
        return 0;
    }
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        // A connection accepted by a listener (softirq: owner not known yet).
        let family: u16 = field(&ctx, set_state::FAMILY);
        let s = SockState {
            role: ROLE_SERVER,
            lport: field(&ctx, set_state::SPORT),
            rport: field(&ctx, set_state::DPORT),
            raddr: remote(&ctx, family),
            ..SockState::default()
        };
        if TCP_SOCKS.insert(sk, s, 0).is_err() {
            bump(Counter::SocksFull);
        }
        return 0;
    }
    let Some(s) = TCP_SOCKS.get_ptr_mut(sk) else { return 0 };
    let tgid = unsafe { (*s).tgid };
    if old == TCP_SYN_SENT && new == TCP_ESTABLISHED {
        let ns = now.saturating_sub(unsafe { (*s).syn_ns });
        stat(tgid, metric::CONNECT_LATENCY, bucket_of(ns) as u16, ns);
    } else if old == TCP_SYN_SENT && new == TCP_CLOSE {
        stat(tgid, metric::CONNECT_ERRORS, 0, 0);
    }
    if new == TCP_CLOSE {
        on_close(s, now);
        let _ = TCP_SOCKS.remove(sk);
    } else if new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK {
        // This side closed (first, or after the peer).
        on_close(s, now);
    } else if new == TCP_CLOSE_WAIT {
        // The peer's FIN alone ends nothing: the answer may still come (a
        // half-closed request) or be on its way already. On loopback the
        // answer reaches the peer inside the sender's sendmsg, before
        // sock_send_length fires at its end, and the peer may read it and
        // close in between (seen under QEMU on 6.12: a request answered in
        // full counted as failed); and a client may read an answer that
        // came just before the server's FIN. This side's close decides.
        unsafe {
            if (*s).fin_ns == 0 {
                (*s).fin_ns = now;
            }
        }
    }
    0
}

/// The state of an established TCP socket used in process context,
/// claimed by the current process if nobody owns it yet.
#[inline(always)]
fn owned(sk: u64) -> Option<(*mut SockState, u32)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Only TCP sockets are in the map (an entry leaves when its socket is
    // destroyed), so a known socket needs no look at its family.
    let s = match TCP_SOCKS.get_ptr_mut(sk) {
        Some(s) => s,
        None => {
            let family: u16 = kread(sk + offset(&SK_FAMILY_OFF))?;
            let protocol: u16 = kread(sk + offset(&SK_PROTOCOL_OFF))?;
            if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
                return None;
            }
            // Connected before the agent started: bytes only, role unknown.
            let fresh = SockState { tgid, ..SockState::default() };
            if !maps::insert_new(&TCP_SOCKS, &sk, fresh) {
                bump(Counter::SocksFull);
                return None;
            }
            TCP_SOCKS.get_ptr_mut(sk)?
        }
    };
    unsafe {
        if (*s).tgid == 0 {
            (*s).tgid = tgid;
        }
        if (*s).role == ROLE_SERVER && (*s).counted == 0 {
            (*s).counted = 1;
            stat(tgid, metric::ACCEPTS, 0, 0);
        }
    }
    Some((s, tgid))
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    runs::count(const { slot("sock_recv_length") });
    let sk: u64 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    let flags = ctx.arg::<u64>(2) as i32;
    // MSG_PEEK (include/linux/socket.h) leaves the data queued: it will be
    // read (and counted) again.
    if ret <= 0 || flags & MSG_PEEK != 0 {
        return 0;
    }
    let Some((s, tgid)) = owned(sk) else { return 0 };
    if !detail_off() {
        stat(tgid, metric::BYTES_RECEIVED, 0, ret as u64);
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if through_ssl(s, sk, tid) {
        return 0;
    }
    on_recv(s, Data::Syscall, ret as u64);
    0
}

/// Whether the socket's requests come through OpenSSL's probes (then its
/// system calls carry only ciphertext and are not read): it is, from the
/// first time it is used inside a probed OpenSSL call (`tls::in_call`).
/// Only a socket whose protocol is not known yet, or TLS, is asked.
#[inline(always)]
fn through_ssl(s: *mut SockState, sk: u64, tid: u32) -> bool {
    // SAFETY: `s` is this socket's entry in TCP_SOCKS (see parse_request).
    unsafe {
        if (*s).ssl != 0 {
            tls::in_call(tid, sk);
            return true;
        }
        let p = (*s).proto;
        if (p != proto::UNKNOWN && p & proto::TLS == 0) || !tls::in_call(tid, sk) {
            return false;
        }
    }
    hand_to_ssl(s);
    true
}

/// From now on the socket's requests come from OpenSSL's plaintext: what
/// the socket programs made of its handshake is dropped, and requests
/// start with its first plaintext.
#[inline(always)]
fn hand_to_ssl(s: *mut SockState) {
    // SAFETY: as in `through_ssl`.
    unsafe {
        (*s).ssl = 1;
        (*s).proto = proto::TLS;
        (*s).outstanding = 0;
        (*s).answered = 0;
        (*s).parsed = PARSED_NO;
    }
}

/// Plaintext `len` bytes at `buf` that OpenSSL read (`read`) or wrote on
/// socket `sk`, from its `SSL_read`/`SSL_write` return probes: the same
/// request state machine as a plaintext socket's system calls drive.
#[inline(always)]
pub(crate) fn on_ssl(sk: u64, read: bool, buf: u64, len: u64) {
    let Some(s) = TCP_SOCKS.get_ptr_mut(sk) else { return };
    // SAFETY: as in `through_ssl`.
    if unsafe { (*s).ssl } == 0 {
        hand_to_ssl(s);
    }
    if read {
        on_recv(s, Data::User(buf), len);
    } else {
        on_send(s, Data::User(buf), len);
    }
}

/// Bytes a socket received (`len` of them, at `data`): a server's request
/// starts, or a client's ends.
#[inline(always)]
fn on_recv(s: *mut SockState, data: Data, len: u64) {
    // SAFETY: `s` is this socket's entry in TCP_SOCKS (see parse_request).
    unsafe {
        match (*s).role {
            ROLE_SERVER => {
                // Normally tcp_probe saw the data arrive first; this covers
                // data that came with the handshake's last ACK (and every
                // request read through OpenSSL).
                if (*s).outstanding == 0 {
                    (*s).outstanding = 1;
                    (*s).req_ns = bpf_ktime_get_ns();
                    (*s).parsed = PARSED_NO;
                }
                parse_request(s, data, len);
            }
            // A client's request ends when it reads the answer (a final
            // one: an interim HTTP 1xx keeps it outstanding).
            ROLE_CLIENT if (*s).outstanding != 0 => {
                let Some(st) = parse_answer(s, data, len) else { return };
                (*s).outstanding = 0;
                (*s).answered = 0;
                let ns = bpf_ktime_get_ns().saturating_sub((*s).req_ns);
                request(&*s, bucket_of(ns) as u16, ns, st);
            }
            _ => {}
        }
    }
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    runs::count(const { slot("sock_send_length") });
    let sk: u64 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    if ret <= 0 {
        return 0;
    }
    let Some((s, tgid)) = owned(sk) else { return 0 };
    if !detail_off() {
        stat(tgid, metric::BYTES_SENT, 0, ret as u64);
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if through_ssl(s, sk, tid) {
        return 0;
    }
    on_send(s, Data::Syscall, ret as u64);
    0
}

/// Bytes a socket sent (`len` of them, at `data`): a server's request
/// ends, or a client's starts.
#[inline(always)]
fn on_send(s: *mut SockState, data: Data, len: u64) {
    // SAFETY: `s` is this socket's entry in TCP_SOCKS (see parse_request).
    unsafe {
        match (*s).role {
            // A server's request ends when it starts a (final) answer.
            ROLE_SERVER if (*s).outstanding != 0 => {
                if (*s).parsed == PARSED_NO {
                    // Its bytes were never read (sendfile-style proxies).
                    (*s).parsed = PARSED_YES;
                }
                let Some(st) = parse_answer(s, data, len) else { return };
                (*s).outstanding = 0;
                let ns = bpf_ktime_get_ns().saturating_sub((*s).req_ns);
                request(&*s, bucket_of(ns) as u16, ns, st);
            }
            // An HTTP server answering pipelined requests (several read at
            // once) starts each further answer with its own status line:
            // each is one more request, from the same arrival.
            ROLE_SERVER
                if (*s).proto & !proto::TLS == proto::HTTP1 && (*s).parsed == PARSED_YES =>
            {
                if let Some((scratch, n)) = data.peek(16)
                    && let Some(class) = requests::http_status(&(*scratch).buf, n)
                    && class != 1
                {
                    let ns = bpf_ktime_get_ns().saturating_sub((*s).req_ns);
                    request(&*s, bucket_of(ns) as u16, ns, class);
                }
            }
            ROLE_CLIENT if (*s).outstanding == 0 => {
                (*s).outstanding = 1;
                (*s).req_ns = bpf_ktime_get_ns();
                (*s).answered = 0;
                (*s).parsed = PARSED_NO;
                parse_request(s, data, len);
            }
            _ => {}
        }
    }
}

/// `tcp_probe(struct sock *sk, struct sk_buff *skb)`, from
/// `tcp_rcv_established()`, where `skb->data` is the TCP header.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_probe(ctx: RawTracePointContext) -> i32 {
    runs::count(const { slot("tcp_probe") });
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let Some(len) = kread::<u32>(skb + offset(&SKB_LEN_OFF)) else { return 0 };
    let Some(data) = kread::<u64>(skb + offset(&SKB_DATA_OFF)) else { return 0 };
    // The TCP header's data offset, in 32-bit words (the high nibble of
    // byte 12): what follows it is payload.
    let Some(doff) = kread::<u8>(data + 12) else { return 0 };
    if len <= u32::from(doff >> 4) * 4 {
        // A pure ACK: no request starts, and RTT is sampled on data.
        return 0;
    }
    let Some(s) = TCP_SOCKS.get_ptr_mut(sk) else { return 0 };
    unsafe {
        // A server's request starts when its first bytes arrive; a
        // client's answer has arrived (it ends when read). Not for a
        // socket read through OpenSSL: its requests start and end with
        // plaintext.
        if (*s).ssl == 0 {
            if (*s).role == ROLE_SERVER && (*s).outstanding == 0 {
                (*s).outstanding = 1;
                (*s).req_ns = bpf_ktime_get_ns();
                (*s).parsed = PARSED_NO;
            } else if (*s).role == ROLE_CLIENT && (*s).outstanding != 0 {
                (*s).answered = 1;
            }
        }
        // The RTT, at most once per RTT_GAP_NS by the request clock (no
        // clock read of its own; a socket without requests samples every
        // segment).
        let t = (*s).req_ns;
        let at = (t >> 10) as u32;
        if detail_off() || (t != 0 && at.wrapping_sub((*s).rtt_at) < (RTT_GAP_NS >> 10) as u32) {
            return 0;
        }
        (*s).rtt_at = at;
    }
    // srtt_us holds the smoothed RTT in microseconds, shifted left by 3.
    let srtt_us = kread::<u32>(sk + offset(&TP_SRTT_OFF)).unwrap_or(0) >> 3;
    if srtt_us != 0 {
        let ns = u64::from(srtt_us) * 1000;
        stat(unsafe { (*s).tgid }, metric::RTT, bucket_of(ns) as u16, ns);
    }
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    runs::count(const { slot("tcp_retransmit_skb") });
    let sk: u64 = field(&ctx, tcp_events::RETRANSMIT_SKADDR);
    let tgid = TCP_SOCKS.get_ptr_mut(sk).map_or(0, |s| unsafe { (*s).tgid });
    stat(tgid, metric::RETRANSMITS, 0, 0);
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    runs::count(const { slot("tcp_send_reset") });
    let sk: u64 = field(&ctx, tcp_events::SEND_RESET_SKADDR);
    let s = if sk != 0 { TCP_SOCKS.get_ptr_mut(sk) } else { None };
    let tgid = s.map_or(0, |s| unsafe { (*s).tgid });
    stat(tgid, metric::RESETS_SENT, 0, 0);
    if let Some(s) = s {
        end_answered(s, unsafe { bpf_ktime_get_ns() });
        fail_outstanding(s);
    }
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    runs::count(const { slot("tcp_receive_reset") });
    let sk: u64 = field(&ctx, tcp_events::RECEIVE_RESET_SKADDR);
    let s = TCP_SOCKS.get_ptr_mut(sk);
    let tgid = s.map_or(0, |s| unsafe { (*s).tgid });
    stat(tgid, metric::RESETS_RECEIVED, 0, 0);
    if let Some(s) = s {
        end_answered(s, unsafe { bpf_ktime_get_ns() });
        fail_outstanding(s);
    }
    0
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    runs::count(const { slot("tcp_destroy_sock") });
    let sk: u64 = field(&ctx, tcp_events::DESTROY_SKADDR);
    if let Some(s) = TCP_SOCKS.get_ptr_mut(sk) {
        end_answered(s, unsafe { bpf_ktime_get_ns() });
        fail_outstanding(s);
    }
    let _ = TCP_SOCKS.remove(sk);
    0
}
