//! The Prometheus endpoint (`--metrics-addr`): the KPIs of the records in
//! Prometheus' text exposition format, at `GET /metrics`.
//!
//! It is fed the same typed records the sinks get (with their histogram
//! buckets), and every KPI series is a row of the catalogue, so it can never
//! disagree with the JSON. Counts become counters summed
//! since the agent started; levels (cores, bytes, ratios) become gauges;
//! latencies become histograms in Prometheus' cumulative form, in seconds,
//! over fixed bounds that each hold whole buckets of the agent's finer
//! layout (so every count is in the right `le`). A series not seen for
//! five minutes (and five intervals), such as an exited process's, is
//! dropped; at most
//! [`MAX_SERIES`] sample lines are kept (a histogram counts one per bound,
//! plus its sum and count), so the page stays under a few MiB however many
//! processes and endpoints there are; what that bound cuts is itself a
//! counter.
//!
//! Labels follow the conventions of Kubernetes' own exporters: the
//! container is `container_id` (cAdvisor's and the Prometheus Operator's
//! `container` is a container's *name*), and process, endpoint and route
//! series are keyed by `comm`, not `pid`, unless asked (`--metrics-pid`):
//! a pid changes with every restart, and each new one would be a new
//! series. Without `pid`, the processes of one name (in one container)
//! share a series: counters and histograms add up their counts (they stay
//! monotonic when a process exits or starts), and gauges, all of which are
//! additive at the process scope (busy cores, CPU share, RSS), are the sum
//! over the processes of that interval.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    catalogue::{KPIS, MetricKind, Read},
    records::{AgentRecord, K8s, Record},
};

/// Most sample lines kept (a series of a counter or gauge is one line; a
/// histogram's is one per bound and +Inf, plus `_sum` and `_count`).
pub const MAX_SERIES: usize = 50_000;
/// How long a series may go unseen before it is dropped: long enough for
/// a scraper to see the last of a quiet server or an exited process.
const STALE_AFTER: Duration = Duration::from_secs(300);
/// Histogram bounds, in seconds (the OTLP sinks' explicit bounds too, so
/// both exports show the same buckets).
pub const LE_S: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The bucket of [`LE_S`] (or +Inf: `LE_S.len()`) that holds all of one
/// of the agent's fine buckets, given its upper bound in ms: the first
/// bound at or above it, so no count is ever under a bound below its value.
pub fn le_index(upper_ms: f64) -> usize {
    LE_S.iter().position(|&le| le * 1e3 >= upper_ms).unwrap_or(LE_S.len())
}

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
    /// The interval whose values a gauge holds: a gauge fed twice in one
    /// interval (processes sharing a name) holds their sum.
    set_in: u64,
}

struct Family {
    kind: Kind,
    help: &'static str,
    series: BTreeMap<String, Series>,
}

impl Family {
    /// Sample lines one series of this family renders.
    fn lines(&self) -> usize {
        if self.kind == Kind::Histogram { LE_S.len() + 3 } else { 1 }
    }
}

/// The exporter's state, updated once per interval.
pub struct Metrics {
    families: BTreeMap<&'static str, Family>,
    interval: u64,
    /// Intervals a series may go unseen before it is dropped.
    stale_after: u64,
    series: usize,
    cut: u64,
    /// Label process, endpoint and route series with their `pid`.
    pid_label: bool,
    text: Arc<Mutex<Arc<str>>>,
}

/// `namespace` and `pod`, when the container's pod is known.
fn k8s_labels(l: &mut Vec<(&'static str, String)>, k8s: &K8s) {
    if let Some(ns) = &k8s.k8s_namespace {
        l.push(("namespace", ns.clone()));
    }
    if let Some(pod) = &k8s.k8s_pod {
        l.push(("pod", pod.clone()));
    }
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

impl Metrics {
    /// Serves from a thread of its own on a bound listener; `pid_label`
    /// adds `pid` to process, endpoint and route series.
    pub fn start(
        listener: Listener,
        interval: Duration,
        health: Arc<Health>,
        pid_label: bool,
    ) -> io::Result<Self> {
        let text: Arc<Mutex<Arc<str>>> = Arc::new(Mutex::new(Arc::from("")));
        let t = text.clone();
        crate::caps::spawn("metrics".into(), move || serve(listener.0, t, health))?;
        Ok(Metrics::new(interval, text, pid_label))
    }

    fn new(interval: Duration, text: Arc<Mutex<Arc<str>>>, pid_label: bool) -> Self {
        let stale_after = (STALE_AFTER.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
        Metrics {
            families: BTreeMap::new(),
            interval: 0,
            stale_after: stale_after.max(5),
            series: 0,
            cut: 0,
            pid_label,
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
            let lines = fam.lines();
            if self.series + lines > MAX_SERIES {
                self.cut += 1;
                return None;
            }
            self.series += lines;
            fam.series.insert(labels.to_string(), Series::default());
        }
        let s = fam.series.get_mut(labels).expect("inserted above");
        s.seen = self.interval;
        Some(s)
    }

    fn counter(&mut self, name: &'static str, help: &'static str, labels: &str, n: f64) {
        if let Some(s) = self.series(name, Kind::Counter, help, labels) {
            s.value += n;
        }
    }

    /// Sets a gauge for this interval; values given again in the same
    /// interval (processes sharing a series) add up.
    fn gauge(&mut self, name: &'static str, help: &'static str, labels: &str, v: f64) {
        let now = self.interval;
        if let Some(s) = self.series(name, Kind::Gauge, help, labels) {
            if s.set_in == now {
                s.value += v;
            } else {
                (s.value, s.set_in) = (v, now);
            }
        }
    }

    /// Adds a latency summary's buckets (`[upper_ms, count, sum_ms]`).
    fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &str,
        summary: Option<&crate::aggregate::latency::LatencyMs>,
    ) {
        // An empty summary creates no series, but keeps one alive.
        let Some(buckets) = summary.and_then(|l| l.buckets.as_ref()) else {
            if let Some(s) = self.families.get_mut(name).and_then(|f| f.series.get_mut(labels)) {
                s.seen = self.interval;
            }
            return;
        };
        let Some(s) = self.series(name, Kind::Histogram, help, labels) else { return };
        for &(upper_ms, count, sum_ms) in buckets {
            let i = le_index(upper_ms);
            s.hist.buckets[i] += count;
            s.hist.count += count;
            s.hist.sum_s += sum_ms / 1e3;
        }
    }

    /// Every catalogue KPI with a metric that the record's type carries.
    fn kpis(&mut self, r: &Record, l: &str) {
        let g = r.groups();
        let host = &r.header().host;
        for k in KPIS {
            let Some(m) = k.metric else { continue };
            if !k.scopes.contains(&r.kind()) {
                continue;
            }
            match (k.read, m.kind) {
                (Read::Value(read), MetricKind::Counter) => {
                    if let Some(v) = read(&g) {
                        self.counter(m.name, m.help, l, v);
                    }
                }
                (Read::Value(read), MetricKind::Gauge) => {
                    if let Some(v) = read(&g) {
                        self.gauge(m.name, m.help, l, v * m.scale);
                    }
                }
                (Read::Latency(read), MetricKind::Histogram) => {
                    self.histogram(m.name, m.help, l, read(&g));
                }
                (Read::Classes(read), MetricKind::Counter) => {
                    for (class, &n) in read(&g).into_iter().flatten() {
                        let inner = &l[1..l.len() - 1];
                        let l = format!("{{{inner},class=\"{class}\"}}");
                        self.counter(m.name, m.help, &l, n as f64);
                    }
                }
                (Read::Disk(read), MetricKind::Gauge) => {
                    for d in g.disk {
                        let l = labels(&[("host", host.clone()), ("mount", d.mount.clone())]);
                        self.gauge(m.name, m.help, &l, read(d) * m.scale);
                    }
                }
                // The catalogue's test forbids other pairs.
                _ => {}
            }
        }
    }

    /// The agent's own health.
    fn agent(&mut self, a: &AgentRecord) {
        let host = &a.header.host;
        let l = labels(&[("host", host.clone())]);
        self.gauge("probe_agent_cpu_ratio", "The agent's CPU, in cores.", &l, a.cpu_pct / 100.0);
        self.gauge("probe_agent_rss_bytes", "The agent's resident memory.", &l, a.rss_bytes as f64);
        for (what, n) in a.lost.fields() {
            let l = labels(&[("host", host.clone()), ("counter", what.to_string())]);
            self.counter(
                "probe_agent_lost_events_total",
                "Events the kernel side could not record.",
                &l,
                n as f64,
            );
        }
        for s in &a.output.sinks {
            let l = labels(&[("host", host.clone()), ("sink", s.name.clone())]);
            self.counter(
                "probe_agent_sink_sent_records_total",
                "Records delivered to a sink.",
                &l,
                s.sent_records as f64,
            );
            for (reason, n) in s.dropped_records.fields() {
                let l = labels(&[
                    ("host", host.clone()),
                    ("sink", s.name.clone()),
                    ("reason", reason.to_string()),
                ]);
                self.counter(
                    "probe_agent_sink_dropped_records_total",
                    "Records a sink dropped, by reason.",
                    &l,
                    n as f64,
                );
            }
        }
    }

    /// The labels of a KPI record's series (None: not exported as KPIs).
    fn labels_of(&self, r: &Record) -> Option<Vec<(&'static str, String)>> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut l = vec![("host", r.header().host.clone()), ("scope", r.kind().name().to_string())];
        // Who: the process (by name; by pid only if asked), its container,
        // and the container's pod and namespace when known.
        let mut who = |pid: u32, comm: &str, container_id: &Option<String>, k8s: &K8s| {
            if self.pid_label {
                l.push(("pid", pid.to_string()));
            }
            l.push(("comm", comm.to_string()));
            l.push(("container_id", opt(container_id)));
            k8s_labels(&mut l, k8s);
        };
        match r {
            Record::Host(_) => {}
            Record::Container(c) => {
                l.push(("container_id", c.container_id.clone()));
                k8s_labels(&mut l, &c.k8s);
            }
            Record::Process(p) => who(p.pid, &p.comm, &p.container_id, &p.k8s),
            Record::Endpoint(e) => {
                who(e.pid, &e.comm, &e.container_id, &e.k8s);
                l.extend([
                    ("role", e.role.name().to_string()),
                    ("port", e.port.to_string()),
                    ("peer", opt(&e.peer)),
                ]);
            }
            Record::Route(rt) => {
                who(rt.pid, &rt.comm, &rt.container_id, &rt.k8s);
                l.extend([
                    ("role", rt.role.name().to_string()),
                    ("port", rt.port.to_string()),
                    ("peer", opt(&rt.peer)),
                    ("method", opt(&rt.method)),
                    ("route", rt.route.clone()),
                ]);
            }
            Record::Agent(_) | Record::Status(_) | Record::Syscall(_) | Record::Alert(_) => {
                return None;
            }
        }
        Some(l)
    }

    /// Takes one interval's records.
    pub fn update(&mut self, records: &[Record]) {
        self.interval += 1;
        for r in records {
            let Some(l) = self.labels_of(r) else {
                if let Record::Agent(a) = r {
                    self.agent(a);
                }
                continue;
            };
            self.kpis(r, &labels(&l));
        }
        // Forget what has gone quiet (exited processes, closed endpoints).
        let now = self.interval;
        for fam in self.families.values_mut() {
            let before = fam.series.len();
            fam.series.retain(|_, s| now - s.seen < self.stale_after);
            self.series -= (before - fam.series.len()) * fam.lines();
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

/// Most connections served at once; past it a new one is closed at once,
/// so a flood of clients costs a bounded number of threads.
const MAX_CONNECTIONS: usize = 16;
/// Most time a client may take to send its request, in all (a client that
/// trickles a byte at a time is cut off, not waited for).
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Longest request accepted (the request line and headers).
const MAX_REQUEST_BYTES: usize = 8192;

/// Liveness and readiness, for `/healthz` and `/readyz` (Kubernetes
/// probes). The agent beats once per interval; it is alive while the last
/// beat is recent, and ready once its programs are attached.
pub struct Health {
    start: std::time::Instant,
    /// Milliseconds from `start` to the last beat.
    beat_ms: std::sync::atomic::AtomicU64,
    ready: std::sync::atomic::AtomicBool,
    /// Longest gap between beats that is still alive.
    max_gap: Duration,
}

impl Health {
    /// A health state for an agent writing every `interval`: alive while
    /// it beats at least every three intervals (and 10 s).
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Health {
            start: std::time::Instant::now(),
            beat_ms: Default::default(),
            ready: Default::default(),
            max_gap: interval * 3 + Duration::from_secs(10),
        })
    }

    /// The agent's loop is alive.
    pub fn beat(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.beat_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The programs are attached: the agent measures.
    pub fn set_ready(&self) {
        self.beat();
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        let last = Duration::from_millis(self.beat_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last) <= self.max_gap
    }

    fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed) && self.alive()
    }
}

/// The bound listening socket, before its server thread starts (binding
/// may need privileges; serving must not have any).
pub struct Listener(TcpListener);

impl Listener {
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        TcpListener::bind(addr).map(Listener)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz`: a thread per connection,
/// at most [`MAX_CONNECTIONS`] at once, each with a deadline, so one slow
/// or stuck client never holds a scrape up.
fn serve(listener: TcpListener, text: Arc<Mutex<Arc<str>>>, health: Arc<Health>) {
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        use std::sync::atomic::Ordering::SeqCst;
        if active.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, SeqCst);
            drop(conn); // closed at once: the client retries
            continue;
        }
        let (text, health, done) = (text.clone(), health.clone(), active.clone());
        let spawned = crate::caps::spawn("metrics conn".into(), move || {
            answer(conn, &text, &health);
            done.fetch_sub(1, SeqCst);
        });
        if spawned.is_err() {
            active.fetch_sub(1, SeqCst);
        }
    }
}

/// Reads one request (within [`REQUEST_DEADLINE`]) and answers it.
fn answer(mut conn: std::net::TcpStream, text: &Mutex<Arc<str>>, health: &Health) {
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let deadline = std::time::Instant::now() + REQUEST_DEADLINE;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < MAX_REQUEST_BYTES {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = req.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let plain = |ok: bool, what: &str| -> (&'static str, Arc<str>) {
        if ok {
            ("200 OK", Arc::from(format!("{what}\n")))
        } else {
            ("503 Service Unavailable", Arc::from(format!("not {what}\n")))
        }
    };
    let (status, body): (&str, Arc<str>) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", text.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        (b"GET", b"/healthz") => plain(health.alive(), "alive"),
        (b"GET", b"/readyz") => plain(health.ready(), "ready"),
        _ => ("404 Not Found", Arc::from("try /metrics, /healthz or /readyz\n")),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ProcessRecord;

    fn metrics() -> Metrics {
        Metrics::new(Duration::from_secs(60), Arc::new(Mutex::new(Arc::from(""))), false)
    }

    fn process(pid: u32, comm: &str, count: u64, buckets: serde_json::Value) -> Record {
        let v = serde_json::json!({"v":1,"type":"process","ts":"t","host":"h","interval_s":1.0,
            "pid":pid,"comm":comm,"cgroup_id":null,"container_id":null,
            "syscalls":{"count":count,"errors":count/10,"error_rate_pct":10.0,"rate_per_s":1.0,
                "latency_ms":{"avg":1.0,"p50":1.0,"p95":1.0,"p99":1.0,"max":1.5,"buckets":buckets}},
            "cpu":{"cores":0.5,"utilization_pct":25.0,"runq_latency_ms":null},
            "memory":{"rss_bytes":4096},
            "tcp":{"connects":0,"connect_errors":0,"connect_error_rate_pct":0.0,"connect_latency_ms":null,
                   "accepts":0,"retransmits":0,"resets_sent":0,"resets_received":0,"rtt_ms":null,
                   "bytes_sent":0,"bytes_received":0},
            "requests":{"count":0,"rate_per_s":0.0,"errors":0,"error_rate_pct":0.0,"latency_ms":null}});
        Record::Process(serde_json::from_value::<ProcessRecord>(v).unwrap())
    }

    /// Counters add up over intervals; histogram buckets are cumulative
    /// and each fine bucket lands in the first bound that holds all of it.
    #[test]
    fn counters_accumulate_and_buckets_are_cumulative() {
        let mut m = metrics();
        let r = process(7, "a\"b", 10, serde_json::json!([[0.000999, 4, 0.003], [1.5, 6, 8.4]]));
        m.update(std::slice::from_ref(&r));
        m.update(std::slice::from_ref(&r));
        let t = m.render();
        let l = r#"host="h",scope="process",comm="a\"b",container_id="""#;
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
        assert!(t.contains(&format!("probe_cpu_utilization_ratio{{{l}}} 0.25\n")), "{t}");
        assert!(t.contains(&format!("probe_memory_used_bytes{{{l}}} 4096\n")), "{t}");
    }

    /// The host's budget is exported beside its projected cost, with the
    /// same labels, so a rule can divide one by the other.
    #[test]
    fn cost_and_budget_share_their_labels() {
        let host = |name: &str, projected: Option<f64>, budget: Option<f64>| {
            let v = serde_json::json!({"v":1,"type":"host","ts":"t","host":name,"interval_s":1.0,
                "syscalls":{"count":0,"errors":0,"error_rate_pct":0.0,"rate_per_s":0.0,"latency_ms":null},
                "cpus":2,"cpu":{"cores":0.0,"utilization_pct":0.0,"runq_latency_ms":null},
                "memory":{"used_bytes":1,"total_bytes":100,"utilization_pct":1.0},"disk":[],
                "tcp":{"connects":0,"connect_errors":0,"connect_error_rate_pct":0.0,"connect_latency_ms":null,
                       "accepts":0,"retransmits":0,"resets_sent":0,"resets_received":0,"rtt_ms":null,
                       "bytes_sent":0,"bytes_received":0},
                "requests":{"count":0,"rate_per_s":0.0,"errors":0,"error_rate_pct":0.0,"latency_ms":null},
                "cost":{"projected_usd_month":projected,"budget_usd_month":budget,"over_budget_pct":null}});
            Record::from_value(v).unwrap().unwrap()
        };
        let mut m = metrics();
        m.update(&[host("h", Some(120.5), Some(100.0)), host("g", None, None)]);
        let t = m.render();
        assert!(
            t.contains("probe_cost_projected_usd_per_month{host=\"h\",scope=\"host\"} 120.5\n"),
            "{t}"
        );
        assert!(
            t.contains("probe_cost_budget_usd_per_month{host=\"h\",scope=\"host\"} 100\n"),
            "{t}"
        );
        assert!(!t.contains("cost_budget_usd_per_month{host=\"g\""), "{t}");
    }

    /// Without `pid`, processes of one name share a series: counters and
    /// histograms add up over processes and intervals, gauges are the sum
    /// of the interval's processes. With `pid`, each process has its own.
    #[test]
    fn processes_of_one_name_add_up_without_pid() {
        let b = |n: u64| serde_json::json!([[0.000999, n, 0.0005 * n as f64]]);
        let (a, c) = (process(7, "nginx", 10, b(10)), process(8, "nginx", 30, b(30)));
        let mut m = metrics();
        m.update(&[a.clone(), c.clone()]);
        let t = m.render();
        let l = r#"{host="h",scope="process",comm="nginx",container_id=""}"#;
        assert!(t.contains(&format!("probe_syscalls_total{l} 40\n")), "{t}");
        assert!(t.contains(&format!("probe_syscall_latency_seconds_count{l} 40\n")), "{t}");
        // Two processes at 0.5 cores and 4096 bytes each.
        assert!(t.contains(&format!("probe_cpu_cores{l} 1\n")), "{t}");
        assert!(t.contains(&format!("probe_memory_used_bytes{l} 8192\n")), "{t}");
        assert_eq!(t.matches("probe_syscalls_total{").count(), 1, "{t}");
        // Next interval one has exited (or restarted under a new pid): the
        // counter goes on from its total, the gauge is this interval's.
        m.update(&[process(9, "nginx", 5, b(5))]);
        let t = m.render();
        assert!(t.contains(&format!("probe_syscalls_total{l} 45\n")), "{t}");
        assert!(t.contains(&format!("probe_cpu_cores{l} 0.5\n")), "{t}");
        assert!(t.contains(&format!("probe_memory_used_bytes{l} 4096\n")), "{t}");

        let mut m =
            Metrics::new(Duration::from_secs(60), Arc::new(Mutex::new(Arc::from(""))), true);
        m.update(&[a, c]);
        let t = m.render();
        for (pid, n) in [(7, 10), (8, 30)] {
            let l =
                format!(r#"{{host="h",scope="process",pid="{pid}",comm="nginx",container_id=""}}"#);
            assert!(t.contains(&format!("probe_syscalls_total{l} {n}\n")), "{t}");
            assert!(t.contains(&format!("probe_cpu_cores{l} 0.5\n")), "{t}");
        }
    }

    /// A gauge given twice in an interval adds up (processes sharing a
    /// name), so no record may feed one metric twice: KPIs that share a
    /// metric name share no scope.
    #[test]
    fn no_record_feeds_a_metric_twice() {
        let mut sharing = 0;
        for (i, a) in KPIS.iter().enumerate() {
            for b in &KPIS[i + 1..] {
                if a.metric.zip(b.metric).is_some_and(|(x, y)| x.name == y.name) {
                    let shared = a.scopes.iter().find(|s| b.scopes.contains(s));
                    assert!(shared.is_none(), "{} and {} in {shared:?}", a.path, b.path);
                    sharing += 1;
                }
            }
        }
        // Memory used (host, container; RSS for processes) and the limit
        // (host total, container limit) share their names.
        assert!(sharing >= 2);
    }

    /// A container's pod and namespace, when known, label its series and
    /// its processes'; unknown, the labels are left out.
    #[test]
    fn pod_and_namespace_label_what_is_in_a_pod() {
        let mut p = process(7, "api", 1, serde_json::json!([]));
        let Record::Process(rec) = &mut p else { unreachable!() };
        rec.container_id = Some("c1".into());
        rec.k8s = K8s {
            k8s_namespace: Some("shop".into()),
            k8s_pod: Some("web-1".into()),
            k8s_container: Some("app".into()),
        };
        let mut m = metrics();
        m.update(&[p, process(8, "host", 1, serde_json::json!([]))]);
        let t = m.render();
        let l = r#"{host="h",scope="process",comm="api",container_id="c1",namespace="shop",pod="web-1"}"#;
        assert!(t.contains(&format!("probe_syscalls_total{l} 1\n")), "{t}");
        let l = r#"{host="h",scope="process",comm="host",container_id=""}"#;
        assert!(t.contains(&format!("probe_syscalls_total{l} 1\n")), "{t}");
        assert!(!t.contains("container=") && !t.contains("pid="), "{t}");
    }

    #[test]
    fn quiet_series_are_dropped() {
        let mut m = metrics();
        m.update(&[process(7, "x", 1, serde_json::json!([]))]);
        assert!(m.render().contains("comm=\"x\""));
        for _ in 0..5 {
            m.update(&[]);
        }
        assert!(!m.render().contains("comm=\"x\""));
        assert_eq!(m.series, 0);
    }

    /// A recorded run (tests/fixtures, recorded with `--histograms`) fed as
    /// typed records gives exactly the series the endpoint gave when it
    /// was fed JSON lines (rendered then and kept in the fixture).
    #[test]
    fn a_recorded_run_gives_the_same_series_as_before() {
        use std::io::Read as _;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let gz = |name: &str| {
            let mut s = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(dir.join(name)).unwrap())
                .read_to_string(&mut s)
                .unwrap();
            s
        };
        let lines = gz("recorded.jsonl.gz");
        let want = gz("recorded.metrics.txt.gz");
        let mut rec = crate::recording::Recording::from_reader(
            Box::new(std::io::Cursor::new(lines.into_bytes())),
            "fixture".into(),
        );
        // As recorded: 1 s intervals.
        // With `pid`, as then; the container's label is `container_id` now.
        let mut m = Metrics::new(Duration::from_secs(1), Arc::new(Mutex::new(Arc::from(""))), true);
        let mut intervals = 0;
        while let Some((_, values)) = rec.next_interval().unwrap() {
            let records: Vec<Record> =
                values.into_iter().filter_map(|v| Record::from_value(v).unwrap()).collect();
            // Agent records are not read back (`from_value` takes KPI
            // records): their series are left out of the comparison.
            m.update(&records);
            intervals += 1;
        }
        assert!(intervals > 20);
        let got = m.render();
        // Every series of then is there now, with its value; families added
        // since (client errors, route series) may be there too, and the
        // errors' help says what they count since server errors count.
        let now: std::collections::HashSet<&str> = got.lines().collect();
        let mut renamed = 0;
        for line in want.lines().filter(|l| !l.contains("probe_agent_")) {
            if line.starts_with("# HELP probe_request_errors_total") {
                continue;
            }
            let line = line.replace(",container=\"", ",container_id=\"");
            renamed += usize::from(line.contains("container_id="));
            assert!(now.contains(line.as_str()), "missing now: {line}");
        }
        assert!(renamed > 0);
    }
}
