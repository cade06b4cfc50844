//! Memory KPIs against ground truth: a process that touches a known amount
//! of memory, and the host figures against /proc/meminfo.

use std::time::Duration;

use probe_tests::{Agent, Workload, of, require_bpf};

#[test]
fn touched_memory_shows_in_rss() {
    require_bpf!();
    let mut w =
        Workload::start(&["alloc", "--name", "pw-alloc", "--mib", "256", "--hold-ms", "3000"])
            .unwrap();
    let pid = w.pid;
    let mut agent = Agent::start(&["--interval", "1s", "--pid", &pid.to_string()]).unwrap();
    w.go().unwrap();
    let touched = w.next_line().unwrap()["touched_bytes"].as_u64().unwrap();
    let rec = agent
        .wait_for(
            |r| {
                r["type"] == "process"
                    && r["pid"] == pid
                    && r["memory"]["rss_bytes"].as_u64().unwrap_or(0) >= touched
            },
            Duration::from_secs(5),
        )
        .expect("a process record with rss >= the touched memory");
    eprintln!("rss {} bytes, touched {touched}", rec["memory"]["rss_bytes"]);
    let host = agent.wait_for(|r| r["type"] == "host", Duration::from_secs(5)).unwrap();
    w.finish().unwrap();
    let records = agent.stop().unwrap();
    assert!(of(&records, "process", pid).count() >= 1);

    let m = &host["memory"];
    let (used, total) = (m["used_bytes"].as_u64().unwrap(), m["total_bytes"].as_u64().unwrap());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |k: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    assert_eq!(total, kib("MemTotal:"));
    let used_now = kib("MemTotal:") - kib("MemAvailable:");
    assert!(
        (used as f64 - used_now as f64).abs() < 0.05 * total as f64,
        "used {used} vs meminfo {used_now}"
    );
    assert!(used >= touched, "the 256 MiB held are part of the host's used memory");
    let pct = m["utilization_pct"].as_f64().unwrap();
    assert!((pct - used as f64 * 100.0 / total as f64).abs() < 0.01);
}
