//! Disk space per real mounted filesystem, as statvfs(3) reports it.
//!
//! With a host root other than `/` (`--host-root`: the DaemonSet mounts the
//! node's `/` at `/host`), the filesystems are the node's: those mounted at
//! or under the root, named as the node names them (`/host/data` is
//! `/data`), not the container's own (its overlay, its bind mounts).

use std::{collections::HashSet, ffi::CString, fs, path::Path};

use serde::{Deserialize, Serialize};

use crate::aggregate::round;

/// One filesystem in the `host` record's `disk` array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub mount: String,
    pub fstype: String,
    /// size - free, as df's "Used".
    pub used_bytes: u64,
    pub size_bytes: u64,
    /// used / (used + available to unprivileged users) x 100, as df's "Use%".
    pub utilization_pct: f64,
}

/// Filesystem types that hold no user data on a disk of their own.
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "pstore",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "rpc_pipefs",
    "nsfs",
    "ramfs",
    "squashfs",
    "selinuxfs",
    "overlay",
    "fuse.lxcfs",
    "fuse.gvfsd-fuse",
    "fuse.portal",
    "iso9660",
    "nfsd",
];

/// Decodes the octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (device, mount point, fs type) of each real filesystem in a mountinfo
/// text mounted at or under `root`, once per device (bind mounts and
/// subvolumes repeat it), its mount point as seen from `root`.
pub fn real_mounts(mountinfo: &str, root: &str) -> Vec<(String, String, String)> {
    let root = root.trim_end_matches('/');
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(dev), Some(mount), Some(fstype)) =
            (fields.get(2), fields.get(4), fields.get(sep + 1))
        else {
            continue;
        };
        if PSEUDO.contains(fstype) || fstype.starts_with("fuse.") && *fstype != "fuse.sshfs" {
            continue;
        }
        // Under the root (on a path boundary), or left out.
        let mount = unescape(mount);
        let Some(rel) = mount.strip_prefix(root).filter(|r| r.is_empty() || r.starts_with('/'))
        else {
            continue;
        };
        let rel = if rel.is_empty() { "/" } else { rel };
        if seen.insert(dev.to_string()) {
            out.push((dev.to_string(), rel.to_string(), fstype.to_string()));
        }
    }
    out
}

/// statvfs of `mount`: (size, free, available), in bytes.
pub fn statvfs(mount: &str) -> Option<(u64, u64, u64)> {
    let path = CString::new(mount).ok()?;
    // SAFETY: statvfs is plain C data (integers): all zeros is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path that outlives the call, and the struct
    // statvfs(3) fills.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let f = st.f_frsize as u64;
    Some((st.f_blocks as u64 * f, st.f_bfree as u64 * f, st.f_bavail as u64 * f))
}

/// Every real filesystem's space, of the node whose root is at `root`.
pub fn disks(root: &Path) -> Vec<DiskRecord> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root = root.to_string_lossy();
    real_mounts(&info, &root)
        .into_iter()
        .filter_map(|(_, mount, fstype)| {
            let here = format!("{}{mount}", root.trim_end_matches('/'));
            let (size, free, avail) = statvfs(&here)?;
            if size == 0 {
                return None;
            }
            let used = size.saturating_sub(free);
            let denom = used + avail;
            let pct = if denom == 0 { 0.0 } else { round(used as f64 * 100.0 / denom as f64, 2) };
            Some(DiskRecord {
                mount,
                fstype,
                used_bytes: used,
                size_bytes: size,
                utilization_pct: pct,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_real_filesystems_once() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw - proc proc rw
24 22 0:5 / /dev rw - devtmpfs udev rw
30 22 254:0 /var/lib/x /mnt/bind rw - ext4 /dev/vda rw
31 22 259:1 / /data\\040disk rw - xfs /dev/nvme0n1p1 rw
32 22 0:44 / /run rw - tmpfs tmpfs rw
33 22 0:50 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let m = real_mounts(info, "/");
        let mounts: Vec<&str> = m.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(mounts, ["/", "/data disk"]);
    }

    /// In a pod: the container's overlay root and its bind mounts from the
    /// node's disk (first in the table) are not the node's view; the
    /// node's root at /host and what is under it are, named as on the node.
    #[test]
    fn under_a_host_root_the_nodes_filesystems() {
        let info = "900 800 0:310 / / rw - overlay overlay rw,lowerdir=/var/lib/containerd/x
901 900 254:0 /var/lib/kubelet/pods/u/etc-hosts /etc/hosts rw - ext4 /dev/vda rw
902 900 254:0 / /host ro,relatime rslave - ext4 /dev/vda rw
903 902 259:1 / /host/data\\040disk ro rslave - xfs /dev/nvme0n1p1 rw
904 902 0:5 / /host/dev ro rslave - devtmpfs udev rw
905 902 254:0 /var/lib/kubelet /host/var/lib/kubelet ro rslave - ext4 /dev/vda rw
906 900 259:2 / /hostile ro - xfs /dev/nvme1n1 rw
";
        let m = real_mounts(info, "/host");
        let got: Vec<(&str, &str)> = m.iter().map(|x| (x.0.as_str(), x.1.as_str())).collect();
        assert_eq!(got, [("254:0", "/"), ("259:1", "/data disk")]);
        assert_eq!(real_mounts(info, "/host/"), m);
    }

    #[test]
    fn root_matches_statvfs() {
        let d = disks(Path::new("/"));
        let root = d.iter().find(|d| d.mount == "/");
        if let Some(root) = root {
            let (size, free, _) = statvfs("/").unwrap();
            assert_eq!(root.size_bytes, size);
            let used = size - free;
            assert!((root.used_bytes as f64 - used as f64).abs() <= size as f64 * 0.01);
        }
    }
}
