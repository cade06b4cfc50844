//! KPI families: what the agent measures, each named once. A new family is
//! a variant here; the compiler then lists every `match` that must handle
//! it (its programs' switch, its availability, its records).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// System-call counts, errors and latency (raw_syscalls).
    Syscalls,
    /// On-CPU time (sched_switch).
    Cpu,
    /// Run-queue latency (sched_wakeup*, sched_switch).
    #[serde(rename = "runq_latency")]
    Runq,
    /// TCP connections and L4 requests (sock and tcp tracepoints).
    Tcp,
    /// Memory use (/proc, cgroups: no program).
    Memory,
    /// Disk space (statvfs: no program).
    Disk,
}

impl Family {
    pub const ALL: [Family; 6] =
        [Family::Syscalls, Family::Cpu, Family::Runq, Family::Tcp, Family::Memory, Family::Disk];

    /// The name in the `kpis` maps of the `status` and `agent` records.
    pub fn name(self) -> &'static str {
        match self {
            Family::Syscalls => "syscalls",
            Family::Cpu => "cpu",
            Family::Runq => "runq_latency",
            Family::Tcp => "tcp",
            Family::Memory => "memory",
            Family::Disk => "disk",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
