//! The stdout sink. A line of at most PIPE_BUF bytes goes to a pipe whole
//! or not at all, even when the write blocks; a longer one waits (without
//! blocking in write) until the pipe is empty. So stopping never leaves
//! half a record in the pipe.

use std::{
    collections::VecDeque,
    io,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use bytes::Bytes;

use super::{Counters, Transport};

pub struct Stdout;

impl Transport for Stdout {
    fn deliver(
        &mut self,
        pending: &mut VecDeque<Bytes>,
        c: &Counters,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        while let Some(line) = pending.front() {
            if !write_line(line, stop)? {
                return Ok(());
            }
            pending.pop_front();
            c.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn closed_for_good(&self, e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::BrokenPipe
    }
}

/// The capacity of a pipe on stdout and the bytes waiting in it, or None
/// when stdout is not a pipe (a file or terminal takes whole writes).
fn pipe_state() -> Option<(usize, usize)> {
    // SAFETY: fcntl on fd 1 with an integer command reads no memory of ours.
    let cap = unsafe { libc::fcntl(1, libc::F_GETPIPE_SZ) };
    if cap <= 0 {
        return None;
    }
    let mut used: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `used`.
    if unsafe { libc::ioctl(1, libc::FIONREAD, &mut used) } != 0 {
        return None;
    }
    Some((cap as usize, used.max(0) as usize))
}

/// Bytes a pipe writes all at once or not at all (POSIX PIPE_BUF).
const PIPE_BUF: usize = 4096;

/// write(2) on stdout, all of `buf`.
fn write_fd(buf: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        let rest = &buf[off..];
        // SAFETY: write(2) reads `rest.len()` bytes of `rest`, which lives.
        let n = unsafe { libc::write(1, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        off += n as usize;
    }
    Ok(())
}

/// Writes one line whole; returns false if asked to stop first.
fn write_line(line: &[u8], stop: &AtomicBool) -> io::Result<bool> {
    if stop.load(Ordering::Relaxed) {
        return Ok(false);
    }
    if line.len() > PIPE_BUF {
        // The free room of a pipe cannot be known exactly (a write does
        // not share a page it does not fit in), so a long line waits until
        // the pipe is empty.
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            match pipe_state() {
                Some((cap, used)) if used > 0 && line.len() <= cap => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => break,
            }
        }
    }
    write_fd(line)?;
    Ok(true)
}
