//! Container attribution: cgroup id -> cgroup path -> container id and pod.
//!
//! `bpf_get_current_cgroup_id()` returns the id of the task's cgroup v2
//! (the inode number of its directory in the v2 hierarchy), so the agent
//! maps ids to paths by walking that hierarchy: /sys/fs/cgroup on a pure v2
//! host, /sys/fs/cgroup/unified on a hybrid one. The container id is then
//! read from the path as the runtimes name it (docker, containerd, cri-o,
//! podman; cgroupfs and systemd drivers; Kubernetes pod slices).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// A container, as told by its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The runtime's 64-hex-digit container id.
    pub id: String,
    pub runtime: &'static str,
    /// The Kubernetes pod UID (with dashes), when in a pod.
    pub pod_uid: Option<String>,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The container a cgroup path belongs to, if any.
pub fn parse(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut found = None;
    for (i, part) in parts.iter().enumerate().rev() {
        let scope = part.strip_suffix(".scope").unwrap_or(part);
        let (runtime, id) = if let Some(id) = scope.strip_prefix("docker-") {
            ("docker", id)
        } else if let Some(id) = scope.strip_prefix("cri-containerd-") {
            ("containerd", id)
        } else if let Some(id) = scope.strip_prefix("crio-") {
            ("cri-o", id)
        } else if let Some(id) = scope.strip_prefix("libpod-") {
            ("podman", id)
        } else if is_id(part) {
            // cgroupfs driver: the runtime is told by the parent.
            let parent = if i > 0 { parts[i - 1] } else { "" };
            let runtime = match parent {
                "docker" => "docker",
                "libpod_parent" | "machine.slice" => "podman",
                _ if parts.iter().any(|p| p.starts_with("kubepods")) => "kubernetes",
                _ => "unknown",
            };
            (runtime, *part)
        } else {
            continue;
        };
        if is_id(id) {
            found = Some((runtime, id));
            break;
        }
    }
    let (runtime, id) = found?;
    let pod_uid = parts.iter().find_map(|p| pod_uid(p));
    Some(Container { id: id.to_string(), runtime, pod_uid })
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let s = part.strip_suffix(".slice").unwrap_or(part);
    let at = s.rfind("pod")?;
    if at > 0 && !s[..at].ends_with('-') {
        return None;
    }
    let uid = s[at + 3..].replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() }
        });
    ok.then_some(uid)
}

/// Where the cgroup hierarchies are.
pub struct Cgroups {
    /// The cgroup v2 mount, if any.
    v2: Option<PathBuf>,
    /// The cgroup v1 memory controller, if mounted.
    v1_memory: Option<PathBuf>,
    paths: HashMap<u64, String>,
    /// Directories visited by the last walk (bounded by `MAX_WALK`).
    pub walked: usize,
    /// Directories the last walk could not visit because of the bound.
    pub walk_cut: usize,
    walked_this_interval: bool,
}

/// Most cgroup directories walked to map ids to paths.
const MAX_WALK: usize = 100_000;

impl Cgroups {
    pub fn detect() -> Self {
        Self::at(Path::new("/sys/fs/cgroup"))
    }

    /// Hierarchies under `root` (normally /sys/fs/cgroup).
    pub fn at(root: &Path) -> Self {
        let v2 = if root.join("cgroup.controllers").exists() {
            Some(root.to_path_buf())
        } else if root.join("unified/cgroup.controllers").exists() {
            Some(root.join("unified"))
        } else {
            None
        };
        let v1_memory =
            Some(root.join("memory")).filter(|p| p.join("memory.usage_in_bytes").exists());
        Cgroups {
            v2,
            v1_memory,
            paths: HashMap::new(),
            walked: 0,
            walk_cut: 0,
            walked_this_interval: false,
        }
    }

    /// The path (from the v2 root, starting with `/`) of cgroup `id`. An
    /// unknown id walks the hierarchy again (new cgroups appear all the time).
    pub fn path(&mut self, id: u64) -> Option<&str> {
        if !self.paths.contains_key(&id) && !self.walked_this_interval {
            self.walk();
            self.walked_this_interval = true;
        }
        self.paths.get(&id).map(String::as_str)
    }

    /// Allows one more walk (called once per interval): an id unknown now
    /// (a cgroup created since, or one that is gone) costs at most one walk
    /// per interval, not one per process.
    pub fn next_interval(&mut self) {
        self.walked_this_interval = false;
    }

    /// The id (inode) of the cgroup at `path` in the v2 hierarchy.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let v2 = self.v2.as_ref()?;
        fs::metadata(v2.join(path.trim_start_matches('/'))).ok().map(|m| m.ino())
    }

    /// Walks the v2 hierarchy and records every directory's id (inode).
    pub fn walk(&mut self) {
        let Some(root) = self.v2.clone() else { return };
        self.paths.clear();
        self.walked = 0;
        self.walk_cut = 0;
        let mut stack = vec![(root.clone(), String::from("/"))];
        while let Some((dir, rel)) = stack.pop() {
            if self.walked >= MAX_WALK {
                self.walk_cut += 1;
                continue;
            }
            self.walked += 1;
            if let Ok(meta) = fs::metadata(&dir) {
                self.paths.insert(meta.ino(), rel.clone());
            }
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child =
                        if rel == "/" { format!("/{name}") } else { format!("{rel}/{name}") };
                    stack.push((e.path(), child));
                }
            }
        }
    }

    /// Memory used by a cgroup and its limit (None: no limit), in bytes:
    /// cgroup v2 `memory.current`/`memory.max`, else the v1 memory
    /// controller's `memory.usage_in_bytes`/`memory.limit_in_bytes` at the
    /// same path (systemd and the runtimes name both hierarchies alike).
    pub fn memory(&self, path: &str) -> Option<(u64, Option<u64>)> {
        let rel = path.trim_start_matches('/');
        let read = |p: PathBuf| fs::read_to_string(p).ok().map(|s| s.trim().to_string());
        if let Some(v2) = &self.v2
            && let Some(cur) =
                read(v2.join(rel).join("memory.current")).and_then(|s| s.parse().ok())
        {
            let limit = read(v2.join(rel).join("memory.max")).and_then(|s| s.parse().ok());
            return Some((cur, limit));
        }
        let v1 = self.v1_memory.as_ref()?;
        let cur = read(v1.join(rel).join("memory.usage_in_bytes"))?.parse().ok()?;
        // v1 says "no limit" with a huge number (PAGE_COUNTER_MAX pages).
        let limit = read(v1.join(rel).join("memory.limit_in_bytes"))
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&l| l < 1 << 62);
        Some((cur, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c9a3b2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";

    #[test]
    fn runtimes_and_drivers() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), "docker", None),
            (format!("/docker/{ID}"), "docker", None),
            (
                format!("/system.slice/containerd.service/cri-containerd-{ID}.scope"),
                "containerd",
                None,
            ),
            (format!("/machine.slice/libpod-{ID}.scope/container"), "podman", None),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
                Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"),
            ),
            (
                format!("/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{ID}"),
                "kubernetes",
                Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/crio-{ID}.scope"
                ),
                "cri-o",
                Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"),
            ),
        ];
        for (path, runtime, pod) in cases {
            let c = parse(&path).unwrap_or_else(|| panic!("no container in {path}"));
            assert_eq!(c.id, ID, "{path}");
            assert_eq!(c.runtime, runtime, "{path}");
            assert_eq!(c.pod_uid.as_deref(), pod, "{path}");
        }
    }

    #[test]
    fn host_paths_have_no_container() {
        for p in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/sshd.service",
            "/init.scope",
            "/system.slice/docker-short.scope",
            "/docker/xyz",
        ] {
            assert_eq!(parse(p), None, "{p}");
        }
    }

    #[test]
    fn ids_map_to_paths_on_this_host() {
        let mut cg = Cgroups::detect();
        let Some(v2) = cg.v2.clone() else { return };
        let root_id = fs::metadata(&v2).unwrap().ino();
        assert_eq!(cg.path(root_id), Some("/"));
        assert!(cg.walked >= 1);
    }
}
