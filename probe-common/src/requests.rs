//! Application-level requests: the protocol a connection speaks (told by
//! its first bytes), each request's method, route and outcome, and the
//! names of routes. The kernel programs read the first bytes of a request
//! and of its answer from the user buffer of the system call that carries
//! them (found in the caller's saved registers), and key each finished
//! request by (protocol, method, route, status) in the endpoint map.

/// Protocols, the `proto` of a socket and of an endpoint key.
pub mod proto {
    /// Not (yet) recognised: requests are request/response exchanges (L4).
    pub const UNKNOWN: u8 = 0;
    pub const HTTP1: u8 = 1;
    /// RESP (Redis, Valkey, KeyDB).
    pub const REDIS: u8 = 2;
    /// The PostgreSQL frontend/backend protocol (v3).
    pub const POSTGRES: u8 = 3;
    /// A flag on the others: the connection's first bytes were a TLS
    /// record. Its requests are then read as plaintext through OpenSSL's
    /// `SSL_read`/`SSL_write` when the process uses a libssl the agent
    /// probes, else counted as request/response exchanges (`UNKNOWN | TLS`).
    pub const TLS: u8 = 0x80;
}

/// HTTP methods, the `method` of an endpoint key (0: none or unknown).
pub const METHODS: [&str; 9] =
    ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE"];

/// A request's outcome, the `status` of an endpoint key. For HTTP the
/// class of the status code (`1` to `5`: 2xx is 2); for Redis and
/// PostgreSQL [`status::OK`] or [`status::ERROR`]; 0 when not known (L4,
/// or a failed request: its slot says so).
pub mod status {
    pub const UNKNOWN: u8 = 0;
    pub const OK: u8 = 2;
    pub const CLIENT_ERROR: u8 = 4;
    pub const ERROR: u8 = 5;
    /// A PostgreSQL ErrorResponse with its SQLSTATE class:
    /// `SQLSTATE | sqlstate_code(class)` (an error, as [`ERROR`]).
    pub const SQLSTATE: u8 = 0x80;

    /// SQLSTATE classes that are not two digits (PostgreSQL's appendix A).
    const LETTER_CLASSES: [[u8; 2]; 16] = [
        *b"0A", *b"0B", *b"0F", *b"0L", *b"0P", *b"0Z", *b"2B", *b"2D", *b"2F", *b"3B", *b"3D",
        *b"3F", *b"F0", *b"HV", *b"P0", *b"XX",
    ];
    /// The code of a class not in the tables.
    pub const OTHER_CLASS: u8 = 127;

    /// A SQLSTATE class (its first two characters) as 7 bits: two digits
    /// as their number (0 to 99), the lettered classes from 100, any other
    /// as [`OTHER_CLASS`].
    #[inline(always)]
    pub fn sqlstate_code(a: u8, b: u8) -> u8 {
        if a.is_ascii_digit() && b.is_ascii_digit() {
            return (a - b'0') * 10 + (b - b'0');
        }
        let mut i = 0;
        while i < LETTER_CLASSES.len() {
            if LETTER_CLASSES[i][0] == a && LETTER_CLASSES[i][1] == b {
                return 100 + i as u8;
            }
            i += 1;
        }
        OTHER_CLASS
    }

    /// The class a code stands for (`None`: another class).
    pub fn sqlstate_class(code: u8) -> Option<[u8; 2]> {
        match code {
            0..=99 => Some([b'0' + code / 10, b'0' + code % 10]),
            100..=115 => Some(LETTER_CLASSES[usize::from(code - 100)]),
            _ => None,
        }
    }
}

/// Route ids: a hash of the normalized route's text; these two are fixed.
pub const ROUTE_NONE: u32 = 0;
/// Past the bound of entries per endpoint: counted under "other".
pub const ROUTE_OTHER: u32 = 1;

/// Longest route name kept (bytes); longer ones are cut.
pub const ROUTE_NAME_LEN: usize = 64;

/// Name of the hash of route id -> [`RouteName`].
pub const ROUTE_NAMES_MAP: &str = "ROUTE_NAMES";
pub const ROUTE_NAMES_MAX_ENTRIES: u32 = 16384;

/// Name of the hash of endpoint -> entries it holds in the endpoint map,
/// which bounds each endpoint's routes.
pub const ROUTE_COUNT_MAP: &str = "ROUTE_COUNT";
pub const ROUTE_COUNT_MAX_ENTRIES: u32 = 16384;
/// Most endpoint-map entries (route x status x latency bucket) one
/// endpoint may create; past it, requests count under [`ROUTE_OTHER`].
pub const ENTRIES_PER_ENDPOINT: u32 = 2048;

/// How many bytes of a request or answer the kernel looks at.
pub const PEEK_LEN: usize = 128;

/// A route's normalized text (identifier-like path segments replaced by
/// `{id}`), as the kernel made it when it first saw the route.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteName {
    pub len: u8,
    pub proto: u8,
    pub _pad: [u8; 6],
    pub bytes: [u8; ROUTE_NAME_LEN],
}

impl Default for RouteName {
    fn default() -> Self {
        RouteName { len: 0, proto: 0, _pad: [0; 6], bytes: [0; ROUTE_NAME_LEN] }
    }
}

/// What a system call's buffer argument is: the socket programs read it
/// from the calling thread's saved registers (`struct pt_regs`).
pub mod io {
    pub const NONE: u32 = 0;
    /// `read`, `write`, `recvfrom`, `sendto`: the buffer itself.
    pub const BUF: u32 = 1;
    /// `readv`, `writev`: an array of `struct iovec`.
    pub const IOV: u32 = 2;
    /// `recvmsg`, `sendmsg`: a `struct user_msghdr`.
    pub const MSG: u32 = 3;

    /// Globals the loader sets: the numbers of the read and write family
    /// system calls on the running architecture (the BPF object is the
    /// same for every architecture). Unset (`u32::MAX`), none matches.
    pub const NR_GLOBALS: [&str; 8] = [
        "NR_READ",
        "NR_WRITE",
        "NR_READV",
        "NR_WRITEV",
        "NR_RECVFROM",
        "NR_SENDTO",
        "NR_RECVMSG",
        "NR_SENDMSG",
    ];
    /// Offsets in `struct pt_regs` of the call's number and of its second
    /// argument (its buffer), from the kernel's BTF; unset, nothing is read.
    pub const REGS_NR_OFFSET_GLOBAL: &str = "REGS_NR_OFF";
    pub const REGS_ARG1_OFFSET_GLOBAL: &str = "REGS_ARG1_OFF";
}

/// A route id from its text: FNV-1a, 32 bits, never [`ROUTE_NONE`] or
/// [`ROUTE_OTHER`] (the kernel hashes as it normalizes; this is the same
/// function, for tests and for the agent's checks).
pub const fn route_id(text: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < text.len() {
        h ^= text[i] as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    if h <= ROUTE_OTHER { h + 2 } else { h }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, fixed-width fields with explicit padding:
// every byte is initialized and any bit pattern is a valid value.
unsafe impl aya::Pod for RouteName {}

const _: () = assert!(core::mem::size_of::<RouteName>() == 72);
