//! Sinks: where the JSON lines go. For now, stdout, written by its own
//! thread behind a bounded queue: a reader that stops reading (a stalled
//! pipe, a hung log shipper) never stalls the agent's measuring, and never
//! grows its memory past the bound; what the bound cuts is counted.

use std::{
    io::{self, Write as _},
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

/// Room left in a pipe on stdout, or None when stdout is not a pipe (a
/// file or terminal takes whole writes).
fn pipe_room() -> Option<usize> {
    let cap = unsafe { libc::fcntl(1, libc::F_GETPIPE_SZ) };
    if cap <= 0 {
        return None;
    }
    let mut used: libc::c_int = 0;
    if unsafe { libc::ioctl(1, libc::FIONREAD, &mut used) } != 0 {
        return None;
    }
    Some((cap - used).max(0) as usize)
}

/// Writes one line, waiting (without blocking in write) until a pipe has
/// room for all of it, so that stopping never leaves half a line behind.
/// Returns false if asked to stop first.
fn write_line(out: &mut io::Stdout, line: &[u8], s: &Shared) -> io::Result<bool> {
    loop {
        if s.stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match pipe_room() {
            // A line longer than the whole pipe cannot wait for room.
            Some(room) if room < line.len() && line.len() <= 64 << 10 => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => break,
        }
    }
    out.write_all(line)?;
    out.flush()?;
    Ok(true)
}

fn writer(rx: Receiver<Bytes>, s: Arc<Shared>) {
    let mut out = io::stdout();
    for lines in rx {
        let mut result = Ok(true);
        // Usually it all fits (or stdout is a file): one write. Otherwise a
        // line at a time, each only once there is room for all of it.
        let whole = pipe_room().is_none_or(|room| room >= lines.len());
        let parts: Vec<&[u8]> =
            if whole { vec![&lines[..]] } else { lines.split_inclusive(|&b| b == b'\n').collect() };
        for line in parts {
            result = write_line(&mut out, line, &s);
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
