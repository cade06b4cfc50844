//! The agent's own health: the `agent` record (its cost, programs, maps,
//! losses, sinks, privileges) and the alerts about itself, so the
//! monitoring is monitored.

use log::warn;

use super::{control::Cost, join::Counts};
use crate::{
    aggregate::{pct, round},
    caps,
    containers::Cgroups,
    probes::MapFill,
    procfs,
    records::{
        AgentRecord, AlertRecord, ConfigState, Header, Kind, KpiStatus, LostRecord, MapRecord,
        OutputState, Place, SelfMemory, VERSION,
    },
    rules::lifecycle::Level,
    sink::Sinks,
};

/// Share of its cgroup's memory limit above which the agent says it is
/// close to being reclaimed from or killed.
const MEMORY_TIGHT_PCT: f64 = 90.0;

/// What the agent knows of itself between intervals.
#[derive(Default)]
pub struct Health {
    /// Whether the agent's memory was near its cgroup's limit last interval.
    memory_tight: bool,
}

/// Everything the agent record says, gathered by the interval.
pub struct Parts<'a> {
    pub header: &'a Header,
    pub kpis: std::collections::BTreeMap<&'static str, KpiStatus>,
    pub config: ConfigState,
    pub cost: Cost,
    pub fill: Vec<MapFill>,
    pub lost: LostRecord,
    pub counts: Counts,
    pub reclaimed: u64,
}

impl Health {
    /// The agent record, and the alerts about the agent this interval.
    pub fn record(
        &mut self,
        p: Parts<'_>,
        out: &mut Sinks,
        cgroups: &Cgroups,
    ) -> (AgentRecord, Vec<AlertRecord>) {
        let l = &p.lost;
        if l.syscall_stats_full
            + l.syscall_start_full
            + l.comm_full
            + l.cpu_time_full
            + l.runq_full
            + l.runq_wake_full
            > 0
        {
            warn!("kernel maps full this interval: {l:?}");
        }
        let maps = p
            .fill
            .into_iter()
            .map(|m| MapRecord {
                name: m.name,
                entries: m.entries,
                max_entries: m.max_entries,
                fill_pct: pct(m.entries, m.max_entries),
            })
            .collect();
        let (dropped_intervals, sinks) = out.report();
        for s in sinks.iter().filter(|s| s.failing || s.dropped_records.total() > 0) {
            // Once per interval, however many records the fault cost.
            let d = &s.dropped_records;
            warn!(
                "output {}: {}{} records dropped this interval (queue full {}, too large {}, \
                 rejected {}, unconfirmed {}), {} queued",
                s.name,
                s.last_error.as_deref().map(|e| format!("failing ({e}); ")).unwrap_or_default(),
                d.total(),
                d.queue_full,
                d.too_large,
                d.rejected,
                d.unconfirmed,
                s.queued_records,
            );
        }
        let output = OutputState {
            dropped_intervals,
            queued_bytes: sinks.iter().map(|s| s.queued_bytes).sum(),
            failing: sinks.iter().any(|s| s.failing),
            sinks,
        };
        let cgroup_memory = self_memory(cgroups, p.counts.self_cgroup.as_deref());
        let mut alerts: Vec<AlertRecord> = p.cost.alerts;
        alerts.extend(self.check_memory(p.header, cgroup_memory.as_ref()));
        let (eff, nnp) = caps::threads();
        let rec = AgentRecord {
            header: p.header.with(Kind::Agent),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            kpis: p.kpis,
            config: p.config,
            cpu_pct: p.cost.cpu_pct,
            rss_bytes: procfs::self_rss_bytes(),
            cgroup_memory,
            bpf_stats_window_s: p.cost.bpf_stats_window_s,
            programs_cpu_pct: p.cost.programs_cpu_pct,
            programs_estimated_cpu_pct: p.cost.programs_estimated_cpu_pct,
            capabilities: caps::names(eff),
            no_new_privs: nnp,
            programs: p.cost.programs,
            maps,
            lost: p.lost,
            shedding: p.cost.shedding,
            output,
            processes_active: p.counts.active,
            processes_reported: p.counts.reported,
            processes_cut_by_top: p.counts.cut_by_top,
            processes_cut_idle: p.counts.cut_idle,
            syscalls_cut: p.counts.syscalls_cut,
            endpoints_cut: p.counts.endpoints_cut,
            routes_cut: p.counts.routes_cut,
            entries_reclaimed: p.reclaimed,
        };
        (rec, alerts)
    }

    /// Says once per interval, and with an alert when it starts and ends,
    /// that the agent's memory is close to its cgroup's limit.
    fn check_memory(&mut self, header: &Header, m: Option<&SelfMemory>) -> Option<AlertRecord> {
        let pct = m.and_then(|m| m.utilization_pct).unwrap_or(0.0);
        let tight = pct >= MEMORY_TIGHT_PCT;
        if tight {
            warn!(
                "probe-agent memory at {pct:.1}% of its cgroup's limit: it keeps measuring, \
                 but the kernel may reclaim from it or kill it; raise the limit"
            );
        }
        if tight == self.memory_tight {
            return None;
        }
        self.memory_tight = tight;
        let (level, previous, how) = if tight {
            (Level::Investigate, Level::Ok, format!("is above {MEMORY_TIGHT_PCT:.0}%: investigate"))
        } else {
            (
                Level::Ok,
                Level::Investigate,
                format!("is back below {MEMORY_TIGHT_PCT:.0}%: resolved"),
            )
        };
        let message = format!("probe-agent memory at {pct:.1}% of its cgroup's limit {how}");
        Some(agent_alert(
            header,
            ("agent-memory", "cgroup_memory.utilization_pct"),
            (level, previous),
            (pct, MEMORY_TIGHT_PCT),
            message,
        ))
    }
}

/// The agent's own cgroup memory: the first of its cgroups that has a
/// limit, else the first read. First the one the kernel charged its CPU to
/// (`from_kernel`, a path in the mounted hierarchy), then those of
/// /proc/self/cgroup (v2, then the v1 memory controller's). In a pod, the
/// container's cgroup namespace makes /proc say `/` (the node's root, no
/// limit), while the node's hierarchy mounted at /sys/fs/cgroup has the
/// container's real path.
fn self_memory(cgroups: &Cgroups, from_kernel: Option<&str>) -> Option<SelfMemory> {
    let mut first = None;
    let paths = from_kernel.map(str::to_string).into_iter();
    for path in paths.chain(procfs::cgroup_paths(std::process::id())) {
        let Some((used, limit)) = cgroups.memory(&path) else { continue };
        let m = SelfMemory {
            cgroup: path,
            used_bytes: used,
            limit_bytes: limit,
            utilization_pct: limit.map(|l| round(used as f64 * 100.0 / l.max(1) as f64, 2)),
        };
        if limit.is_some() {
            return Some(m);
        }
        first.get_or_insert(m);
    }
    first
}

/// An alert about the agent itself (scope `agent`), in the rules' layout:
/// (rule, kpi), (level, previous level), (value, threshold).
pub fn agent_alert(
    header: &Header,
    (rule, kpi): (&str, &str),
    (level, previous): (Level, Level),
    (value, threshold): (f64, f64),
    message: String,
) -> AlertRecord {
    AlertRecord {
        header: Header {
            v: VERSION,
            kind: Kind::Alert,
            ts: header.ts.clone(),
            host: header.host.clone(),
            interval_s: header.interval_s,
        },
        rule: rule.into(),
        kpi: kpi.into(),
        level,
        previous_level: previous,
        repeat: false,
        value,
        threshold,
        scope: Kind::Agent,
        place: Place::Agent {
            pid: std::process::id(),
            latency_sample_every: None,
            probes_off: None,
        },
        since: header.ts.clone(),
        message,
    }
}
