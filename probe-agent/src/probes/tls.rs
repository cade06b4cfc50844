//! TLS through OpenSSL: finds the libssl.so.3 files that processes use and
//! attaches the uprobes of `probe-ebpf/src/tls.rs` to each (for every
//! process mapping that file: a uprobe belongs to the file's inode).
//!
//! The files are found once, at start, while the agent still has the
//! privileges to attach: the host's own copy (so processes started later
//! are covered) and each copy a running process maps, opened through
//! `/proc/PID/root` so a container's own libssl is the one probed. A
//! library file that first appears later (a container started after the
//! agent, with its own copy) is not probed: its TLS stays counted without
//! a protocol. Statically linked TLS (Go's crypto/tls, rustls, BoringSSL
//! built into a binary) has no libssl to probe and stays so too.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeScope},
};
use log::{debug, warn};
use probe_common::tls::{ENTRY_PROBES, LIBRARY, RETURN_PROGRAM};

use super::causes;

/// Most library files probed; the rest are counted, not probed.
pub const LIBRARIES_MAX: usize = 64;

/// Where distributions install the host's libssl.so.3.
const HOST_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/lib64",
    "/lib",
];

/// What the `status` record says of the OpenSSL uprobes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TlsStatus {
    /// Whether they are attached to at least one libssl.
    pub uprobes: bool,
    /// Why not, or why not to every library found.
    pub reason: Option<String>,
    /// The library files probed (as opened: `/proc/PID/root/...` for a
    /// container's copy).
    pub libraries: Vec<String>,
    /// Library files found past [`LIBRARIES_MAX`], not probed.
    pub libraries_cut: u64,
}

/// The distinct libssl.so.3 files (by device and inode): the host's, then
/// those processes map; at most [`LIBRARIES_MAX`], and how many more.
/// Another user's process's maps (and root) need CAP_SYS_PTRACE: without
/// it, its private copy is missed (the host's copy is still found).
pub fn find_libraries() -> (Vec<PathBuf>, u64) {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    let mut cut = 0u64;
    let mut add = |path: PathBuf| {
        let Ok(meta) = std::fs::metadata(&path) else { return };
        if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        if found.len() < LIBRARIES_MAX {
            found.push(path);
        } else {
            cut += 1;
        }
    };
    // The host's copy, seen from the agent's root and from init's (the
    // host's, when the agent runs in a container with the host's PIDs).
    for root in ["/", "/proc/1/root"] {
        for dir in HOST_DIRS {
            add(Path::new(root).join(&dir[1..]).join(LIBRARY));
        }
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return (found, cut) };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|c| c.is_ascii_digit())) else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { continue };
        for path in libraries_in(&maps) {
            add(PathBuf::from(format!("/proc/{pid}/root{path}")));
        }
    }
    (found, cut)
}

/// The distinct libssl paths in the text of a `/proc/PID/maps`.
fn libraries_in(maps: &str) -> BTreeSet<&str> {
    // A path with more fields after it is a deleted file (" (deleted)"),
    // or a path with spaces: neither can be opened as written.
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(5);
            f.next().filter(|_| f.next().is_none())
        })
        .filter(|p| p.starts_with('/') && p.rsplit('/').next() == Some(LIBRARY))
        .collect()
}

/// Loads the uprobes and attaches them to every library found. The rest
/// of the agent runs whatever happens here.
pub fn attach(ebpf: &mut Ebpf) -> TlsStatus {
    let (libraries, libraries_cut) = find_libraries();
    let mut status = TlsStatus { libraries_cut, ..TlsStatus::default() };
    if libraries.is_empty() {
        status.reason = Some(format!("no {LIBRARY} on the host or in any process's maps"));
        return status;
    }
    if let Err(err) = load(ebpf) {
        warn!("TLS uprobes: {err}");
        status.reason = Some(err);
        return status;
    }
    let mut failures = Vec::new();
    for lib in &libraries {
        match attach_to(ebpf, lib) {
            Ok(()) => {
                debug!("TLS uprobes attached to {}", lib.display());
                status.libraries.push(lib.display().to_string());
            }
            Err(err) => {
                warn!("TLS uprobes on {}: {err}", lib.display());
                failures.push(format!("{}: {err}", lib.display()));
            }
        }
    }
    status.uprobes = !status.libraries.is_empty();
    if !failures.is_empty() {
        status.reason = Some(failures.join("; "));
    }
    status
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, String> {
    let p = ebpf.program_mut(name).ok_or_else(|| format!("no program {name}"))?;
    p.try_into().map_err(|e| format!("program {name}: {}", causes(&e)))
}

fn load(ebpf: &mut Ebpf) -> Result<(), String> {
    let names = ENTRY_PROBES.iter().map(|(p, _)| *p).chain([RETURN_PROGRAM]);
    for name in names {
        uprobe(ebpf, name)?.load().map_err(|e| format!("loading {name}: {}", causes(&e)))?;
    }
    Ok(())
}

/// Attaches every entry probe and the return probe to one library file.
fn attach_to(ebpf: &mut Ebpf, lib: &Path) -> Result<(), String> {
    for (program, function) in ENTRY_PROBES {
        for name in [program, RETURN_PROGRAM] {
            uprobe(ebpf, name)?
                .attach(function, lib, UProbeScope::AllProcesses)
                .map_err(|e| format!("{name} on {function}: {}", causes(&e)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libssl_in_maps_once() {
        let maps = "\
7f00-7f01 r--p 00000000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
7f01-7f02 r-xp 00001000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
7f02-7f03 r--p 00000000 fe:01 124 /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n\
7f03-7f04 r--p 00000000 fe:01 125 /opt/app/libssl.so.3.bak\n\
7f04-7f05 rw-p 00000000 00:00 0 [heap]\n\
7f05-7f06 r--p 00000000 fe:01 126 /srv/libssl.so.3 (deleted)\n";
        let libs: Vec<&str> = libraries_in(maps).into_iter().collect();
        assert_eq!(libs, ["/usr/lib/x86_64-linux-gnu/libssl.so.3"]);
    }
}
