//! System-call KPIs against ground truth: real programs, this kernel,
//! workloads whose answer is known.

use std::time::Duration;

use probe_tests::{Agent, Workload, of, rel_err, require_bpf, syscall_total};

/// Sleeps of known length: the reported p50 and p99 are within 5% of the
/// percentiles the workload measured around each call.
#[test]
fn sleep_latency_percentiles_match_ground_truth() {
    require_bpf!();
    // 90% of calls sleep 4 ms, 10% sleep 30 ms: p50 and p99 differ by 7x,
    // so a percentile taken from the wrong rank cannot pass.
    let mut w = Workload::start(&[
        "sleep",
        "--name",
        "pw-sleep",
        "--short-ms",
        "4",
        "--long-ms",
        "30",
        "--count",
        "300",
        "--long-every",
        "10",
    ])
    .unwrap();
    let pid = w.pid.to_string();
    // One long interval: the final (SIGINT) interval holds every call.
    let agent = Agent::start(&["--interval", "60s", "--pid", &pid]).unwrap();
    w.go().unwrap();
    let truth = w.finish().unwrap();
    let records = agent.stop().unwrap();

    let recs: Vec<_> = of(&records, "syscall", truth["pid"].as_u64().unwrap() as u32)
        .filter(|r| r["syscall"] == "clock_nanosleep")
        .collect();
    assert_eq!(recs.len(), 1, "expected one clock_nanosleep record: {recs:?}");
    let r = recs[0];
    assert_eq!(r["count"], 300);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["comm"], "pw-sleep");
    let lat = &r["latency_ms"];
    for (field, key) in [("p50", "p50_ns"), ("p99", "p99_ns"), ("avg", "avg_ns"), ("max", "max_ns")]
    {
        let got = lat[field].as_f64().unwrap();
        let want = truth[key].as_f64().unwrap() / 1e6;
        let err = rel_err(got, want);
        eprintln!("{field}: agent {got:.4} ms, truth {want:.4} ms, error {:.2}%", err * 100.0);
        assert!(
            err <= 0.05,
            "{field}: agent {got} ms vs truth {want} ms ({:.1}% off)",
            err * 100.0
        );
    }
}

/// Exact numbers of succeeding and failing calls, on two threads: counts,
/// errors, errno and error rate are exact, and attributed to the process.
#[test]
fn call_counts_and_error_rate_are_exact() {
    require_bpf!();
    let mut w = Workload::start(&[
        "calls",
        "--name",
        "pw-calls",
        "--ok",
        "1500",
        "--fail",
        "500",
        "--threads",
        "2",
        "--eagain",
        "4000",
    ])
    .unwrap();
    let pid = w.pid;
    let agent = Agent::start(&["--interval", "60s", "--pid", &pid.to_string()]).unwrap();
    w.go().unwrap();
    let truth = w.finish().unwrap();
    let records = agent.stop().unwrap();

    probe_tests::assert_calls_exact(&records, pid, &truth);
    assert_eq!(syscall_total(&records, pid, "close", "count"), truth["close"].as_u64().unwrap());
    assert_eq!(syscall_total(&records, pid, "getppid", "errors"), 0);

    let openat: Vec<_> =
        of(&records, "syscall", pid).filter(|r| r["syscall"] == "openat").collect();
    assert_eq!(openat.len(), 1);
    // 1000 failures of 4000 calls.
    assert_eq!(openat[0]["error_rate_pct"], 25.0);
    assert_eq!(openat[0]["errnos"]["ENOENT"], 1000);
    assert_eq!(openat[0]["comm"], "pw-calls");
    assert_eq!(openat[0]["nr"], 257);
    // EAGAIN is counted beside the calls it ends (no errno slot of its
    // own), and another errno of the same call keeps its slot.
    let read: Vec<_> = of(&records, "syscall", pid).filter(|r| r["syscall"] == "read").collect();
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0]["count"], truth["read"]);
    assert_eq!(read[0]["errors"], truth["read"]);
    assert_eq!(read[0]["errnos"]["EAGAIN"], truth["read_eagain"]);
    assert_eq!(read[0]["errnos"]["EBADF"], truth["read_ebadf"]);

    // The process record adds up its system calls; the host record covers at least as much.
    let procs: Vec<_> = of(&records, "process", pid).collect();
    assert_eq!(procs.len(), 1);
    let per_call: u64 = of(&records, "syscall", pid).map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(procs[0]["syscalls"]["count"].as_u64().unwrap(), per_call);
    let host = records.iter().rev().find(|r| r["type"] == "host").unwrap();
    assert!(host["syscalls"]["count"].as_u64().unwrap() >= per_call);
    // --pid restricts process records to that process.
    assert!(records.iter().filter(|r| r["type"] == "process").all(|r| r["pid"] == pid));
}

/// Calls spread over several short intervals: each is counted in exactly
/// one interval, so the sum over intervals is exact.
#[test]
fn nothing_double_counted_across_intervals() {
    require_bpf!();
    let mut w = Workload::start(&[
        "calls",
        "--name",
        "pw-spread",
        "--ok",
        "800",
        "--fail",
        "200",
        "--pause-ms",
        "2500",
    ])
    .unwrap();
    let pid = w.pid;
    let agent = Agent::start(&["--interval", "1s", "--pid", &pid.to_string()]).unwrap();
    w.go().unwrap();
    let truth = w.finish().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let records = agent.stop().unwrap();

    let intervals = of(&records, "syscall", pid).filter(|r| r["syscall"] == "openat").count();
    assert!(intervals >= 2, "the pause should split the calls over intervals, got {intervals}");
    probe_tests::assert_calls_exact(&records, pid, &truth);
}

/// A process name made of quotes, backslashes, control bytes and invalid
/// UTF-8 still gives one valid JSON line per record.
#[test]
fn hostile_process_name_gives_valid_json() {
    require_bpf!();
    let mut w = Workload::start(&[
        "calls",
        "--name",
        "a\"b\\c\\x0ad\\x01\\xff\\xfe",
        "--ok",
        "10",
        "--fail",
        "1",
    ])
    .unwrap();
    let pid = w.pid;
    let agent = Agent::start(&["--interval", "60s", "--pid", &pid.to_string()]).unwrap();
    w.go().unwrap();
    w.finish().unwrap();
    // Agent::stop parses every line as JSON and fails on any that is not.
    let records = agent.stop().unwrap();
    let p: Vec<_> = of(&records, "process", pid).collect();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["comm"], "a\"b\\c\nd\u{1}\u{fffd}\u{fffd}");
}

/// --comm selects by name; --top bounds the process records and counts the cut.
#[test]
fn comm_filter_and_top_bound() {
    require_bpf!();
    let mut a =
        Workload::start(&["calls", "--name", "pw-top-a", "--ok", "2000", "--fail", "0"]).unwrap();
    let mut b =
        Workload::start(&["calls", "--name", "pw-top-b", "--ok", "10", "--fail", "0"]).unwrap();
    let agent = Agent::start(&[
        "--interval",
        "60s",
        "--comm",
        "pw-top-a",
        "--comm",
        "pw-top-b",
        "--top",
        "1",
    ])
    .unwrap();
    a.go().unwrap();
    b.go().unwrap();
    a.finish().unwrap();
    b.finish().unwrap();
    let records = agent.stop().unwrap();
    let procs: Vec<_> = records.iter().filter(|r| r["type"] == "process").collect();
    assert_eq!(procs.len(), 1, "--top 1: {procs:?}");
    assert_eq!(procs[0]["comm"], "pw-top-a", "the busier process comes first");
    let agent_rec = records.iter().rev().find(|r| r["type"] == "agent").unwrap();
    assert_eq!(agent_rec["processes_cut_by_top"], 1);
    assert_eq!(agent_rec["processes_reported"], 1);
}

/// The agent reports on itself: its programs ran, maps have bounds, and
/// the loss counters are present.
#[test]
fn agent_record_reports_programs_maps_and_losses() {
    require_bpf!();
    // Statistics on for the whole interval, so every program has runs to show.
    let agent = Agent::start(&["--interval", "1s", "--bpf-stats-pct", "100"]).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let records = agent.stop().unwrap();
    let status = records.iter().find(|r| r["type"] == "status").unwrap();
    let progs: Vec<&str> =
        status["programs"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    // Every program loads and attaches on this kernel (the verifier accepts
    // them all), and every KPI family is available.
    assert_eq!(progs, probe_tests::PROGRAMS);
    for (kpi, s) in status["kpis"].as_object().unwrap() {
        assert_eq!(s["available"], true, "{kpi}: {s}");
    }
    for kpi in ["syscalls", "cpu", "runq_latency", "memory", "disk", "tcp"] {
        assert!(status["kpis"][kpi].is_object(), "status lists {kpi}");
    }
    let a = records.iter().filter(|r| r["type"] == "agent").nth(1).expect("two agent records");
    let sys_exit =
        a["programs"].as_array().unwrap().iter().find(|p| p["name"] == "sys_exit").unwrap();
    assert!(sys_exit["run_count"].as_u64().unwrap() > 0);
    assert!(sys_exit["avg_ns"].as_f64().unwrap() > 0.0);
    assert!(a["bpf_stats_window_s"].as_f64().unwrap() > 0.5);
    assert!(a["programs_cpu_pct"].as_f64().unwrap() > 0.0);
    assert!(a["rss_bytes"].as_u64().unwrap() > 1 << 20);
    for m in a["maps"].as_array().unwrap() {
        assert!(m["max_entries"].as_u64().unwrap() > 0, "{m}");
        assert!(m["entries"].as_u64().unwrap() <= m["max_entries"].as_u64().unwrap());
    }
    for k in [
        "syscall_stats_full",
        "syscall_start_full",
        "comm_full",
        "syscall_bad_nr",
        "syscall_no_start",
    ] {
        assert!(a["lost"][k].is_u64(), "lost.{k} missing");
    }
}
