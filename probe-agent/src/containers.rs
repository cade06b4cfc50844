//! Container attribution: cgroup id -> cgroup path -> container id and pod.
//!
//! `bpf_get_current_cgroup_id()` returns the id of the task's cgroup v2
//! (the inode number of its directory in the v2 hierarchy), so the agent
//! maps ids to paths by walking that hierarchy: /sys/fs/cgroup on a pure v2
//! host, /sys/fs/cgroup/unified on a hybrid one. The container id is then
//! read from the path as the runtimes name it (docker, containerd, cri-o,
//! podman; cgroupfs and systemd drivers; Kubernetes pod slices).

use crate::records::Runtime;

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// A container, as told by its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Container {
    /// The runtime's 64-hex-digit container id.
    pub id: String,
    pub runtime: Runtime,
    /// The Kubernetes pod UID (with dashes), when in a pod.
    pub pod_uid: Option<String>,
    /// The container's own cgroup (a process may be in a cgroup below it):
    /// with the id, what identifies the container.
    pub cgroup: String,
}

/// A runtime's container id: 64 lowercase hex digits.
pub fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// `PREFIX<id>SUFFIX` -> the id, if it is one.
fn id_in<'a>(part: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    part.strip_prefix(prefix)?.strip_suffix(suffix).filter(|id| is_id(id))
}

/// The container a cgroup path belongs to, if any.
///
/// A container id is accepted only where a runtime puts it, counted from
/// the root of the hierarchy, so a cgroup that merely carries a
/// container's name elsewhere (a user's delegated subtree, or any
/// directory root made) is not taken for that container:
/// - docker: `/system.slice/docker-ID.scope` (systemd driver), `/docker/ID` (cgroupfs);
/// - podman: `/machine.slice/libpod-ID.scope`, `/libpod_parent/libpod-ID`,
///   and rootless `/user.slice/user-N.slice/user@N.service/.../libpod-ID.scope`;
/// - Kubernetes, systemd driver: `/kubepods.slice[/kubepods-QOS.slice]/kubepods[-QOS]-podUID.slice/`
///   then `cri-containerd-ID.scope`, `crio-ID.scope` or `docker-ID.scope`;
/// - Kubernetes, cgroupfs driver: `/kubepods[/QOS]/podUID/` then `ID` or `crio-ID`.
///
/// Processes in cgroups below a container's belong to it. Records are
/// keyed by the id and the container's cgroup together, so even a rootless
/// user's lookalike (in their own subtree) stays a record of its own.
pub fn parse(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let found = |runtime: Runtime, id: &str, depth: usize, pod_uid: Option<String>| {
        Some(Container {
            id: id.to_string(),
            runtime,
            pod_uid,
            cgroup: format!("/{}", parts[..depth].join("/")),
        })
    };
    match parts.as_slice() {
        ["system.slice", c, ..] if let Some(id) = id_in(c, "docker-", ".scope") => {
            found(Runtime::Docker, id, 2, None)
        }
        ["docker", c, ..] if is_id(c) => found(Runtime::Docker, c, 2, None),
        ["machine.slice", c, ..] if let Some(id) = id_in(c, "libpod-", ".scope") => {
            found(Runtime::Podman, id, 2, None)
        }
        ["libpod_parent", c, ..] if let Some(id) = id_in(c, "libpod-", "") => {
            found(Runtime::Podman, id, 2, None)
        }
        ["user.slice", user, service, rest @ ..]
            if user.strip_prefix("user-").and_then(|u| u.strip_suffix(".slice"))
                == service.strip_prefix("user@").and_then(|u| u.strip_suffix(".service")) =>
        {
            let at = rest.iter().position(|c| id_in(c, "libpod-", ".scope").is_some())?;
            found(Runtime::Podman, id_in(rest[at], "libpod-", ".scope")?, 3 + at + 1, None)
        }
        ["kubepods.slice", rest @ ..] => {
            // An optional QoS slice, then the pod's slice, then the container.
            let at = rest.iter().position(|p| pod_uid(p).is_some()).filter(|&i| i <= 1)?;
            let uid = pod_uid(rest[at]);
            let c = rest.get(at + 1)?;
            let depth = 1 + at + 2;
            if let Some(id) = id_in(c, "cri-containerd-", ".scope") {
                found(Runtime::Containerd, id, depth, uid)
            } else if let Some(id) = id_in(c, "crio-", ".scope") {
                found(Runtime::CriO, id, depth, uid)
            } else if let Some(id) = id_in(c, "docker-", ".scope") {
                found(Runtime::Docker, id, depth, uid)
            } else {
                None
            }
        }
        ["kubepods", rest @ ..] => {
            let at = rest.iter().position(|p| pod_uid(p).is_some()).filter(|&i| i <= 1)?;
            let uid = pod_uid(rest[at]);
            let c = rest.get(at + 1)?;
            let depth = 1 + at + 2;
            if is_id(c) {
                found(Runtime::Kubernetes, c, depth, uid)
            } else if let Some(id) = id_in(c, "crio-", "") {
                found(Runtime::CriO, id, depth, uid)
            } else {
                None
            }
        }
        _ => None,
    }
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
            assert!(path.starts_with(&c.cgroup), "{path}: {}", c.cgroup);
            assert!(c.cgroup.contains(ID));
            assert_eq!(serde_json::to_value(c.runtime).unwrap(), runtime, "{path}");
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

    /// A container's name anywhere but where its runtime puts it (a
    /// user's delegated subtree, a directory made by hand) is not that
    /// container; processes below a container's cgroup are its own.
    #[test]
    fn ids_count_only_where_runtimes_put_them() {
        for p in [
            format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope"),
            format!("/user.slice/user-1000.slice/session-3.scope/docker-{ID}.scope"),
            format!("/probe-test.slice/docker-{ID}.scope"),
            format!("/system.slice/foo.service/docker-{ID}.scope"),
            format!(
                "/kubepods.slice/a.slice/b.slice/kubepods-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/crio-{ID}.scope"
            ),
            format!("/user.slice/user-1000.slice/user@1001.service/libpod-{ID}.scope"),
        ] {
            assert_eq!(parse(&p), None, "{p}");
        }
        let nested = parse(&format!("/system.slice/docker-{ID}.scope/init.scope")).unwrap();
        assert_eq!(nested.cgroup, format!("/system.slice/docker-{ID}.scope"));
        let rootless = parse(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        ))
        .unwrap();
        assert_eq!(
            rootless.cgroup,
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope")
        );
    }

    #[test]
    fn ids_map_to_paths_on_this_host() {
        let mut cg = Cgroups::detect();
        // Every host this runs on (CI, the QEMU guests) has a v2 hierarchy,
        // pure or hybrid: a missing one is a failure, not a skip.
        let v2 = cg.v2.clone().expect("a cgroup v2 hierarchy");
        let root_id = fs::metadata(&v2).unwrap().ino();
        assert_eq!(cg.path(root_id), Some("/"));
        assert!(cg.walked >= 1);
    }
}
