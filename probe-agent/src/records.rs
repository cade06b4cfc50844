//! The records: the product's interface (contract version 1), and the
//! typed values the pipeline passes from stage to stage.
//!
//! An interval is built as [`Record`]s; the rules, the metrics endpoint and
//! the sinks take them as they are, and JSON is written only at the edge
//! ([`Encoder`]). The offline commands read JSON back through
//! `recording::Recording` and [`Record::from_value`]. These are output types,
//! built from aggregated data, never the kernel's wire structs. Field
//! meanings never change; fields may be added. Units are in the field names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    aggregate::{
        cpu::CpuGroup,
        latency::LatencyMs,
        syscalls::SyscallsGroup,
        tcp::{RequestsGroup, TcpGroup},
    },
    disk::DiskRecord,
    rules::lifecycle::Level,
};

/// Contract version, the `v` of every record.
pub const VERSION: u32 = 1;

/// The record types (`type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Status,
    Host,
    Container,
    Process,
    Endpoint,
    Route,
    Syscall,
    Agent,
    Alert,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Host => "host",
            Kind::Container => "container",
            Kind::Process => "process",
            Kind::Endpoint => "endpoint",
            Kind::Route => "route",
            Kind::Syscall => "syscall",
            Kind::Agent => "agent",
            Kind::Alert => "alert",
        }
    }

    /// The kinds that carry KPIs a rule can watch.
    pub const RULED: [Kind; 5] =
        [Kind::Host, Kind::Container, Kind::Process, Kind::Endpoint, Kind::Route];

    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Status,
            Kind::Host,
            Kind::Container,
            Kind::Process,
            Kind::Endpoint,
            Kind::Route,
            Kind::Syscall,
            Kind::Agent,
            Kind::Alert,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// Fields every record starts with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// End of the interval, RFC 3339 UTC with milliseconds.
    pub ts: String,
    pub host: String,
    /// Length of the interval the figures cover, in seconds (the final
    /// interval of a run may be shorter than `--interval`).
    pub interval_s: f64,
}

impl Header {
    pub fn with(&self, kind: Kind) -> Header {
        Header { kind, ..self.clone() }
    }
}

/// An endpoint's side of its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Answers on a local port.
    Server,
    /// Calls a peer's port.
    Client,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// A container's Kubernetes names, read from the kubelet's log layout
/// (`kubernetes.rs`). Each is left out of the record when unknown: off
/// Kubernetes, or before the kubelet has named the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8s {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_container: Option<String>,
}

/// The runtime a container's cgroup names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    Podman,
    /// The kubelet's cgroupfs layout, which does not say the runtime.
    Kubernetes,
}

/// `type: "syscall"`: one process's calls of one system call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyscallRecord {
    #[serde(flatten)]
    pub header: Header,
    pub pid: u32,
    pub comm: String,
    /// The container the process runs in (null: the host).
    pub container_id: Option<String>,
    pub syscall: String,
    pub nr: u16,
    /// count, errors, error_rate_pct, rate_per_s, latency_ms.
    #[serde(flatten)]
    pub calls: SyscallsGroup,
    pub errnos: BTreeMap<String, u64>,
}

/// `type: "process"`: one process's totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    #[serde(flatten)]
    pub header: Header,
    pub pid: u32,
    pub comm: String,
    /// cgroup v2 id it ran in (most, this interval); null if unknown.
    pub cgroup_id: Option<u64>,
    pub container_id: Option<String>,
    #[serde(flatten)]
    pub k8s: K8s,
    pub syscalls: SyscallsGroup,
    pub cpu: CpuGroup,
    pub memory: ProcessMemory,
    pub tcp: TcpGroup,
    /// Requests it served (its server endpoints).
    pub requests: RequestsGroup,
}

/// `type: "endpoint"`: one per active (process, role, port[, peer]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    #[serde(flatten)]
    pub header: Header,
    pub pid: u32,
    pub comm: String,
    pub container_id: Option<String>,
    #[serde(flatten)]
    pub k8s: K8s,
    pub role: Role,
    /// The local listening port for servers, the remote port for clients.
    pub port: u16,
    /// The remote address (clients only).
    pub peer: Option<String>,
    pub requests: RequestsGroup,
    /// The protocol its connections showed: `http1`, `redis`, `postgres`,
    /// or `unknown` (requests are then request/response exchanges).
    #[serde(default = "unknown")]
    pub protocol: String,
    /// Whether its connections are encrypted (TLS); null when unknown.
    #[serde(default)]
    pub tls: Option<bool>,
}

fn unknown() -> String {
    "unknown".into()
}

/// `type: "route"`: one per (process, role, port[, peer], method, route)
/// with requests, after its endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteRecord {
    #[serde(flatten)]
    pub header: Header,
    pub pid: u32,
    pub comm: String,
    pub container_id: Option<String>,
    #[serde(flatten)]
    pub k8s: K8s,
    pub role: Role,
    pub port: u16,
    pub peer: Option<String>,
    pub protocol: String,
    /// The HTTP method (null for other protocols).
    pub method: Option<String>,
    /// HTTP: the path without its query, identifier-like segments as
    /// `{id}` (or a configured pattern); Redis: the command; PostgreSQL:
    /// the statement's first keyword; `other` past the bound of routes.
    pub route: String,
    pub requests: RequestsGroup,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessMemory {
    /// Resident set size at the end of the interval (null once exited).
    pub rss_bytes: Option<u64>,
}

/// `type: "container"`: one per container with activity this interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    #[serde(flatten)]
    pub header: Header,
    pub container_id: String,
    pub runtime: Runtime,
    /// The container's own cgroup (with the id, what identifies it).
    pub cgroup: String,
    pub pod_uid: Option<String>,
    #[serde(flatten)]
    pub k8s: K8s,
    pub cpu: CpuGroup,
    pub memory: ContainerMemory,
    pub syscalls: SyscallsGroup,
    pub tcp: TcpGroup,
    pub requests: RequestsGroup,
    pub cost: ContainerCost,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerMemory {
    pub used_bytes: Option<u64>,
    /// null when the container has no limit.
    pub limit_bytes: Option<u64>,
    /// used / limit x 100; null without a limit.
    pub utilization_pct: Option<f64>,
}

/// `type: "host"`: host-wide totals, whatever the process filters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    #[serde(flatten)]
    pub header: Header,
    pub syscalls: SyscallsGroup,
    pub cpus: u32,
    pub cpu: CpuGroup,
    pub memory: HostMemory,
    pub disk: Vec<DiskRecord>,
    pub tcp: TcpGroup,
    pub requests: RequestsGroup,
    pub cost: HostCost,
}

/// The host's cost against its budget (null figures when not configured).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostCost {
    /// The host's monthly price, or its measured use priced per core-hour
    /// and GiB-hour, projected over a month (730 h).
    pub projected_usd_month: Option<f64>,
    pub budget_usd_month: Option<f64>,
    /// (projected - budget) / budget x 100; negative when under budget.
    pub over_budget_pct: Option<f64>,
}

/// A container's share of the cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerCost {
    /// Its measured CPU and memory priced per core-hour and GiB-hour, or
    /// its share of the host's price (half by CPU, half by memory).
    pub projected_usd_month: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostMemory {
    /// MemTotal - MemAvailable.
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub utilization_pct: f64,
}

/// `type: "status"`: written once at start, after the probes are attached.
#[derive(Clone, Debug, Serialize)]
pub struct StatusRecord {
    #[serde(flatten)]
    pub header: Header,
    pub version: &'static str,
    pub pid: u32,
    /// Per KPI family: whether it runs, and why not.
    pub kpis: BTreeMap<&'static str, KpiStatus>,
    pub programs: Vec<&'static str>,
    /// Effective capabilities left after attaching, in any thread (all
    /// others dropped).
    pub capabilities: Vec<String>,
    /// Whether no_new_privs is set (on every thread).
    pub no_new_privs: bool,
    /// Whether HTTPS through OpenSSL is read (its uprobes), and why not.
    pub tls: crate::probes::tls::TlsStatus,
    /// Each program's cost per run measured at start-up, ns.
    pub program_cost_ns: BTreeMap<&'static str, f64>,
    /// The focus KPIs of the configuration (3-5 paths), the ones a
    /// dashboard or report leads with.
    pub focus: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KpiStatus {
    pub available: bool,
    pub reason: Option<String>,
}

/// `type: "agent"`: the agent's own health, so the monitoring is monitored.
#[derive(Clone, Debug, Serialize)]
pub struct AgentRecord {
    #[serde(flatten)]
    pub header: Header,
    pub version: &'static str,
    pub pid: u32,
    /// Per KPI family: whether it runs, and why not (as in `status`).
    pub kpis: BTreeMap<&'static str, KpiStatus>,
    /// The configuration in force: its file, reloads (SIGHUP), last error.
    pub config: ConfigState,
    /// The agent process's CPU (user + system) in percent of one core.
    pub cpu_pct: f64,
    pub rss_bytes: u64,
    /// The agent's own cgroup memory and its limit (null when unknown), so
    /// a limit set close to its use is seen before it bites.
    pub cgroup_memory: Option<SelfMemory>,
    /// Length of the window, within this interval, during which BPF run-time
    /// statistics were sampled (`--bpf-stats-pct`); null when off.
    pub bpf_stats_window_s: Option<f64>,
    /// Kernel time of all the agent's programs during that window, in
    /// percent of one core (null when not sampled).
    pub programs_cpu_pct: Option<f64>,
    /// Kernel time of the agent's programs this interval, estimated from
    /// their runs and cost per run, percent of one core.
    pub programs_estimated_cpu_pct: f64,
    /// Effective capabilities of the agent's threads (the union: the worst
    /// thread), empty when every one holds none.
    pub capabilities: Vec<String>,
    /// Whether every thread has no_new_privs set.
    pub no_new_privs: bool,
    pub programs: Vec<ProgramRecord>,
    pub maps: Vec<MapRecord>,
    /// Events the kernel side could not record, this interval.
    pub lost: LostRecord,
    /// The overhead budget and what is shed to keep to it.
    pub shedding: Shedding,
    /// The sinks: what waits, and what a reader that does not keep up cost.
    pub output: OutputState,
    /// Processes with system-call activity this interval.
    pub processes_active: u64,
    /// Processes reported (after --pid/--comm filters and --top).
    pub processes_reported: u64,
    /// Matching processes left out by --top.
    pub processes_cut_by_top: u64,
    /// Processes left out as nearly idle: under --min-cpu-pct of a core,
    /// without TCP or requests (never with --pid or --comm).
    pub processes_cut_idle: u64,
    /// Per-(process, system call) records left out by `--syscalls top`
    /// (all but the 3 calls each process spent most time in and the 3
    /// others that failed most) or `none`.
    pub syscalls_cut: u64,
    /// Endpoint records left out this interval: past 100 per process or
    /// 2000 in all, the busiest kept (their requests stay in the totals).
    pub endpoints_cut: u64,
    /// Routes added up under `other` this interval: past 64 per endpoint.
    pub routes_cut: u64,
    /// Map entries of exited processes freed this interval.
    pub entries_reclaimed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SelfMemory {
    /// The cgroup (v2, or the v1 memory controller's) the agent runs in.
    pub cgroup: String,
    pub used_bytes: u64,
    /// null when the cgroup has no limit.
    pub limit_bytes: Option<u64>,
    /// used / limit x 100; null without a limit.
    pub utilization_pct: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConfigState {
    /// The file given with --config (null: the built-in defaults).
    pub path: Option<String>,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Why the last reload was refused (the previous configuration stays).
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OutputState {
    /// Intervals, since the last agent record, of which some records were
    /// dropped at some sink because it did not keep up (details in `sinks`).
    pub dropped_intervals: u64,
    /// Bytes waiting to be written, over all sinks.
    pub queued_bytes: u64,
    /// Whether delivery to some sink is failing.
    pub failing: bool,
    /// Each sink: delivered and dropped records (by reason) since the last
    /// agent record, its queue, and its fault while failing.
    pub sinks: Vec<crate::sink::SinkState>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Shedding {
    /// The budget, percent of the host's CPU capacity (0: no shedding).
    pub budget_pct: f64,
    /// This interval's cost: the agent process plus its kernel programs
    /// (measured when BPF run-time statistics were sampled, else estimated
    /// from the programs' runs and cost per run).
    pub cost_pct: f64,
    /// 1 in this many system calls is timed for latency (1: all); every
    /// call is counted either way.
    pub latency_sample_every: u32,
    /// Probes switched off to keep to the budget (`runq_latency`; TCP was
    /// until request counting became never shed); their KPIs read as
    /// unavailable in `kpis` meanwhile.
    pub probes_off: Vec<&'static str>,
    /// Families whose detail is shed, in the order it went: `syscalls`
    /// (per-(process, call) records stop; each call is counted in
    /// `lost.syscalls_shed`), `tcp` (RTT and byte counts; requests,
    /// connects, retransmits and resets are still measured).
    pub detail_off: Vec<&'static str>,
    /// With everything but requests shed and the cost still over budget:
    /// that cost, the floor at this event rate; null otherwise.
    pub residual_pct: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramRecord {
    pub name: &'static str,
    /// Runs during the sampled window (null when not sampled).
    pub run_count: Option<u64>,
    /// Runs per second during the sampled window.
    pub runs_per_s: Option<f64>,
    /// Average ns per run during the sampled window (null without runs).
    pub avg_ns: Option<f64>,
    /// Runs this interval, counted whether or not statistics are sampled
    /// (null when the agent cannot count them).
    pub runs: Option<u64>,
    /// The cost of one run used for the estimate: measured at start-up
    /// (or in the latest sampled window), ns.
    pub cost_per_run_ns: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MapRecord {
    pub name: &'static str,
    pub entries: u64,
    pub max_entries: u64,
    pub fill_pct: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LostRecord {
    /// Calls not recorded because SYSCALL_STATS was full.
    pub syscall_stats_full: u64,
    /// Threads whose call start could not be stored (SYSCALL_START full).
    pub syscall_start_full: u64,
    /// Process names not stored (PROC_COMM full).
    pub comm_full: u64,
    /// Calls with a number outside the table (x32 ABI, invalid numbers).
    pub syscall_bad_nr: u64,
    /// Calls whose entry was not seen (in flight at attach, or start not stored).
    pub syscall_no_start: u64,
    /// Calls counted only here: the overhead budget shed the per-(process,
    /// system call) detail (`shedding.detail_off` has `syscalls`).
    pub syscalls_shed: u64,
    /// CPU runs not recorded because CPU_TIME was full.
    pub cpu_time_full: u64,
    /// Run-queue waits not recorded because RUNQ_LAT was full.
    pub runq_full: u64,
    /// Wakeups not stored because RUNQ_WAKE was full.
    pub runq_wake_full: u64,
    /// cgroup directories not walked to map ids to paths (bound: 100000).
    pub cgroup_walk_cut: u64,
    /// Entries of the kubelet's log directories not read to name
    /// containers (bound: 50000 per directory).
    pub kubelet_entries_cut: u64,
    /// Sockets not tracked because TCP_SOCKS was full.
    pub tcp_socks_full: u64,
    /// Connection figures not recorded because TCP_STATS was full.
    pub tcp_stats_full: u64,
    /// Requests not recorded because TCP_ENDPOINTS was full.
    pub tcp_endpoints_full: u64,
    /// Requests counted under route `other` by the kernel: their endpoint
    /// had its bound of entries (2048), or ROUTE_COUNT was full.
    pub tcp_routes_cut: u64,
    /// Route names the kernel could not store (its map is an LRU: only
    /// when it failed outright).
    pub route_names_full: u64,
    /// OpenSSL calls not followed because SSL_CALLS (threads inside one at
    /// once, 16384) was full: their plaintext was not read.
    pub tls_calls_full: u64,
    /// Plaintext read or written through OpenSSL whose socket was unknown
    /// (no system call in that call, and SSL_SOCKS, an LRU, forgot it).
    pub tls_no_socket: u64,
    /// Rule evaluations skipped: too many (rule, scope) pairs tracked (100000).
    pub alert_scopes_cut: u64,
}

impl LostRecord {
    /// Each counter by its field name.
    pub fn fields(&self) -> [(&'static str, u64); 19] {
        [
            ("syscall_stats_full", self.syscall_stats_full),
            ("syscall_start_full", self.syscall_start_full),
            ("comm_full", self.comm_full),
            ("syscall_bad_nr", self.syscall_bad_nr),
            ("syscall_no_start", self.syscall_no_start),
            ("syscalls_shed", self.syscalls_shed),
            ("cpu_time_full", self.cpu_time_full),
            ("runq_full", self.runq_full),
            ("runq_wake_full", self.runq_wake_full),
            ("cgroup_walk_cut", self.cgroup_walk_cut),
            ("kubelet_entries_cut", self.kubelet_entries_cut),
            ("tcp_socks_full", self.tcp_socks_full),
            ("tcp_stats_full", self.tcp_stats_full),
            ("tcp_endpoints_full", self.tcp_endpoints_full),
            ("tcp_routes_cut", self.tcp_routes_cut),
            ("route_names_full", self.route_names_full),
            ("tls_calls_full", self.tls_calls_full),
            ("tls_no_socket", self.tls_no_socket),
            ("alert_scopes_cut", self.alert_scopes_cut),
        ]
    }
}

/// `type: "alert"`: a rule's level changed, or held and is said again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    #[serde(flatten)]
    pub header: Header,
    pub rule: String,
    /// The KPI's path in the records.
    pub kpi: String,
    pub level: Level,
    pub previous_level: Level,
    pub repeat: bool,
    pub value: f64,
    pub threshold: f64,
    /// The record type the KPI was read from (or `agent`).
    pub scope: Kind,
    /// The labels of that scope.
    #[serde(flatten)]
    pub place: Place,
    /// When the level began (RFC 3339).
    pub since: String,
    pub message: String,
}

/// Where an alert is: the labels of its scope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Place {
    Route {
        pid: u32,
        comm: String,
        container_id: Option<String>,
        role: Role,
        port: u16,
        peer: Option<String>,
        method: Option<String>,
        route: String,
    },
    Endpoint {
        pid: u32,
        comm: String,
        container_id: Option<String>,
        role: Role,
        port: u16,
        peer: Option<String>,
    },
    Process {
        pid: u32,
        comm: String,
        container_id: Option<String>,
    },
    /// The agent itself (its overhead, its memory).
    Agent {
        pid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency_sample_every: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probes_off: Option<Vec<String>>,
    },
    Container {
        container_id: String,
    },
    /// The host, and the filesystem for a disk KPI.
    Host {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mount: Option<String>,
    },
}

/// Any record.
#[derive(Clone, Debug)]
pub enum Record {
    Status(StatusRecord),
    Host(HostRecord),
    Container(ContainerRecord),
    Process(ProcessRecord),
    Endpoint(EndpointRecord),
    Route(RouteRecord),
    Syscall(SyscallRecord),
    Agent(Box<AgentRecord>),
    Alert(AlertRecord),
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Record::Status(r) => r.serialize(s),
            Record::Host(r) => r.serialize(s),
            Record::Container(r) => r.serialize(s),
            Record::Process(r) => r.serialize(s),
            Record::Endpoint(r) => r.serialize(s),
            Record::Route(r) => r.serialize(s),
            Record::Syscall(r) => r.serialize(s),
            Record::Agent(r) => r.serialize(s),
            Record::Alert(r) => r.serialize(s),
        }
    }
}

/// The figures a record carries, by KPI group: what the catalogue's
/// readers take (a record without a group leaves it empty).
#[derive(Default)]
pub struct Groups<'a> {
    pub syscalls: Option<&'a SyscallsGroup>,
    pub cpu: Option<&'a CpuGroup>,
    pub tcp: Option<&'a TcpGroup>,
    pub requests: Option<&'a RequestsGroup>,
    pub host_memory: Option<&'a HostMemory>,
    pub container_memory: Option<&'a ContainerMemory>,
    pub process_memory: Option<&'a ProcessMemory>,
    pub disk: &'a [DiskRecord],
    pub host_cost: Option<&'a HostCost>,
    pub container_cost: Option<&'a ContainerCost>,
}

impl Record {
    pub fn header(&self) -> &Header {
        match self {
            Record::Status(r) => &r.header,
            Record::Host(r) => &r.header,
            Record::Container(r) => &r.header,
            Record::Process(r) => &r.header,
            Record::Endpoint(r) => &r.header,
            Record::Route(r) => &r.header,
            Record::Syscall(r) => &r.header,
            Record::Agent(r) => &r.header,
            Record::Alert(r) => &r.header,
        }
    }

    pub fn kind(&self) -> Kind {
        self.header().kind
    }

    /// The record's KPI groups.
    pub fn groups(&self) -> Groups<'_> {
        match self {
            Record::Host(r) => Groups {
                syscalls: Some(&r.syscalls),
                cpu: Some(&r.cpu),
                tcp: Some(&r.tcp),
                requests: Some(&r.requests),
                host_memory: Some(&r.memory),
                disk: &r.disk,
                host_cost: Some(&r.cost),
                ..Groups::default()
            },
            Record::Container(r) => Groups {
                syscalls: Some(&r.syscalls),
                cpu: Some(&r.cpu),
                tcp: Some(&r.tcp),
                requests: Some(&r.requests),
                container_memory: Some(&r.memory),
                container_cost: Some(&r.cost),
                ..Groups::default()
            },
            Record::Process(r) => Groups {
                syscalls: Some(&r.syscalls),
                cpu: Some(&r.cpu),
                tcp: Some(&r.tcp),
                requests: Some(&r.requests),
                process_memory: Some(&r.memory),
                ..Groups::default()
            },
            Record::Endpoint(r) => Groups { requests: Some(&r.requests), ..Groups::default() },
            Record::Route(r) => Groups { requests: Some(&r.requests), ..Groups::default() },
            Record::Syscall(r) => Groups { syscalls: Some(&r.calls), ..Groups::default() },
            Record::Status(_) | Record::Agent(_) | Record::Alert(_) => Groups::default(),
        }
    }

    /// The labels of the record's scope, for alerts.
    pub fn place(&self) -> Option<Place> {
        Some(match self {
            Record::Host(_) => Place::Host { mount: None },
            Record::Container(r) => Place::Container { container_id: r.container_id.clone() },
            Record::Process(r) => Place::Process {
                pid: r.pid,
                comm: r.comm.clone(),
                container_id: r.container_id.clone(),
            },
            Record::Endpoint(r) => Place::Endpoint {
                pid: r.pid,
                comm: r.comm.clone(),
                container_id: r.container_id.clone(),
                role: r.role,
                port: r.port,
                peer: r.peer.clone(),
            },
            Record::Route(r) => Place::Route {
                pid: r.pid,
                comm: r.comm.clone(),
                container_id: r.container_id.clone(),
                role: r.role,
                port: r.port,
                peer: r.peer.clone(),
                method: r.method.clone(),
                route: r.route.clone(),
            },
            _ => return None,
        })
    }

    /// A KPI record read back from JSON (the offline commands): `None` for
    /// the other types, which carry no KPI a rule or merge reads.
    pub fn from_value(v: serde_json::Value) -> Result<Option<Record>, serde_json::Error> {
        let kind = v.get("type").and_then(|t| t.as_str()).and_then(Kind::parse);
        Ok(Some(match kind {
            Some(Kind::Host) => Record::Host(serde_json::from_value(v)?),
            Some(Kind::Container) => Record::Container(serde_json::from_value(v)?),
            Some(Kind::Process) => Record::Process(serde_json::from_value(v)?),
            Some(Kind::Endpoint) => Record::Endpoint(serde_json::from_value(v)?),
            Some(Kind::Route) => Record::Route(serde_json::from_value(v)?),
            Some(Kind::Syscall) => Record::Syscall(serde_json::from_value(v)?),
            Some(Kind::Alert) => Record::Alert(serde_json::from_value(v)?),
            _ => return Ok(None),
        }))
    }

    /// Drops the histogram buckets of every latency group (the lines carry
    /// them only with `--histograms`).
    pub fn strip_buckets(&mut self) {
        fn strip(l: &mut Option<LatencyMs>) {
            if let Some(l) = l {
                l.buckets = None;
            }
        }
        fn groups(
            s: Option<&mut SyscallsGroup>,
            c: Option<&mut CpuGroup>,
            t: Option<&mut TcpGroup>,
            r: Option<&mut RequestsGroup>,
        ) {
            if let Some(s) = s {
                strip(&mut s.latency_ms);
            }
            if let Some(c) = c {
                strip(&mut c.runq_latency_ms);
            }
            if let Some(t) = t {
                strip(&mut t.connect_latency_ms);
                strip(&mut t.rtt_ms);
            }
            if let Some(r) = r {
                strip(&mut r.latency_ms);
            }
        }
        match self {
            Record::Host(r) => groups(
                Some(&mut r.syscalls),
                Some(&mut r.cpu),
                Some(&mut r.tcp),
                Some(&mut r.requests),
            ),
            Record::Container(r) => groups(
                Some(&mut r.syscalls),
                Some(&mut r.cpu),
                Some(&mut r.tcp),
                Some(&mut r.requests),
            ),
            Record::Process(r) => groups(
                Some(&mut r.syscalls),
                Some(&mut r.cpu),
                Some(&mut r.tcp),
                Some(&mut r.requests),
            ),
            Record::Endpoint(r) => groups(None, None, None, Some(&mut r.requests)),
            Record::Route(r) => groups(None, None, None, Some(&mut r.requests)),
            Record::Syscall(r) => groups(Some(&mut r.calls), None, None, None),
            Record::Status(_) | Record::Agent(_) | Record::Alert(_) => {}
        }
    }
}

/// Encodes one run's records as lines, numbering them: `seq` counts the
/// records of a run from 0 (the `status` record), so a reader sees a gap
/// wherever a sink dropped records (the `agent` record counts them).
pub struct Encoder {
    /// The next record's number.
    pub seq: u64,
    pub lines: bytes::BytesMut,
}

#[derive(Serialize)]
struct Numbered<'a, T> {
    #[serde(flatten)]
    rec: &'a T,
    seq: u64,
}

impl Encoder {
    pub fn new(seq: u64) -> Self {
        Encoder { seq, lines: bytes::BytesMut::with_capacity(64 * 1024) }
    }

    pub fn put<T: Serialize>(&mut self, rec: &T) -> Result<(), serde_json::Error> {
        encode(&mut self.lines, &Numbered { rec, seq: self.seq })?;
        self.seq += 1;
        Ok(())
    }
}

/// Appends `record` as one line of JSON to `buf`.
pub fn encode<T: Serialize>(
    buf: &mut bytes::BytesMut,
    record: &T,
) -> Result<(), serde_json::Error> {
    use bytes::BufMut as _;
    let mut w = buf.writer();
    serde_json::to_writer(&mut w, record)?;
    w.into_inner().put_u8(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syscall(comm: String, host: String, count: u64, rate: f64) -> SyscallRecord {
        SyscallRecord {
            header: Header { v: 1, kind: Kind::Syscall, ts: "t".into(), host, interval_s: 1.0 },
            pid: 1,
            comm: comm.clone(),
            container_id: None,
            syscall: "read".into(),
            nr: 0,
            calls: SyscallsGroup {
                count,
                errors: 0,
                error_rate_pct: 0.0,
                rate_per_s: rate,
                latency_ms: None,
            },
            errnos: BTreeMap::from([(comm, 1)]),
        }
    }

    /// Property: any bytes as a process name or host name give exactly one
    /// line of valid JSON that reads back as the lossy string (a small
    /// deterministic fuzzer: xorshift, fixed seed, 20000 cases).
    #[test]
    fn fuzz_encoder_always_writes_one_valid_line() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        for _ in 0..20_000 {
            let raw: Vec<u8> = (0..next(40)).map(|_| next(256) as u8).collect();
            let comm = String::from_utf8_lossy(&raw).into_owned();
            let host_raw: Vec<u8> = (0..next(20)).map(|_| next(256) as u8).collect();
            let host = String::from_utf8_lossy(&host_raw).into_owned();
            let rate = f64::from(next(1000) as u32) / 7.0;
            let rec = syscall(comm.clone(), host.clone(), next(u64::MAX), rate);
            let mut buf = bytes::BytesMut::new();
            encode(&mut buf, &rec).unwrap();
            let line = std::str::from_utf8(&buf).unwrap();
            assert_eq!(line.matches('\n').count(), 1);
            let back: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(back["comm"], comm.as_str());
            assert_eq!(back["host"], host.as_str());
            // And the offline commands read it back as it was.
            let Some(Record::Syscall(again)) = Record::from_value(back).unwrap() else {
                panic!("not a syscall record")
            };
            assert_eq!(again, rec);
        }
    }

    #[test]
    fn hostile_names_stay_one_valid_line() {
        let raw: &[u8] = b"a\"b\\c\nd\te\x01\xff\xfe";
        let comm = String::from_utf8_lossy(raw).into_owned();
        let rec = syscall(comm.clone(), "h\n\"".into(), 0, 0.0);
        let mut buf = bytes::BytesMut::new();
        encode(&mut buf, &rec).unwrap();
        let line = std::str::from_utf8(&buf).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        let back: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(back["comm"], comm.as_str());
    }

    /// An alert's labels are its scope's, and nothing else.
    #[test]
    fn alert_places_serialize_their_labels() {
        let header =
            Header { v: 1, kind: Kind::Alert, ts: "t".into(), host: "h".into(), interval_s: 1.0 };
        let mut a = AlertRecord {
            header,
            rule: "disk".into(),
            kpi: "disk.utilization_pct".into(),
            level: Level::Escalate,
            previous_level: Level::Ok,
            repeat: false,
            value: 97.0,
            threshold: 95.0,
            scope: Kind::Host,
            place: Place::Host { mount: Some("/".into()) },
            since: "t".into(),
            message: "m".into(),
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!((v["mount"].as_str(), v["scope"].as_str()), (Some("/"), Some("host")));
        assert!(v.get("pid").is_none());
        a.place = Place::Process { pid: 7, comm: "x".into(), container_id: None };
        a.scope = Kind::Process;
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["pid"], 7);
        assert!(v["container_id"].is_null() && v.get("mount").is_none());
        let back: AlertRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
    }
}
