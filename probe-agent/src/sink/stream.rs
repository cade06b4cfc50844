//! Stream sinks: newline-delimited JSON over TCP or a Unix stream socket,
//! connected on demand and again after a failure (with the caller's capped
//! exponential back-off).
//!
//! A line leaves the queue once written whole, but it is not counted as
//! delivered until it is confirmed: acknowledged by the peer's kernel
//! (`SIOCOUTQ`) with the connection still up a second later. A peer that
//! closes with data unread resets the connection; then every line not yet
//! confirmed may or may not have been read, and is counted as
//! `unconfirmed`, not sent again (that could duplicate it). After a
//! graceful close (the peer read all it received) only the lines it never
//! acknowledged are. A line cut by a failing write goes again whole on the
//! next connection. Before writing, a stream the peer has closed is
//! noticed and replaced, rather than written into.

use std::{
    collections::VecDeque,
    io::{self, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{Counters, Transport};

/// How long a write may wait on a peer that does not read, before the
/// sink says it is failing (the connection is kept: a slow reader is not
/// a broken one).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a written line stays unconfirmed: a peer that resets within
/// this time of taking a line may have dropped it unread (a reset means
/// it closed with data unread). Past it, with the connection up, a line
/// counts as delivered.
const CONFIRM_AFTER: Duration = Duration::from_secs(1);
/// The socket's send buffer: a fixed size (not auto-tuned up to the
/// kernel's 4 MiB), so the kernel's share of a stuck sink stays small too.
/// Ample for a log stream: 128 KiB per round trip.
const SEND_BUFFER: libc::c_int = 128 << 10;

fn set_send_buffer(fd: i32) {
    let size = SEND_BUFFER;
    // SAFETY: SO_SNDBUF reads one c_int from `size`, whose size is given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

enum Addr {
    Tcp(String),
    /// A socket path, and the only user id a peer there may run as.
    Unix(PathBuf, u32),
}

/// The user id of a Unix socket's peer.
fn peer_uid(s: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes, a ucred, into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

enum Peer {
    Alive,
    /// Closed after reading all it received: a peer that closes with data
    /// unread resets instead (TCP sends RST; a Unix socket reports
    /// ECONNRESET).
    Closed,
    /// Reset, or an error: what it received lately may be unread.
    Reset,
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn fd(&self) -> i32 {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    /// Whether the peer is still there. It never sends to us (anything it
    /// does send is read and ignored).
    fn peer(&mut self) -> Peer {
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::recv(self.fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
            };
            match n {
                0 => return Peer::Closed,
                n if n > 0 => continue,
                _ => {
                    let e = io::Error::last_os_error();
                    return match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Peer::Alive,
                        _ => Peer::Reset,
                    };
                }
            }
        }
    }

    /// Bytes written but not yet acknowledged by the peer (TCP only).
    fn unacked(&self) -> Option<usize> {
        let Conn::Tcp(_) = self else { return None };
        let mut n: libc::c_int = 0;
        // SIOCOUTQ == TIOCOUTQ.
        // SAFETY: the ioctl writes one c_int into `n`.
        (unsafe { libc::ioctl(self.fd(), libc::TIOCOUTQ, &mut n) } == 0)
            .then_some(n.max(0) as usize)
    }
}

pub struct Stream {
    addr: Addr,
    conn: Option<Conn>,
    /// Bytes of the first pending line already written (after a timeout).
    partial: usize,
    /// Lines written on this connection and not yet confirmed, with when
    /// they were written, and their total size.
    sent: VecDeque<(Bytes, Instant)>,
    sent_bytes: usize,
    /// Whether a connection failed since the last one was made.
    failed: bool,
}

impl Stream {
    pub fn tcp(addr: String) -> Self {
        Stream::new(Addr::Tcp(addr))
    }

    pub fn unix(path: PathBuf, peer_uid: u32) -> Self {
        Stream::new(Addr::Unix(path, peer_uid))
    }

    fn new(addr: Addr) -> Self {
        Stream { addr, conn: None, partial: 0, sent: VecDeque::new(), sent_bytes: 0, failed: false }
    }

    fn connect(&self) -> io::Result<Conn> {
        match &self.addr {
            Addr::Tcp(a) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{a}: no address"));
                for sa in a.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                            s.set_nodelay(true)?;
                            set_send_buffer(s.as_raw_fd());
                            return Ok(Conn::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Addr::Unix(p, uid) => {
                let s = UnixStream::connect(p)?;
                // Whoever binds the path first receives the records: send
                // only to the expected user's listener (SO_PEERCRED: the
                // credentials the peer had when it called listen()).
                let peer = peer_uid(&s)?;
                if peer != *uid {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{}: the listener runs as uid {peer}, not {uid} (set peer_uid= to \
                             trust it): not sending",
                            p.display()
                        ),
                    ));
                }
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                set_send_buffer(s.as_raw_fd());
                Ok(Conn::Unix(s))
            }
        }
    }

    /// Forgets lines that are confirmed: acknowledged by the peer's kernel
    /// (TCP; a Unix peer's kernel is ours) and written at least
    /// [`CONFIRM_AFTER`] ago with the connection still up.
    fn trim_confirmed(&mut self, c: &Counters) {
        let outq = self.conn.as_ref().and_then(Conn::unacked).unwrap_or(0);
        let now = Instant::now();
        while let Some((front, at)) = self.sent.front() {
            let acked = self.sent_bytes - front.len() >= outq;
            if !acked || now.duration_since(*at) < CONFIRM_AFTER {
                break;
            }
            self.sent_bytes -= front.len();
            self.sent.pop_front();
            c.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops the connection. Lines it may not have delivered are counted
    /// as unconfirmed: after a graceful close, those the peer had not
    /// acknowledged (the others were read: sent); after a reset or an
    /// error, all not yet confirmed.
    fn fail(&mut self, c: &Counters, graceful: bool) {
        let n = if graceful {
            let mut unacked = self.conn.as_ref().and_then(Conn::unacked).unwrap_or(0);
            let mut n = 0u64;
            for (line, _) in self.sent.iter().rev() {
                if unacked == 0 {
                    break;
                }
                unacked = unacked.saturating_sub(line.len());
                n += 1;
            }
            n
        } else {
            self.sent.len() as u64
        };
        c.sent.fetch_add(self.sent.len() as u64 - n, Ordering::Relaxed);
        c.unconfirmed.fetch_add(n, Ordering::Relaxed);
        self.sent.clear();
        self.sent_bytes = 0;
        self.partial = 0;
        self.conn = None;
        self.failed = true;
    }
}

impl Transport for Stream {
    fn deliver(
        &mut self,
        pending: &mut VecDeque<Bytes>,
        c: &Counters,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        match self.conn.as_mut().map(Conn::peer) {
            None | Some(Peer::Alive) => {}
            // A fault like any other: retried after the back-off, so a peer
            // that resets every connection is not hammered.
            Some(Peer::Closed) => {
                self.fail(c, true);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the peer closed the connection",
                ));
            }
            Some(Peer::Reset) => {
                self.fail(c, false);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the peer reset the connection",
                ));
            }
        }
        if self.conn.is_none() {
            // A connection refused, or reset before connect() returned (a
            // fast peer on loopback), is a failure too: the next one made
            // counts as a reconnection.
            self.conn = Some(self.connect().inspect_err(|_| self.failed = true)?);
            if std::mem::take(&mut self.failed) {
                c.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some(line) = pending.front() {
            if stop.load(Ordering::Relaxed) && self.partial == 0 {
                return Ok(());
            }
            let conn = self.conn.as_mut().expect("connected above");
            match conn.write(&line[self.partial..]) {
                Ok(n) => self.partial += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the peer is not reading"));
                }
                Err(e) => {
                    // The line was not written whole: it goes again, whole.
                    self.fail(c, false);
                    return Err(e);
                }
            }
            if self.partial == line.len() {
                self.partial = 0;
                // Counted as sent once confirmed (trim_confirmed).
                let line = pending.pop_front().expect("front exists");
                self.sent_bytes += line.len();
                self.sent.push_back((line, Instant::now()));
            }
        }
        self.trim_confirmed(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Read as _, net::TcpListener};

    /// A peer that goes away mid-stream loses nothing: what it did not
    /// acknowledge goes again, whole, on the next connection, once.
    #[test]
    fn lines_survive_a_peer_that_restarts() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut s = Stream::tcp(addr);
        let c = Counters::default();
        let stop = AtomicBool::new(false);
        let mut pending: VecDeque<Bytes> =
            (0..100).map(|i| Bytes::from(format!("line {i}\n"))).collect();
        s.deliver(&mut pending, &c, &stop).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        // Read half, then die without reading the rest.
        let mut got = Vec::new();
        let mut buf = [0u8; 1];
        while got.iter().filter(|&&b| b == b'\n').count() < 50 {
            peer.read_exact(&mut buf).unwrap();
            got.push(buf[0]);
        }
        drop(peer);
        std::thread::sleep(Duration::from_millis(50));
        let mut more: VecDeque<Bytes> =
            (100..110).map(|i| Bytes::from(format!("line {i}\n"))).collect();
        // The first attempt notices the closed peer (an error, retried).
        for _ in 0..5 {
            if s.deliver(&mut more, &c, &stop).is_ok() && more.is_empty() {
                break;
            }
        }
        let (mut peer, _) = l.accept().unwrap();
        drop(s);
        let mut rest = String::new();
        peer.read_to_string(&mut rest).unwrap();
        let first = String::from_utf8(got).unwrap();
        let all: Vec<&str> = first.lines().chain(rest.lines()).collect();
        // Lines 50..99 reached the dead peer's kernel and were acknowledged:
        // they died with it, as with any TCP sender. Nothing is torn or
        // sent twice, and the new connection gets the new lines whole.
        let want: Vec<String> = (0..50).chain(100..110).map(|i| format!("line {i}")).collect();
        assert_eq!(all, want);
        assert_eq!(c.reconnects.load(Ordering::Relaxed), 1);
    }

    /// A connection that never came up (nothing listening yet) is a
    /// failure: the first one made after it counts as a reconnection.
    #[test]
    fn a_refused_connection_counts_the_next_as_a_reconnection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let mut s = Stream::tcp(addr.to_string());
        let c = Counters::default();
        let stop = AtomicBool::new(false);
        let mut pending: VecDeque<Bytes> = [Bytes::from_static(b"one\n")].into();
        let e = s.deliver(&mut pending, &c, &stop).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert_eq!(c.reconnects.load(Ordering::Relaxed), 0);
        let l = TcpListener::bind(addr).unwrap();
        s.deliver(&mut pending, &c, &stop).unwrap();
        assert!(pending.is_empty());
        assert_eq!(c.reconnects.load(Ordering::Relaxed), 1);
        drop(l);
    }
}
