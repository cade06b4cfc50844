//! The KPI catalogue: every KPI the agent emits, once. Each row says where
//! the KPI is in the records, its unit, formula and source, the records
//! (scopes) that carry it, how to read it from a typed record, its
//! Prometheus name and kind, the words alerts use for it, and the
//! escalation guide's default rule when it has one.
//!
//! The `kpis` command, the metrics endpoint, the rules (their paths and
//! wording), the default configuration's rules and the report read this
//! table; a test checks the README and the JSON schema against it.

use crate::{
    aggregate::latency::LatencyMs,
    disk::DiskRecord,
    records::{Groups, Kind},
};

/// A KPI's unit, as alerts and reports write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Count,
    Bytes,
    Cores,
    Ms,
    Pct,
    PerS,
    UsdMonth,
}

impl Unit {
    /// The unit's name in the `kpis` table.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Count => "count",
            Unit::Bytes => "bytes",
            Unit::Cores => "cores",
            Unit::Ms => "ms",
            Unit::Pct => "%",
            Unit::PerS => "/s",
            Unit::UsdMonth => "USD/month",
        }
    }

    /// What follows a number in words ("612 ms", "4.5%").
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::Ms => " ms",
            Unit::Pct => "%",
            Unit::PerS => "/s",
            Unit::Bytes => " bytes",
            Unit::Cores => " cores",
            Unit::UsdMonth => " USD/month",
            Unit::Count => "",
        }
    }
}

/// A statistic of a latency group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stat {
    Avg,
    P50,
    P95,
    P99,
    Max,
}

impl Stat {
    pub const ALL: [Stat; 5] = [Stat::Avg, Stat::P50, Stat::P95, Stat::P99, Stat::Max];

    pub fn name(self) -> &'static str {
        match self {
            Stat::Avg => "avg",
            Stat::P50 => "p50",
            Stat::P95 => "p95",
            Stat::P99 => "p99",
            Stat::Max => "max",
        }
    }

    /// How a person says it, before the KPI's name.
    pub fn words(self) -> &'static str {
        match self {
            Stat::Avg => "average",
            Stat::P50 => "median",
            Stat::P95 => "p95",
            Stat::P99 => "p99",
            Stat::Max => "maximum",
        }
    }

    pub fn of(self, l: &LatencyMs) -> f64 {
        match self {
            Stat::Avg => l.avg,
            Stat::P50 => l.p50,
            Stat::P95 => l.p95,
            Stat::P99 => l.p99,
            Stat::Max => l.max,
        }
    }
}

/// How a KPI is read from a typed record.
#[derive(Clone, Copy)]
pub enum Read {
    /// A number.
    Value(fn(&Groups<'_>) -> Option<f64>),
    /// A latency group: rules take one of its statistics, the metrics
    /// endpoint its buckets.
    Latency(for<'a> fn(&'a Groups<'a>) -> Option<&'a LatencyMs>),
    /// A number per filesystem of the host (labelled by mount).
    Disk(fn(&DiskRecord) -> f64),
    /// Counts by class (HTTP status classes), labelled `class`.
    Classes(for<'a> fn(&'a Groups<'a>) -> Option<&'a std::collections::BTreeMap<String, u64>>),
}

/// How the metrics endpoint exports a KPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Summed over intervals since the agent started.
    Counter,
    /// The last interval's value (times `scale`).
    Gauge,
    /// Cumulative buckets in seconds.
    Histogram,
}

#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
    /// Multiplies the value (percent to ratio: 0.01).
    pub scale: f64,
    /// The unit of the OTLP metric (UCUM, as OpenTelemetry writes it:
    /// `s`, `By`, `1`, or a count's `{thing}`); histograms are in seconds.
    pub unit: &'static str,
}

/// The suffixes of KPI paths that name a unit, which an OTLP name leaves
/// to the metric's unit.
const UNIT_SUFFIXES: [&str; 4] = ["_ms", "_pct", "_bytes", "_usd_month"];

/// A KPI's OTLP metric name: `probe.` and its path, without the unit
/// suffix (`requests.latency_ms` is `probe.requests.latency`, in seconds).
pub fn otlp_name(k: &Kpi) -> String {
    let path = UNIT_SUFFIXES.iter().find_map(|s| k.path.strip_suffix(s)).unwrap_or(k.path);
    format!("probe.{path}")
}

/// The escalation guide's rule on a KPI, in the default configuration.
#[derive(Clone, Copy, Debug)]
pub struct GuideRule {
    pub name: &'static str,
    /// For a latency group, the statistic watched.
    pub stat: Option<Stat>,
    pub scopes: &'static [Kind],
    pub investigate: f64,
    pub escalate: f64,
}

/// One KPI.
pub struct Kpi {
    /// Its path in the records (a latency group's path has no statistic).
    pub path: &'static str,
    /// How alerts and reports name it ("request error rate").
    pub name: &'static str,
    pub unit: Unit,
    pub formula: &'static str,
    /// The kernel events or files it comes from.
    pub source: &'static str,
    pub scopes: &'static [Kind],
    pub read: Read,
    pub metric: Option<Metric>,
    pub rule: Option<GuideRule>,
    /// The guide's action at investigate and at escalate.
    pub actions: [&'static str; 2],
}

const H: Kind = Kind::Host;
const C: Kind = Kind::Container;
const P: Kind = Kind::Process;
const E: Kind = Kind::Endpoint;
const S: Kind = Kind::Syscall;
const R: Kind = Kind::Route;

const ACT: [&str; 2] = ["investigate", "escalate"];
const LATENCY_ACT: [&str; 2] = ["investigate now", "escalate to the team lead"];
const CAPACITY_ACT: [&str; 2] = ["optimize or scale", "escalate"];
const COST_ACT: [&str; 2] = ["identify savings", "escalate to management"];

const fn counter(name: &'static str, unit: &'static str, help: &'static str) -> Option<Metric> {
    Some(Metric { name, kind: MetricKind::Counter, help, scale: 1.0, unit })
}
const fn gauge(
    name: &'static str,
    unit: &'static str,
    help: &'static str,
    scale: f64,
) -> Option<Metric> {
    Some(Metric { name, kind: MetricKind::Gauge, help, scale, unit })
}
const fn histogram(name: &'static str, help: &'static str) -> Option<Metric> {
    Some(Metric { name, kind: MetricKind::Histogram, help, scale: 1.0, unit: "s" })
}

fn n(v: u64) -> Option<f64> {
    Some(v as f64)
}

/// The catalogue.
pub static KPIS: &[Kpi] = &[
    // --- requests
    Kpi {
        path: "requests.latency_ms",
        name: "request latency",
        unit: Unit::Ms,
        formula: "server: first request byte arrives -> answer sent; client: request sent -> answer read",
        source: "tcp_probe, sock_send_length, sock_recv_length",
        scopes: &[H, C, P, E, R],
        read: Read::Latency(|g| g.requests?.latency_ms.as_ref()),
        metric: histogram(
            "probe_request_latency_seconds",
            "Request latency: request in to answer out.",
        ),
        rule: Some(GuideRule {
            name: "request-latency",
            stat: Some(Stat::Avg),
            scopes: &[E, P, C, H],
            investigate: 500.0,
            escalate: 1000.0,
        }),
        actions: LATENCY_ACT,
    },
    Kpi {
        path: "requests.error_rate_pct",
        name: "request error rate",
        unit: Unit::Pct,
        formula: "errors / count x 100",
        source: "tcp:tcp_send_reset, tcp_receive_reset, sock:inet_sock_set_state",
        scopes: &[H, C, P, E, R],
        read: Read::Value(|g| Some(g.requests?.error_rate_pct)),
        metric: None,
        rule: Some(GuideRule {
            name: "request-errors",
            stat: None,
            scopes: &[E, P, C, H],
            investigate: 1.0,
            escalate: 5.0,
        }),
        actions: ACT,
    },
    Kpi {
        path: "requests.count",
        name: "requests",
        unit: Unit::Count,
        formula: "requests answered or failed in the interval",
        source: "tcp_probe, sock_send_length, sock_recv_length",
        scopes: &[H, C, P, E, R],
        read: Read::Value(|g| n(g.requests?.count)),
        metric: counter(
            "probe_requests_total",
            "{request}",
            "Requests answered or failed (TCP, per server port).",
        ),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "requests.errors",
        name: "request errors",
        unit: Unit::Count,
        formula: "HTTP 5xx, Redis error replies, PostgreSQL ErrorResponse, and requests on connections reset or closed before the answer",
        source: "sock_send_length, sock_recv_length, tcp:tcp_send_reset, tcp_receive_reset, sock:inet_sock_set_state",
        scopes: &[H, C, P, E, R],
        read: Read::Value(|g| n(g.requests?.errors)),
        metric: counter(
            "probe_request_errors_total",
            "{request}",
            "Requests failed: server errors, or reset or closed before the answer.",
        ),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "requests.client_errors",
        name: "client errors",
        unit: Unit::Count,
        formula: "requests answered with HTTP 4xx (beside errors, unless configured)",
        source: "sock_send_length, sock_recv_length (first bytes of the answer)",
        scopes: &[H, C, P, E, R],
        read: Read::Value(|g| n(g.requests?.client_errors)),
        metric: counter(
            "probe_request_client_errors_total",
            "{request}",
            "Requests answered with a client error (HTTP 4xx).",
        ),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "requests.success_rate_pct",
        name: "transaction success rate",
        unit: Unit::Pct,
        formula: "100 - error_rate_pct",
        source: "as the errors",
        scopes: &[H, C, P, E, R],
        read: Read::Value(|g| g.requests?.success_rate_pct),
        metric: None,
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "requests.status",
        name: "answers by status class",
        unit: Unit::Count,
        formula: "HTTP answers by status class (1xx .. 5xx); null for other protocols",
        source: "sock_send_length, sock_recv_length (the status line)",
        scopes: &[H, C, P, E, R],
        read: Read::Classes(|g| g.requests?.status.as_ref()),
        metric: counter("probe_request_status_total", "{request}", "HTTP answers by status class."),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "requests.rate_per_s",
        name: "request rate",
        unit: Unit::PerS,
        formula: "count / interval_s",
        source: "tcp_probe, sock_send_length, sock_recv_length",
        scopes: &[H, C, P, E, R],
        read: Read::Value(|g| Some(g.requests?.rate_per_s)),
        metric: None,
        rule: None,
        actions: ACT,
    },
    // --- TCP connections
    Kpi {
        path: "tcp.connects",
        name: "connects",
        unit: Unit::Count,
        formula: "outbound connection attempts (SYN sent)",
        source: "sock:inet_sock_set_state",
        scopes: &[H, C, P],
        read: Read::Value(|g| n(g.tcp?.connects)),
        metric: counter(
            "probe_tcp_connects_total",
            "{connection}",
            "Outbound TCP connects attempted.",
        ),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "tcp.connect_errors",
        name: "connect errors",
        unit: Unit::Count,
        formula: "attempts refused, reset or timed out (SYN_SENT -> CLOSE)",
        source: "sock:inet_sock_set_state",
        scopes: &[H, C, P],
        read: Read::Value(|g| n(g.tcp?.connect_errors)),
        metric: counter(
            "probe_tcp_connect_errors_total",
            "{connection}",
            "Outbound TCP connects that failed.",
        ),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "tcp.connect_error_rate_pct",
        name: "connect error rate",
        unit: Unit::Pct,
        formula: "failed connects / connects x 100",
        source: "sock:inet_sock_set_state",
        scopes: &[H, C, P],
        read: Read::Value(|g| Some(g.tcp?.connect_error_rate_pct)),
        metric: None,
        rule: Some(GuideRule {
            name: "connect-errors",
            stat: None,
            scopes: &[P, C, H],
            investigate: 1.0,
            escalate: 5.0,
        }),
        actions: ACT,
    },
    Kpi {
        path: "tcp.connect_latency_ms",
        name: "connect latency",
        unit: Unit::Ms,
        formula: "SYN sent to established",
        source: "sock:inet_sock_set_state",
        scopes: &[H, C, P],
        read: Read::Latency(|g| g.tcp?.connect_latency_ms.as_ref()),
        metric: histogram(
            "probe_tcp_connect_latency_seconds",
            "TCP connect latency: SYN to established.",
        ),
        rule: None,
        actions: LATENCY_ACT,
    },
    Kpi {
        path: "tcp.accepts",
        name: "accepts",
        unit: Unit::Count,
        formula: "inbound connections accepted and used",
        source: "sock:inet_sock_set_state, sock_send_length, sock_recv_length",
        scopes: &[H, C, P],
        read: Read::Value(|g| n(g.tcp?.accepts)),
        metric: counter(
            "probe_tcp_accepts_total",
            "{connection}",
            "Inbound TCP handshakes accepted.",
        ),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "tcp.retransmits",
        name: "retransmits",
        unit: Unit::Count,
        formula: "segments retransmitted",
        source: "tcp:tcp_retransmit_skb",
        scopes: &[H, C, P],
        read: Read::Value(|g| n(g.tcp?.retransmits)),
        metric: counter("probe_tcp_retransmits_total", "{segment}", "TCP segments retransmitted."),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "tcp.resets_sent",
        name: "resets sent",
        unit: Unit::Count,
        formula: "RSTs sent",
        source: "tcp:tcp_send_reset",
        scopes: &[H, C, P],
        read: Read::Value(|g| n(g.tcp?.resets_sent)),
        metric: counter("probe_tcp_resets_sent_total", "{segment}", "TCP resets sent."),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "tcp.resets_received",
        name: "resets received",
        unit: Unit::Count,
        formula: "RSTs received",
        source: "tcp:tcp_receive_reset",
        scopes: &[H, C, P],
        read: Read::Value(|g| n(g.tcp?.resets_received)),
        metric: counter("probe_tcp_resets_received_total", "{segment}", "TCP resets received."),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "tcp.rtt_ms",
        name: "round-trip time",
        unit: Unit::Ms,
        formula: "smoothed RTT, sampled on data segments received (at most once a millisecond per connection)",
        source: "tcp_probe",
        scopes: &[H, C, P],
        read: Read::Latency(|g| g.tcp?.rtt_ms.as_ref()),
        metric: histogram("probe_tcp_rtt_seconds", "Smoothed TCP round-trip time, sampled."),
        rule: None,
        actions: LATENCY_ACT,
    },
    Kpi {
        path: "tcp.bytes_sent",
        name: "bytes sent",
        unit: Unit::Bytes,
        formula: "payload through send calls",
        source: "sock_send_length",
        scopes: &[H, C, P],
        read: Read::Value(|g| n(g.tcp?.bytes_sent)),
        metric: counter("probe_tcp_sent_bytes_total", "By", "TCP payload bytes sent."),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "tcp.bytes_received",
        name: "bytes received",
        unit: Unit::Bytes,
        formula: "payload through receive calls",
        source: "sock_recv_length",
        scopes: &[H, C, P],
        read: Read::Value(|g| n(g.tcp?.bytes_received)),
        metric: counter("probe_tcp_received_bytes_total", "By", "TCP payload bytes received."),
        rule: None,
        actions: ACT,
    },
    // --- CPU
    Kpi {
        path: "cpu.cores",
        name: "CPU (busy cores)",
        unit: Unit::Cores,
        formula: "on-CPU ns / interval ns",
        source: "sched_switch",
        scopes: &[H, C, P],
        read: Read::Value(|g| Some(g.cpu?.cores)),
        metric: gauge("probe_cpu_cores", "{cpu}", "Busy cores over the last interval.", 1.0),
        rule: None,
        actions: CAPACITY_ACT,
    },
    Kpi {
        path: "cpu.utilization_pct",
        name: "CPU utilization",
        unit: Unit::Pct,
        formula: "on-CPU ns / (CPUs x interval ns) x 100",
        source: "sched_switch",
        scopes: &[H, C, P],
        read: Read::Value(|g| Some(g.cpu?.utilization_pct)),
        metric: gauge(
            "probe_cpu_utilization_ratio",
            "1",
            "Share of the host's CPU capacity used.",
            0.01,
        ),
        rule: Some(GuideRule {
            name: "cpu",
            stat: None,
            scopes: &[H, C],
            investigate: 80.0,
            escalate: 95.0,
        }),
        actions: CAPACITY_ACT,
    },
    Kpi {
        path: "cpu.runq_latency_ms",
        name: "run-queue latency",
        unit: Unit::Ms,
        formula: "switch-in time - time it became runnable",
        source: "sched_wakeup, sched_wakeup_new, sched_switch",
        scopes: &[H, C, P],
        read: Read::Latency(|g| g.cpu?.runq_latency_ms.as_ref()),
        metric: histogram(
            "probe_cpu_runq_latency_seconds",
            "Run-queue latency: runnable to running.",
        ),
        rule: None,
        actions: LATENCY_ACT,
    },
    // --- memory
    Kpi {
        path: "memory.used_bytes",
        name: "memory used",
        unit: Unit::Bytes,
        formula: "host: MemTotal - MemAvailable; container: cgroup usage",
        source: "/proc/meminfo, cgroup memory files",
        scopes: &[H, C],
        read: Read::Value(|g| {
            g.host_memory
                .map(|m| m.used_bytes as f64)
                .or_else(|| g.container_memory?.used_bytes.map(|b| b as f64))
        }),
        metric: gauge("probe_memory_used_bytes", "By", "Memory in use (RSS for processes).", 1.0),
        rule: None,
        actions: CAPACITY_ACT,
    },
    Kpi {
        path: "memory.total_bytes",
        name: "memory total",
        unit: Unit::Bytes,
        formula: "MemTotal",
        source: "/proc/meminfo",
        scopes: &[H],
        read: Read::Value(|g| n(g.host_memory?.total_bytes)),
        metric: gauge("probe_memory_limit_bytes", "By", "Memory limit (total for the host).", 1.0),
        rule: None,
        actions: CAPACITY_ACT,
    },
    Kpi {
        path: "memory.limit_bytes",
        name: "memory limit",
        unit: Unit::Bytes,
        formula: "the cgroup's memory limit (null: none)",
        source: "cgroup memory.max or memory.limit_in_bytes",
        scopes: &[C],
        read: Read::Value(|g| g.container_memory?.limit_bytes.map(|b| b as f64)),
        metric: gauge("probe_memory_limit_bytes", "By", "Memory limit (total for the host).", 1.0),
        rule: None,
        actions: CAPACITY_ACT,
    },
    Kpi {
        path: "memory.utilization_pct",
        name: "memory utilization",
        unit: Unit::Pct,
        formula: "host: (MemTotal - MemAvailable) / MemTotal x 100; container: cgroup usage / limit x 100",
        source: "/proc/meminfo, cgroup memory files",
        scopes: &[H, C],
        read: Read::Value(|g| {
            g.host_memory.map(|m| m.utilization_pct).or_else(|| g.container_memory?.utilization_pct)
        }),
        metric: None,
        rule: Some(GuideRule {
            name: "memory",
            stat: None,
            scopes: &[H, C],
            investigate: 80.0,
            escalate: 95.0,
        }),
        actions: CAPACITY_ACT,
    },
    Kpi {
        path: "memory.rss_bytes",
        name: "resident memory",
        unit: Unit::Bytes,
        formula: "resident set size at the end of the interval",
        source: "/proc/<pid>/statm",
        scopes: &[P],
        read: Read::Value(|g| g.process_memory?.rss_bytes.map(|b| b as f64)),
        metric: gauge("probe_memory_used_bytes", "By", "Memory in use (RSS for processes).", 1.0),
        rule: None,
        actions: CAPACITY_ACT,
    },
    // --- disk
    Kpi {
        path: "disk.used_bytes",
        name: "disk used",
        unit: Unit::Bytes,
        formula: "size - free, per filesystem (as df)",
        source: "statvfs",
        scopes: &[H],
        read: Read::Disk(|d| d.used_bytes as f64),
        metric: gauge("probe_disk_used_bytes", "By", "Disk space used (as df).", 1.0),
        rule: None,
        actions: CAPACITY_ACT,
    },
    Kpi {
        path: "disk.size_bytes",
        name: "disk size",
        unit: Unit::Bytes,
        formula: "size, per filesystem",
        source: "statvfs",
        scopes: &[H],
        read: Read::Disk(|d| d.size_bytes as f64),
        metric: gauge("probe_disk_size_bytes", "By", "Disk size.", 1.0),
        rule: None,
        actions: CAPACITY_ACT,
    },
    Kpi {
        path: "disk.utilization_pct",
        name: "disk utilization",
        unit: Unit::Pct,
        formula: "used / (used + available) x 100, per filesystem",
        source: "statvfs",
        scopes: &[H],
        read: Read::Disk(|d| d.utilization_pct),
        metric: None,
        rule: Some(GuideRule {
            name: "disk",
            stat: None,
            scopes: &[H],
            investigate: 80.0,
            escalate: 95.0,
        }),
        actions: CAPACITY_ACT,
    },
    // --- cost
    Kpi {
        path: "cost.projected_usd_month",
        name: "projected cost",
        unit: Unit::UsdMonth,
        formula: "host price, or (busy cores x core-hour price + used GiB x GiB-hour price) x 730",
        source: "cpu, memory, configuration",
        scopes: &[H, C],
        read: Read::Value(|g| {
            g.host_cost
                .and_then(|c| c.projected_usd_month)
                .or_else(|| g.container_cost?.projected_usd_month)
        }),
        metric: gauge(
            "probe_cost_projected_usd_per_month",
            "{USD}/mo",
            "Projected monthly cost.",
            1.0,
        ),
        rule: None,
        actions: COST_ACT,
    },
    Kpi {
        path: "cost.budget_usd_month",
        name: "budget",
        unit: Unit::UsdMonth,
        formula: "the configured monthly budget",
        source: "configuration",
        scopes: &[H],
        read: Read::Value(|g| g.host_cost?.budget_usd_month),
        // Beside the projection, so a Prometheus rule can say how far over
        // budget a host is (packaging/prometheus/probe-rules.yaml).
        metric: gauge("probe_cost_budget_usd_per_month", "{USD}/mo", "Monthly budget.", 1.0),
        rule: None,
        actions: COST_ACT,
    },
    Kpi {
        path: "cost.over_budget_pct",
        name: "projected cost over budget",
        unit: Unit::Pct,
        formula: "(projected - budget) / budget x 100",
        source: "cpu, memory, configuration",
        scopes: &[H],
        read: Read::Value(|g| g.host_cost?.over_budget_pct),
        metric: None,
        rule: Some(GuideRule {
            name: "cost",
            stat: None,
            scopes: &[H],
            investigate: 10.0,
            escalate: 20.0,
        }),
        actions: COST_ACT,
    },
    // --- system calls
    Kpi {
        path: "syscalls.count",
        name: "system calls",
        unit: Unit::Count,
        formula: "calls that returned in the interval",
        source: "raw_syscalls sys_exit",
        scopes: &[H, C, P, S],
        read: Read::Value(|g| n(g.syscalls?.count)),
        metric: counter("probe_syscalls_total", "{call}", "System calls completed."),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "syscalls.errors",
        name: "system call errors",
        unit: Unit::Count,
        formula: "calls returning -1..-4095 (restarted calls excluded)",
        source: "raw_syscalls sys_exit",
        scopes: &[H, C, P, S],
        read: Read::Value(|g| n(g.syscalls?.errors)),
        metric: counter(
            "probe_syscall_errors_total",
            "{call}",
            "System calls that returned an error.",
        ),
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "syscalls.error_rate_pct",
        name: "system call error rate",
        unit: Unit::Pct,
        formula: "errors / count x 100",
        source: "raw_syscalls sys_exit",
        scopes: &[H, C, P, S],
        read: Read::Value(|g| Some(g.syscalls?.error_rate_pct)),
        metric: None,
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "syscalls.rate_per_s",
        name: "system call rate",
        unit: Unit::PerS,
        formula: "count / interval_s",
        source: "raw_syscalls sys_exit",
        scopes: &[H, C, P, S],
        read: Read::Value(|g| Some(g.syscalls?.rate_per_s)),
        metric: None,
        rule: None,
        actions: ACT,
    },
    Kpi {
        path: "syscalls.latency_ms",
        name: "system call latency",
        unit: Unit::Ms,
        formula: "sys_exit time - sys_enter time of the same thread",
        source: "raw_syscalls sys_enter, sys_exit, sched_switch",
        scopes: &[H, C, P, S],
        read: Read::Latency(|g| g.syscalls?.latency_ms.as_ref()),
        metric: histogram("probe_syscall_latency_seconds", "System-call latency."),
        rule: None,
        actions: LATENCY_ACT,
    },
];

/// A rule's KPI path resolved: its row, and the statistic of a latency
/// group (`requests.latency_ms.p95`).
pub fn resolve(path: &str) -> Option<(&'static Kpi, Option<Stat>)> {
    for k in KPIS {
        if k.path == path {
            return match k.read {
                // A latency group needs its statistic; classes are no number.
                Read::Latency(_) | Read::Classes(_) => None,
                _ => Some((k, None)),
            };
        }
        if let (Read::Latency(_), Some(stat)) = (k.read, path.strip_prefix(k.path)) {
            let stat = Stat::ALL.into_iter().find(|s| stat == format!(".{}", s.name()))?;
            return Some((k, Some(stat)));
        }
    }
    None
}

/// The full path of a KPI with its statistic.
pub fn path_of(k: &Kpi, stat: Option<Stat>) -> String {
    match stat {
        Some(s) => format!("{}.{}", k.path, s.name()),
        None => k.path.to_string(),
    }
}

/// The `kpis` command's table (Markdown).
pub fn table() -> String {
    let mut out = String::from(
        "| KPI | unit | formula | kernel events / source | records | default thresholds (investigate / escalate) | Prometheus | OTLP (unit) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for k in KPIS {
        let scopes: Vec<&str> = k.scopes.iter().map(|s| s.name()).collect();
        let rule = k.rule.map_or("-".to_string(), |r| {
            let stat = r.stat.map(|s| format!("{}: ", s.name())).unwrap_or_default();
            let scopes: Vec<&str> = r.scopes.iter().map(|s| s.name()).collect();
            format!(
                "{stat}{} / {} ({}, rule `{}`)",
                crate::rules::number(r.investigate),
                crate::rules::number(r.escalate),
                scopes.join(", "),
                r.name
            )
        });
        let metric = k.metric.map_or("-".to_string(), |m| {
            let kind = match m.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Histogram => "histogram",
            };
            format!("`{}` ({kind})", m.name)
        });
        let otlp = k.metric.map_or("-".to_string(), |m| format!("`{}` ({})", otlp_name(k), m.unit));
        let unit = match k.read {
            Read::Latency(_) => "ms (avg, p50, p95, p99, max)",
            _ => k.unit.name(),
        };
        out += &format!(
            "| `{}` | {unit} | {} | {} | {} | {rule} | {metric} | {otlp} |\n",
            k.path,
            k.formula,
            k.source,
            scopes.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_and_are_named_once() {
        let mut seen = std::collections::HashSet::new();
        for k in KPIS {
            assert!(seen.insert(k.path), "{} listed twice", k.path);
            assert!(!k.scopes.is_empty(), "{}", k.path);
            if let Some(r) = k.rule {
                assert!(r.investigate < r.escalate, "{}", r.name);
                assert!(r.scopes.iter().all(|s| k.scopes.contains(s)), "{}", r.name);
                assert_eq!(r.stat.is_some(), matches!(k.read, Read::Latency(_)), "{}", r.name);
                assert_eq!(resolve(&path_of(k, r.stat)).map(|(k, _)| k.path), Some(k.path));
            }
        }
        assert_eq!(
            resolve("requests.latency_ms.p95").map(|(k, s)| (k.path, s)),
            Some(("requests.latency_ms", Some(Stat::P95)))
        );
        assert!(resolve("requests.latency_ms").is_none(), "a group needs its statistic");
        assert!(resolve("requests.latency_ms.p42").is_none());
        assert!(resolve("requests.nope").is_none());
    }

    /// Each exported KPI has its own OTLP name, a unit, and histograms in
    /// seconds (their bounds are).
    #[test]
    fn otlp_names_are_unique_and_units_consistent() {
        let mut seen = std::collections::HashSet::new();
        for k in KPIS {
            let Some(m) = k.metric else { continue };
            let name = otlp_name(k);
            assert!(seen.insert(name.clone()), "{name} twice");
            assert!(!name.ends_with('_') && !m.unit.is_empty(), "{name}");
            match m.kind {
                MetricKind::Histogram => assert_eq!(m.unit, "s", "{name}"),
                _ => assert_eq!(
                    m.unit == "By",
                    k.unit == Unit::Bytes,
                    "{name}: bytes and only bytes are By"
                ),
            }
        }
        assert_eq!(
            otlp_name(resolve("requests.latency_ms.avg").unwrap().0),
            "probe.requests.latency"
        );
        assert_eq!(otlp_name(resolve("tcp.bytes_sent").unwrap().0), "probe.tcp.bytes_sent");
    }

    fn repo(path: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The schema node at `path` (dotted, from a record type's
    /// properties), following `$ref`, `allOf` and arrays' `items`.
    fn schema_node<'a>(
        schema: &'a serde_json::Value,
        kind: &str,
        path: &str,
    ) -> Option<&'a serde_json::Value> {
        let defs = &schema["$defs"];
        let resolve = |mut v: &'a serde_json::Value| {
            while let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
                v = &defs[r.trim_start_matches("#/$defs/")];
            }
            v
        };
        let child = |v: &'a serde_json::Value, part: &str| -> Option<&'a serde_json::Value> {
            let v = resolve(v);
            let v = if v["type"] == "array" { resolve(&v["items"]) } else { v };
            let parts = v["allOf"].as_array().into_iter().flatten().map(resolve);
            std::iter::once(v).chain(parts).find_map(|p| p.get("properties")?.get(part))
        };
        let mut node = &defs[kind];
        for part in path.split('.') {
            node = child(node, part)?;
        }
        Some(node)
    }

    /// The catalogue is the only list of KPIs: every KPI is in the schema
    /// of each record type that carries it, the README shows exactly the
    /// `kpis` table, and its Prometheus table names exactly the metrics.
    #[test]
    #[allow(clippy::items_after_statements)]
    fn the_schema_and_the_readme_agree_with_the_catalogue() {
        let schema: serde_json::Value =
            serde_json::from_str(&repo("schema/probe-v1.schema.json")).unwrap();
        for k in KPIS {
            for &kind in k.scopes {
                // A syscall record carries the group's fields at its top level.
                let path = if kind == S { k.path.split_once('.').unwrap().1 } else { k.path };
                let node = schema_node(&schema, kind.name(), path);
                assert!(
                    node.is_some(),
                    "{} is not in the schema of {} records",
                    k.path,
                    kind.name()
                );
            }
        }
        let readme = repo("README.md");
        let (begin, end) = ("<!-- kpis:begin -->\n", "<!-- kpis:end -->");
        let at = readme.find(begin).expect("README has the kpis table") + begin.len();
        let shown = &readme[at..at + readme[at..].find(end).unwrap()];
        assert_eq!(
            shown,
            table(),
            "README's KPI table differs from `probe-agent kpis`: run scripts/readme-kpis.sh"
        );
        let names: std::collections::BTreeSet<&str> =
            KPIS.iter().filter_map(|k| k.metric.map(|m| m.name)).collect();
        for n in &names {
            assert!(readme.contains(n), "README does not list the metric {n}");
        }
        let listed: std::collections::BTreeSet<String> = readme
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| {
                w.starts_with("probe_")
                    && !w.starts_with("probe_agent")
                    && !w.starts_with("probe_metrics")
            })
            .filter(|w| !w.ends_with('_'))
            .map(str::to_string)
            .collect();
        for n in &listed {
            assert!(
                names.contains(n.as_str()),
                "README lists {n}, which the catalogue does not export"
            );
        }
    }
}
