//! What the agent reads from /proc and the C library about processes and itself.

use std::{fs, path::Path};

/// A process's command name from /proc, without the trailing newline.
/// Any bytes are possible; invalid UTF-8 becomes U+FFFD.
pub fn comm(tgid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{tgid}/comm")).ok()?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    Some(String::from_utf8_lossy(raw).into_owned())
}

/// A kernel `comm` buffer (NUL-padded) as a string.
pub fn comm_from_kernel(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Whether a process with this id exists (zombies included).
pub fn alive(tgid: u32) -> bool {
    Path::new(&format!("/proc/{tgid}")).exists()
}

/// This host's name (`gethostname`).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    comm_from_kernel(&buf)
}

/// The node's host name: under a host root other than `/` (the agent in a
/// container, whose UTS namespace has a name of its own: a pod's is the
/// pod's name), the first line of the node's `/etc/hostname` when it holds
/// one; else the name of this UTS namespace.
pub fn node_hostname(root: &Path) -> String {
    use std::io::Read as _;
    if root != Path::new("/")
        && let Ok(f) = fs::File::open(root.join("etc/hostname"))
    {
        let mut text = String::new();
        // A host name is at most 253 bytes: read no more than a page.
        let _ = f.take(4096).read_to_string(&mut text);
        let name = text.lines().next().unwrap_or_default().trim();
        if (1..=253).contains(&name.len()) {
            return name.to_string();
        }
    }
    hostname()
}

/// CPU time (user + system) this process has used, in ns.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: rusage is plain C data (integers): all zeros is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage(2) fills the struct it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Resident set size of this process, in bytes.
pub fn self_rss_bytes() -> u64 {
    let page = page_size();
    fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// Capabilities needed to load and attach tracing programs: CAP_BPF and
/// CAP_PERFMON (Linux 5.8+), or CAP_SYS_ADMIN.
pub fn missing_capabilities() -> Option<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let eff = u64::from_str_radix(eff, 16).ok()?;
    let has = |cap: u32| eff & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        None
    } else {
        Some("CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)")
    }
}

/// Host memory from /proc/meminfo: (total, available) in bytes.
pub fn meminfo() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some((kib("MemTotal:")?, kib("MemAvailable:")?))
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(tgid: u32) -> Option<u64> {
    let page = page_size();
    let statm = fs::read_to_string(format!("/proc/{tgid}/statm")).ok()?;
    Some(statm.split_whitespace().nth(1)?.parse::<u64>().ok()? * page)
}

/// Context switches on the host since boot (`ctxt` in /proc/stat: one per
/// `sched_switch` event; not namespaced, so the node's figure in a pod).
pub fn context_switches() -> u64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok()))
        .unwrap_or(0)
}

/// Gives the allocator's free pages back to the system (after a busy
/// interval or start-up, rather than keep the peak for the process's life).
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe { libc::malloc_trim(0) };
}

/// A sysconf(3) value (negative when unknown).
fn sysconf(name: libc::c_int) -> i64 {
    // SAFETY: sysconf takes an integer and reads no memory of ours.
    unsafe { libc::sysconf(name) }
}

fn page_size() -> u64 {
    sysconf(libc::_SC_PAGESIZE).max(0) as u64
}

/// Online CPUs.
pub fn cpus() -> u32 {
    sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as u32
}

/// A process's cgroup paths from /proc/<pid>/cgroup, the v2 one (`0::`)
/// first, then the v1 hierarchies' (memory first among those).
pub fn cgroup_paths(tgid: u32) -> Vec<String> {
    let Ok(text) = fs::read_to_string(format!("/proc/{tgid}/cgroup")) else { return Vec::new() };
    let mut lines: Vec<(u8, String)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rank = match controllers {
                "" => 0,
                c if c.split(',').any(|c| c == "memory") => 1,
                _ => 2,
            };
            Some((rank, path.to_string()))
        })
        .collect();
    lines.sort();
    lines.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_comm_stops_at_nul() {
        assert_eq!(comm_from_kernel(b"nginx\0\0\0garbage"), "nginx");
        assert_eq!(comm_from_kernel(b"0123456789abcdef"), "0123456789abcdef");
        assert_eq!(comm_from_kernel(b"\xffx\0"), "\u{fffd}x");
    }

    #[test]
    fn self_figures_are_plausible() {
        assert!(alive(std::process::id()));
        assert!(self_rss_bytes() > 0);
        assert!(comm(std::process::id()).is_some());
    }
}
