//! Names for system call numbers and errnos, from tables generated out of
//! the kernel's UAPI headers (`cargo xtask gen-names`).

use std::borrow::Cow;

mod generated;

/// The running architecture's name for system call `nr`, or `syscall_<nr>`
/// for a number the table does not know (newer than the headers it was
/// generated from).
pub fn syscall(nr: u16) -> Cow<'static, str> {
    #[cfg(target_arch = "x86_64")]
    let table: &[&str] = &generated::SYSCALLS_X86_64;
    #[cfg(target_arch = "aarch64")]
    let table: &[&str] = &generated::SYSCALLS_AARCH64;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let table: &[&str] = &[];
    match table.get(nr as usize) {
        Some(name) if !name.is_empty() => Cow::Borrowed(name),
        _ => Cow::Owned(format!("syscall_{nr}")),
    }
}

/// Kernel-internal errnos that a system call can return to the tracepoint
/// before signal handling rewrites them (include/linux/errno.h): a call
/// interrupted by a signal and then restarted shows one of these.
const INTERNAL_ERRNOS: [(u16, &str); 5] = [
    (512, "ERESTARTSYS"),
    (513, "ERESTARTNOINTR"),
    (514, "ERESTARTNOHAND"),
    (515, "ENOIOCTLCMD"),
    (516, "ERESTART_RESTARTBLOCK"),
];

/// Symbolic name of `errno` (`ENOENT`), or `E<n>` when it has none.
pub fn errno(errno: u16) -> Cow<'static, str> {
    generated::ERRNOS
        .iter()
        .chain(INTERNAL_ERRNOS.iter())
        .find(|(n, _)| *n == errno)
        .map_or_else(|| Cow::Owned(format!("E{errno}")), |(_, name)| Cow::Borrowed(*name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn x86_64_numbers() {
        assert_eq!(syscall(0), "read");
        assert_eq!(syscall(39), "getpid");
        assert_eq!(syscall(110), "getppid");
        assert_eq!(syscall(257), "openat");
        assert_eq!(syscall(230), "clock_nanosleep");
        assert_eq!(syscall(1000), "syscall_1000");
    }

    #[test]
    #[cfg(target_arch = "aarch64")]
    fn aarch64_numbers() {
        assert_eq!(syscall(63), "read");
        assert_eq!(syscall(56), "openat");
        assert_eq!(syscall(173), "getppid");
        assert_eq!(syscall(115), "clock_nanosleep");
        assert_eq!(syscall(79), "newfstatat");
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno(2), "ENOENT");
        assert_eq!(errno(11), "EAGAIN");
        assert_eq!(errno(512), "ERESTARTSYS");
        assert_eq!(errno(4000), "E4000");
    }
}
