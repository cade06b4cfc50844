//! The HTTP sink: POSTs batches of lines as NDJSON
//! (`Content-Type: application/x-ndjson`, optionally gzip-compressed).
//! A 2xx answer delivers the batch; a 5xx answer or a connection error is
//! retried (after the caller's back-off) with the same batch; a 4xx
//! answer refuses it for good, and its lines are counted as `rejected`.
//! One request per connection (`Connection: close`): batches are few (one
//! per interval) and a fresh connection never finds a stale one.

use std::{
    collections::VecDeque,
    io::{self, Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use bytes::Bytes;

use super::{Counters, Transport};

/// Most bytes of lines in one request.
const BATCH_BYTES: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Http {
    authority: String,
    path: String,
    gzip: bool,
    failed: bool,
}

impl Http {
    pub fn new(authority: String, path: String, gzip: bool) -> Self {
        Http { authority, path, gzip, failed: false }
    }

    /// Sends one request; returns the status code.
    fn post(&self, body: &[u8]) -> io::Result<u16> {
        let mut last =
            io::Error::new(io::ErrorKind::NotFound, format!("{}: no address", self.authority));
        let mut conn = None;
        for sa in self.authority.to_socket_addrs()? {
            match TcpStream::connect_timeout(&sa, TIMEOUT) {
                Ok(s) => {
                    conn = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut s = conn.ok_or(last)?;
        s.set_write_timeout(Some(TIMEOUT))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let encoding = if self.gzip { "Content-Encoding: gzip\r\n" } else { "" };
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: probe-agent/{}\r\n\
             Content-Type: application/x-ndjson\r\n{encoding}Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.authority,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        // The status line is all that matters; read up to its end.
        let mut resp = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !resp.contains(&b'\n') && resp.len() < 4096 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            resp.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&resp);
        let code = line
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line in the answer")
            })?;
        Ok(code)
    }
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    e.write_all(data)?;
    e.finish()
}

impl Transport for Http {
    fn deliver(
        &mut self,
        pending: &mut VecDeque<Bytes>,
        c: &Counters,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        while !pending.is_empty() && !stop.load(Ordering::Relaxed) {
            let mut body = Vec::new();
            let mut n = 0;
            for line in pending.iter() {
                if n > 0 && body.len() + line.len() > BATCH_BYTES {
                    break;
                }
                body.extend_from_slice(line);
                n += 1;
            }
            let body = if self.gzip { gzip(&body)? } else { body };
            let code = match self.post(&body) {
                Ok(code) => code,
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            };
            if std::mem::take(&mut self.failed) {
                c.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            match code {
                200..=299 => {
                    pending.drain(..n);
                    c.sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                400..=499 => {
                    pending.drain(..n);
                    c.rejected.fetch_add(n as u64, Ordering::Relaxed);
                    return Err(io::Error::other(format!(
                        "HTTP {code}: batch of {n} records refused"
                    )));
                }
                _ => {
                    self.failed = true;
                    return Err(io::Error::other(format!("HTTP {code}: will retry")));
                }
            }
        }
        Ok(())
    }
}
