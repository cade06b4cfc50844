//! Stream sinks: newline-delimited JSON over TCP or a Unix stream socket,
//! connected on demand and again after a failure (with the caller's capped
//! exponential back-off).
//!
//! A line leaves the queue once written whole. Over TCP it is then kept
//! until the peer's kernel acknowledges it (`SIOCOUTQ`): if the connection
//! fails first, the line may or may not have arrived, and sending it again
//! could duplicate it; so it is not sent again but counted as
//! `unconfirmed`. A line cut by a failing write goes again whole on the
//! next connection. Before writing, a stream the peer has closed is noticed
//! (a read returns end-of-file) and replaced, rather than written into.

use std::{
    collections::VecDeque,
    io::{self, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use bytes::Bytes;

use super::{Counters, Transport};

/// How long a write may wait on a peer that does not read, before the
/// sink says it is failing (the connection is kept: a slow reader is not
/// a broken one).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

enum Addr {
    Tcp(String),
    Unix(PathBuf),
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

    /// Whether the peer closed or reset the stream (it never sends to us;
    /// anything it does send is read and ignored).
    fn peer_gone(&mut self) -> bool {
        let mut buf = [0u8; 512];
        loop {
            let n = unsafe {
                libc::recv(self.fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
            };
            match n {
                0 => return true,
                n if n > 0 => continue,
                _ => {
                    let e = io::Error::last_os_error();
                    return e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::Interrupted;
                }
            }
        }
    }

    /// Bytes written but not yet acknowledged by the peer (TCP only).
    fn unacked(&self) -> Option<usize> {
        let Conn::Tcp(_) = self else { return None };
        let mut n: libc::c_int = 0;
        // SIOCOUTQ == TIOCOUTQ.
        (unsafe { libc::ioctl(self.fd(), libc::TIOCOUTQ, &mut n) } == 0)
            .then_some(n.max(0) as usize)
    }
}

pub struct Stream {
    addr: Addr,
    conn: Option<Conn>,
    /// Bytes of the first pending line already written (after a timeout).
    partial: usize,
    /// Lines written on this TCP connection and perhaps not yet acknowledged,
    /// with their total size.
    sent: VecDeque<Bytes>,
    sent_bytes: usize,
    /// Whether a connection failed since the last one was made.
    failed: bool,
}

impl Stream {
    pub fn tcp(addr: String) -> Self {
        Stream::new(Addr::Tcp(addr))
    }

    pub fn unix(path: PathBuf) -> Self {
        Stream::new(Addr::Unix(path))
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
                            return Ok(Conn::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Addr::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                Ok(Conn::Unix(s))
            }
        }
    }

    /// Forgets lines the peer has acknowledged.
    fn trim_acked(&mut self) {
        let Some(outq) = self.conn.as_ref().and_then(Conn::unacked) else {
            self.sent.clear();
            self.sent_bytes = 0;
            return;
        };
        while let Some(front) = self.sent.front() {
            if self.sent_bytes - front.len() < outq {
                break;
            }
            self.sent_bytes -= front.len();
            self.sent.pop_front();
        }
    }

    /// Drops the connection. Lines written whole but not acknowledged are
    /// counted as unconfirmed (not as sent).
    fn fail(&mut self, c: &Counters) {
        self.trim_acked();
        let n = self.sent.len() as u64;
        c.sent.fetch_sub(n, Ordering::Relaxed);
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
        if self.conn.as_mut().is_some_and(Conn::peer_gone) {
            self.fail(c);
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
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
                    self.fail(c);
                    return Err(e);
                }
            }
            if self.partial == line.len() {
                self.partial = 0;
                let line = pending.pop_front().expect("front exists");
                c.sent.fetch_add(1, Ordering::Relaxed);
                if matches!(self.conn, Some(Conn::Tcp(_))) {
                    self.sent_bytes += line.len();
                    self.sent.push_back(line);
                }
            }
        }
        self.trim_acked();
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
        // The first attempt may notice the closed peer, or fail writing.
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
}
