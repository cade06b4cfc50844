//! The OTLP exporter: one interval's typed records in, one OTLP/HTTP
//! `ExportMetricsServiceRequest` (protobuf) out, queued on its sink and
//! POSTed by `http.rs`.
//!
//! Why here, fed by `emit()` with `&[Record]` next to the metrics endpoint:
//! the exporter needs the typed records as they are (their histogram
//! buckets, which the JSON lines carry only with `--histograms`), keeps
//! state across intervals (cumulative sums), and must not parse the JSON
//! back; making the request once per interval, in the pipeline's thread,
//! lets its sink's queue hold whole requests, with the same bounds, retry
//! and drop accounting as every other sink. Each OTLP sink has its own
//! exporter, so `types=` can differ between them.
//!
//! What it exports, as the Prometheus endpoint does (`metrics.rs`), from
//! the KPI catalogue: every KPI with a metric, named `probe.` and its path
//! without the unit suffix (`catalogue::otlp_name`), in the catalogue's
//! unit:
//! - counts as monotonic cumulative sums (integers), added up since the
//!   series was first seen (its `start_time_unix_nano`), so an export lost
//!   or dropped loses no count: the next one carries it;
//! - levels as gauges (a `_pct` as a ratio, unit `1`), sent only in the
//!   interval they were measured;
//! - latency groups as cumulative histograms in seconds, with the explicit
//!   bounds of the Prometheus endpoint (10 µs to 10 s, `metrics::LE_S`):
//!   each of the agent's fine buckets is counted in the first bound that
//!   holds all of it, so both exports agree bucket for bucket and no count
//!   is under a bound below its value; `sum` and `count` are exact, `max`
//!   is the series' largest. Exponential histograms do not fit the agent's
//!   layout: its buckets are linear within each power of two (32 per
//!   octave), so their edges never meet an exponential scale's, and each
//!   count would be moved by a guess.
//!
//! Resources follow OpenTelemetry's semantic conventions: the host
//! (`host.name`, `host.arch`, `os.type`), each container (`container.id`,
//! `container.runtime`, and when known `k8s.pod.uid`, `k8s.namespace.name`,
//! `k8s.pod.name`, `k8s.container.name`), each process (`process.pid`,
//! `process.executable.name` (the kernel's comm), `container.id` and its
//! container's Kubernetes attributes), and the agent itself (`service.name`
//! `probe-agent`). A process's endpoints and system calls are its data
//! points with `probe.scope` `endpoint` (`probe.role`, `server.port`,
//! `server.address`) or `syscall` (`probe.syscall`); `probe.scope` says
//! which record a point comes from, as the `scope` label does on the
//! Prometheus endpoint, so that host totals are not added to their parts.
//! A series unseen for five minutes (and five intervals) is dropped; at
//! most [`MAX_SERIES`] are kept, and what that cuts is itself a counter
//! (`probe.agent.otlp.series_cut`).

use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
    },
    resource::v1::Resource,
};
use prost::Message as _;

use crate::{
    aggregate::latency::LatencyMs,
    catalogue::{KPIS, MetricKind, Read, otlp_name},
    metrics::{LE_S, le_index},
    records::{AgentRecord, K8s, Kind, Record},
    timefmt::parse_rfc3339,
};

/// Most series kept (a histogram is one): about 10 MB of requests at the
/// worst, far more than a host's processes, endpoints and KPIs make.
pub const MAX_SERIES: usize = 20_000;
/// How long a series may go unseen before it is dropped.
const STALE_AFTER_S: f64 = 300.0;

/// A series' value.
enum Value {
    /// Cumulative since `start_ns`.
    Sum(u64),
    Gauge(f64),
    Hist {
        counts: [u64; LE_S.len() + 1],
        sum_s: f64,
        count: u64,
        max_s: f64,
    },
}

struct Series {
    attrs: Vec<KeyValue>,
    start_ns: u64,
    /// The interval it was last seen in.
    seen: u64,
    value: Value,
}

struct MetricState {
    unit: &'static str,
    help: &'static str,
    series: BTreeMap<String, Series>,
}

struct ResourceState {
    attrs: Vec<KeyValue>,
    metrics: BTreeMap<String, MetricState>,
    seen: u64,
}

/// One OTLP sink's state: its series, cumulative across intervals.
pub struct Exporter {
    resources: BTreeMap<String, ResourceState>,
    /// Pod UIDs and Kubernetes names of containers, for their processes'
    /// resources.
    pods: HashMap<String, (String, K8s)>,
    interval: u64,
    series: usize,
    cut: u64,
    /// This interval: its end and start (ns since the epoch), and how many
    /// intervals make [`STALE_AFTER_S`].
    now_ns: u64,
    start_ns: u64,
    stale_after: u64,
}

/// The semantic conventions' Kubernetes attributes, those known.
fn k8s_attrs(attrs: &mut Vec<KeyValue>, k8s: &K8s) {
    for (key, v) in [
        ("k8s.namespace.name", &k8s.k8s_namespace),
        ("k8s.pod.name", &k8s.k8s_pod),
        ("k8s.container.name", &k8s.k8s_container),
    ] {
        if let Some(v) = v {
            attrs.push(kv_str(key, v));
        }
    }
}

/// The point attributes of an endpoint's or a route's series: its scope,
/// role, port, peer (clients) and protocol.
fn connection_point(
    scope: &str,
    role: crate::records::Role,
    port: u16,
    peer: &Option<String>,
    protocol: &str,
) -> Vec<KeyValue> {
    let mut point = vec![
        kv_str("probe.scope", scope),
        kv_str("probe.role", role.name()),
        kv_int("server.port", i64::from(port)),
    ];
    if let Some(peer) = peer {
        point.push(kv_str("server.address", peer));
    }
    point.push(kv_str("probe.protocol", protocol));
    point
}

fn kv_str(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.to_string())) }),
        ..Default::default()
    }
}

fn kv_int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(v)) }),
        ..Default::default()
    }
}

/// A stable key for a set of attributes (they are built in a fixed order).
fn key_of(attrs: &[KeyValue]) -> String {
    let mut k = String::new();
    for a in attrs {
        k.push_str(&a.key);
        k.push('=');
        match a.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => {
                k.push_str(&s.replace('\\', "\\\\").replace('\u{1}', "\\1"))
            }
            Some(any_value::Value::IntValue(i)) => k.push_str(&i.to_string()),
            _ => {}
        }
        k.push('\u{1}');
    }
    k
}

/// `host.arch` as the semantic conventions name it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Exporter {
    pub fn new() -> Self {
        Exporter {
            resources: BTreeMap::new(),
            pods: HashMap::new(),
            interval: 0,
            series: 0,
            cut: 0,
            now_ns: 0,
            start_ns: 0,
            stale_after: 5,
        }
    }

    fn host_attrs(host: &str) -> Vec<KeyValue> {
        vec![
            kv_str("host.name", host),
            kv_str("host.arch", host_arch()),
            kv_str("os.type", "linux"),
        ]
    }

    /// The resource of a record, created when new: its key and attributes.
    fn resource_of(&self, r: &Record) -> Option<(String, Vec<KeyValue>)> {
        let host = &r.header().host;
        // A process's Kubernetes names: its record's, else (system-call
        // records carry none) its container's.
        let process = |pid: u32, comm: &str, container: &Option<String>, k8s: Option<&K8s>| {
            let mut attrs = Self::host_attrs(host);
            attrs.push(kv_int("process.pid", i64::from(pid)));
            attrs.push(kv_str("process.executable.name", comm));
            if let Some(id) = container {
                attrs.push(kv_str("container.id", id));
                let pod = self.pods.get(id);
                if let Some((uid, _)) = pod {
                    attrs.push(kv_str("k8s.pod.uid", uid));
                }
                if let Some(k8s) = k8s.or(pod.map(|p| &p.1)) {
                    k8s_attrs(&mut attrs, k8s);
                }
            }
            attrs
        };
        let attrs = match r {
            Record::Host(_) => Self::host_attrs(host),
            Record::Container(c) => {
                let mut attrs = Self::host_attrs(host);
                attrs.push(kv_str("container.id", &c.container_id));
                let runtime = serde_json::to_value(c.runtime).ok()?;
                attrs.push(kv_str("container.runtime", runtime.as_str()?));
                if let Some(pod) = &c.pod_uid {
                    attrs.push(kv_str("k8s.pod.uid", pod));
                }
                k8s_attrs(&mut attrs, &c.k8s);
                attrs
            }
            Record::Process(p) => process(p.pid, &p.comm, &p.container_id, Some(&p.k8s)),
            Record::Endpoint(e) => process(e.pid, &e.comm, &e.container_id, Some(&e.k8s)),
            Record::Route(x) => process(x.pid, &x.comm, &x.container_id, Some(&x.k8s)),
            Record::Syscall(s) => process(s.pid, &s.comm, &s.container_id, None),
            Record::Agent(a) => {
                let mut attrs = Self::host_attrs(host);
                attrs.push(kv_str("service.name", "probe-agent"));
                attrs.push(kv_str("service.version", a.version));
                attrs.push(kv_int("process.pid", i64::from(a.pid)));
                attrs
            }
            Record::Status(_) | Record::Alert(_) => return None,
        };
        Some((key_of(&attrs), attrs))
    }

    /// The series of (resource, metric, point attributes), made when new
    /// unless past the bound (then counted in `cut`).
    #[allow(clippy::too_many_arguments)]
    fn series(
        &mut self,
        resource: &(String, Vec<KeyValue>),
        name: String,
        unit: &'static str,
        help: &'static str,
        attrs: Vec<KeyValue>,
        new: impl FnOnce() -> Value,
    ) -> Option<&mut Series> {
        let (interval, start_ns) = (self.interval, self.start_ns);
        let res = self.resources.entry(resource.0.clone()).or_insert_with(|| ResourceState {
            attrs: resource.1.clone(),
            metrics: BTreeMap::new(),
            seen: interval,
        });
        res.seen = interval;
        let m = res.metrics.entry(name).or_insert_with(|| MetricState {
            unit,
            help,
            series: BTreeMap::new(),
        });
        let key = key_of(&attrs);
        if !m.series.contains_key(&key) {
            if self.series >= MAX_SERIES {
                self.cut += 1;
                return None;
            }
            self.series += 1;
            m.series.insert(key.clone(), Series { attrs, start_ns, seen: interval, value: new() });
        }
        let s = m.series.get_mut(&key).expect("inserted above");
        s.seen = interval;
        Some(s)
    }

    fn add(
        &mut self,
        res: &(String, Vec<KeyValue>),
        name: String,
        unit: &'static str,
        help: &'static str,
        attrs: Vec<KeyValue>,
        n: u64,
    ) {
        if let Some(s) = self.series(res, name, unit, help, attrs, || Value::Sum(0))
            && let Value::Sum(total) = &mut s.value
        {
            *total = total.saturating_add(n);
        }
    }

    fn set(
        &mut self,
        res: &(String, Vec<KeyValue>),
        name: String,
        unit: &'static str,
        help: &'static str,
        attrs: Vec<KeyValue>,
        v: f64,
    ) {
        if let Some(s) = self.series(res, name, unit, help, attrs, || Value::Gauge(0.0)) {
            s.value = Value::Gauge(v);
        }
    }

    fn histogram(
        &mut self,
        res: &(String, Vec<KeyValue>),
        name: String,
        help: &'static str,
        attrs: Vec<KeyValue>,
        l: &LatencyMs,
    ) {
        let Some(buckets) = l.buckets.as_ref() else { return };
        let new = || Value::Hist { counts: [0; LE_S.len() + 1], sum_s: 0.0, count: 0, max_s: 0.0 };
        let Some(s) = self.series(res, name, "s", help, attrs, new) else { return };
        let Value::Hist { counts, sum_s, count, max_s } = &mut s.value else { return };
        for &(upper_ms, n, total_ms) in buckets {
            counts[le_index(upper_ms)] += n;
            *count += n;
            *sum_s += total_ms / 1e3;
        }
        *max_s = max_s.max(l.max / 1e3);
    }

    /// The catalogue's KPIs that a record of this type carries.
    fn kpis(&mut self, r: &Record, res: &(String, Vec<KeyValue>), point: &[KeyValue]) {
        let g = r.groups();
        // Syscall records carry one call's figures in the syscalls group.
        let kind = r.kind();
        for k in KPIS {
            let Some(m) = k.metric else { continue };
            if !k.scopes.contains(&kind) {
                continue;
            }
            let name = otlp_name(k);
            match (k.read, m.kind) {
                (Read::Value(read), MetricKind::Counter) => {
                    if let Some(v) = read(&g) {
                        self.add(res, name, m.unit, m.help, point.to_vec(), v.max(0.0) as u64);
                    }
                }
                (Read::Value(read), MetricKind::Gauge) => {
                    if let Some(v) = read(&g) {
                        self.set(res, name, m.unit, m.help, point.to_vec(), v * m.scale);
                    }
                }
                (Read::Latency(read), MetricKind::Histogram) => {
                    if let Some(l) = read(&g) {
                        self.histogram(res, name, m.help, point.to_vec(), l);
                    } else {
                        self.keep_alive(res, &name, point);
                    }
                }
                (Read::Disk(read), MetricKind::Gauge) => {
                    for d in g.disk {
                        let mut attrs = point.to_vec();
                        attrs.push(kv_str("system.filesystem.mountpoint", &d.mount));
                        attrs.push(kv_str("system.filesystem.type", &d.fstype));
                        self.set(res, name.clone(), m.unit, m.help, attrs, read(d) * m.scale);
                    }
                }
                (Read::Classes(read), MetricKind::Counter) => {
                    for (class, v) in read(&g).into_iter().flatten() {
                        let mut attrs = point.to_vec();
                        attrs.push(kv_str("probe.status_class", class));
                        self.add(res, name.clone(), m.unit, m.help, attrs, *v);
                    }
                }
                // The catalogue's test forbids other pairs.
                _ => {}
            }
        }
    }

    /// An empty latency group keeps its series alive without a new point.
    fn keep_alive(&mut self, res: &(String, Vec<KeyValue>), name: &str, point: &[KeyValue]) {
        let interval = self.interval;
        if let Some(s) = self
            .resources
            .get_mut(&res.0)
            .and_then(|r| r.metrics.get_mut(name))
            .and_then(|m| m.series.get_mut(&key_of(point)))
        {
            s.seen = interval;
        }
    }

    /// The agent's own health, from its record.
    fn agent(&mut self, a: &AgentRecord, res: &(String, Vec<KeyValue>)) {
        let n = |s: &str| s.to_string();
        self.set(
            res,
            n("probe.agent.cpu"),
            "1",
            "The agent's CPU, in cores.",
            vec![],
            a.cpu_pct / 100.0,
        );
        self.set(
            res,
            n("probe.agent.memory.rss"),
            "By",
            "The agent's resident memory.",
            vec![],
            a.rss_bytes as f64,
        );
        for (what, count) in a.lost.fields() {
            let attrs = vec![kv_str("probe.lost", what)];
            self.add(
                res,
                n("probe.agent.lost"),
                "{event}",
                "Events the kernel side could not record.",
                attrs,
                count,
            );
        }
        for s in &a.output.sinks {
            let attrs = vec![kv_str("probe.sink", &s.name)];
            self.add(
                res,
                n("probe.agent.sink.sent"),
                "{record}",
                "Records (OTLP: requests) a sink delivered.",
                attrs,
                s.sent_records,
            );
            for (reason, count) in s.dropped_records.fields() {
                let attrs = vec![kv_str("probe.sink", &s.name), kv_str("probe.reason", reason)];
                self.add(
                    res,
                    n("probe.agent.sink.dropped"),
                    "{record}",
                    "Records (OTLP: requests) a sink dropped, by reason.",
                    attrs,
                    count,
                );
            }
        }
    }

    /// One interval's request, or `None` when no record of it makes
    /// metrics (the `status` record at start).
    pub fn encode<'a>(&mut self, records: impl Iterator<Item = &'a Record>) -> Option<Vec<u8>> {
        let records: Vec<&Record> =
            records.filter(|r| !matches!(r.kind(), Kind::Status | Kind::Alert)).collect();
        let first = records.first()?;
        self.interval += 1;
        let h = first.header();
        let end_s = parse_rfc3339(&h.ts).unwrap_or_default();
        self.now_ns = (end_s * 1e9) as u64;
        self.start_ns = ((end_s - h.interval_s).max(0.0) * 1e9) as u64;
        if h.interval_s > 0.0 {
            self.stale_after = ((STALE_AFTER_S / h.interval_s).ceil() as u64).max(5);
        }
        for r in &records {
            if let Record::Container(c) = r
                && let Some(pod) = &c.pod_uid
                && (self.pods.len() < MAX_SERIES || self.pods.contains_key(&c.container_id))
            {
                self.pods.insert(c.container_id.clone(), (pod.clone(), c.k8s.clone()));
            }
        }
        let mut agent_res = None;
        for r in &records {
            let Some(res) = self.resource_of(r) else { continue };
            let scope = |s: &str| vec![kv_str("probe.scope", s)];
            match r {
                Record::Agent(a) => {
                    self.agent(a, &res);
                    agent_res = Some(res);
                }
                Record::Host(_) => self.kpis(r, &res, &scope("host")),
                Record::Container(_) => self.kpis(r, &res, &scope("container")),
                Record::Process(_) => self.kpis(r, &res, &scope("process")),
                Record::Endpoint(e) => {
                    let point = connection_point("endpoint", e.role, e.port, &e.peer, &e.protocol);
                    self.kpis(r, &res, &point);
                }
                Record::Route(x) => {
                    let mut point = connection_point("route", x.role, x.port, &x.peer, &x.protocol);
                    // The semantic conventions' names: an HTTP route and
                    // method, or a database operation.
                    match (&x.method, x.protocol.as_str()) {
                        (Some(m), _) => {
                            point.push(kv_str("http.request.method", m));
                            point.push(kv_str("http.route", &x.route));
                        }
                        (None, "redis" | "postgres") => {
                            let system = if x.protocol == "redis" { "redis" } else { "postgresql" };
                            point.push(kv_str("db.system", system));
                            point.push(kv_str("db.operation.name", &x.route));
                        }
                        (None, _) => point.push(kv_str("probe.route", &x.route)),
                    }
                    self.kpis(r, &res, &point);
                }
                Record::Syscall(s) => {
                    let mut point = scope("syscall");
                    point.push(kv_str("probe.syscall", &s.syscall));
                    self.kpis(r, &res, &point);
                }
                Record::Status(_) | Record::Alert(_) => {}
            }
        }
        if let Some(res) = agent_res {
            // Not through `add`: the bound must not cut its own counter.
            let cut = self.cut;
            self.cut = 0;
            let start_ns = self.start_ns;
            let interval = self.interval;
            let r = self.resources.get_mut(&res.0).expect("the agent's record made it");
            let m = r.metrics.entry("probe.agent.otlp.series_cut".into()).or_insert_with(|| {
                MetricState {
                    unit: "{series}",
                    help: "Series not exported because of the bound on series.",
                    series: BTreeMap::new(),
                }
            });
            let s = m.series.entry(String::new()).or_insert_with(|| Series {
                attrs: vec![],
                start_ns,
                seen: interval,
                value: Value::Sum(0),
            });
            s.seen = interval;
            if let Value::Sum(total) = &mut s.value {
                *total += cut;
            }
        }
        self.forget_stale();
        Some(self.request().encode_to_vec())
    }

    /// Drops what has gone quiet (exited processes, closed endpoints).
    fn forget_stale(&mut self) {
        let (now, after) = (self.interval, self.stale_after);
        let mut dropped = 0;
        for r in self.resources.values_mut() {
            for m in r.metrics.values_mut() {
                let before = m.series.len();
                m.series.retain(|_, s| now - s.seen < after);
                dropped += before - m.series.len();
            }
            r.metrics.retain(|_, m| !m.series.is_empty());
        }
        self.series -= dropped;
        self.resources.retain(|_, r| !r.metrics.is_empty() && now - r.seen < after);
        let containers: std::collections::HashSet<&str> = self
            .resources
            .values()
            .flat_map(|r| r.attrs.iter())
            .filter(|a| a.key == "container.id")
            .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        self.pods.retain(|id, _| containers.contains(id.as_str()));
    }

    /// Every live series: sums and histograms (cumulative) while alive,
    /// gauges when measured this interval.
    fn request(&self) -> ExportMetricsServiceRequest {
        let now_ns = self.now_ns;
        let scope = InstrumentationScope {
            name: "probe-agent".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let mut resource_metrics = Vec::new();
        for r in self.resources.values() {
            let mut metrics = Vec::new();
            for (name, m) in &r.metrics {
                let mut sums = Vec::new();
                let mut gauges = Vec::new();
                let mut hists = Vec::new();
                for s in m.series.values() {
                    match &s.value {
                        Value::Sum(n) => sums.push(NumberDataPoint {
                            attributes: s.attrs.clone(),
                            start_time_unix_nano: s.start_ns,
                            time_unix_nano: now_ns,
                            value: Some(number_data_point::Value::AsInt(
                                i64::try_from(*n).unwrap_or(i64::MAX),
                            )),
                            ..Default::default()
                        }),
                        Value::Gauge(v) if s.seen == self.interval => {
                            gauges.push(NumberDataPoint {
                                attributes: s.attrs.clone(),
                                time_unix_nano: now_ns,
                                value: Some(number_data_point::Value::AsDouble(*v)),
                                ..Default::default()
                            })
                        }
                        Value::Gauge(_) => {}
                        Value::Hist { counts, sum_s, count, max_s } => {
                            hists.push(HistogramDataPoint {
                                attributes: s.attrs.clone(),
                                start_time_unix_nano: s.start_ns,
                                time_unix_nano: now_ns,
                                count: *count,
                                sum: Some(*sum_s),
                                bucket_counts: counts.to_vec(),
                                explicit_bounds: LE_S.to_vec(),
                                max: (*count > 0).then_some(*max_s),
                                ..Default::default()
                            });
                        }
                    }
                }
                let data = if !sums.is_empty() {
                    metric::Data::Sum(Sum {
                        data_points: sums,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })
                } else if !gauges.is_empty() {
                    metric::Data::Gauge(Gauge { data_points: gauges })
                } else if !hists.is_empty() {
                    metric::Data::Histogram(Histogram {
                        data_points: hists,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    })
                } else {
                    continue;
                };
                metrics.push(Metric {
                    name: name.clone(),
                    description: m.help.into(),
                    unit: m.unit.into(),
                    data: Some(data),
                    ..Default::default()
                });
            }
            if metrics.is_empty() {
                continue;
            }
            resource_metrics.push(ResourceMetrics {
                resource: Some(Resource { attributes: r.attrs.clone(), ..Default::default() }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        ExportMetricsServiceRequest { resource_metrics }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;

    fn record(v: serde_json::Value) -> Record {
        Record::from_value(v).unwrap().unwrap()
    }

    fn endpoint(count: u64, buckets: serde_json::Value) -> Record {
        record(serde_json::json!({"v":1,"type":"endpoint","ts":"2026-01-01T00:00:10.000Z",
            "host":"h","interval_s":10.0,"pid":7,"comm":"srv","container_id":null,
            "role":"server","port":8080,"peer":null,
            "requests":{"count":count,"rate_per_s":1.0,"errors":1,"error_rate_pct":1.0,
                "latency_ms":{"avg":20.0,"p50":20.0,"p95":20.0,"p99":20.0,"max":20.3,"buckets":buckets}}}))
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a V> {
        attrs.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()
    }

    /// Counts add up across intervals (cumulative, from the series' first
    /// interval), histograms keep every count in the bound that holds it,
    /// and the process's resource and the endpoint's point attributes
    /// follow the semantic conventions.
    #[test]
    fn sums_and_histograms_are_cumulative() {
        let mut e = Exporter::new();
        let r = endpoint(40, serde_json::json!([[20.185087, 40, 805.0]]));
        e.encode(std::iter::once(&r)).unwrap();
        let bytes = e.encode(std::iter::once(&r)).unwrap();
        let req = ExportMetricsServiceRequest::decode(&bytes[..]).unwrap();
        assert_eq!(req.resource_metrics.len(), 1);
        let rm = &req.resource_metrics[0];
        let res = &rm.resource.as_ref().unwrap().attributes;
        assert_eq!(attr(res, "process.pid"), Some(&V::IntValue(7)));
        assert_eq!(attr(res, "process.executable.name"), Some(&V::StringValue("srv".into())));
        assert_eq!(attr(res, "host.name"), Some(&V::StringValue("h".into())));
        let metrics = &rm.scope_metrics[0].metrics;
        let by_name = |n: &str| metrics.iter().find(|m| m.name == n).unwrap();
        let Some(metric::Data::Sum(sum)) = &by_name("probe.requests.count").data else { panic!() };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let p = &sum.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsInt(80)));
        assert_eq!(attr(&p.attributes, "server.port"), Some(&V::IntValue(8080)));
        assert_eq!(attr(&p.attributes, "probe.scope"), Some(&V::StringValue("endpoint".into())));
        assert_eq!(p.start_time_unix_nano, 1_767_225_600_000_000_000);
        assert_eq!(p.time_unix_nano, 1_767_225_610_000_000_000);
        let lat = by_name("probe.requests.latency");
        assert_eq!(lat.unit, "s");
        let Some(metric::Data::Histogram(h)) = &lat.data else { panic!() };
        let p = &h.data_points[0];
        assert_eq!(p.count, 80);
        assert_eq!(p.explicit_bounds, LE_S.to_vec());
        // 20.19 ms is in (10 ms, 25 ms].
        let i = LE_S.iter().position(|&b| b == 0.025).unwrap();
        assert_eq!(p.bucket_counts[i], 80);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), 80);
        assert!((p.sum.unwrap() - 1.61).abs() < 1e-9);
        assert!((p.max.unwrap() - 0.0203).abs() < 1e-12);
    }

    /// A recorded run (tests/fixtures, with buckets) exports every interval
    /// as a request that decodes back; prints the sizes (README: Outputs).
    /// A process in a pod: its resource carries the semantic conventions'
    /// Kubernetes names; a process on the host none.
    #[test]
    fn processes_in_pods_carry_their_kubernetes_names() {
        let mut r = endpoint(1, serde_json::json!([]));
        let Record::Endpoint(e) = &mut r else { unreachable!() };
        e.container_id = Some("c1".into());
        e.k8s = K8s {
            k8s_namespace: Some("shop".into()),
            k8s_pod: Some("web-1".into()),
            k8s_container: Some("app".into()),
        };
        let mut ex = Exporter::new();
        let bytes = ex.encode([r, endpoint(1, serde_json::json!([]))].iter()).unwrap();
        let req = ExportMetricsServiceRequest::decode(&bytes[..]).unwrap();
        let resources: Vec<&Vec<KeyValue>> = req
            .resource_metrics
            .iter()
            .map(|rm| &rm.resource.as_ref().unwrap().attributes)
            .collect();
        assert_eq!(resources.len(), 2);
        let s = |v: &str| Some(V::StringValue(v.into()));
        let in_pod = resources.iter().find(|a| attr(a, "container.id").is_some()).unwrap();
        assert_eq!(attr(in_pod, "k8s.namespace.name").cloned(), s("shop"));
        assert_eq!(attr(in_pod, "k8s.pod.name").cloned(), s("web-1"));
        assert_eq!(attr(in_pod, "k8s.container.name").cloned(), s("app"));
        let on_host = resources.iter().find(|a| attr(a, "container.id").is_none()).unwrap();
        assert!(on_host.iter().all(|kv| !kv.key.starts_with("k8s.")));
    }

    #[test]
    fn a_recorded_run_exports_requests_that_decode() {
        use std::io::{Read as _, Write as _};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let mut lines = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(dir.join("recorded.jsonl.gz")).unwrap())
            .read_to_string(&mut lines)
            .unwrap();
        let mut rec = crate::recording::Recording::from_reader(
            Box::new(std::io::Cursor::new(lines.into_bytes())),
            "fixture".into(),
        );
        let (mut e, mut all) = (Exporter::new(), Exporter::new());
        let mut sizes = Vec::new();
        while let Some((_, values)) = rec.next_interval().unwrap() {
            let records: Vec<Record> =
                values.into_iter().filter_map(|v| Record::from_value(v).unwrap()).collect();
            let default = records.iter().filter(|r| r.kind() != Kind::Syscall);
            let Some(req) = e.encode(default) else { continue };
            let with_syscalls = all.encode(records.iter()).unwrap();
            let gz = |b: &[u8]| {
                let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(b).unwrap();
                z.finish().unwrap().len()
            };
            let decoded = ExportMetricsServiceRequest::decode(&req[..]).unwrap();
            assert!(!decoded.resource_metrics.is_empty());
            sizes.push((
                records.len(),
                req.len(),
                gz(&req),
                with_syscalls.len(),
                gz(&with_syscalls),
            ));
        }
        assert!(sizes.len() > 20);
        let last = sizes.last().unwrap();
        eprintln!(
            "records {}, OTLP request {} bytes ({} gzip); with syscall series {} ({} gzip)",
            last.0, last.1, last.2, last.3, last.4
        );
    }

    /// A series not seen again is dropped after five minutes' intervals;
    /// past the bound new series are cut and counted.
    #[test]
    fn quiet_series_are_dropped_and_the_bound_counted() {
        let mut e = Exporter::new();
        let r = endpoint(1, serde_json::json!([]));
        e.encode(std::iter::once(&r)).unwrap();
        assert!(e.series > 0);
        let host = record(
            serde_json::json!({"v":1,"type":"host","ts":"2026-01-01T00:00:20.000Z","host":"h","interval_s":10.0,
            "syscalls":{"count":0,"errors":0,"error_rate_pct":0.0,"rate_per_s":0.0,"latency_ms":null},
            "cpus":2,"cpu":{"cores":0.0,"utilization_pct":0.0,"runq_latency_ms":null},
            "memory":{"used_bytes":1,"total_bytes":100,"utilization_pct":1.0},"disk":[],
            "tcp":{"connects":0,"connect_errors":0,"connect_error_rate_pct":0.0,"connect_latency_ms":null,
                   "accepts":0,"retransmits":0,"resets_sent":0,"resets_received":0,"rtt_ms":null,
                   "bytes_sent":0,"bytes_received":0},
            "requests":{"count":0,"rate_per_s":0.0,"errors":0,"error_rate_pct":0.0,"latency_ms":null},
            "cost":{"projected_usd_month":null,"budget_usd_month":null,"over_budget_pct":null}}),
        );
        for _ in 0..30 {
            e.encode(std::iter::once(&host)).unwrap();
        }
        assert!(!e.resources.keys().any(|k| k.contains("process.pid")), "the process is gone");
        let alive = e.series;
        e.series = MAX_SERIES;
        e.encode(std::iter::once(&r)).unwrap();
        assert!(e.cut > 0);
        e.series = alive;
    }
}
