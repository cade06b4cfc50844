//! Reliability under load and churn: exact counts for a reference process
//! during a syscall storm on every CPU; map entries of exited processes
//! reclaimed, with their last interval still reported; memory bounded.

use std::{process::Command, time::Duration};

use probe_tests::{Agent, Workload, require_bpf, syscall_total, workload_bin};
use serde_json::Value;

#[test]
fn reference_counts_stay_exact_under_a_syscall_storm() {
    require_bpf!();
    let cpus = std::thread::available_parallelism().unwrap().get();
    let mut reference = Workload::start(&[
        "calls",
        "--name",
        "pw-ref",
        "--ok",
        "20000",
        "--fail",
        "5000",
        "--threads",
        "2",
    ])
    .unwrap();
    let agent = Agent::start(&[
        "--interval",
        "1s",
        "--comm",
        "pw-ref",
        "--comm",
        "probe-workload",
        "--top",
        "100",
    ])
    .unwrap();
    // One storm per CPU, for 4 seconds.
    let storm_threads: Vec<_> = (0..cpus)
        .map(|_| {
            std::thread::spawn(|| {
                Command::new(workload_bin()).args(["storm", "--seconds", "4"]).output().unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    reference.go().unwrap();
    let truth = reference.finish().unwrap();
    let storm_calls: u64 = storm_threads
        .into_iter()
        .map(|t| {
            serde_json::from_slice::<Value>(&t.join().unwrap().stdout).unwrap()["calls"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let records = agent.stop().unwrap();
    let rate = storm_calls as f64 / 4.0;
    eprintln!("storm: {storm_calls} calls in 4 s ({rate:.0}/s) on {cpus} CPUs");

    let pid = reference.pid;
    probe_tests::assert_calls_exact(&records, pid, &truth);
    // Whatever was lost is counted; nothing is lost silently.
    let lost: u64 = records
        .iter()
        .filter(|r| r["type"] == "agent")
        .map(|r| {
            ["syscall_stats_full", "syscall_start_full", "syscall_bad_nr"]
                .iter()
                .map(|k| r["lost"][k].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(lost, 0, "no map filled up under this load");
    // The storm really was one: the host saw it.
    let host_calls: u64 = records
        .iter()
        .filter(|r| r["type"] == "host")
        .map(|r| r["syscalls"]["count"].as_u64().unwrap())
        .sum();
    assert!(host_calls >= storm_calls, "host {host_calls} vs storm {storm_calls}");
}

#[test]
fn churn_is_reclaimed_reported_and_bounded() {
    require_bpf!();
    let mut churn =
        Workload::start(&["churn", "--name", "pw-churn", "--procs", "3000", "--threads", "2000"])
            .unwrap();
    let mut agent =
        Agent::start(&["--interval", "1s", "--comm", "pw-churn", "--top", "100000"]).unwrap();
    churn.go().unwrap();
    let truth = churn.finish().unwrap();
    assert_eq!(truth["procs"], 3000);
    // Two more intervals: exited processes are reported, then reclaimed.
    for _ in 0..4 {
        agent.wait_for(|r| r["type"] == "agent", Duration::from_secs(5)).unwrap();
    }
    let records = agent.stop().unwrap();

    // Every forked child made 3 getppid calls and appears, once, under its own pid.
    let children: std::collections::HashSet<u64> = records
        .iter()
        .filter(|r| r["type"] == "syscall" && r["syscall"] == "getppid" && r["pid"] != churn.pid)
        .map(|r| r["pid"].as_u64().unwrap())
        .collect();
    let child_calls: u64 = records
        .iter()
        .filter(|r| r["type"] == "syscall" && r["syscall"] == "getppid" && r["pid"] != churn.pid)
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(children.len(), 3000, "every exited child is reported");
    assert_eq!(child_calls, 9000);
    // The threads' calls count for the process.
    assert_eq!(syscall_total(&records, churn.pid, "getppid", "count"), 6000);

    let agents: Vec<&Value> = records.iter().filter(|r| r["type"] == "agent").collect();
    let reclaimed: u64 = agents.iter().map(|a| a["entries_reclaimed"].as_u64().unwrap()).sum();
    assert!(reclaimed >= 3000, "entries of exited processes are freed: {reclaimed}");
    let last = agents.last().unwrap();
    for m in last["maps"].as_array().unwrap() {
        let fill = m["fill_pct"].as_f64().unwrap();
        assert!(fill < 50.0, "{} stays well below its bound after churn: {fill}%", m["name"]);
    }
    let peak_rss = agents.iter().map(|a| a["rss_bytes"].as_u64().unwrap()).max().unwrap();
    eprintln!("agent RSS peak {} MiB over the churn", peak_rss >> 20);
    assert!(peak_rss < 48 << 20, "agent RSS stays under 48 MiB: {peak_rss}");
}

#[test]
fn over_budget_the_agent_sheds_latency_timing_and_keeps_counts_exact() {
    require_bpf!();
    let cpus = std::thread::available_parallelism().unwrap().get();
    // Started (and named) before the agent, so that only the calls it makes
    // on the go signal are counted.
    let mut reference =
        Workload::start(&["calls", "--name", "pw-shed", "--ok", "5000", "--fail", "1000"]).unwrap();
    let mut agent =
        Agent::start(&["--interval", "1s", "--overhead-budget-pct", "2", "--comm", "pw-shed"])
            .unwrap();
    let storms: Vec<_> = (0..cpus)
        .map(|_| {
            std::thread::spawn(|| {
                Command::new(workload_bin()).args(["storm", "--seconds", "8"]).output().unwrap()
            })
        })
        .collect();
    let shed = agent
        .wait_for(
            |r| {
                r["type"] == "alert"
                    && r["rule"] == "overhead-budget"
                    && r["level"] == "investigate"
            },
            Duration::from_secs(5),
        )
        .expect("a syscall storm puts the agent over a 2% budget");
    eprintln!("{}", shed["message"]);
    // While shedding, a reference process's calls are still counted exactly.
    reference.go().unwrap();
    let truth = reference.finish().unwrap();
    for s in storms {
        s.join().unwrap();
    }
    let restored = agent
        .wait_for(
            |r| r["type"] == "alert" && r["rule"] == "overhead-budget" && r["level"] == "ok",
            Duration::from_secs(40),
        )
        .expect("full timing comes back when the storm is over");
    eprintln!("{}", restored["message"]);
    // Everything shed is measured again: a server's requests after the
    // storm are counted exactly (they were never switched off).
    let server = Workload::start(&["tcp-server", "--name", "pw-shed", "--delay-ms", "1"]).unwrap();
    let mut client = Workload::start(&[
        "tcp-client",
        "--port",
        &server.ready[0],
        "--requests",
        "30",
        "--keepalive",
    ])
    .unwrap();
    client.go().unwrap();
    client.finish().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let records = agent.stop().unwrap();
    let served: u64 = records
        .iter()
        .filter(|r| r["type"] == "endpoint" && r["pid"] == server.pid && r["role"] == "server")
        .map(|r| r["requests"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 30, "requests after the storm");
    let agents: Vec<&Value> = records.iter().filter(|r| r["type"] == "agent").collect();
    let max_every = agents
        .iter()
        .map(|a| a["shedding"]["latency_sample_every"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(max_every >= 4, "the agent record says it sheds: {max_every}");
    // The agent record of the interval that restored everything (the one
    // the "ok" alert follows; the TCP check after it may shed anew).
    let restored_at = agents
        .iter()
        .find(|a| a["ts"] == restored["ts"])
        .expect("the agent record of the restoring interval");
    assert_eq!(restored_at["shedding"]["latency_sample_every"], 1);
    // Past 1 in 64, the per-(process, call) detail went first (the least
    // valuable), said in the record and the alert; its calls were counted.
    let off = agents
        .iter()
        .find(|a| !a["shedding"]["detail_off"].as_array().unwrap().is_empty())
        .expect("the detail is shed when sampling is not enough");
    assert_eq!(off["shedding"]["detail_off"][0], "syscalls");
    // Counted from the next interval on (the record says what holds now).
    assert!(
        agents.iter().any(|a| a["lost"]["syscalls_shed"].as_u64().unwrap() > 0),
        "calls counted in lost.syscalls_shed while the detail is shed"
    );
    assert_eq!(off["kpis"]["tcp"]["available"], true, "requests are never switched off");
    assert!(records.iter().any(|r| r["type"] == "alert"
        && r["rule"] == "overhead-budget"
        && r["message"].as_str().unwrap().contains("per-(process, system call) detail off")));
    assert_eq!(restored_at["shedding"]["detail_off"], serde_json::json!([]));
    assert_eq!(restored_at["shedding"]["probes_off"], serde_json::json!([]));
    let pid = reference.pid;
    probe_tests::assert_calls_exact(&records, pid, &truth);
}

/// Started at its floor (the system-call programs detached) with a budget
/// a quiet host keeps, the agent restores a step at a time: the programs
/// are attached again (by a process that has dropped its capabilities),
/// and from then on a reference process's calls are counted exactly.
#[test]
fn restored_from_the_floor_the_system_call_programs_count_exactly_again() {
    require_bpf!();
    let mut reference =
        Workload::start(&["calls", "--name", "pw-floor", "--ok", "3000", "--fail", "500"]).unwrap();
    let mut agent = Agent::start(&[
        "--interval",
        "500ms",
        "--start-at-floor",
        "--overhead-budget-pct",
        "100",
        "--comm",
        "pw-floor",
    ])
    .unwrap();
    let empty = serde_json::json!([]);
    agent
        .wait_for(
            |r| {
                r["type"] == "agent"
                    && r["shedding"]["latency_sample_every"] == 1
                    && r["shedding"]["probes_off"] == empty
                    && r["shedding"]["detail_off"] == empty
            },
            Duration::from_secs(40),
        )
        .expect("every step restored on a calm host");
    reference.go().unwrap();
    let truth = reference.finish().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let records = agent.stop().unwrap();
    let agents: Vec<&Value> = records.iter().filter(|r| r["type"] == "agent").collect();
    // It started detached, and said so.
    let first = agents.first().unwrap();
    assert_eq!(first["shedding"]["probes_off"], serde_json::json!(["syscalls", "runq_latency"]));
    assert_eq!(first["kpis"]["syscalls"]["available"], false, "{first}");
    let restored: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "alert" && r["rule"] == "overhead-budget")
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert!(
        restored.iter().any(|m| m.contains("one step restored: timing 1 in 64 system calls")
            && m.contains("per-(process, system call) detail off")),
        "the step that attached the programs again is said: {restored:?}"
    );
    let last = agents.last().unwrap();
    assert_eq!(last["kpis"]["syscalls"]["available"], true, "{last}");
    let pid = reference.pid;
    probe_tests::assert_calls_exact(&records, pid, &truth);
}
