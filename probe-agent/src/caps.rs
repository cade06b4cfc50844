//! Least privilege: after the programs are loaded and attached, the agent
//! drops every capability it no longer needs and sets no_new_privs. Reading
//! maps needs only their file descriptors, which it already holds, except
//! on kernels before 5.19 with `kernel.unprivileged_bpf_disabled` set
//! (Debian 11's default, as of most distributions' kernels built with
//! CONFIG_BPF_UNPRIV_DEFAULT_OFF): these refuse every bpf() command,
//! map reads included, to a process without CAP_BPF (or CAP_SYS_ADMIN), so
//! there the agent keeps CAP_BPF.

use std::io;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522; // _LINUX_CAPABILITY_VERSION_3

fn get() -> io::Result<[Data; 2]> {
    let mut h = Header { version: VERSION_3, pid: 0 };
    let mut d = [Data::default(); 2];
    // SAFETY: capget(2) with a version-3 header writes exactly two Data
    // structs (64 capability bits), which `d` holds.
    if unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(d)
}

/// Whether capability `cap` is in the calling thread's effective set.
pub fn has(cap: u32) -> bool {
    get().is_ok_and(|d| d[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0)
}

/// Keeps only `keep` (those of it the thread has), in the effective,
/// permitted and inheritable sets, clears the ambient set and the bounding
/// set as far as allowed, and sets no_new_privs. Returns the effective set
/// that remains, as a 64-bit mask.
///
/// Capabilities and no_new_privs belong to each thread (capset(2) and
/// prctl(2) act on the caller): a thread started before this call keeps
/// its own. The agent calls it on the main thread before it starts any
/// other, and every thread it starts calls [`drop_in_thread`] first.
pub fn drop_all_but(keep: &[u32]) -> io::Result<u64> {
    let cur = get()?;
    let mut mask = [0u32; 2];
    for &c in keep {
        mask[(c / 32) as usize] |= 1 << (c % 32);
    }
    let mut d = [Data::default(); 2];
    for i in 0..2 {
        let m = mask[i] & cur[i].permitted;
        d[i] = Data { effective: m, permitted: m, inheritable: 0 };
    }
    // Ambient and bounding sets first (dropping the bounding set needs
    // CAP_SETPCAP, which may already be gone: best effort).
    prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong);
    for cap in 0..64u32 {
        if !keep.contains(&cap) {
            prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap));
        }
    }
    let mut h = Header { version: VERSION_3, pid: 0 };
    // SAFETY: capset(2) with a version-3 header reads two Data structs.
    if unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if prctl(libc::PR_SET_NO_NEW_PRIVS, 1) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(d[0].effective) | u64::from(d[1].effective) << 32)
}

/// prctl(2) with one argument (the others zero), as the options used here take.
fn prctl(option: libc::c_int, arg: libc::c_ulong) -> libc::c_int {
    // SAFETY: the options used take integer arguments only, no pointers.
    unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) }
}

/// Drops every capability of the calling thread and sets its
/// no_new_privs: the first thing each thread the agent starts does.
pub fn drop_in_thread() {
    if let Err(err) = drop_all_but(&[]) {
        log::warn!("a thread could not drop its capabilities: {err}");
    }
}

/// Starts a named thread that holds no capability and has no_new_privs
/// set, whatever the thread that starts it keeps. Every thread of the
/// agent is started here.
pub fn spawn<F>(name: String, f: F) -> io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new().name(name).spawn(move || {
        drop_in_thread();
        f()
    })
}

/// The privileges of the process's threads, as /proc says: the union of
/// their effective capability sets, and whether every one has
/// no_new_privs. What the `status` and `agent` records report: the worst
/// thread, not just the main one.
pub fn threads() -> (u64, bool) {
    let mut eff = 0u64;
    let mut nnp = true;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return (u64::MAX, false) };
    for task in dir.flatten() {
        // A thread that ended since the listing has nothing left to say.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("CapEff:") {
                eff |= u64::from_str_radix(v.trim(), 16).unwrap_or(u64::MAX);
            } else if let Some(v) = line.strip_prefix("NoNewPrivs:") {
                nnp &= v.trim() == "1";
            }
        }
    }
    (eff, nnp)
}

/// What the main thread keeps after attaching (every other thread keeps
/// nothing): CAP_SYS_ADMIN when it samples BPF run-time statistics through
/// the interval (`--bpf-stats-pct` above 0: BPF_ENABLE_STATS requires it),
/// and CAP_BPF (or CAP_SYS_ADMIN before 5.8) where reading its maps needs it.
pub fn needed_after_attach(bpf_stats: bool) -> Vec<u32> {
    let mut keep = Vec::new();
    if bpf_stats && has(CAP_SYS_ADMIN) {
        keep.push(CAP_SYS_ADMIN);
    }
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .is_ok_and(|s| s.trim() != "0");
    if keep.is_empty() && map_reads_need_capability(kernel_release().as_deref(), disabled) {
        keep.push(if has(CAP_BPF) { CAP_BPF } else { CAP_SYS_ADMIN });
    }
    keep
}

/// Whether a kernel of this release (`uname -r`) refuses map reads to a
/// process without CAP_BPF: before 5.19, any bpf() command is refused to
/// it while `unprivileged_bpf_disabled` is set (measured: Debian's 5.10
/// refuses, its 6.1 allows). An unreadable release keeps the capability.
pub fn map_reads_need_capability(release: Option<&str>, unprivileged_disabled: bool) -> bool {
    let version = release.and_then(|r| {
        let mut parts = r.split(|c: char| !c.is_ascii_digit()).map(str::parse::<u32>);
        Some((parts.next()?.ok()?, parts.next()?.ok()?))
    });
    unprivileged_disabled && version.is_none_or(|v| v < (5, 19))
}

/// The running kernel's release, as `uname -r` prints it.
fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain C data (arrays of chars): all zeros is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname(2) fills the struct it is given and nothing else.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: uname() wrote a NUL-terminated string into the field.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

/// Capability names of a mask, for the status record.
pub fn names(mask: u64) -> Vec<String> {
    const NAMES: [&str; 41] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    (0..64)
        .filter(|b| mask & (1 << b) != 0)
        .map(|b| NAMES.get(b).map_or(format!("cap_{b}"), |n| n.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_kernels_with_unprivileged_bpf_off_need_cap_bpf_for_maps() {
        assert!(map_reads_need_capability(Some("5.10.0-32-cloud-amd64"), true));
        assert!(map_reads_need_capability(Some("4.18.0-553.el8_10.x86_64"), true));
        assert!(!map_reads_need_capability(Some("5.19.0"), true));
        assert!(!map_reads_need_capability(Some("6.1.0-50-cloud-arm64"), true));
        assert!(!map_reads_need_capability(Some("5.10.0"), false));
        assert!(map_reads_need_capability(None, true));
    }

    #[test]
    fn names_of_masks() {
        assert_eq!(names(0), Vec::<String>::new());
        assert_eq!(names(1 << 21 | 1 << 39), ["CAP_SYS_ADMIN", "CAP_BPF"]);
    }
}
