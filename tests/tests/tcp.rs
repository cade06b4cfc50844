//! TCP and request KPIs against ground truth, on loopback: a server that
//! waits a known time before each answer, clients with and without
//! keep-alive, refused connects, and a reset mid-request.

use std::time::Duration;

use probe_tests::{Agent, Workload, of, rel_err, require_bpf};
use serde_json::Value;

fn total(records: &[Value], kind: &str, pid: u32, pick: impl Fn(&Value) -> Option<u64>) -> u64 {
    of(records, kind, pid).filter_map(&pick).sum()
}

fn endpoints<'a>(records: &'a [Value], pid: u32, role: &'a str) -> impl Iterator<Item = &'a Value> {
    of(records, "endpoint", pid).filter(move |r| r["role"] == role)
}

#[test]
fn request_latency_count_and_bytes_match_the_workload() {
    require_bpf!();
    let server = Workload::start(&[
        "tcp-server",
        "--name",
        "pw-server",
        "--delay-ms",
        "20",
        "--response-bytes",
        "300",
    ])
    .unwrap();
    let port = server.ready[0].clone();
    let mut keep = Workload::start(&[
        "tcp-client",
        "--name",
        "pw-keep",
        "--port",
        &port,
        "--requests",
        "60",
        "--request-bytes",
        "100",
        "--keepalive",
    ])
    .unwrap();
    let mut fresh = Workload::start(&[
        "tcp-client",
        "--name",
        "pw-fresh",
        "--port",
        &port,
        "--requests",
        "25",
        "--request-bytes",
        "50",
    ])
    .unwrap();
    let pids = [server.pid, keep.pid, fresh.pid].map(|p| p.to_string());
    let agent = Agent::start(&[
        "--interval",
        "60s",
        "--pid",
        &pids[0],
        "--pid",
        &pids[1],
        "--pid",
        &pids[2],
    ])
    .unwrap();
    keep.go().unwrap();
    let keep_truth = keep.finish().unwrap();
    fresh.go().unwrap();
    let fresh_truth = fresh.finish().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let records = agent.stop().unwrap();
    let port: u64 = port.parse().unwrap();

    // The server answered 85 requests on its port, each after 20 ms.
    let srv: Vec<&Value> = endpoints(&records, server.pid, "server").collect();
    assert_eq!(srv.len(), 1, "{srv:?}");
    assert_eq!(srv[0]["port"], port);
    assert!(srv[0]["peer"].is_null());
    assert_eq!(srv[0]["comm"], "pw-server");
    let req = &srv[0]["requests"];
    assert_eq!(req["count"], 85);
    assert_eq!(req["errors"], 0);
    let p50 = req["latency_ms"]["p50"].as_f64().unwrap();
    eprintln!("server p50 {p50} ms (wait 20 ms), avg {}", req["latency_ms"]["avg"]);
    assert!(rel_err(p50, 20.0) <= 0.05, "p50 {p50} ms vs 20 ms");
    let proc_req = &of(&records, "process", server.pid).next().unwrap()["requests"];
    assert_eq!(proc_req["count"], 85, "the process record totals its endpoints");
    let host = records.iter().find(|r| r["type"] == "host").unwrap();
    assert!(host["requests"]["count"].as_u64().unwrap() >= 85);

    // Clients: one endpoint each, toward the server's port on 127.0.0.1.
    for (w, truth, n) in [(&keep, &keep_truth, 60u64), (&fresh, &fresh_truth, 25)] {
        let cl: Vec<&Value> = endpoints(&records, w.pid, "client").collect();
        assert_eq!(cl.len(), 1, "{cl:?}");
        assert_eq!(
            (cl[0]["port"].as_u64(), cl[0]["peer"].as_str()),
            (Some(port), Some("127.0.0.1"))
        );
        assert_eq!(cl[0]["requests"]["count"], n);
        let tcp = |f: &str| total(&records, "process", w.pid, |r| r["tcp"][f].as_u64());
        assert_eq!(
            tcp("bytes_sent"),
            truth["bytes_sent"].as_u64().unwrap(),
            "bytes sent by {}",
            w.pid
        );
        assert_eq!(tcp("bytes_received"), truth["bytes_received"].as_u64().unwrap());
        assert_eq!(tcp("connects"), truth["connects"].as_u64().unwrap());
        assert_eq!(tcp("connect_errors"), 0);
        let lat = &of(&records, "process", w.pid).next().unwrap()["tcp"]["connect_latency_ms"];
        assert!(lat["max"].as_f64().unwrap() < 100.0, "loopback connects are fast: {lat}");
    }
    let stcp = |f: &str| total(&records, "process", server.pid, |r| r["tcp"][f].as_u64());
    assert_eq!(stcp("accepts"), 26, "one keep-alive connection and 25 fresh ones");
    assert_eq!(stcp("bytes_received"), 60 * 100 + 25 * 50);
    assert_eq!(stcp("bytes_sent"), 85 * 300);
    let rtt = &of(&records, "process", server.pid).next().unwrap()["tcp"]["rtt_ms"];
    assert!(rtt["p50"].as_f64().unwrap() < 5.0, "loopback RTT: {rtt}");
}

#[test]
fn refused_connects_are_connect_errors() {
    require_bpf!();
    // A port nobody listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut w =
        Workload::start(&["tcp-refused", "--name", "pw-refused", "--port", &port, "--count", "7"])
            .unwrap();
    let agent = Agent::start(&["--interval", "60s", "--pid", &w.pid.to_string()]).unwrap();
    w.go().unwrap();
    let truth = w.finish().unwrap();
    assert_eq!(truth["refused"], 7);
    let records = agent.stop().unwrap();
    let tcp = &of(&records, "process", w.pid).next().unwrap()["tcp"];
    assert_eq!(tcp["connects"], 7);
    assert_eq!(tcp["connect_errors"], 7);
    assert_eq!(tcp["connect_error_rate_pct"], 100.0);
    assert!(
        tcp["resets_received"].as_u64().unwrap() >= 7,
        "a refused SYN is answered with a reset: {tcp}"
    );
}

#[test]
fn reset_mid_request_is_a_request_error() {
    require_bpf!();
    let server =
        Workload::start(&["tcp-server", "--name", "pw-slow", "--delay-ms", "400"]).unwrap();
    let port = server.ready[0].clone();
    let mut ok = Workload::start(&[
        "tcp-client",
        "--name",
        "pw-ok",
        "--port",
        &port,
        "--requests",
        "3",
        "--keepalive",
    ])
    .unwrap();
    let mut rst =
        Workload::start(&["tcp-reset", "--name", "pw-rst", "--port", &port, "--after-ms", "50"])
            .unwrap();
    let pids = [server.pid, ok.pid, rst.pid].map(|p| p.to_string());
    let agent = Agent::start(&[
        "--interval",
        "60s",
        "--pid",
        &pids[0],
        "--pid",
        &pids[1],
        "--pid",
        &pids[2],
    ])
    .unwrap();
    ok.go().unwrap();
    rst.go().unwrap();
    ok.finish().unwrap();
    rst.finish().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let records = agent.stop().unwrap();

    let srv = endpoints(&records, server.pid, "server").next().unwrap();
    let req = &srv["requests"];
    eprintln!("server requests: {req}");
    assert_eq!(req["errors"], 1, "the reset request failed");
    assert_eq!(req["count"], 4, "3 answered + 1 failed");
    assert_eq!(req["error_rate_pct"], 25.0);
    let tcp = &of(&records, "process", server.pid).next().unwrap()["tcp"];
    assert!(tcp["resets_received"].as_u64().unwrap() >= 1, "{tcp}");
    let client = endpoints(&records, rst.pid, "client").next().unwrap();
    assert_eq!(client["requests"]["errors"], 1, "the client's request failed too");
}
