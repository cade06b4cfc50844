//! Disk KPIs: every real filesystem the agent reports matches statvfs.

use std::time::Duration;

use probe_tests::{Agent, require_bpf};

#[test]
fn disk_figures_match_statvfs() {
    require_bpf!();
    let mut agent = Agent::start(&["--interval", "1s"]).unwrap();
    let host = agent.wait_for(|r| r["type"] == "host", Duration::from_secs(5)).unwrap();
    drop(agent);
    let disks = host["disk"].as_array().unwrap();
    assert!(disks.iter().any(|d| d["mount"] == "/"), "the root filesystem is reported: {disks:?}");
    for d in disks {
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
