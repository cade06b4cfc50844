//! Disk KPIs: every real filesystem the agent reports matches statvfs, and
//! the node's view holds from a mount namespace of its own (a pod's), with
//! the node's root mounted elsewhere (`--host-root`).

use std::time::Duration;

use probe_tests::{Agent, require_bpf, tempdir};

/// The `disk` array of the agent's first host record.
fn disks(mut agent: Agent) -> Vec<serde_json::Value> {
    let host = agent.wait_for(|r| r["type"] == "host", Duration::from_secs(5)).unwrap();
    drop(agent);
    host["disk"].as_array().unwrap().clone()
}

#[test]
fn disk_figures_match_statvfs() {
    require_bpf!();
    let disks = disks(Agent::start(&["--interval", "1s"]).unwrap());
    assert!(disks.iter().any(|d| d["mount"] == "/"), "the root filesystem is reported: {disks:?}");
    for d in &disks {
        let mount = d["mount"].as_str().unwrap();
        assert!(
            !["proc", "sysfs", "tmpfs", "cgroup2", "devtmpfs"]
                .contains(&d["fstype"].as_str().unwrap())
        );
        let (f, blocks, free, avail) = probe_tests::statvfs(mount.as_ref()).unwrap();
        let f = f as f64;
        let size = blocks as f64 * f;
        let used = (blocks - free) as f64 * f;
        let avail = avail as f64 * f;
        let got_size = d["size_bytes"].as_f64().unwrap();
        let got_used = d["used_bytes"].as_f64().unwrap();
        assert!((got_size - size).abs() <= 0.01 * size, "{mount}: size {got_size} vs {size}");
        assert!((got_used - used).abs() <= 0.01 * size, "{mount}: used {got_used} vs {used}");
        let pct = used * 100.0 / (used + avail);
        assert!(
            (d["utilization_pct"].as_f64().unwrap() - pct).abs() <= 1.0,
            "{mount}: {} vs {pct}",
            d["utilization_pct"]
        );
    }
}

/// As in a pod: the agent in a mount namespace of its own, with the node's
/// whole mount tree bound at another path (the DaemonSet's /host) given as
/// `--host-root`. A real filesystem (an ext4 image) is mounted under that
/// root only (the node's, not the agent's own view), another outside it
/// only (the container's own). The agent reports the node's filesystems,
/// named as the node names them, with the node's figures: the node's list
/// plus the one under the root, as `df` sees it, and nothing outside.
#[test]
fn the_nodes_disks_from_a_mount_namespace_with_the_root_elsewhere() {
    require_bpf!();
    let on_node = disks(Agent::start(&["--interval", "1s"]).unwrap());
    let dir = tempdir("nodeview");
    let d = dir.to_str().unwrap();
    for name in ["root", "in-node", "outside"] {
        std::fs::create_dir(dir.join(name)).unwrap();
    }
    for img in ["node.img", "own.img"] {
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", &format!("{d}/{img}"), "8M"])
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A private mount namespace: the mounts go with the agent.
    let script = r#"set -e; d=$1; shift
        mount --rbind / "$d/root"
        mount -o loop "$d/node.img" "$d/root$d/in-node"
        mount -o loop "$d/own.img" "$d/outside"
        df -B1 --output=size,used "$d/root$d/in-node" | tail -1 > "$d/df.txt"
        exec "$@""#;
    let root = format!("{d}/root");
    let in_pod = disks(
        Agent::start_wrapped(
            &["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", d],
            &["--interval", "1s", "--host-root", &root],
        )
        .unwrap(),
    );
    let mount = |d: &serde_json::Value| d["mount"].as_str().unwrap().to_string();
    let mut want: Vec<String> = on_node.iter().map(mount).collect();
    let extra = format!("{d}/in-node");
    want.push(extra.clone());
    want.sort();
    let mut got: Vec<String> = in_pod.iter().map(mount).collect();
    got.sort();
    assert_eq!(got, want, "{in_pod:?}");
    for d in &in_pod {
        let (mount, used) = (mount(d), d["used_bytes"].as_f64().unwrap());
        let (size, want_used) = match on_node.iter().find(|n| n["mount"] == mount.as_str()) {
            Some(node) => {
                assert_eq!(d["fstype"], node["fstype"]);
                (node["size_bytes"].as_u64().unwrap(), node["used_bytes"].as_f64().unwrap())
            }
            None => {
                // The filesystem only the node's view has, as df saw it.
                assert_eq!(d["fstype"], "ext4");
                let df = std::fs::read_to_string(dir.join("df.txt")).unwrap();
                let v: Vec<u64> = df.split_whitespace().map(|w| w.parse().unwrap()).collect();
                (v[0], v[1] as f64)
            }
        };
        assert_eq!(d["size_bytes"], size, "{mount}");
        assert!(
            (used - want_used).abs() <= 0.01 * size as f64,
            "{mount}: used {used} vs {want_used}"
        );
    }
    // The mounts went with the agent's namespace.
    assert!(std::fs::read_dir(dir.join("in-node")).unwrap().next().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
