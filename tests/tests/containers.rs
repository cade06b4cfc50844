//! Container attribution: a workload moved into a cgroup named as a
//! container runtime names it is reported under that container id, with
//! the container's CPU, memory and system calls.

use std::time::Duration;

use probe_tests::{Agent, TestCgroup, Workload, of, require_bpf};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn workload_in_a_docker_named_cgroup_is_attributed_to_the_container() {
    require_bpf!();
    let cg = TestCgroup::create(&format!("docker/{ID}")).unwrap();
    let mut w = Workload::start(&["spin", "--name", "pw-contained", "--ms", "2500"]).unwrap();
    let pid = w.pid;
    cg.enter(pid).unwrap();
    let agent = Agent::start(&["--interval", "1s", "--pid", &pid.to_string()]).unwrap();
    w.go().unwrap();
    w.finish().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let records = agent.stop().unwrap();

    let procs: Vec<_> = of(&records, "process", pid).collect();
    assert!(!procs.is_empty());
    assert!(procs.iter().all(|p| p["container_id"] == ID), "{procs:?}");
    let containers: Vec<_> =
        records.iter().filter(|r| r["type"] == "container" && r["container_id"] == ID).collect();
    assert!(!containers.is_empty(), "no container record for {ID}");
    let busiest = containers
        .iter()
        .max_by(|a, b| a["cpu"]["cores"].as_f64().partial_cmp(&b["cpu"]["cores"].as_f64()).unwrap())
        .unwrap();
    assert_eq!(busiest["runtime"], "docker");
    assert_eq!(busiest["cgroup"], format!("/docker/{ID}"));
    assert!(busiest["pod_uid"].is_null());
    assert!(busiest["cpu"]["cores"].as_f64().unwrap() > 0.9, "{busiest}");
    assert!(busiest["memory"]["used_bytes"].as_u64().unwrap_or(0) > 0, "{busiest}");
    // Processes outside are attributed to the host.
    let calls: Vec<_> =
        records.iter().filter(|r| r["type"] == "syscall" && r["pid"] == pid).collect();
    assert!(!calls.is_empty() && calls.iter().all(|r| r["container_id"] == ID), "{calls:?}");
}
