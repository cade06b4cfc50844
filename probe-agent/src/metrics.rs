//! The Prometheus endpoint (`--metrics-addr`): the KPIs of the records in
//! Prometheus' text exposition format, at `GET /metrics`.
//!
//! It is fed the same lines the sinks get (with their histogram buckets),
//! so it can never disagree with the JSON. Counts become counters summed
//! since the agent started; levels (cores, bytes, ratios) become gauges;
//! latencies become histograms in Prometheus' cumulative form, in seconds,
//! over fixed bounds that each hold whole buckets of the agent's finer
//! layout (so every count is in the right `le`). A series not seen for
//! five minutes (and five intervals), such as an exited process's, is
//! dropped; at most
//! [`MAX_SERIES`] are kept, and what that bound cuts is itself a counter.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

/// Most series kept.
pub const MAX_SERIES: usize = 20_000;
/// How long a series may go unseen before it is dropped: long enough for
/// a scraper to see the last of a quiet server or an exited process.
const STALE_AFTER: Duration = Duration::from_secs(300);
/// Histogram bounds, in seconds.
const LE_S: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Default)]
struct Hist {
    /// Counts per bound of LE_S, then +Inf (not yet cumulative).
    buckets: [u64; LE_S.len() + 1],
    sum_s: f64,
    count: u64,
}

#[derive(Default)]
struct Series {
    value: f64,
    hist: Hist,
    seen: u64,
}

struct Family {
    kind: Kind,
    help: &'static str,
    series: BTreeMap<String, Series>,
}

/// The exporter's state, updated once per interval.
pub struct Metrics {
    families: BTreeMap<&'static str, Family>,
    interval: u64,
    /// Intervals a series may go unseen before it is dropped.
    stale_after: u64,
    series: usize,
    cut: u64,
    text: Arc<Mutex<Arc<str>>>,
}

/// Label sets are rendered once, as `{k="v",...}` with the values escaped.
fn labels(pairs: &[(&str, String)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s.push('}');
    s
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Metrics {
    /// Binds `addr` and serves from a thread of its own.
    pub fn start(addr: SocketAddr, interval: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let text: Arc<Mutex<Arc<str>>> = Arc::new(Mutex::new(Arc::from("")));
        let t = text.clone();
        std::thread::Builder::new().name("metrics".into()).spawn(move || serve(listener, t))?;
        Ok(Metrics::new(interval, text))
    }

    fn new(interval: Duration, text: Arc<Mutex<Arc<str>>>) -> Self {
        let stale_after = (STALE_AFTER.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
        Metrics {
            families: BTreeMap::new(),
            interval: 0,
            stale_after: stale_after.max(5),
            series: 0,
            cut: 0,
            text,
        }
    }

    fn series(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        labels: &str,
    ) -> Option<&mut Series> {
        let fam = self.families.entry(name).or_insert_with(|| Family {
            kind,
            help,
            series: BTreeMap::new(),
        });
        if !fam.series.contains_key(labels) {
            if self.series >= MAX_SERIES {
                self.cut += 1;
                return None;
            }
            self.series += 1;
            fam.series.insert(labels.to_string(), Series::default());
        }
        let s = fam.series.get_mut(labels).expect("inserted above");
        s.seen = self.interval;
        Some(s)
    }

    fn counter(&mut self, name: &'static str, help: &'static str, labels: &str, v: &Value) {
        if let Some(n) = v.as_f64()
            && let Some(s) = self.series(name, Kind::Counter, help, labels)
        {
            s.value += n;
        }
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, labels: &str, v: f64) {
        if let Some(s) = self.series(name, Kind::Gauge, help, labels) {
            s.value = v;
        }
    }

    /// Adds a latency summary's buckets (`[upper_ms, count, sum_ms]`).
    fn histogram(&mut self, name: &'static str, help: &'static str, labels: &str, summary: &Value) {
        // An empty summary creates no series, but keeps one alive.
        let Some(buckets) = summary["buckets"].as_array() else {
            if let Some(s) = self.families.get_mut(name).and_then(|f| f.series.get_mut(labels)) {
                s.seen = self.interval;
            }
            return;
        };
        let Some(s) = self.series(name, Kind::Histogram, help, labels) else { return };
        for b in buckets {
            let (Some(upper_ms), Some(count), Some(sum_ms)) =
                (b[0].as_f64(), b[1].as_u64(), b[2].as_f64())
            else {
                continue;
            };
            let i = LE_S.iter().position(|&le| le * 1e3 >= upper_ms).unwrap_or(LE_S.len());
            s.hist.buckets[i] += count;
            s.hist.count += count;
            s.hist.sum_s += sum_ms / 1e3;
        }
    }

    /// The groups process, container, host and endpoint records share.
    fn groups(&mut self, r: &Value, l: &str) {
        let g = &r["syscalls"];
        if g.is_object() {
            self.counter("probe_syscalls_total", "System calls completed.", l, &g["count"]);
            self.counter(
                "probe_syscall_errors_total",
                "System calls that returned an error.",
                l,
                &g["errors"],
            );
            self.histogram(
                "probe_syscall_latency_seconds",
                "System-call latency.",
                l,
                &g["latency_ms"],
            );
        }
        let g = &r["requests"];
        if g.is_object() {
            self.counter(
                "probe_requests_total",
                "Requests answered or failed (TCP, per server port).",
                l,
                &g["count"],
            );
            self.counter(
                "probe_request_errors_total",
                "Requests on connections reset or closed before the answer.",
                l,
                &g["errors"],
            );
            self.histogram(
                "probe_request_latency_seconds",
                "Request latency: request in to answer out.",
                l,
                &g["latency_ms"],
            );
        }
        let g = &r["tcp"];
        if g.is_object() {
            self.counter(
                "probe_tcp_connects_total",
                "Outbound TCP connects attempted.",
                l,
                &g["connects"],
            );
            self.counter(
                "probe_tcp_connect_errors_total",
                "Outbound TCP connects that failed.",
                l,
                &g["connect_errors"],
            );
            self.counter(
                "probe_tcp_accepts_total",
                "Inbound TCP handshakes accepted.",
                l,
                &g["accepts"],
            );
            self.counter(
                "probe_tcp_retransmits_total",
                "TCP segments retransmitted.",
                l,
                &g["retransmits"],
            );
            self.counter("probe_tcp_resets_sent_total", "TCP resets sent.", l, &g["resets_sent"]);
            self.counter(
                "probe_tcp_resets_received_total",
                "TCP resets received.",
                l,
                &g["resets_received"],
            );
            self.counter(
                "probe_tcp_sent_bytes_total",
                "TCP payload bytes sent.",
                l,
                &g["bytes_sent"],
            );
            self.counter(
                "probe_tcp_received_bytes_total",
                "TCP payload bytes received.",
                l,
                &g["bytes_received"],
            );
            self.histogram(
                "probe_tcp_connect_latency_seconds",
                "TCP connect latency: SYN to established.",
                l,
                &g["connect_latency_ms"],
            );
            self.histogram(
                "probe_tcp_rtt_seconds",
                "Smoothed TCP round-trip time, sampled.",
                l,
                &g["rtt_ms"],
            );
        }
        let g = &r["cpu"];
        if g.is_object() {
            if let Some(v) = g["cores"].as_f64() {
                self.gauge("probe_cpu_cores", "Busy cores over the last interval.", l, v);
            }
            if let Some(v) = g["utilization_pct"].as_f64() {
                self.gauge(
                    "probe_cpu_utilization_ratio",
                    "Share of the host's CPU capacity used.",
                    l,
                    v / 100.0,
                );
            }
            self.histogram(
                "probe_cpu_runq_latency_seconds",
                "Run-queue latency: runnable to running.",
                l,
                &g["runq_latency_ms"],
            );
        }
        let g = &r["memory"];
        if let Some(v) = g["used_bytes"].as_f64().or_else(|| g["rss_bytes"].as_f64()) {
            self.gauge("probe_memory_used_bytes", "Memory in use (RSS for processes).", l, v);
        }
        if let Some(v) = g["limit_bytes"].as_f64().or_else(|| g["total_bytes"].as_f64()) {
            self.gauge("probe_memory_limit_bytes", "Memory limit (total for the host).", l, v);
        }
        if let Some(v) = r["cost"]["projected_usd_month"].as_f64() {
            self.gauge("probe_cost_projected_usd_per_month", "Projected monthly cost.", l, v);
        }
        // The budget beside the projection, so that a rule can say how far
        // over budget a host is (packaging/prometheus/probe-rules.yaml).
        if let Some(v) = r["cost"]["budget_usd_month"].as_f64() {
            self.gauge("probe_cost_budget_usd_per_month", "Monthly budget.", l, v);
        }
    }

    /// Takes one interval's lines.
    pub fn update(&mut self, lines: &[u8]) {
        self.interval += 1;
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(r) = serde_json::from_slice::<Value>(line) else { continue };
            let host = text(&r["host"]);
            let who = |scope: &str| {
                vec![
                    ("host", host.clone()),
                    ("scope", scope.to_string()),
                    ("pid", text(&r["pid"])),
                    ("comm", text(&r["comm"])),
                    ("container", text(&r["container_id"])),
                ]
            };
            match r["type"].as_str() {
                Some("host") => {
                    self.groups(&r, &labels(&[("host", host.clone()), ("scope", "host".into())]));
                    for d in r["disk"].as_array().into_iter().flatten() {
                        let l = labels(&[("host", host.clone()), ("mount", text(&d["mount"]))]);
                        if let Some(v) = d["used_bytes"].as_f64() {
                            self.gauge("probe_disk_used_bytes", "Disk space used (as df).", &l, v);
                        }
                        if let Some(v) = d["size_bytes"].as_f64() {
                            self.gauge("probe_disk_size_bytes", "Disk size.", &l, v);
                        }
                    }
                }
                Some("process") => self.groups(&r, &labels(&who("process"))),
                Some("container") => {
                    let l = [
                        ("host", host.clone()),
                        ("scope", "container".into()),
                        ("container", text(&r["container_id"])),
                    ];
                    self.groups(&r, &labels(&l));
                }
                Some("endpoint") => {
                    let mut l = who("endpoint");
                    l.extend([
                        ("role", text(&r["role"])),
                        ("port", text(&r["port"])),
                        ("peer", text(&r["peer"])),
                    ]);
                    self.groups(&r, &labels(&l));
                }
                Some("agent") => {
                    let l = labels(&[("host", host.clone())]);
                    if let Some(v) = r["cpu_pct"].as_f64() {
                        self.gauge(
                            "probe_agent_cpu_ratio",
                            "The agent's CPU, in cores.",
                            &l,
                            v / 100.0,
                        );
                    }
                    if let Some(v) = r["rss_bytes"].as_f64() {
                        self.gauge("probe_agent_rss_bytes", "The agent's resident memory.", &l, v);
                    }
                    for (what, n) in r["lost"].as_object().into_iter().flatten() {
                        let l = labels(&[("host", host.clone()), ("counter", what.clone())]);
                        self.counter(
                            "probe_agent_lost_events_total",
                            "Events the kernel side could not record.",
                            &l,
                            n,
                        );
                    }
                    for s in r["output"]["sinks"].as_array().into_iter().flatten() {
                        let sink = text(&s["name"]);
                        let l = labels(&[("host", host.clone()), ("sink", sink.clone())]);
                        self.counter(
                            "probe_agent_sink_sent_records_total",
                            "Records delivered to a sink.",
                            &l,
                            &s["sent_records"],
                        );
                        for (reason, n) in s["dropped_records"].as_object().into_iter().flatten() {
                            let l = labels(&[
                                ("host", host.clone()),
                                ("sink", sink.clone()),
                                ("reason", reason.clone()),
                            ]);
                            self.counter(
                                "probe_agent_sink_dropped_records_total",
                                "Records a sink dropped, by reason.",
                                &l,
                                n,
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        // Forget what has gone quiet (exited processes, closed endpoints).
        let now = self.interval;
        for fam in self.families.values_mut() {
            let before = fam.series.len();
            fam.series.retain(|_, s| now - s.seen < self.stale_after);
            self.series -= before - fam.series.len();
        }
        let text = self.render();
        *self.text.lock().unwrap_or_else(|e| e.into_inner()) = Arc::from(text);
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let _ = writeln!(
            out,
            "# HELP probe_metrics_series_cut_total Series not exported because of the bound on series."
        );
        let _ = writeln!(out, "# TYPE probe_metrics_series_cut_total counter");
        let _ = writeln!(out, "probe_metrics_series_cut_total {}", self.cut);
        for (name, fam) in &self.families {
            if fam.series.is_empty() {
                continue;
            }
            let kind = match fam.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", fam.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (l, s) in &fam.series {
                if fam.kind != Kind::Histogram {
                    let _ = writeln!(out, "{name}{l} {}", s.value);
                    continue;
                }
                let inner = &l[1..l.len() - 1];
                let sep = if inner.is_empty() { "" } else { "," };
                let mut cum = 0;
                for (i, n) in s.hist.buckets.iter().enumerate() {
                    cum += n;
                    let le = LE_S.get(i).map_or("+Inf".to_string(), |le| le.to_string());
                    let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"{le}\"}} {cum}");
                }
                let _ = writeln!(out, "{name}_sum{l} {}", s.hist.sum_s);
                let _ = writeln!(out, "{name}_count{l} {}", s.hist.count);
            }
        }
        out
    }
}

/// Answers `GET /metrics` with the latest text, one connection at a time.
fn serve(listener: TcpListener, text: Arc<Mutex<Arc<str>>>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let line = req.split(|&b| b == b'\n').next().unwrap_or_default();
        let mut words = line.split(|&b| b == b' ');
        let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let path = path.split(|&b| b == b'?').next().unwrap_or_default();
        let (status, body): (&str, Arc<str>) = if method == b"GET" && path == b"/metrics" {
            ("200 OK", text.lock().unwrap_or_else(|e| e.into_inner()).clone())
        } else {
            ("404 Not Found", Arc::from("try /metrics\n"))
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body.as_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(Duration::from_secs(60), Arc::new(Mutex::new(Arc::from(""))))
    }

    /// Counters add up over intervals; histogram buckets are cumulative
    /// and each fine bucket lands in the first bound that holds all of it.
    #[test]
    fn counters_accumulate_and_buckets_are_cumulative() {
        let mut m = metrics();
        let line = r#"{"type":"process","host":"h","pid":7,"comm":"a\"b","container_id":null,
            "syscalls":{"count":10,"errors":1,"latency_ms":{"buckets":[[0.000999,4,0.003],[1.5,6,8.4]]}}}"#
            .replace('\n', "");
        m.update(line.as_bytes());
        m.update(line.as_bytes());
        let t = m.render();
        let l = r#"host="h",scope="process",pid="7",comm="a\"b",container="""#;
        assert!(t.contains(&format!("probe_syscalls_total{{{l}}} 20\n")), "{t}");
        assert!(t.contains(&format!("probe_syscall_errors_total{{{l}}} 2\n")));
        assert!(
            t.contains(&format!("probe_syscall_latency_seconds_bucket{{{l},le=\"0.00001\"}} 8\n")),
            "{t}"
        );
        assert!(
            t.contains(&format!("probe_syscall_latency_seconds_bucket{{{l},le=\"0.001\"}} 8\n"))
        );
        assert!(
            t.contains(&format!("probe_syscall_latency_seconds_bucket{{{l},le=\"0.0025\"}} 20\n"))
        );
        assert!(
            t.contains(&format!("probe_syscall_latency_seconds_bucket{{{l},le=\"+Inf\"}} 20\n"))
        );
        assert!(t.contains(&format!("probe_syscall_latency_seconds_count{{{l}}} 20\n")));
    }

    /// The host's budget is exported beside its projected cost, with the
    /// same labels, so a rule can divide one by the other.
    #[test]
    fn cost_and_budget_share_their_labels() {
        let mut m = metrics();
        m.update(br#"{"type":"host","host":"h","cost":{"projected_usd_month":120.5,"budget_usd_month":100.0,"over_budget_pct":20.5}}"#);
        m.update(br#"{"type":"host","host":"g","cost":{"projected_usd_month":null,"budget_usd_month":null}}"#);
        let t = m.render();
        assert!(
            t.contains("probe_cost_projected_usd_per_month{host=\"h\",scope=\"host\"} 120.5\n"),
            "{t}"
        );
        assert!(
            t.contains("probe_cost_budget_usd_per_month{host=\"h\",scope=\"host\"} 100\n"),
            "{t}"
        );
        assert!(!t.contains("host=\"g\""), "{t}");
    }

    #[test]
    fn quiet_series_are_dropped() {
        let mut m = metrics();
        m.update(br#"{"type":"process","host":"h","pid":7,"syscalls":{"count":1}}"#);
        for _ in 0..5 {
            m.update(b"");
        }
        assert!(!m.render().contains("pid=\"7\""));
        assert_eq!(m.series, 0);
    }
}
