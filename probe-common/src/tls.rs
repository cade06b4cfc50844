//! TLS through OpenSSL: the uprobes on libssl that give each read's and
//! write's plaintext to the request state machine (see `requests`).

/// Threads inside a probed OpenSSL call at once (`SSL_CALLS`); past it,
/// calls are not followed (counted: `tcp::Counter::SslCallsFull`).
pub const CALLS_MAX_ENTRIES: u32 = 16384;
/// `SSL *` -> socket, an LRU (`SSL_SOCKS`).
pub const SOCKS_MAX_ENTRIES: u32 = 65536;

/// The library file name the agent looks for in processes' maps.
pub const LIBRARY: &str = "libssl.so.3";

/// Each uprobe: (program, function). The return program
/// [`RETURN_PROGRAM`] is attached to every function too.
pub const ENTRY_PROBES: [(&str, &str); 5] = [
    ("ssl_read", "SSL_read"),
    ("ssl_read_ex", "SSL_read_ex"),
    ("ssl_write", "SSL_write"),
    ("ssl_write_ex", "SSL_write_ex"),
    ("ssl_do_handshake", "SSL_do_handshake"),
];
pub const RETURN_PROGRAM: &str = "ssl_ret";
