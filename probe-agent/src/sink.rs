//! Sinks: where the JSON lines go. For now, stdout, written by its own
//! thread behind a bounded queue: a reader that stops reading (a stalled
//! pipe, a hung log shipper) never stalls the agent's measuring, and never
//! grows its memory past the bound; what the bound cuts is counted.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;

/// Errors of the sink stage.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader went away (a closed pipe): a normal end, not a failure.
    #[error("stdout closed")]
    Closed,
}

/// Most bytes waiting for stdout.
const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Most intervals waiting for stdout.
const MAX_QUEUED: usize = 256;

#[derive(Default)]
struct Shared {
    queued_bytes: AtomicUsize,
    /// Intervals dropped because the queue was full (cumulative).
    dropped: AtomicU64,
    closed: AtomicBool,
    /// The last write error, if writes fail (other than a closed pipe).
    failed: AtomicBool,
    /// Set at exit: the writer stops at the next line boundary.
    stop: AtomicBool,
}

/// Stdout behind a bounded queue and a writer thread.
pub struct Stdout {
    tx: SyncSender<Bytes>,
    shared: Arc<Shared>,
}

impl Stdout {
    pub fn start() -> Self {
        let (tx, rx) = sync_channel::<Bytes>(MAX_QUEUED);
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || writer(rx, s))
            .expect("spawning the stdout writer");
        Stdout { tx, shared }
    }

    /// Queues one interval's lines (written in one write, so records are
    /// never interleaved mid-line). A full queue drops them, counted.
    pub fn send(&self, lines: Bytes) -> Result<(), SinkError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(SinkError::Closed);
        }
        let len = lines.len();
        if self.shared.queued_bytes.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
        match self.tx.try_send(lines) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(SinkError::Closed),
        }
    }

    /// Intervals dropped so far because stdout did not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }

    /// Whether writing failed (other than the reader closing).
    pub fn failing(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for what is queued to be written (at exit),
    /// then has the writer stop at a line boundary.
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.queued_bytes() > 0
            && !self.shared.closed.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        // The writer never blocks mid-line; give it a moment to finish one.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The capacity of a pipe on stdout and the bytes waiting in it, or None
/// when stdout is not a pipe (a file or terminal takes whole writes).
fn pipe_state() -> Option<(usize, usize)> {
    let cap = unsafe { libc::fcntl(1, libc::F_GETPIPE_SZ) };
    if cap <= 0 {
        return None;
    }
    let mut used: libc::c_int = 0;
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

/// Writes one line so that stopping never leaves half of it behind: a line
/// of at most PIPE_BUF bytes goes to a pipe whole or not at all, even when
/// the write blocks; a longer one waits (without blocking in write) until
/// the pipe has room for all of it. Returns false if asked to stop first.
fn write_line(line: &[u8], s: &Shared) -> io::Result<bool> {
    if line.len() > PIPE_BUF {
        // The free room of a pipe cannot be known exactly (a write does
        // not share a page it does not fit in), so a long line waits until
        // the pipe is empty.
        loop {
            if s.stop.load(Ordering::Relaxed) {
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

fn writer(rx: Receiver<Bytes>, s: Arc<Shared>) {
    for lines in rx {
        let mut result = Ok(true);
        for line in lines.split_inclusive(|&b| b == b'\n') {
            if s.stop.load(Ordering::Relaxed) {
                result = Ok(false);
                break;
            }
            result = write_line(line, &s);
            if !matches!(result, Ok(true)) {
                break;
            }
        }
        s.queued_bytes.fetch_sub(lines.len(), Ordering::Relaxed);
        match result {
            Ok(true) => s.failed.store(false, Ordering::Relaxed),
            Ok(false) => return,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                s.closed.store(true, Ordering::Relaxed);
                return;
            }
            Err(_) => s.failed.store(true, Ordering::Relaxed),
        }
    }
}
