//! TCP KPIs: connections (connect latency and errors, accepts, resets,
//! retransmits, RTT, bytes) and requests per endpoint, from the `sock:*`
//! and `tcp:*` tracepoints.

/// Name of the hash of socket address -> [`SockState`].
pub const SOCK_MAP: &str = "TCP_SOCKS";
/// Name of the per-CPU hash of [`TcpKey`] -> [`TcpValue`]: connection KPIs.
pub const STATS_MAP: &str = "TCP_STATS";
/// Name of the control array: 1 at index 0 switches TCP measurement off.
pub const CONTROL_MAP: &str = "TCP_CTL";
/// Name of the per-CPU hash of [`EndpointKey`] -> [`TcpValue`]: requests.
pub const ENDPOINT_MAP: &str = "TCP_ENDPOINTS";
/// Name of the per-CPU array of loss counters, indexed by [`Counter`].
pub const COUNTER_MAP: &str = "TCP_CNT";
/// Globals the loader sets from the kernel's BTF for the raw tracepoints:
/// each is the sum of the offsets of a path of (struct, member).
pub const OFFSET_GLOBALS: &[(&str, &[(&str, &str)])] = &[
    ("SK_FAMILY_OFF", &[("sock", "__sk_common"), ("sock_common", "skc_family")]),
    ("SK_PROTOCOL_OFF", &[("sock", "sk_protocol")]),
    ("TP_SRTT_OFF", &[("tcp_sock", "srtt_us")]),
    ("SKB_LEN_OFF", &[("sk_buff", "len")]),
    ("SKB_DATA_OFF", &[("sk_buff", "data")]),
];

pub const SOCK_MAX_ENTRIES: u32 = 65536;
pub const STATS_MAX_ENTRIES: u32 = 16384;
/// Endpoints x routes x statuses x latency buckets: routes multiply it.
pub const ENDPOINT_MAX_ENTRIES: u32 = 65536;

/// Socket roles.
pub const ROLE_UNKNOWN: u8 = 0;
/// Accepted by a listener: it answers requests.
pub const ROLE_SERVER: u8 = 1;
/// Connected out: it sends requests.
pub const ROLE_CLIENT: u8 = 2;

/// Per-socket state, keyed by the socket's kernel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// Owning process (0 until the socket is first used in process context).
    pub tgid: u32,
    pub role: u8,
    /// 1 while a request is outstanding.
    pub outstanding: u8,
    /// 1 once the accept was counted for `tgid`.
    pub counted: u8,
    /// Client sockets: 1 once the answer to the outstanding request has
    /// arrived (it may still be unread when the server closes).
    pub answered: u8,
    /// Local and remote port, host byte order.
    pub lport: u16,
    pub rport: u16,
    /// The protocol its first request showed (`requests::proto`).
    pub proto: u8,
    /// The outstanding request's method (HTTP) and whether its first
    /// bytes were read (method and route known).
    pub method: u8,
    pub parsed: u8,
    /// 1 once the socket was used inside an OpenSSL call the agent probes:
    /// its requests are then read from the plaintext at `SSL_read` and
    /// `SSL_write`, not from its (encrypted) system calls.
    pub ssl: u8,
    /// Remote address: IPv6, or IPv4-mapped IPv6.
    pub raddr: [u8; 16],
    /// When the connect started (SYN sent).
    pub syn_ns: u64,
    /// When the outstanding request started.
    pub req_ns: u64,
    /// When the peer's FIN came (0: not yet).
    pub fin_ns: u64,
    /// The outstanding request's route id (`requests::ROUTE_*` or a hash).
    pub route: u32,
    /// `req_ns` when the smoothed RTT was last sampled (see `RTT_GAP_NS`),
    /// in units of 1024 ns, wrapping (the state stays one cache line).
    pub rtt_at: u32,
}

/// The smoothed RTT is sampled at most once per this many nanoseconds per
/// connection: it is a moving average over several round trips already,
/// so a busy connection's every segment would repeat one value at a price.
pub const RTT_GAP_NS: u64 = 1_000_000;

/// Connection metrics, the `metric` of a [`TcpKey`].
pub mod metric {
    /// Outbound connection attempts (SYN sent).
    pub const CONNECTS: u16 = 0;
    /// Attempts that failed (SYN_SENT -> CLOSE: refused, reset, timed out).
    pub const CONNECT_ERRORS: u16 = 1;
    /// SYN sent to established, by latency bucket.
    pub const CONNECT_LATENCY: u16 = 2;
    /// Inbound connections accepted and used by the process.
    pub const ACCEPTS: u16 = 3;
    pub const RETRANSMITS: u16 = 4;
    pub const RESETS_SENT: u16 = 5;
    pub const RESETS_RECEIVED: u16 = 6;
    /// Smoothed RTT samples, by bucket (ns).
    pub const RTT: u16 = 7;
    /// `sum` holds the bytes.
    pub const BYTES_SENT: u16 = 8;
    pub const BYTES_RECEIVED: u16 = 9;
}

/// Key of [`STATS_MAP`]: a process, a metric and a slot (latency bucket,
/// or 0 for plain counts).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpKey {
    pub tgid: u32,
    pub metric: u16,
    pub slot: u16,
}

/// Value of [`STATS_MAP`] and [`ENDPOINT_MAP`], per CPU, cumulative.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpValue {
    pub count: u64,
    pub sum: u64,
    pub max: u64,
}

/// Endpoint slot counting requests that failed (connection reset or
/// closed while the request was outstanding).
pub const SLOT_ERROR: u16 = 0xffff;

/// Key of [`ENDPOINT_MAP`]: a process, a role and a port (local for
/// servers, remote for clients), the peer for clients, the protocol, and
/// the request's method, route and status, and a slot (request latency
/// bucket, or [`SLOT_ERROR`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub tgid: u32,
    pub port: u16,
    pub role: u8,
    /// `requests::proto`.
    pub proto: u8,
    pub peer: [u8; 16],
    pub slot: u16,
    /// `requests::status`.
    pub status: u8,
    /// An index into `requests::METHODS` plus one (0: none).
    pub method: u8,
    /// `requests::ROUTE_*` or a route's hash.
    pub route: u32,
}

/// Indexes of [`COUNTER_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A socket could not be tracked: `TCP_SOCKS` full.
    SocksFull = 0,
    /// A connection KPI could not be recorded: `TCP_STATS` full.
    StatsFull = 1,
    /// A request could not be recorded: `TCP_ENDPOINTS` full.
    EndpointsFull = 2,
    /// A request counted under "other": its endpoint had its bound of
    /// entries (`requests::ENTRIES_PER_ENDPOINT`), or `ROUTE_COUNT` was full.
    RoutesCut = 3,
    /// A route's name could not be stored: `ROUTE_NAMES` full.
    RouteNamesFull = 4,
    /// An OpenSSL call could not be followed: `SSL_CALLS` (threads inside
    /// `SSL_read`/`SSL_write`/`SSL_do_handshake` at once) full.
    SslCallsFull = 5,
    /// Plaintext read or written through OpenSSL whose socket was not
    /// known (no system call in that call, and `SSL_SOCKS` forgot it).
    SslNoSocket = 6,
}

pub const COUNTERS: u32 = 7;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for SockState {}
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for TcpKey {}
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for TcpValue {}
    // SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
    // every byte is initialized and any bit pattern is a valid value.
    unsafe impl aya::Pod for EndpointKey {}
}

const _: () = assert!(core::mem::size_of::<SockState>() == 64);
const _: () = assert!(core::mem::size_of::<TcpKey>() == 8);
const _: () = assert!(core::mem::size_of::<TcpValue>() == 24);
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 32);

/// A field of a classic tracepoint's record, where the programs read it
/// (from each event's `format` file under tracefs). The kernel programs
/// read through these constants and the agent checks the same constants
/// against the running kernel before attaching: one name for each offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub subsystem: &'static str,
    pub event: &'static str,
    pub name: &'static str,
    pub offset: u32,
    pub size: u32,
}

const fn f(
    subsystem: &'static str,
    event: &'static str,
    name: &'static str,
    offset: u32,
    size: u32,
) -> Field {
    Field { subsystem, event, name, offset, size }
}

/// `sock:inet_sock_set_state` (include/trace/events/sock.h, 4.16+).
pub mod set_state {
    use super::{Field, f};
    pub const SKADDR: Field = f("sock", "inet_sock_set_state", "skaddr", 8, 8);
    pub const OLDSTATE: Field = f("sock", "inet_sock_set_state", "oldstate", 16, 4);
    pub const NEWSTATE: Field = f("sock", "inet_sock_set_state", "newstate", 20, 4);
    pub const SPORT: Field = f("sock", "inet_sock_set_state", "sport", 24, 2);
    pub const DPORT: Field = f("sock", "inet_sock_set_state", "dport", 26, 2);
    pub const FAMILY: Field = f("sock", "inet_sock_set_state", "family", 28, 2);
    pub const PROTOCOL: Field = f("sock", "inet_sock_set_state", "protocol", 30, 2);
    pub const DADDR: Field = f("sock", "inet_sock_set_state", "daddr", 36, 4);
    pub const DADDR_V6: Field = f("sock", "inet_sock_set_state", "daddr_v6", 56, 16);
}

/// `skaddr` of the `tcp:*` events (include/trace/events/tcp.h).
pub mod tcp_events {
    use super::{Field, f};
    pub const RETRANSMIT_SKADDR: Field = f("tcp", "tcp_retransmit_skb", "skaddr", 16, 8);
    pub const SEND_RESET_SKADDR: Field = f("tcp", "tcp_send_reset", "skaddr", 16, 8);
    pub const RECEIVE_RESET_SKADDR: Field = f("tcp", "tcp_receive_reset", "skaddr", 8, 8);
    pub const DESTROY_SKADDR: Field = f("tcp", "tcp_destroy_sock", "skaddr", 8, 8);
}

/// Every field the programs read, for the agent's check.
pub const FIELDS: &[Field] = &[
    set_state::SKADDR,
    set_state::OLDSTATE,
    set_state::NEWSTATE,
    set_state::SPORT,
    set_state::DPORT,
    set_state::FAMILY,
    set_state::PROTOCOL,
    set_state::DADDR,
    set_state::DADDR_V6,
    tcp_events::RETRANSMIT_SKADDR,
    tcp_events::SEND_RESET_SKADDR,
    tcp_events::RECEIVE_RESET_SKADDR,
    tcp_events::DESTROY_SKADDR,
];
