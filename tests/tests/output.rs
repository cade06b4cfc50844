//! Sinks, the schema, mergeable histograms and the Prometheus endpoint,
//! against real consumers: the agent's own stdout is the reference every
//! other sink must match, record for record (by `seq`).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use probe_tests::{
    Agent, TestCgroup, Workload, agent_bin, rel_err, require_bpf, tempdir, validate, validate_lines,
};
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Parses lines a consumer received: each must be one whole record.
fn parse_lines(text: &str, who: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{who}: torn or bad line {l:?}: {e}"))
        })
        .collect()
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().expect("seq")).collect()
}

/// Sums a sink's counters over the agent records: (sent, dropped by reason).
fn sink_totals(records: &[Value], name: &str) -> (u64, BTreeMap<String, u64>) {
    let mut sent = 0;
    let mut dropped = BTreeMap::new();
    for r in records.iter().filter(|r| r["type"] == "agent") {
        for s in r["output"]["sinks"].as_array().unwrap() {
            if s["name"] == name {
                sent += s["sent_records"].as_u64().unwrap();
                for (k, v) in s["dropped_records"].as_object().unwrap() {
                    *dropped.entry(k.clone()).or_default() += v.as_u64().unwrap();
                }
            }
        }
    }
    (sent, dropped)
}

/// Accepts connections one after another and keeps every byte received.
fn line_server(
    accept: impl FnMut() -> Option<Box<dyn std::io::Read + Send>> + Send + 'static,
) -> Arc<Mutex<Vec<u8>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let mut accept = accept;
    std::thread::spawn(move || {
        while let Some(mut conn) = accept() {
            let mut buf = [0u8; 65536];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => g.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        }
    });
    got
}

/// A minimal HTTP server: answers `script` statuses in turn (then 200),
/// gunzips bodies, and keeps the lines of the batches it accepted.
fn http_server(script: Vec<u16>) -> (u16, Arc<Mutex<Vec<u8>>>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let (g, n) = (got.clone(), requests.clone());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { break };
            let mut r = BufReader::new(conn);
            let mut len = 0usize;
            let mut gzip = false;
            let mut ndjson = false;
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with("POST "), "{line}");
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                let l = line.to_ascii_lowercase();
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                gzip |= l.starts_with("content-encoding: gzip");
                ndjson |= l.starts_with("content-type: application/x-ndjson");
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            assert!(ndjson, "content type");
            let body = if gzip {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
                out
            } else {
                body
            };
            let i = n.fetch_add(1, Ordering::SeqCst);
            let status = script.get(i).copied().unwrap_or(200);
            if status == 200 {
                g.lock().unwrap().extend_from_slice(&body);
            }
            let mut conn = r.into_inner();
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, got, requests)
}

/// Every record the agent wrote to stdout, whole and in order, at each of
/// five sinks at once: a rotated file, TCP, a Unix socket, HTTP with gzip
/// that fails twice with 500 before it accepts (retried, not lost, not
/// doubled), and HTTP answering 400 (refused: counted, not retried).
#[test]
fn every_sink_gets_every_record() {
    require_bpf!();
    let dir = tempdir("sinks");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let tcp_got = line_server(move || {
        tcp.accept().ok().map(|(c, _)| Box::new(c) as Box<dyn std::io::Read + Send>)
    });
    let sock = dir.join("sink.sock");
    let unix = UnixListener::bind(&sock).unwrap();
    let unix_got = line_server(move || {
        unix.accept().ok().map(|(c, _)| Box::new(c) as Box<dyn std::io::Read + Send>)
    });
    let (http_port, http_got, http_requests) = http_server(vec![500, 500]);
    let (bad_port, _, bad_requests) = http_server(vec![400; 1000]);
    let file = dir.join("probe.jsonl");
    let outputs = [
        "stdout".to_string(),
        format!("file:{}?rotate_bytes=64K&keep=1000", file.display()),
        format!("tcp://127.0.0.1:{tcp_port}"),
        format!("unix:{}", sock.display()),
        format!("http://127.0.0.1:{http_port}/ingest?gzip=true"),
        format!("http://127.0.0.1:{bad_port}/wrong"),
    ];
    let mut args = vec!["--interval", "300ms", "--histograms"];
    for o in &outputs {
        args.extend(["--output", o]);
    }
    let agent = Agent::start(&args).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let records = agent.stop().unwrap();
    let want = seqs(&records);
    assert_eq!(want, (0..want.len() as u64).collect::<Vec<_>>(), "stdout has every seq in order");
    assert!(want.len() > 20);

    // The file rotated: PATH.N (oldest) .. PATH.1, then PATH.
    let mut parts: Vec<PathBuf> = (1..1000)
        .map(|n| PathBuf::from(format!("{}.{n}", file.display())))
        .take_while(|p| p.exists())
        .collect();
    assert!(!parts.is_empty(), "the file sink rotated at 64 KiB");
    parts.reverse();
    parts.push(file.clone());
    let mut text = String::new();
    for p in &parts {
        let t = std::fs::read_to_string(p).unwrap();
        assert!(
            t.len() <= 64 << 10 || t.lines().count() == 1,
            "{} is {} bytes",
            p.display(),
            t.len()
        );
        text.push_str(&t);
    }
    let from_file = parse_lines(&text, "file");
    assert_eq!(seqs(&from_file), want, "file");
    assert_eq!(from_file, records, "the file holds exactly what stdout got");

    for (name, got) in [("tcp", &tcp_got), ("unix", &unix_got), ("http", &http_got)] {
        let until = Instant::now() + Duration::from_secs(5);
        while got.lock().unwrap().iter().filter(|&&b| b == b'\n').count() < want.len()
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let recs = parse_lines(&text, name);
        assert_eq!(seqs(&recs), want, "{name}: every record, in order, once");
    }
    assert!(http_requests.load(Ordering::SeqCst) >= 3, "two 500s were retried");

    // What the agent said about its sinks (up to its last agent record).
    let (sent, dropped) = sink_totals(&records, &outputs[4]);
    assert!(sent > 0 && dropped.values().all(|&d| d == 0), "http: {sent} {dropped:?}");
    let errors: u64 = records
        .iter()
        .filter(|r| r["type"] == "agent")
        .flat_map(|r| r["output"]["sinks"].as_array().unwrap().iter())
        .filter(|s| s["name"] == outputs[4].as_str())
        .map(|s| s["errors"].as_u64().unwrap())
        .sum();
    assert_eq!(errors, 2, "the two 500s are counted as errors");
    let (sent, dropped) = sink_totals(&records, &outputs[5]);
    assert_eq!(sent, 0);
    assert!(
        dropped["rejected"] > 0 && bad_requests.load(Ordering::SeqCst) > 0,
        "a 400 refuses the batch for good: {dropped:?}"
    );
    let last_agent = records.iter().rev().find(|r| r["type"] == "agent").unwrap();
    let refused = last_agent["output"]["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == outputs[5].as_str())
        .unwrap();
    assert!(refused["last_error"].as_str().unwrap().contains("HTTP 400"), "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A syslog-ng config: a TCP input taking one JSON record per line, and a
/// file output writing each message exactly as received.
fn syslog_ng(dir: &Path, port: u16) -> Consumer {
    let conf = dir.join("syslog-ng.conf");
    std::fs::write(
        &conf,
        format!(
            "@version: 3.38\n\
             options {{ log-msg-size(1048576); flush-lines(1); }};\n\
             source s_probe {{ network(ip(127.0.0.1) port({port}) transport(tcp) flags(no-parse) log-fetch-limit(1000)); }};\n\
             destination d_file {{ file(\"{}\" template(\"${{MESSAGE}}\\n\")); }};\n\
             log {{ source(s_probe); destination(d_file); }};\n",
            dir.join("received.jsonl").display()
        ),
    )
    .unwrap();
    let child = Consumer(
        Command::new("syslog-ng")
            .arg("--foreground")
            .arg(format!("--cfgfile={}", conf.display()))
            .arg(format!("--persist-file={}", dir.join("persist").display()))
            .arg(format!("--pidfile={}", dir.join("pid").display()))
            .arg(format!("--control={}", dir.join("ctl").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("syslog-ng (installed by scripts/setup.sh)"),
    );
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "syslog-ng did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A consumer process, stopped (SIGTERM, then waited for) however the test
/// ends, so a failing test leaves nothing running to disturb the next.
struct Consumer(Child);

impl Drop for Consumer {
    fn drop(&mut self) {
        probe_tests::kill(self.0.id(), libc::SIGTERM);
        let _ = self.0.wait();
    }
}

fn stop(c: Consumer) {
    drop(c);
}

/// A real syslog-ng receives the stream: every record whole and valid. It
/// is stopped mid-run long enough for the sink's small queue to overflow,
/// then started again: it gets what was still queued, in order, once; the
/// records it never got are exactly those the agent reported dropped; and
/// the agent's memory stays bounded throughout.
#[test]
fn syslog_ng_gets_the_stream_through_a_restart() {
    require_bpf!();
    let dir = tempdir("syslog");
    let port = free_port();
    let ng = syslog_ng(&dir, port);
    let spec = format!("tcp://127.0.0.1:{port}?queue_bytes=64K");
    let agent =
        Agent::start(&["--interval", "250ms", "--output", "stdout", "--output", &spec]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    stop(ng);
    std::thread::sleep(Duration::from_secs(4));
    let ng = syslog_ng(&dir, port);
    std::thread::sleep(Duration::from_secs(3));
    let records = agent.stop().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop(ng);

    let text = std::fs::read_to_string(dir.join("received.jsonl")).unwrap();
    validate_lines(&text).unwrap();
    let got = parse_lines(&text, "syslog-ng");
    let got_seq = seqs(&got);
    assert!(got_seq.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates");
    let want = seqs(&records);
    let missing: Vec<u64> =
        want.iter().copied().filter(|s| got_seq.binary_search(s).is_err()).collect();
    // The final agent record is written after its own figures were taken:
    // count what the sink dropped up to the last agent record.
    let last_agent_seq =
        records.iter().rev().find(|r| r["type"] == "agent").unwrap()["seq"].as_u64().unwrap();
    let (_, dropped) = sink_totals(&records, &spec);
    let reported: u64 = dropped.values().sum();
    let missing_before = missing.iter().filter(|&&s| s < last_agent_seq).count() as u64;
    eprintln!(
        "syslog-ng got {} of {} records; missing {} (before the last agent record {missing_before}); reported dropped {dropped:?}",
        got.len(),
        want.len(),
        missing.len()
    );
    assert!(dropped["queue_full"] > 0, "the 64 KiB queue overflowed while syslog-ng was down");
    // Records dropped from the queue are lost for sure; `unconfirmed` ones
    // (written just before a connection failed) may have arrived or not.
    let unconfirmed = dropped["unconfirmed"];
    assert!(
        missing_before >= reported - unconfirmed && missing_before <= reported,
        "every record missing is one reported dropped: missing {missing_before}, \
         dropped {dropped:?}"
    );
    assert!(got_seq.iter().any(|&s| s > last_agent_seq - 10), "records after the restart arrived");
    for r in got.iter().zip(
        records.iter().filter(|r| got_seq.binary_search(&seqs(std::slice::from_ref(r))[0]).is_ok()),
    ) {
        assert_eq!(r.0, r.1, "received as written");
    }
    let max_rss = records
        .iter()
        .filter(|r| r["type"] == "agent")
        .map(|r| r["rss_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(max_rss < 64 << 20, "agent RSS peaked at {max_rss} bytes");
    let _ = std::fs::remove_dir_all(&dir);
}

/// GET over plain HTTP/1.1: the body of a 200, or an error.
fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    anyhow::ensure!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "{head}");
    Ok(body.to_string())
}

/// The Prometheus endpoint: a server's exact request count and latency
/// histogram, text that `promtool check metrics` accepts, and a real
/// Prometheus scraping it and answering a query with the same figure.
/// Series are keyed by command name, not pid: two servers of one name
/// share their process series, which adds up both.
#[test]
fn prometheus_scrapes_the_endpoint() {
    require_bpf!();
    let dir = tempdir("prom");
    let server = Workload::start(&["tcp-server", "--name", "pw-prom", "--delay-ms", "5"]).unwrap();
    let port = server.ready[0].clone();
    let twin = Workload::start(&["tcp-server", "--name", "pw-prom", "--delay-ms", "5"]).unwrap();
    let twin_port = twin.ready[0].clone();
    let mut twin_client = Workload::start(&[
        "tcp-client",
        "--name",
        "pw-promc",
        "--port",
        &twin_port,
        "--requests",
        "25",
        "--keepalive",
    ])
    .unwrap();
    let mut client = Workload::start(&[
        "tcp-client",
        "--name",
        "pw-promc",
        "--port",
        &port,
        "--requests",
        "40",
        "--keepalive",
    ])
    .unwrap();
    let maddr = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start(&["--interval", "500ms", "--metrics-addr", &maddr]).unwrap();
    client.go().unwrap();
    twin_client.go().unwrap();
    client.finish().unwrap();
    twin_client.finish().unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    let text = http_get(&maddr, "/metrics").unwrap();
    assert!(!text.contains("pid=\"") && !text.contains("container=\""), "{text}");
    let series = "scope=\"endpoint\",comm=\"pw-prom\",container_id=\"\"";
    let line = |name: &str| -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with(name) && l.contains(series) && l.contains(&format!("port=\"{port}\""))
            })
            .unwrap_or_else(|| panic!("no {name} for the server in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(line("probe_requests_total{"), 40.0);
    assert_eq!(line("probe_request_errors_total{"), 0.0);
    assert_eq!(line("probe_request_latency_seconds_count{"), 40.0);
    let sum = line("probe_request_latency_seconds_sum{");
    assert!(rel_err(sum / 40.0, 0.005) < 0.1, "average latency {} s vs 5 ms", sum / 40.0);
    // Every request took about 5 ms: none in le=0.0025, all in le=0.01.
    let le = |b: &str| -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with("probe_request_latency_seconds_bucket{")
                    && l.contains(series)
                    && l.contains(&format!("port=\"{port}\""))
                    && l.contains(&format!("le=\"{b}\""))
            })
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!((le("0.0025"), le("0.01"), le("+Inf")), (0.0, 40.0, 40.0));
    // The twin's endpoint is its own (its port); the process series of
    // their name is one, with both servers' requests.
    let values = |name: &str, labels: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let twin_series = format!("{series},role=\"server\",port=\"{twin_port}\"");
    assert_eq!(values("probe_requests_total{", &twin_series), [25.0], "{text}");
    let process = r#",scope="process",comm="pw-prom",container_id=""}"#;
    let process = values("probe_requests_total{", process);
    assert_eq!(process, [65.0], "one process series for both servers:\n{text}");
    assert!(http_get(&maddr, "/other").is_err(), "only /metrics is served");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed by scripts/setup.sh)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes it every second.
    let web = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: probe\n    static_configs:\n      - targets: ['{maddr}']\n"),
    )
    .unwrap();
    let prom = Consumer(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (installed by scripts/setup.sh)"),
    );
    let query = format!(
        "/api/v1/query?query=probe_requests_total%7Bport%3D%22{port}%22%2Cscope%3D%22endpoint%22%7D"
    );
    let until = Instant::now() + Duration::from_secs(60);
    let value = loop {
        if let Ok(body) = http_get(&web, &query) {
            let v: Value = serde_json::from_str(&body).unwrap();
            if let Some(r) = v["data"]["result"].as_array().and_then(|r| r.first()) {
                break r["value"][1].as_str().unwrap().to_string();
            }
        }
        assert!(Instant::now() < until, "Prometheus never scraped the endpoint");
        std::thread::sleep(Duration::from_millis(500));
    };
    stop(prom);
    assert_eq!(value, "40", "Prometheus reads the exact request count");
    let records = agent.stop().unwrap();
    assert!(
        records.iter().all(
            |r| r["type"] != "endpoint" || r["requests"]["latency_ms"].get("buckets").is_none()
        ),
        "without --histograms the JSON carries no buckets"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Percent-encodes a query string value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// GET over HTTP/1.0, so that a large answer (Prometheus' rules) comes
/// whole rather than chunked: the body of a 200, or an error.
fn http10_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    anyhow::ensure!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(body.to_string())
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The deployment's Prometheus side against the real thing: a real
/// Prometheus scrapes a real agent (a server answering requests, one reset
/// before its answer, a container with a memory limit, cost prices and a
/// budget), loads packaging/prometheus/probe-rules.yaml, and every query of
/// the Grafana dashboard (packaging/grafana/probe-dashboard.json), its host
/// variable included, returns data; every rule evaluates without error,
/// and every recording rule returns data.
#[test]
fn dashboard_queries_and_rules_run_on_a_real_prometheus() {
    require_bpf!();
    let dir = tempdir("dash");
    // Cost: priced by use, against a budget.
    let config = probe_tests::default_config()
        .replace("core_hour_usd = 0.0", "core_hour_usd = 0.05")
        .replace("gib_hour_usd = 0.0", "gib_hour_usd = 0.01")
        .replace("budget_usd_month = 0.0", "budget_usd_month = 10.0");
    assert!(config.contains("budget_usd_month = 10.0"), "{config}");
    std::fs::write(dir.join("probe.toml"), config).unwrap();
    let cg = TestCgroup::create(
        "docker/5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed",
    )
    .unwrap();
    cg.limit_memory(256 << 20).unwrap();
    let mut spin = Workload::start(&["spin", "--name", "pw-dash", "--ms", "60000"]).unwrap();
    cg.enter(spin.pid).unwrap();
    let server =
        Workload::start(&["tcp-server", "--name", "pw-dashs", "--delay-ms", "20"]).unwrap();
    let port = server.ready[0].clone();
    let maddr = format!("127.0.0.1:{}", free_port());
    let cfg = dir.join("probe.toml");
    let agent = Agent::start(&[
        "--interval",
        "1s",
        "--metrics-addr",
        &maddr,
        "--host",
        "dash-host",
        "--config",
        cfg.to_str().unwrap(),
    ])
    .unwrap();
    spin.go().unwrap();
    let mut client = Workload::start(&[
        "tcp-client",
        "--name",
        "pw-dashc",
        "--port",
        &port,
        "--requests",
        "200",
        "--keepalive",
    ])
    .unwrap();
    client.go().unwrap();
    client.finish().unwrap();
    // Reset 5 ms after its request, before the 20 ms answer (and after the
    // 1 ms within which a close is a goodbye): one failed request.
    let mut reset = Workload::start(&["tcp-reset", "--port", &port, "--after-ms", "5"]).unwrap();
    reset.go().unwrap();
    reset.finish().unwrap();

    let web = format!("127.0.0.1:{}", free_port());
    let rules = workspace().join("packaging/prometheus/probe-rules.yaml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: probe\n    static_configs:\n      - targets: ['{maddr}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let prom = Consumer(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (installed by scripts/setup.sh)"),
    );
    let query = |q: &str| -> Vec<Value> {
        http10_get(&web, &format!("/api/v1/query?query={}", urlencode(q)))
            .ok()
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    };
    // Grafana's variables, as a dashboard showing every host would set them.
    let grafana = |e: &str| e.replace("$__rate_interval", "1m").replace("$host", ".*");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("packaging/grafana/probe-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<(String, String)> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (p["title"].as_str().unwrap().to_string(), grafana(t["expr"].as_str().unwrap()))
            })
        })
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    // The recording rules too.
    let rule_text = std::fs::read_to_string(&rules).unwrap();
    for l in rule_text.lines() {
        if let Some(name) = l.trim().strip_prefix("- record: ") {
            exprs.push(("recording rule".into(), name.to_string()));
        }
    }
    let until = Instant::now() + Duration::from_secs(90);
    let mut missing = exprs.clone();
    while !missing.is_empty() && Instant::now() < until {
        missing.retain(|(_, e)| query(e).is_empty());
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every rule evaluated, none in error.
    let body = http10_get(&web, "/api/v1/rules").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let rules: Vec<&Value> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(
        rules.len(),
        rule_text.matches("- record: ").count() + rule_text.matches("- alert: ").count()
    );
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    if !missing.is_empty() {
        let scrape = http10_get(&maddr, "/metrics").unwrap_or_default();
        let containers: Vec<&str> =
            scrape.lines().filter(|l| l.contains("scope=\"container\"")).take(5).collect();
        panic!(
            "no data from the real Prometheus for: {missing:#?}\ncontainer series: {containers:#?}"
        );
    }
    // What the panels show is what the agent measured: 200 requests
    // answered, one reset.
    let server_series = |name: &str| {
        let r = query(&format!("{name}{{scope=\"endpoint\",role=\"server\",port=\"{port}\"}}"));
        r.first().map(|r| r["value"][1].as_str().unwrap().to_string())
    };
    assert_eq!(server_series("probe_requests_total").as_deref(), Some("201"));
    assert_eq!(server_series("probe_request_errors_total").as_deref(), Some("1"));
    // The dashboard's host variable.
    let hosts = http10_get(
        &web,
        &format!(
            "/api/v1/label/host/values?match[]={}",
            urlencode("probe_cpu_utilization_ratio{scope=\"host\"}")
        ),
    )
    .unwrap();
    assert!(hosts.contains("\"dash-host\""), "{hosts}");
    stop(prom);
    let _ = agent.stop().unwrap();
    drop(spin);
    drop(server);
    drop(cg);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two hosts' recordings, merged, give the percentiles of their combined
/// ground truth, which averaging their own percentiles would not.
#[test]
fn merging_two_hosts_gives_the_combined_percentiles() {
    require_bpf!();
    let dir = tempdir("merge");
    let mut all_ns: Vec<u64> = Vec::new();
    let mut files = Vec::new();
    // Host a: 60 sleeps of 5 ms. Host b: 40 sleeps of 20 ms.
    for (host, ms, count) in [("host-a", "5", "60"), ("host-b", "20", "40")] {
        let mut w =
            Workload::start(&["sleep", "--short-ms", ms, "--long-ms", ms, "--count", count])
                .unwrap();
        let pid = w.pid.to_string();
        let agent =
            Agent::start(&["--interval", "60s", "--histograms", "--host", host, "--pid", &pid])
                .unwrap();
        w.go().unwrap();
        let truth = w.finish().unwrap();
        let n = truth["count"].as_u64().unwrap();
        // The workload reports percentiles; its values are all alike.
        all_ns.extend(std::iter::repeat_n(truth["p50_ns"].as_u64().unwrap(), n as usize));
        std::thread::sleep(Duration::from_millis(200));
        let records = agent.stop().unwrap();
        let f = dir.join(format!("{host}.jsonl"));
        let text: String = records.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(&f, text).unwrap();
        files.push(f);
    }
    let out = Command::new(agent_bin()).arg("merge").args(&files).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let merged: Vec<Value> = parse_lines(&String::from_utf8(out.stdout).unwrap(), "merge");
    let m = merged
        .iter()
        .find(|m| m["scope"] == "syscall" && m["syscall"] == "clock_nanosleep")
        .unwrap_or_else(|| panic!("no merged clock_nanosleep in {merged:?}"));
    assert_eq!(m["hosts"], 2);
    assert_eq!(m["count"], 100);
    all_ns.sort_unstable();
    let truth = |p: f64| {
        all_ns[((p / 100.0 * all_ns.len() as f64).ceil() as usize).max(1) - 1] as f64 / 1e6
    };
    for p in ["p50", "p95", "p99"] {
        let got = m["latency_ms"][p].as_f64().unwrap();
        let want = truth(p[1..].parse().unwrap());
        eprintln!("merged {p} {got} ms, truth {want} ms");
        assert!(rel_err(got, want) < 0.05, "{p}: {got} vs {want}");
    }
    // p50 of the union is host a's 5 ms; the mean of the two p50s is not.
    assert!(m["latency_ms"]["p50"].as_f64().unwrap() < 6.0);
    // Without --histograms there is nothing to merge: a clear error, status 2.
    let plain = dir.join("plain.jsonl");
    std::fs::write(&plain, r#"{"v":1,"type":"syscall","ts":"2026-01-01T00:00:00.000Z","host":"h","interval_s":1.0,"syscall":"read","latency_ms":{"avg":1.0,"p50":1.0,"p95":1.0,"p99":1.0,"max":1.0}}"#.to_string() + "\n").unwrap();
    let out = Command::new(agent_bin()).arg("merge").arg(&plain).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without --histograms"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The schema is not a formality: records that break the contract fail.
#[test]
fn the_schema_refuses_broken_records() {
    let good = r#"{"v":1,"type":"endpoint","ts":"2026-11-29T10:00:00.000Z","host":"h","interval_s":10.0,"seq":3,
        "pid":42,"comm":"nginx","container_id":null,"role":"server","port":8080,"peer":null,
        "protocol":"http1","tls":false,
        "requests":{"count":10,"rate_per_s":1.0,"errors":0,"error_rate_pct":0.0,"client_errors":0,
        "success_rate_pct":100.0,"status":{"1xx":0,"2xx":10,"3xx":0,"4xx":0,"5xx":0},
        "latency_ms":{"avg":1.0,"p50":1.0,"p95":1.0,"p99":1.0,"max":1.0,"buckets":[[1.015807,10,10.0]]}}}"#
        .replace('\n', "");
    validate_lines(&format!("{good}\n")).unwrap();
    // Kubernetes names: optional, non-empty strings.
    let named =
        r#""container_id":"c1","k8s_namespace":"shop","k8s_pod":"web-1","k8s_container":"app","#;
    let in_pod = good.replacen(r#""container_id":null,"#, named, 1);
    validate_lines(&format!("{in_pod}\n")).unwrap();
    for bad in [in_pod.replacen(r#""shop""#, "7", 1), in_pod.replacen(r#""web-1""#, r#""""#, 1)] {
        assert!(validate_lines(&format!("{bad}\n")).is_err(), "accepted: {bad}");
    }
    for (from, to) in [
        (r#""role":"server""#, r#""role":"both""#),
        (r#""seq":3,"#, ""),
        (r#""count":10,"#, r#""count":-1,"#),
        (r#""buckets":[[1.015807,10,10.0]]"#, r#""buckets":[[1.015807,10]]"#),
        (r#""v":1"#, r#""v":2"#),
        (r#""type":"endpoint""#, r#""type":"nonsense""#),
        (r#""protocol":"http1""#, r#""protocol":"gopher""#),
        (r#""2xx":10,"#, ""),
    ] {
        let bad = good.replacen(from, to, 1);
        assert_ne!(bad, good);
        assert!(validate_lines(&format!("{bad}\n")).is_err(), "accepted: {bad}");
    }
    validate(&[]).unwrap();
}

/// Bad output options are refused with exit status 2 and a reason.
#[test]
fn bad_outputs_are_usage_errors() {
    for (arg, why) in [
        ("--output=udp://x:1", "expected stdout"),
        ("--output=file:/tmp/x?keep=0", "keep must be"),
        ("--output=tcp://127.0.0.1:5140?policy=maybe", "policy must be"),
        ("--metrics-addr=nowhere", "--metrics-addr"),
    ] {
        let out = Command::new(agent_bin()).args(["run", arg]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{arg}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{arg}: {err}");
    }
}
