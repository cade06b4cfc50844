//! Kubernetes names (namespace, pod, container) of a container id, read
//! from the kubelet's log layout on the node: the agent never talks to the
//! API server.
//!
//! - `/var/log/containers/POD_NAMESPACE_CONTAINER-ID.log`: one symlink per
//!   container, made by the kubelet. It names the container id, so the
//!   match is exact; it is preferred.
//! - `/var/log/pods/NAMESPACE_POD_UID/CONTAINER/N.log`: one directory per
//!   pod, named with the pod UID the agent reads from the cgroup path. It
//!   gives the namespace and pod of any container of that pod (the pod's
//!   sandbox too, which has no log); the container only when one of its
//!   logs is a link to a file named with the id (docker's json logs).
//!
//! Namespaces and container names are DNS labels and pod names DNS
//! subdomains: none holds an underscore, so the `_`-separated names split
//! exactly. Only names are read (directory listings and links), never a
//! log's contents; links are not followed (the kubelet's are absolute, and
//! dangle under a host root mounted elsewhere). Listings are bounded
//! ([`MAX_ENTRIES`]); what the bound cuts is counted. Complete names are
//! cached per container id (at most twice the bound); an id without a
//! container name yet (its link not made yet, or a sandbox) reads the
//! listings again, at most once per interval.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use crate::records::K8s;

/// Most entries read from each listing.
pub const MAX_ENTRIES: usize = 50_000;

/// A pod's log directory: its names, and where it is.
struct PodDir {
    namespace: String,
    pod: String,
    dir: PathBuf,
}

/// The kubelet's log layout under a host root.
pub struct Kubelet {
    root: PathBuf,
    /// Container id -> names.
    by_id: HashMap<String, K8s>,
    /// Pod UID -> its log directory, from the last listing.
    by_uid: HashMap<String, PodDir>,
    read_this_interval: bool,
    /// Most entries read from each listing ([`MAX_ENTRIES`]).
    max_entries: usize,
    /// Entries the last listings left unread, past [`MAX_ENTRIES`].
    pub cut: u64,
}

impl Kubelet {
    /// The layout under `root` (`/`, or where the node's root is mounted).
    pub fn new(root: &Path) -> Self {
        Kubelet {
            root: root.to_path_buf(),
            by_id: HashMap::new(),
            by_uid: HashMap::new(),
            read_this_interval: false,
            max_entries: MAX_ENTRIES,
            cut: 0,
        }
    }

    /// Allows one more reading of the listings (once per interval).
    pub fn next_interval(&mut self) {
        self.read_this_interval = false;
    }

    /// The names of container `id` of the pod with UID `pod_uid`; empty
    /// when the kubelet has not named it.
    pub fn names(&mut self, id: &str, pod_uid: &str) -> K8s {
        if let Some(k) = self.by_id.get(id) {
            return k.clone();
        }
        if !self.read_this_interval {
            self.read_this_interval = true;
            self.read();
            if let Some(k) = self.by_id.get(id) {
                return k.clone();
            }
        }
        let Some(p) = self.by_uid.get(pod_uid) else { return K8s::default() };
        let k = K8s {
            k8s_namespace: Some(p.namespace.clone()),
            k8s_pod: Some(p.pod.clone()),
            k8s_container: linked_container(&p.dir, id),
        };
        if k.k8s_container.is_some() && self.by_id.len() < 2 * self.max_entries {
            self.by_id.insert(id.to_string(), k.clone());
        }
        k
    }

    /// Reads both listings again (what they no longer hold is forgotten).
    fn read(&mut self) {
        self.cut = 0;
        self.by_id.clear();
        for name in self.list("var/log/containers") {
            if let Some((id, k)) = container_log(&name) {
                self.by_id.insert(id.to_string(), k);
            }
        }
        self.by_uid.clear();
        let pods = self.root.join("var/log/pods");
        for name in self.list("var/log/pods") {
            if let Some([namespace, pod, uid]) = split3(&name) {
                let dir = pods.join(&name);
                let p = PodDir { namespace: namespace.into(), pod: pod.into(), dir };
                self.by_uid.insert(uid.to_string(), p);
            }
        }
    }

    /// The names in a directory under the root, at most `max_entries` (the
    /// rest counted in `cut`); none if it cannot be read.
    fn list(&mut self, rel: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.root.join(rel)) else { return Vec::new() };
        let mut names = Vec::new();
        for e in entries.flatten() {
            if names.len() >= self.max_entries {
                self.cut += 1;
                continue;
            }
            if let Ok(name) = e.file_name().into_string() {
                names.push(name);
            }
        }
        names
    }
}

/// `A_B_C` -> [A, B, C], each non-empty.
fn split3(name: &str) -> Option<[&str; 3]> {
    let mut it = name.split('_');
    let parts = [it.next()?, it.next()?, it.next()?];
    (it.next().is_none() && parts.iter().all(|p| !p.is_empty())).then_some(parts)
}

/// `POD_NAMESPACE_CONTAINER-ID.log` -> the id and the names.
fn container_log(name: &str) -> Option<(&str, K8s)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if !crate::containers::is_id(id) {
        return None;
    }
    // The container's name may itself hold dashes: the id is the last part.
    let [pod, namespace, container] = split3(rest)?;
    let k = K8s {
        k8s_namespace: Some(namespace.into()),
        k8s_pod: Some(pod.into()),
        k8s_container: Some(container.into()),
    };
    Some((id, k))
}

/// The container of a pod's log directory whose log is a link naming
/// `id` (docker: `.../containers/ID/ID-json.log`). A bounded look: a pod
/// has a few containers, each a few rotated logs.
fn linked_container(pod_dir: &Path, id: &str) -> Option<String> {
    const MOST: usize = 64;
    for c in fs::read_dir(pod_dir).ok()?.flatten().take(MOST) {
        for log in fs::read_dir(c.path()).into_iter().flatten().flatten().take(MOST) {
            let target = fs::read_link(log.path());
            if target.is_ok_and(|t| t.to_string_lossy().contains(id)) {
                return c.file_name().into_string().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const ID: &str = "4f1c9a3b2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";
    const ID2: &str = "0000000000000000000000000000000000000000000000000000000000000abc";
    const UID: &str = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("probe-k8s-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(ns: &str, pod: &str, c: Option<&str>) -> K8s {
        K8s {
            k8s_namespace: Some(ns.into()),
            k8s_pod: Some(pod.into()),
            k8s_container: c.map(Into::into),
        }
    }

    #[test]
    fn log_names_split_exactly() {
        let name = format!("web-7d9f_shop_istio-proxy-{ID}.log");
        let (id, k) = container_log(&name).unwrap();
        assert_eq!((id, k), (ID, names("shop", "web-7d9f", Some("istio-proxy"))));
        for bad in [
            format!("web_shop_app-{ID}.txt"),
            format!("web_shop-{ID}.log"),
            format!("web_shop_a_b-{ID}.log"),
            "web_shop_app-123.log".to_string(),
            format!("_shop_app-{ID}.log"),
        ] {
            assert!(container_log(&bad).is_none(), "{bad}");
        }
        assert_eq!(split3(&format!("shop_web-7d9f_{UID}")), Some(["shop", "web-7d9f", UID]));
    }

    /// The kubelet's layout, made for real: the link in /var/log/containers
    /// names the container; a container of the pod without one (its
    /// sandbox) gets the pod's names from its UID; docker's links name the
    /// container in /var/log/pods; off Kubernetes, nothing.
    #[test]
    fn names_from_the_kubelets_layout() {
        let root = tempdir("layout");
        let pod_dir = root.join(format!("var/log/pods/shop_web-7d9f_{UID}"));
        fs::create_dir_all(pod_dir.join("app")).unwrap();
        fs::create_dir_all(pod_dir.join("sidecar")).unwrap();
        fs::write(pod_dir.join("app/0.log"), "").unwrap();
        symlink(
            format!("/var/lib/docker/containers/{ID2}/{ID2}-json.log"),
            pod_dir.join("sidecar/0.log"),
        )
        .unwrap();
        fs::create_dir_all(root.join("var/log/containers")).unwrap();
        symlink(
            format!("/var/log/pods/shop_web-7d9f_{UID}/app/0.log"),
            root.join(format!("var/log/containers/web-7d9f_shop_app-{ID}.log")),
        )
        .unwrap();
        let mut k = Kubelet::new(&root);
        assert_eq!(k.names(ID, UID), names("shop", "web-7d9f", Some("app")));
        let sandbox = "5".repeat(64);
        assert_eq!(k.names(&sandbox, UID), names("shop", "web-7d9f", None));
        assert_eq!(k.names(ID2, UID), names("shop", "web-7d9f", Some("sidecar")));
        assert_eq!(k.names(&"6".repeat(64), "no-such-uid"), K8s::default());
        assert_eq!(k.cut, 0);
        // A link made later (the kubelet makes it as the container starts)
        // names the container from the next interval.
        symlink(
            format!("/var/log/pods/shop_web-7d9f_{UID}/sidecar/1.log"),
            root.join(format!("var/log/containers/web-7d9f_shop_late-{sandbox}.log")),
        )
        .unwrap();
        assert_eq!(k.names(&sandbox, UID), names("shop", "web-7d9f", None));
        k.next_interval();
        assert_eq!(k.names(&sandbox, UID), names("shop", "web-7d9f", Some("late")));
        assert_eq!(Kubelet::new(&root.join("nowhere")).names(ID, UID), K8s::default());
        fs::remove_dir_all(&root).unwrap();
    }

    /// Past the bound, listings are cut and the cut is counted.
    #[test]
    fn listings_are_bounded() {
        let root = tempdir("bound");
        let dir = root.join("var/log/containers");
        fs::create_dir_all(&dir).unwrap();
        for i in 0..13 {
            fs::File::create(dir.join(i.to_string())).unwrap();
        }
        let mut k = Kubelet { max_entries: 10, ..Kubelet::new(&root) };
        k.names(ID, UID);
        assert_eq!(k.cut, 3);
        fs::remove_dir_all(&root).unwrap();
    }
}
