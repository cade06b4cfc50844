//! The agent's process lifecycle and privileges: it runs with only CAP_BPF
//! and CAP_PERFMON, drops its capabilities after attaching, leaves nothing
//! in the kernel after SIGTERM, and reloads its configuration on SIGHUP
//! (keeping the old one when the new one is bad).

use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use probe_tests::{
    Agent, PROGRAMS, Workload, agent_bin, of, parse_record, require_bpf, syscall_total, validate,
    validate_lines,
};
use serde_json::Value;

/// Ids of loaded BPF programs with one of our names.
fn our_programs() -> HashSet<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool (apt-get install bpftool)");
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| PROGRAMS.contains(&n)))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

#[test]
fn sigterm_flushes_and_detaches_everything() {
    require_bpf!();
    let before = our_programs();
    let mut w =
        Workload::start(&["calls", "--name", "pw-term", "--ok", "300", "--fail", "30"]).unwrap();
    let mut child = Command::new(agent_bin())
        .args(["run", "--interval", "60s", "--pid", &w.pid.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let status = parse_record(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(status["type"], "status");
    let loaded: HashSet<u64> = our_programs().difference(&before).copied().collect();
    assert_eq!(loaded.len(), PROGRAMS.len(), "the agent's programs are loaded: {loaded:?}");
    w.go().unwrap();
    let truth = w.finish().unwrap();
    probe_tests::kill(child.id(), libc::SIGTERM);
    let records: Vec<Value> = lines.map(|l| parse_record(&l.unwrap()).unwrap()).collect();
    assert!(child.wait().unwrap().success(), "SIGTERM is a clean exit");
    validate(&records).unwrap();
    // The final, partial interval was written.
    assert_eq!(
        syscall_total(&records, w.pid, "openat", "count"),
        truth["openat"].as_u64().unwrap()
    );
    assert!(records.iter().any(|r| r["type"] == "agent"));
    std::thread::sleep(Duration::from_millis(300));
    let left: HashSet<u64> = our_programs().intersection(&loaded).copied().collect();
    assert!(left.is_empty(), "programs left in the kernel after SIGTERM: {left:?}");
}

#[test]
fn runs_with_only_bpf_and_perfmon_and_drops_them_after_attach() {
    require_bpf!();
    // tracefs must already be mounted: without CAP_SYS_ADMIN the agent cannot mount it.
    let _ =
        Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]).output();
    let mut w =
        Workload::start(&["calls", "--name", "pw-lp", "--ok", "200", "--fail", "20"]).unwrap();
    let agent = Agent::start_wrapped(
        &["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all,+bpf,+perfmon"],
        &["--interval", "60s", "--pid", &w.pid.to_string()],
    )
    .unwrap();
    let agent_pid = agent.pid();
    let status = agent.records[0].clone();
    assert_eq!(status["type"], "status");
    for kpi in ["syscalls", "cpu", "runq_latency", "tcp"] {
        assert_eq!(status["kpis"][kpi]["available"], true, "{kpi}: {}", status["kpis"][kpi]);
    }
    // After attaching: no capability left, and no_new_privs.
    assert_eq!(status["capabilities"], serde_json::json!([]), "{status}");
    assert_eq!(status["no_new_privs"], true);
    let proc_status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).unwrap();
    let field = |k: &str| {
        proc_status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    // ... and it keeps measuring with the file descriptors it holds.
    w.go().unwrap();
    let truth = w.finish().unwrap();
    let records = agent.stop().unwrap();
    assert_eq!(
        syscall_total(&records, w.pid, "openat", "count"),
        truth["openat"].as_u64().unwrap()
    );
    assert_eq!(syscall_total(&records, w.pid, "openat", "errors"), 20);
    assert!(of(&records, "process", w.pid).next().unwrap()["cpu"]["cores"].is_number());
}

#[test]
fn sighup_reloads_and_a_bad_config_keeps_the_old_one() {
    require_bpf!();
    let dir = std::env::temp_dir().join(format!("probe-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("probe.toml");
    let default = probe_tests::default_config();
    std::fs::write(&path, &default).unwrap();
    let mut agent =
        Agent::start(&["--interval", "1s", "--config", path.to_str().unwrap(), "--top", "1"])
            .unwrap();
    let pid = agent.pid();

    std::fs::write(&path, "profile = \"none\"\n[alerts\n").unwrap();
    probe_tests::kill(pid, libc::SIGHUP);
    let rec = agent
        .wait_for(
            |r| r["type"] == "agent" && !r["config"]["last_error"].is_null(),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(rec["config"]["reloads"], 0, "the bad file was refused");

    // A host CPU rule that any activity crosses, firing at once.
    let hot = default.replace("hold_intervals = 2", "hold_intervals = 1").replace(
        "scopes = [\"host\", \"container\"]\ninvestigate = 80.0\nescalate = 95.0",
        "scopes = [\"host\"]\ninvestigate = 0.0\nescalate = 1000.0",
    );
    assert_ne!(hot, default);
    std::fs::write(&path, hot).unwrap();
    probe_tests::kill(pid, libc::SIGHUP);
    let rec = agent
        .wait_for(|r| r["type"] == "agent" && r["config"]["reloads"] == 1, Duration::from_secs(5))
        .unwrap();
    assert!(rec["config"]["last_error"].is_null());
    // The new rule fires in the interval that reported the reload (alerts
    // come before the agent record) or the next.
    let fired =
        |r: &Value| r["type"] == "alert" && r["rule"] == "cpu" && r["level"] == "investigate";
    if !agent.records.iter().any(fired) {
        agent.wait_for(fired, Duration::from_secs(5)).unwrap();
    }
    agent.stop().unwrap();
}

#[test]
fn a_stalled_reader_neither_stops_measuring_nor_blocks_sigterm() {
    require_bpf!();
    // Nobody reads the agent's stdout: the pipe fills within a second or two.
    let mut child = Command::new(agent_bin())
        .args(["run", "--interval", "100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    assert!(!status.contains("State:\tZ"), "still running");
    let t0 = std::time::Instant::now();
    probe_tests::kill(child.id(), libc::SIGTERM);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "{s}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "SIGTERM must end the agent even with stdout stuck"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then a reader catches up on what was written and queued: whole lines.
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() > 10, "{} lines", lines.len());
    for l in &lines {
        parse_record(l).unwrap();
    }
    validate_lines(&out).unwrap();
}
