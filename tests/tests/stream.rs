//! The default stream is sized for a log pipeline: per process, only the
//! system calls it spent most time in and those that failed most; nearly
//! idle processes left out; every cut counted in the agent record; and
//! nothing the rules or the report need left out (the server's process
//! and endpoint records are there, and `report` reads the stream).

use std::{collections::BTreeMap, process::Command, time::Duration};

use probe_tests::{Agent, Workload, agent_bin, require_bpf, tempdir};
use serde_json::Value;

/// `TOP_SYSCALLS + TOP_FAILING` in the agent's join.
const SYSCALLS_PER_PROCESS: usize = 6;
/// The busy target: 500 MB a day at 10 s intervals.
const BUSY_BYTES_PER_INTERVAL: usize = 500_000_000 / 8640;

#[test]
fn the_default_stream_fits_a_log_budget() {
    require_bpf!();
    let server =
        Workload::start(&["tcp-server", "--name", "pw-budget", "--delay-ms", "20"]).unwrap();
    let port = server.ready[0].clone();
    // Defaults but the overhead budget: the debug build under CI's load
    // would shed, and TCP switched off would take the endpoints away.
    let mut agent = Agent::start(&["--interval", "2s", "--overhead-budget-pct", "0"]).unwrap();
    let mut clients: Vec<Workload> = (0..2)
        .map(|_| {
            Workload::start(&["tcp-client", "--port", &port, "--requests", "100000", "--keepalive"])
                .unwrap()
        })
        .collect();
    for c in &mut clients {
        c.go().unwrap();
    }
    let mut spin = Workload::start(&["spin", "--name", "pw-busy", "--ms", "7000"]).unwrap();
    spin.go().unwrap();
    for _ in 0..4 {
        agent.wait_for(|r| r["type"] == "agent", Duration::from_secs(10)).unwrap();
    }
    drop(clients);
    spin.finish().unwrap();
    let records = agent.stop().unwrap();

    // Whole intervals only: from after the status record to the last
    // agent record before the final, partial one.
    let agents: Vec<&Value> = records.iter().filter(|r| r["type"] == "agent").collect();
    let whole: Vec<&str> =
        agents[..agents.len() - 1].iter().map(|a| a["ts"].as_str().unwrap()).collect();
    let mut bytes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_process: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for r in records.iter().filter(|r| r["type"] != "status") {
        let ts = r["ts"].as_str().unwrap();
        *bytes.entry(ts).or_default() += r.to_string().len() + 1;
        if r["type"] == "syscall" {
            *per_process.entry((ts, r["pid"].as_u64().unwrap())).or_default() += 1;
        }
    }
    for ts in &whole {
        let b = bytes[ts];
        eprintln!("{ts}: {b} bytes");
        assert!(b < BUSY_BYTES_PER_INTERVAL, "{ts}: {b} bytes, over the busy budget");
    }
    let most = per_process.values().max().copied().unwrap_or(0);
    assert!(most <= SYSCALLS_PER_PROCESS, "a process had {most} syscall records in an interval");
    let cut: u64 = agents.iter().map(|a| a["syscalls_cut"].as_u64().unwrap()).sum();
    let idle: u64 = agents.iter().map(|a| a["processes_cut_idle"].as_u64().unwrap()).sum();
    eprintln!("syscall records cut {cut}, nearly idle processes cut {idle}");
    assert!(idle > 0, "a host always has nearly idle processes");

    // What the rules and the report need is there every whole interval:
    // the server's process and endpoint records, the busy process, its
    // longest calls.
    for ts in &whole[1..] {
        let at = |kind: &str, pid: u32| {
            records.iter().find(|r| r["ts"] == *ts && r["type"] == kind && r["pid"] == pid)
        };
        let p = at("process", server.pid).unwrap_or_else(|| panic!("{ts}: no server process"));
        assert!(p["requests"]["count"].as_u64().unwrap() > 0, "{p}");
        assert!(at("endpoint", server.pid).is_some(), "{ts}: no server endpoint");
        assert!(at("process", spin.pid).is_some(), "{ts}: no busy process");
        // The server's threads sleep its 20 ms delay for every request:
        // its call by time.
        let calls: Vec<&str> = records
            .iter()
            .filter(|r| r["ts"] == *ts && r["type"] == "syscall" && r["pid"] == server.pid)
            .map(|r| r["syscall"].as_str().unwrap())
            .collect();
        assert!(calls.contains(&"clock_nanosleep"), "{ts}: {calls:?}");
    }

    // `report` reads the default stream: the port has its rows.
    let dir = tempdir("stream");
    let file = dir.join("stream.jsonl");
    std::fs::write(&file, records.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let out = Command::new(agent_bin()).arg("report").arg(&file).output().unwrap();
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        md.contains(&format!("| requests.latency_ms.avg | port {port} (pw-budget) | 500 ms |")),
        "{md}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
