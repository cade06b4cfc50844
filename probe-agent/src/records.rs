//! The JSON records: the product's interface (contract version 1).
//!
//! These are output types, built from aggregated data, never the kernel's
//! wire structs. Field meanings never change; fields may be added. Units are
//! in the field names.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    aggregate::{
        cpu::CpuGroup,
        latency::{LatencyMs, with_buckets},
        syscalls::SyscallsGroup,
        tcp::{RequestsGroup, TcpGroup},
    },
    disk::DiskRecord,
};

/// Contract version, the `v` of every record.
pub const VERSION: u32 = 1;

/// Fields every record starts with.
#[derive(Clone, Debug, Serialize)]
pub struct Header<'a> {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// End of the interval, RFC 3339 UTC with milliseconds.
    pub ts: &'a str,
    pub host: &'a str,
    /// Length of the interval the figures cover, in seconds (the final
    /// interval of a run may be shorter than `--interval`).
    pub interval_s: f64,
}

impl<'a> Header<'a> {
    pub fn with(&self, kind: &'static str) -> Header<'a> {
        Header { kind, ..self.clone() }
    }
}

/// `type: "syscall"`: one process's calls of one system call.
#[derive(Debug, Serialize)]
pub struct SyscallRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
    pub pid: u32,
    pub comm: &'a str,
    /// The container the process runs in (null: the host).
    pub container_id: Option<&'a str>,
    pub syscall: std::borrow::Cow<'static, str>,
    pub nr: u16,
    pub count: u64,
    pub errors: u64,
    pub error_rate_pct: f64,
    pub rate_per_s: f64,
    pub latency_ms: Option<LatencyMs>,
    pub errnos: BTreeMap<String, u64>,
}

/// `type: "process"`: one process's totals.
#[derive(Debug, Serialize)]
pub struct ProcessRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
    pub pid: u32,
    pub comm: &'a str,
    /// cgroup v2 id it ran in (most, this interval); null if unknown.
    pub cgroup_id: Option<u64>,
    pub container_id: Option<&'a str>,
    pub syscalls: SyscallsGroup,
    pub cpu: CpuGroup,
    pub memory: ProcessMemory,
    pub tcp: TcpGroup,
    /// Requests it served (its server endpoints).
    pub requests: RequestsGroup,
}

/// `type: "endpoint"`: one per active (process, role, port[, peer]).
#[derive(Debug, Serialize)]
pub struct EndpointRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
    pub pid: u32,
    pub comm: &'a str,
    pub container_id: Option<&'a str>,
    /// `server` (it answers on a local port) or `client` (it calls a peer).
    pub role: &'static str,
    /// The local listening port for servers, the remote port for clients.
    pub port: u16,
    /// The remote address (clients only).
    pub peer: Option<String>,
    pub requests: RequestsGroup,
}

#[derive(Debug, Serialize)]
pub struct ProcessMemory {
    /// Resident set size at the end of the interval (null once exited).
    pub rss_bytes: Option<u64>,
}

/// `type: "container"`: one per container with activity this interval.
#[derive(Debug, Serialize)]
pub struct ContainerRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
    pub container_id: &'a str,
    /// Runtime told by the cgroup name: docker, containerd, cri-o, podman, kubernetes.
    pub runtime: &'static str,
    /// cgroup v2 path.
    pub cgroup: &'a str,
    pub pod_uid: Option<&'a str>,
    pub cpu: CpuGroup,
    pub memory: ContainerMemory,
    pub syscalls: SyscallsGroup,
    pub tcp: TcpGroup,
    pub requests: RequestsGroup,
    pub cost: ContainerCost,
}

#[derive(Debug, Serialize)]
pub struct ContainerMemory {
    pub used_bytes: Option<u64>,
    /// null when the container has no limit.
    pub limit_bytes: Option<u64>,
    /// used / limit x 100; null without a limit.
    pub utilization_pct: Option<f64>,
}

/// `type: "host"`: host-wide totals, whatever the process filters.
#[derive(Debug, Serialize)]
pub struct HostRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
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
#[derive(Debug, Serialize)]
pub struct HostCost {
    /// The host's monthly price, or its measured use priced per core-hour
    /// and GiB-hour, projected over a month (730 h).
    pub projected_usd_month: Option<f64>,
    pub budget_usd_month: Option<f64>,
    /// (projected - budget) / budget x 100; negative when under budget.
    pub over_budget_pct: Option<f64>,
}

/// A container's share of the cost.
#[derive(Debug, Serialize)]
pub struct ContainerCost {
    /// Its measured CPU and memory priced per core-hour and GiB-hour, or
    /// its share of the host's price (half by CPU, half by memory).
    pub projected_usd_month: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct HostMemory {
    /// MemTotal - MemAvailable.
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub utilization_pct: f64,
}

/// `type: "status"`: written once at start, after the probes are attached.
#[derive(Debug, Serialize)]
pub struct StatusRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
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
    /// Each program's cost per run measured at start-up, ns.
    pub program_cost_ns: BTreeMap<&'static str, f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KpiStatus {
    pub available: bool,
    pub reason: Option<String>,
}

/// `type: "agent"`: the agent's own health, so the monitoring is monitored.
#[derive(Debug, Serialize)]
pub struct AgentRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
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
    /// Stdout: what waits, and what a reader that does not keep up cost.
    pub output: OutputState,
    /// Processes with system-call activity this interval.
    pub processes_active: u64,
    /// Processes reported (after --pid/--comm filters and --top).
    pub processes_reported: u64,
    /// Matching processes left out by --top.
    pub processes_cut_by_top: u64,
    /// Endpoint records left out this interval: past 100 per process or
    /// 2000 in all, the busiest kept (their requests stay in the totals).
    pub endpoints_cut: u64,
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

#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
pub struct Shedding {
    /// The budget, percent of the host's CPU capacity (0: no shedding).
    pub budget_pct: f64,
    /// This interval's cost: the agent process plus its kernel programs
    /// (measured when BPF run-time statistics were sampled, else estimated
    /// at 180 ns per timed and 80 ns per untimed system call).
    pub cost_pct: f64,
    /// 1 in this many system calls is timed for latency (1: all); every
    /// call is counted either way.
    pub latency_sample_every: u32,
    /// Optional probes switched off to keep to the budget (`tcp`,
    /// `runq_latency`), in the order they went off; their KPIs read as
    /// unavailable in `kpis` meanwhile.
    pub probes_off: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
pub struct MapRecord {
    pub name: &'static str,
    pub entries: u64,
    pub max_entries: u64,
    pub fill_pct: f64,
}

#[derive(Debug, Default, Serialize)]
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
    /// CPU runs not recorded because CPU_TIME was full.
    pub cpu_time_full: u64,
    /// Run-queue waits not recorded because RUNQ_LAT was full.
    pub runq_full: u64,
    /// Wakeups not stored because RUNQ_WAKE was full.
    pub runq_wake_full: u64,
    /// cgroup directories not walked to map ids to paths (bound: 100000).
    pub cgroup_walk_cut: u64,
    /// Sockets not tracked because TCP_SOCKS was full.
    pub tcp_socks_full: u64,
    /// Connection figures not recorded because TCP_STATS was full.
    pub tcp_stats_full: u64,
    /// Requests not recorded because TCP_ENDPOINTS was full.
    pub tcp_endpoints_full: u64,
    /// Rule evaluations skipped: too many (rule, scope) pairs tracked (100000).
    pub alert_scopes_cut: u64,
}

/// Encodes one run's records as lines, numbering them: `seq` counts the
/// records of a run from 0 (the `status` record), so a reader sees a gap
/// wherever a sink dropped records (the `agent` record counts them).
pub struct Encoder {
    /// The next record's number.
    pub seq: u64,
    /// Whether lines carry their histogram buckets (`--histograms`).
    histograms: bool,
    pub lines: bytes::BytesMut,
    /// The same records with their buckets, when the lines do not carry
    /// them and the metrics endpoint needs them.
    pub with_buckets: Option<bytes::BytesMut>,
}

#[derive(Serialize)]
struct Numbered<'a, T> {
    #[serde(flatten)]
    rec: &'a T,
    seq: u64,
}

impl Encoder {
    pub fn new(seq: u64, histograms: bool, metrics: bool) -> Self {
        Encoder {
            seq,
            histograms,
            lines: bytes::BytesMut::with_capacity(64 * 1024),
            with_buckets: (metrics && !histograms).then(bytes::BytesMut::new),
        }
    }

    pub fn put<T: Serialize>(&mut self, rec: &T) -> Result<(), serde_json::Error> {
        let rec = Numbered { rec, seq: self.seq };
        with_buckets(self.histograms, || encode(&mut self.lines, &rec))?;
        if let Some(buf) = &mut self.with_buckets {
            with_buckets(true, || encode(buf, &rec))?;
        }
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
            let header = Header { v: 1, kind: "syscall", ts: "t", host: &host, interval_s: 1.0 };
            let rec = SyscallRecord {
                header,
                pid: next(1 << 22) as u32,
                comm: &comm,
                container_id: None,
                syscall: "read".into(),
                nr: 0,
                count: next(u64::MAX),
                errors: 0,
                error_rate_pct: 0.0,
                rate_per_s: f64::from(next(1000) as u32) / 7.0,
                latency_ms: None,
                errnos: BTreeMap::from([(comm.clone(), 1)]),
            };
            let mut buf = bytes::BytesMut::new();
            encode(&mut buf, &rec).unwrap();
            let line = std::str::from_utf8(&buf).unwrap();
            assert_eq!(line.matches('\n').count(), 1);
            let back: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(back["comm"], comm.as_str());
            assert_eq!(back["host"], host.as_str());
        }
    }

    #[test]
    fn hostile_names_stay_one_valid_line() {
        let raw: &[u8] = b"a\"b\\c\nd\te\x01\xff\xfe";
        let comm = String::from_utf8_lossy(raw);
        let header = Header { v: 1, kind: "process", ts: "t", host: "h\n\"", interval_s: 1.0 };
        let rec = SyscallRecord {
            header,
            pid: 1,
            comm: &comm,
            container_id: None,
            syscall: "read".into(),
            nr: 0,
            count: 0,
            errors: 0,
            error_rate_pct: 0.0,
            rate_per_s: 0.0,
            latency_ms: None,
            errnos: BTreeMap::new(),
        };
        let mut buf = bytes::BytesMut::new();
        encode(&mut buf, &rec).unwrap();
        let line = std::str::from_utf8(&buf).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let back: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(back["comm"], comm.as_ref());
        assert_eq!(back["type"], "process");
        assert_eq!(back["v"], 1);
        assert!(back["latency_ms"].is_null());
        assert!(back["container_id"].is_null());
    }
}
