//! The file sink: appends lines, rotates past a size (`PATH` -> `PATH.1`
//! -> ... -> `PATH.keep`, the oldest removed), and reopens the file when
//! something else moved it (logrotate). A write that fails midway (a full
//! disk) is cut back to the last whole line, and retried later.
//!
//! The agent runs as root on hosts where other users share directories
//! such as /tmp, so it writes only where they cannot redirect, read or
//! forge its records:
//! - the directory must not be writable by other users, unless it is
//!   sticky (then they cannot remove or rename the agent's files);
//! - the file is opened without following a symbolic link (`O_NOFOLLOW`),
//!   and used only if it is a regular file owned by the agent with a
//!   single link: a link planted to another file, a file another user
//!   created in advance (which they could read and write), a FIFO or a
//!   device are refused, with the reason;
//! - it is created with mode 0600 (`mode=` to choose), and an existing
//!   file of the agent's is set to that mode;
//! - rotation moves only the agent's own files: a name in the chain that
//!   is not a regular file owned by the agent (a planted directory or
//!   link) is skipped, said in the sink's error, and never shifted.
//!
//! At start an unsafe path is a usage error (exit status 2); at a reopen
//! or a rotation it is a delivery failure, counted and retried.

use std::{
    collections::VecDeque,
    fs,
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;

use super::{Counters, Transport};

/// How far past `keep` rotation looks for names it may use, when some in
/// the chain belong to someone else.
const SPARE_NAMES: u32 = 16;

pub struct File {
    path: PathBuf,
    rotate_bytes: u64,
    keep: u32,
    mode: u32,
    /// The open file and its size.
    open: Option<(fs::File, u64)>,
    /// Whether a failure since the last open means a reopen counts.
    failed: bool,
}

fn euid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

fn refused(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("file:{}: {why}", path.display()))
}

/// Whether an entry is the agent's own: a regular file it owns, linked once.
fn ours(m: &fs::Metadata) -> bool {
    m.file_type().is_file() && m.uid() == euid() && m.nlink() == 1
}

fn describe(m: &fs::Metadata) -> String {
    let kind = if m.file_type().is_symlink() {
        "a symbolic link"
    } else if m.file_type().is_dir() {
        "a directory"
    } else if !m.file_type().is_file() {
        "not a regular file"
    } else if m.uid() != euid() {
        return format!("owned by uid {}, not the agent", m.uid());
    } else {
        return format!("a file with {} links", m.nlink());
    };
    kind.to_string()
}

/// Checks that other users cannot replace files in `path`'s directory.
fn check_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let m = fs::metadata(dir).map_err(|e| refused(path, format!("its directory: {e}")))?;
    if m.uid() != 0 && m.uid() != euid() {
        return Err(refused(
            path,
            format!(
                "its directory {} is owned by uid {}, who could replace the file",
                dir.display(),
                m.uid()
            ),
        ));
    }
    let mode = m.permissions().mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(refused(
            path,
            format!(
                "its directory {} is writable by other users and not sticky ({:o}), so they could replace the file",
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

impl File {
    /// Checks the path as the agent will write it (a usage error if unsafe).
    pub fn new(path: PathBuf, rotate_bytes: u64, keep: u32, mode: u32) -> io::Result<Self> {
        check_dir(&path)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if !ours(&m) => {
                return Err(refused(&path, format!("{}: refusing to write to it", describe(&m))));
            }
            _ => {}
        }
        Ok(File { path, rotate_bytes, keep, mode, open: None, failed: false })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    /// Opens the file for appending, safely (see the module's rules).
    fn open_safe(&self) -> io::Result<fs::File> {
        let before = fs::symlink_metadata(&self.path).ok();
        if let Some(m) = &before
            && !ours(m)
        {
            return Err(refused(&self.path, describe(m)));
        }
        // O_NONBLOCK: a FIFO put there between the check and the open must
        // not block the writer (it is refused just below).
        let f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(self.mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => refused(&self.path, "a symbolic link: refusing to follow it"),
                _ => e,
            })?;
        let m = f.metadata()?;
        if !ours(&m) {
            return Err(refused(&self.path, describe(&m)));
        }
        if before.is_some_and(|b| (b.dev(), b.ino()) != (m.dev(), m.ino())) {
            return Err(refused(&self.path, "replaced while being opened"));
        }
        if m.permissions().mode() & 0o7777 != self.mode {
            f.set_permissions(fs::Permissions::from_mode(self.mode))?;
        }
        set_blocking(&f)?;
        Ok(f)
    }

    /// Shifts the agent's files one name up the chain and moves the live
    /// file to the first. Names held by someone else are skipped (and
    /// said); the chain is the first `keep` names the agent may use.
    fn rotate(&mut self) -> io::Result<()> {
        self.open = None;
        let mut usable = Vec::new();
        let mut skipped = Vec::new();
        for n in 1..=self.keep + SPARE_NAMES {
            if usable.len() == self.keep as usize {
                break;
            }
            match fs::symlink_metadata(self.numbered(n)) {
                Ok(m) if !ours(&m) => {
                    skipped.push(format!("{} ({})", self.numbered(n).display(), describe(&m)))
                }
                _ => usable.push(n),
            }
        }
        let Some(&last) = usable.last() else {
            return Err(refused(
                &self.path,
                format!("no name left to rotate to: {}", skipped.join(", ")),
            ));
        };
        if fs::symlink_metadata(self.numbered(last)).is_ok() {
            fs::remove_file(self.numbered(last))?;
        }
        for w in usable.windows(2).rev() {
            let from = self.numbered(w[0]);
            if fs::symlink_metadata(&from).is_ok() {
                fs::rename(&from, self.numbered(w[1]))?;
            }
        }
        fs::rename(&self.path, self.numbered(usable[0]))?;
        if !skipped.is_empty() {
            // Rotated all the same; the skipped names are reported once.
            log::warn!(
                "file:{}: rotation skipped names that are not the agent's: {}",
                self.path.display(),
                skipped.join(", ")
            );
        }
        Ok(())
    }

    /// The open file, opened (again) if needed or if the path now names
    /// another file.
    fn file(&mut self, c: &Counters) -> io::Result<&mut (fs::File, u64)> {
        let moved = match (&self.open, fs::symlink_metadata(&self.path)) {
            (Some((f, _)), Ok(m)) => {
                f.metadata().map(|o| o.ino() != m.ino() || o.dev() != m.dev()).unwrap_or(true)
            }
            (Some(_), Err(_)) => true,
            (None, _) => true,
        };
        if moved {
            self.open = None;
            let f = self.open_safe()?;
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

/// Clears O_NONBLOCK (set only to open safely).
fn set_blocking(f: &fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("probe-file-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    fn write(f: &mut File, lines: &[&str]) -> io::Result<()> {
        let mut q: VecDeque<Bytes> = lines.iter().map(|l| Bytes::from(format!("{l}\n"))).collect();
        f.deliver(&mut q, &Counters::default(), &AtomicBool::new(false))
    }

    #[test]
    fn creates_0600_and_refuses_links() {
        let d = dir("links");
        let path = d.join("p.jsonl");
        let mut f = File::new(path.clone(), 1 << 20, 3, 0o600).unwrap();
        write(&mut f, &["a"]).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
        let target = d.join("secret");
        fs::write(&target, "x").unwrap();
        let link = d.join("l.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = File::new(link.clone(), 1 << 20, 3, 0o600).err().unwrap();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let hard = d.join("h.jsonl");
        fs::hard_link(&target, &hard).unwrap();
        let err = File::new(hard, 1 << 20, 3, 0o600).err().unwrap();
        assert!(err.to_string().contains("2 links"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "x");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_world_writable_directory_is_refused_unless_sticky() {
        let d = dir("perm");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        let err = File::new(d.join("p"), 1 << 20, 3, 0o600).err().unwrap();
        assert!(err.to_string().contains("not sticky"), "{err}");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(File::new(d.join("p"), 1 << 20, 3, 0o600).is_ok());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn rotation_skips_names_it_does_not_own() {
        let d = dir("rot");
        let path = d.join("p");
        fs::create_dir(d.join("p.1")).unwrap();
        let mut f = File::new(path.clone(), 4096, 2, 0o600).unwrap();
        for i in 0..4 {
            let line = format!("{i}{}", "x".repeat(3000));
            write(&mut f, &[&line]).unwrap();
        }
        assert!(fs::metadata(d.join("p.1")).unwrap().is_dir(), "the planted directory stays");
        // Rotated past it: p.2 and p.3 hold the two older files, p the newest.
        assert!(fs::read_to_string(&path).unwrap().starts_with('3'));
        assert!(fs::read_to_string(d.join("p.2")).unwrap().starts_with('2'));
        assert!(fs::read_to_string(d.join("p.3")).unwrap().starts_with('1'));
        assert!(!d.join("p.4").exists(), "keep=2: the oldest was removed");
        let _ = fs::remove_dir_all(&d);
    }
}
