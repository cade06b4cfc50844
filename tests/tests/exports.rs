//! OTLP export and the HTTP client against real consumers: the OTLP
//! exports decoded by OpenTelemetry's own Python classes (independent of
//! the agent's Rust ones), an HTTPS endpoint with a test CA and a bearer
//! token, a server that asks to be left alone (429 with `Retry-After`), and
//! an alert webhook. The agent's own stdout is the reference.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use probe_tests::{Agent, Workload, require_bpf, syscall_total, tempdir, validate_lines};
use serde_json::Value;

/// One request a test server received.
#[derive(Clone)]
struct Req {
    at: Instant,
    path: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

type Answer = dyn Fn(usize, &Req) -> (u16, &'static str) + Send + Sync;

/// Reads one HTTP/1.1 request (Content-Length or chunked body); `None` at
/// the end of the connection.
fn read_request(r: &mut impl BufRead) -> Option<Req> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let at = Instant::now();
    let path = line.split(' ').nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).ok()?;
            let n = usize::from_str_radix(line.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = get("content-length") {
        body = vec![0; len.parse().ok()?];
        r.read_exact(&mut body).ok()?;
    }
    Some(Req { at, path, headers, body })
}

/// A keep-alive HTTP/1.1 server (over TLS when given a configuration)
/// that keeps every request and answers each as `answer` says: a status
/// and extra header lines.
fn serve(
    tls: Option<Arc<rustls::ServerConfig>>,
    answer: Box<Answer>,
) -> (u16, Arc<Mutex<Vec<Req>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<Req>>> = Arc::new(Mutex::new(Vec::new()));
    let (g, answer) = (got.clone(), Arc::<Answer>::from(answer));
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { break };
            let (g, answer, tls) = (g.clone(), answer.clone(), tls.clone());
            std::thread::spawn(move || {
                let stream: Box<dyn ReadWrite> = match tls {
                    Some(cfg) => {
                        let sc = rustls::ServerConnection::new(cfg).unwrap();
                        Box::new(rustls::StreamOwned::new(sc, conn))
                    }
                    None => Box::new(conn),
                };
                let mut r = BufReader::new(stream);
                while let Some(req) = read_request(&mut r) {
                    let i = {
                        let mut g = g.lock().unwrap();
                        g.push(req.clone());
                        g.len() - 1
                    };
                    let (status, extra) = answer(i, &req);
                    let w = r.get_mut();
                    let _ = write!(w, "HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\n\r\n");
                    let _ = w.flush();
                }
            });
        }
    });
    (port, got)
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().expect("seq")).collect()
}

/// The NDJSON records of the requests a server accepted (2xx).
fn lines_of(reqs: &[Req], accepted: impl Fn(usize) -> bool) -> Vec<Value> {
    reqs.iter()
        .enumerate()
        .filter(|&(i, _)| accepted(i))
        .flat_map(|(_, r)| {
            String::from_utf8(r.body.clone())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
        .collect()
}

/// A sink's figures from every agent record, by field: summed counts, and
/// the last `last_error` seen.
fn sink_figures(records: &[Value], name: &str) -> (u64, u64, u64, Option<String>) {
    let (mut sent, mut dropped, mut errors, mut last) = (0, 0, 0, None);
    for r in records.iter().filter(|r| r["type"] == "agent") {
        for s in r["output"]["sinks"].as_array().unwrap() {
            if s["name"] == name {
                sent += s["sent_records"].as_u64().unwrap();
                dropped += s["dropped_records"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|v| v.as_u64().unwrap())
                    .sum::<u64>();
                errors += s["errors"].as_u64().unwrap();
                if let Some(e) = s["last_error"].as_str() {
                    last = Some(e.to_string());
                }
            }
        }
    }
    (sent, dropped, errors, last)
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Decodes request bodies with OpenTelemetry's Python classes
/// (scripts/otlp-decode.py, in the environment scripts/setup.sh makes).
fn decode_otlp(dir: &Path, bodies: &[Vec<u8>]) -> Vec<Value> {
    let mut files = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let f = dir.join(format!("export-{i}.pb"));
        std::fs::write(&f, b).unwrap();
        files.push(f);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let python = PathBuf::from(home).join(".cache/probe/venv-otlp/bin/python3");
    let out = Command::new(&python)
        .arg(workspace().join("scripts/otlp-decode.py"))
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("{} (made by scripts/setup.sh): {e}", python.display()));
    assert!(out.status.success(), "otlp-decode.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An attribute's value in protobuf's JSON mapping, as a string.
fn attr(attrs: &Value, key: &str) -> Option<String> {
    let a = attrs.as_array()?.iter().find(|a| a["key"] == key)?;
    let v = &a["value"];
    v["string_value"]
        .as_str()
        .map(str::to_string)
        .or_else(|| v["int_value"].as_str().map(str::to_string))
}

/// The points of metric `name` in the resources whose attribute `rkey` is
/// `rval`, whose point attributes include every `(key, value)` of `want`.
fn points<'a>(
    req: &'a Value,
    rkey: &str,
    rval: &str,
    name: &str,
    want: &[(&str, &str)],
) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for rm in req["resource_metrics"].as_array().into_iter().flatten() {
        if attr(&rm["resource"]["attributes"], rkey).as_deref() != Some(rval) {
            continue;
        }
        for sm in rm["scope_metrics"].as_array().into_iter().flatten() {
            for m in sm["metrics"].as_array().into_iter().flatten().filter(|m| m["name"] == name) {
                let data = ["sum", "gauge", "histogram"].iter().find_map(|k| m.get(*k)).unwrap();
                for p in data["data_points"].as_array().into_iter().flatten() {
                    if want.iter().all(|(k, v)| attr(&p["attributes"], k).as_deref() == Some(*v)) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

fn int(v: &Value) -> u64 {
    v.as_str().map_or_else(|| v.as_u64().unwrap_or(0), |s| s.parse().unwrap())
}

/// The OTLP export, decoded by an independent decoder, holds a server's
/// exact request count and a histogram whose buckets hold its known
/// latency, and a workload's exact system call counts and errors; the
/// counts are cumulative. In the same run, an alert webhook
/// (`types=alert&body=json`) gets each alert record, one POST each, as
/// stdout has it.
#[test]
fn otlp_exports_hold_exact_counts_and_the_known_latency() {
    require_bpf!();
    let dir = tempdir("otlp");
    let (collector, exports) = serve(None, Box::new(|_, _| (200, "")));
    let (hook, alerts) = serve(None, Box::new(|_, _| (200, "")));
    let server =
        Workload::start(&["tcp-server", "--name", "pw-otlps", "--delay-ms", "20"]).unwrap();
    let port = server.ready[0].clone();
    let mut calls =
        Workload::start(&["calls", "--name", "pw-otlpc", "--ok", "100", "--fail", "10"]).unwrap();
    // The guide's latency rule at 5 ms, firing at once: a 20 ms server alerts.
    let config = probe_tests::default_config()
        .replace("hold_intervals = 2", "hold_intervals = 1")
        .replacen("investigate = 500.0", "investigate = 5.0", 1);
    std::fs::write(dir.join("probe.toml"), config).unwrap();
    let otlp = format!(
        "otlp+http://127.0.0.1:{collector}/v1/metrics?types=host,process,endpoint,syscall,agent&gzip=true"
    );
    let webhook = format!("http://127.0.0.1:{hook}/page?types=alert&body=json");
    let (spid, cpid) = (server.pid.to_string(), calls.pid.to_string());
    let cfg = dir.join("probe.toml");
    let agent = Agent::start(&[
        "--interval",
        "1s",
        "--pid",
        &spid,
        "--pid",
        &cpid,
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        "stdout",
        "--output",
        &otlp,
        "--output",
        &webhook,
    ])
    .unwrap();
    calls.go().unwrap();
    let truth = calls.finish().unwrap();
    let mut client = Workload::start(&[
        "tcp-client",
        "--name",
        "pw-otlpk",
        "--port",
        &port,
        "--requests",
        "40",
        "--keepalive",
    ])
    .unwrap();
    client.go().unwrap();
    client.finish().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let records = agent.stop().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let exports = exports.lock().unwrap().clone();
    assert!(exports.len() >= 3, "{} exports", exports.len());
    for r in &exports {
        assert_eq!(r.path, "/v1/metrics");
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
    }
    let sizes: Vec<usize> = exports.iter().map(|r| r.body.len()).collect();
    let decoded = decode_otlp(&dir, &exports.iter().map(|r| r.body.clone()).collect::<Vec<_>>());
    eprintln!("OTLP exports (gzip bytes): {sizes:?}");

    // Cumulative: the last export holds every count of the run.
    let last = decoded.last().unwrap();
    let ep =
        [("probe.scope", "endpoint"), ("probe.role", "server"), ("server.port", port.as_str())];
    let count = points(last, "process.pid", &spid, "probe.requests.count", &ep);
    assert_eq!(count.len(), 1, "{last}");
    assert_eq!(int(&count[0]["as_int"]), 40, "the server's 40 requests, exactly");
    let hist = points(last, "process.pid", &spid, "probe.requests.latency", &ep);
    assert_eq!(hist.len(), 1);
    let h = hist[0];
    assert_eq!(int(&h["count"]), 40);
    let bounds: Vec<f64> =
        h["explicit_bounds"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
    let counts: Vec<u64> = h["bucket_counts"].as_array().unwrap().iter().map(int).collect();
    assert_eq!(counts.len(), bounds.len() + 1);
    // The agent's own figure for these requests (its JSON), and the bucket
    // of the 20 ms delay: every request is there.
    let avg_ms = records
        .iter()
        .filter(|r| r["type"] == "endpoint" && r["pid"] == server.pid && r["role"] == "server")
        .find_map(|r| r["requests"]["latency_ms"]["avg"].as_f64())
        .unwrap();
    assert!((20.0..25.0).contains(&avg_ms), "{avg_ms}");
    let i = bounds.iter().position(|&b| b >= avg_ms / 1e3).unwrap();
    assert!(bounds[i - 1] < 0.020 && bounds[i] >= 0.025 * 0.999, "{bounds:?}");
    assert_eq!(counts[i], 40, "every request in the bucket of 20 ms: {counts:?}");
    let sum_s = h["sum"].as_f64().unwrap();
    assert!((sum_s / 40.0 * 1e3 - avg_ms).abs() < 0.01, "sum {sum_s} s, avg {avg_ms} ms");

    // System calls: the workload's exact counts, by name.
    let sc = |name: &'static str, metric: &str| {
        let p = points(
            last,
            "process.pid",
            &cpid,
            metric,
            &[("probe.scope", "syscall"), ("probe.syscall", name)],
        );
        assert_eq!(p.len(), 1, "{metric} {name}");
        int(&p[0]["as_int"])
    };
    let n = |k: &str| truth[k].as_u64().unwrap();
    assert_eq!(sc("getppid", "probe.syscalls.count"), n("getppid"));
    assert_eq!(sc("openat", "probe.syscalls.count"), n("openat"));
    assert_eq!(sc("openat", "probe.syscalls.errors"), n("openat_errors"));
    // close: the workload's, and the C library's at exit, as the JSON says.
    let close = sc("close", "probe.syscalls.count");
    assert!(close >= n("close"));
    assert_eq!(close, syscall_total(&records, calls.pid, "close", "count"));
    // The process's resource, after the semantic conventions.
    let rm = last["resource_metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rm| {
            attr(&rm["resource"]["attributes"], "process.pid").as_deref() == Some(cpid.as_str())
        })
        .unwrap();
    let ra = &rm["resource"]["attributes"];
    assert_eq!(attr(ra, "process.executable.name").as_deref(), Some("pw-otlpc"));
    assert!(attr(ra, "host.name").is_some_and(|h| !h.is_empty()));
    // Counts only grow, from one start time, across the exports.
    let series = |req: &Value| {
        points(req, "process.pid", &spid, "probe.requests.count", &ep)
            .first()
            .map(|p| (int(&p["as_int"]), int(&p["start_time_unix_nano"])))
    };
    let seen: Vec<(u64, u64)> = decoded.iter().filter_map(series).collect();
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 == w[1].1), "{seen:?}");
    // The agent accounted for every request it sent.
    let (sent, dropped, _, _) = sink_figures(&records, &otlp);
    assert_eq!(dropped, 0);
    assert!(sent >= 1 && sent <= exports.len() as u64, "{sent} of {}", exports.len());

    // The webhook: one alert record per POST, as stdout has them.
    let alerts = alerts.lock().unwrap().clone();
    let want: Vec<&Value> = records.iter().filter(|r| r["type"] == "alert").collect();
    assert!(!want.is_empty(), "the 5 ms latency rule fired");
    assert_eq!(alerts.len(), want.len(), "one POST per alert");
    let mut text = String::new();
    for (a, w) in alerts.iter().zip(&want) {
        assert_eq!(a.header("content-type"), Some("application/json"));
        let body = String::from_utf8(a.body.clone()).unwrap();
        assert!(!body.contains('\n'), "one JSON object: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(&v, *w, "the webhook got the alert as stdout did");
        text.push_str(&body);
        text.push('\n');
    }
    validate_lines(&text).unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A test CA (and a wrong one) and a server certificate for 127.0.0.1.
struct Pki {
    ca_pem: String,
    wrong_ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    };
    let (good, wrong) = (ca("probe test CA"), ca("some other CA"));
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = p.signed_by(&key, &good).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), good.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Pki { ca_pem: good.pem(), wrong_ca_pem: wrong.pem(), server: Arc::new(server) }
}

/// HTTPS with a test CA and a bearer token the server checks: with the
/// wrong CA every try fails, each counted, with the reason in
/// `last_error`; once the right CA is in the file, SIGHUP makes the sink
/// read it and retry at once, and every record arrives, in order, once.
/// The token never shows in the records.
#[test]
fn https_with_a_test_ca_and_a_token_recovers_on_sighup() {
    require_bpf!();
    let dir = tempdir("tls");
    let pki = pki();
    const TOKEN: &str = "s3cret-token-for-the-test";
    let (port, got) = serve(
        Some(pki.server.clone()),
        Box::new(|_, r: &Req| {
            if r.header("authorization") == Some(&format!("Bearer {TOKEN}")) {
                (200, "")
            } else {
                (401, "")
            }
        }),
    );
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.wrong_ca_pem).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let spec = format!(
        "https://127.0.0.1:{port}/ingest?ca={}&bearer_file={}&header=X-Tenant:t1",
        ca.display(),
        token.display()
    );
    let mut agent =
        Agent::start(&["--interval", "300ms", "--output", "stdout", "--output", &spec]).unwrap();
    let name = spec.replace("X-Tenant:t1", "X-Tenant:<redacted>");
    let failing = agent
        .wait_for(
            |r| {
                r["type"] == "agent"
                    && r["output"]["sinks"].as_array().unwrap().iter().any(|s| {
                        s["name"] == name.as_str()
                            && s["failing"] == true
                            && s["last_error"].is_string()
                    })
            },
            Duration::from_secs(20),
        )
        .unwrap();
    let sink = failing["output"]["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap();
    let why = sink["last_error"].as_str().unwrap();
    assert!(why.contains("not signed by") && why.contains(ca.to_str().unwrap()), "{why}");
    assert!(got.lock().unwrap().is_empty(), "nothing gets through the wrong CA");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let fixed = Instant::now();
    probe_tests::kill(agent.pid(), libc::SIGHUP);
    let until = fixed + Duration::from_secs(10);
    while got.lock().unwrap().is_empty() {
        assert!(Instant::now() < until, "no delivery after the CA was fixed and SIGHUP sent");
        std::thread::sleep(Duration::from_millis(20));
    }
    let recovered = fixed.elapsed();
    eprintln!("delivered {recovered:?} after SIGHUP");
    assert!(recovered < Duration::from_secs(2), "SIGHUP retries at once: {recovered:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let records = agent.stop().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reqs = got.lock().unwrap().clone();
    assert!(reqs.iter().all(|r| r.header("x-tenant") == Some("t1") && r.path == "/ingest"));
    let delivered = lines_of(&reqs, |_| true);
    let want = seqs(&records);
    assert_eq!(seqs(&delivered), want, "every record, in order, once");
    let (_, dropped, errors, _) = sink_figures(&records, &name);
    assert_eq!(dropped, 0);
    assert!(errors >= 1, "the failures were counted");
    let text: String = records.iter().map(Value::to_string).collect();
    assert!(!text.contains(TOKEN) && !text.contains("X-Tenant:t1"), "a secret in the records");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 429 with `Retry-After: 2` holds the next try for about 2 s (not the
/// sink's 200 ms back-off), and the batch then goes once: nothing dropped,
/// nothing doubled.
#[test]
fn a_429_with_retry_after_delays_the_next_try() {
    require_bpf!();
    let (port, got) =
        serve(None, Box::new(|i, _| if i == 0 { (429, "Retry-After: 2\r\n") } else { (200, "") }));
    let spec = format!("http://127.0.0.1:{port}/ingest");
    let agent =
        Agent::start(&["--interval", "300ms", "--output", "stdout", "--output", &spec]).unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    let records = agent.stop().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reqs = got.lock().unwrap().clone();
    assert!(reqs.len() >= 3, "{} requests", reqs.len());
    let waited = reqs[1].at.duration_since(reqs[0].at);
    eprintln!("the retry came {waited:?} after the 429");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(3000),
        "Retry-After: 2 honoured: {waited:?}"
    );
    assert_eq!(reqs[0].body, reqs[1].body, "the same batch again");
    let delivered = lines_of(&reqs, |i| i > 0);
    assert_eq!(seqs(&delivered), seqs(&records), "every record, in order, once");
    let (_, dropped, errors, _) = sink_figures(&records, &spec);
    assert_eq!((dropped, errors), (0, 1), "one failed try, nothing dropped");
}
