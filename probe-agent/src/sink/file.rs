//! The file sink: appends lines, rotates past a size (`PATH` -> `PATH.1`
//! -> ... -> `PATH.keep`, the oldest removed), and reopens the file when
//! something else moved it (logrotate). A write that fails midway (a full
//! disk) is cut back to the last whole line, and retried later.

use std::{
    collections::VecDeque,
    fs::{self, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;

use super::{Counters, Transport};

pub struct File {
    path: PathBuf,
    rotate_bytes: u64,
    keep: u32,
    /// The open file and its size.
    open: Option<(fs::File, u64)>,
    /// Whether a failure since the last open means a reopen counts.
    failed: bool,
}

impl File {
    pub fn new(path: PathBuf, rotate_bytes: u64, keep: u32) -> Self {
        File { path, rotate_bytes, keep, open: None, failed: false }
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.open = None;
        let _ = fs::remove_file(self.numbered(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.numbered(n);
            if from.exists() {
                fs::rename(&from, self.numbered(n + 1))?;
            }
        }
        fs::rename(&self.path, self.numbered(1))
    }

    /// The open file, opened (again) if needed or if the path now names
    /// another file.
    fn file(&mut self, c: &Counters) -> io::Result<&mut (fs::File, u64)> {
        let moved = match (&self.open, fs::metadata(&self.path)) {
            (Some((f, _)), Ok(m)) => {
                f.metadata().map(|o| o.ino() != m.ino() || o.dev() != m.dev()).unwrap_or(true)
            }
            (Some(_), Err(_)) => true,
            (None, _) => true,
        };
        if moved {
            let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
            let len = f.metadata()?.len();
            if self.failed {
                c.reconnects.fetch_add(1, Ordering::Relaxed);
                self.failed = false;
            }
            self.open = Some((f, len));
        }
        Ok(self.open.as_mut().expect("opened above"))
    }
}

impl Transport for File {
    fn deliver(
        &mut self,
        pending: &mut VecDeque<Bytes>,
        c: &Counters,
        _stop: &AtomicBool,
    ) -> io::Result<()> {
        let result = (|| {
            while !pending.is_empty() {
                let size = self.file(c)?.1;
                if size > 0 && size + pending[0].len() as u64 > self.rotate_bytes {
                    self.rotate()?;
                    continue;
                }
                // As many lines as fit before the rotation size, in one write.
                let mut buf = Vec::new();
                let mut n = 0;
                for line in pending.iter() {
                    if n > 0 && size + (buf.len() + line.len()) as u64 > self.rotate_bytes {
                        break;
                    }
                    buf.extend_from_slice(line);
                    n += 1;
                }
                let (f, len) = self.file(c)?;
                if let Err(e) = f.write_all(&buf) {
                    // Cut a partial write back to the last whole line.
                    let _ = f.set_len(*len);
                    return Err(e);
                }
                *len += buf.len() as u64;
                pending.drain(..n);
                c.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(())
        })();
        if result.is_err() {
            self.failed = true;
            self.open = None;
        }
        result
    }
}
