//! CPU KPIs: on-CPU time and run-queue latency per process, cgroup and host.

use std::collections::HashMap;

use probe_common::cpu::SchedCurrent;
use serde::{Deserialize, Serialize};

use super::{
    latency::{Latency, LatencyMs},
    round,
};
use crate::probes::cpu::CpuSnapshot;

/// One process's CPU in an interval.
#[derive(Clone, Debug, Default)]
pub struct ProcCpu {
    pub run_ns: u64,
    /// The cgroup it ran in most this interval.
    pub cgroup: Option<u64>,
    pub runq: Latency,
}

/// One interval of CPU use.
#[derive(Clone, Debug, Default)]
pub struct CpuInterval {
    /// Time between the two reads, on the clock the kernel used (ns): the
    /// denominator of every CPU figure, so busy time and span agree.
    pub span_ns: u64,
    pub procs: HashMap<u32, ProcCpu>,
    pub host_run_ns: u64,
    pub host_runq: Latency,
}

/// Runs in progress at a read: (tgid, ns since switched in).
fn pending(s: &CpuSnapshot) -> impl Iterator<Item = (u32, u64)> + '_ {
    s.current
        .iter()
        .filter(|c: &&SchedCurrent| c.tgid != 0 && c.in_ns != 0 && s.at_ns > c.in_ns)
        .map(|c| (c.tgid, s.at_ns - c.in_ns))
}

/// CPU use between two reads.
///
/// The kernel adds a run when it ends; runs still going at a read are
/// added here as `read time - switch-in time`, and taken back at the next
/// read, when the kernel has either added them in full or they are still
/// going. So a process that never leaves its CPU is counted every interval,
/// and nothing is counted twice.
///
/// The two reads of a snapshot (ended runs, then running ones) are not one
/// instant, so a figure can come out a little low in one interval and high
/// by as much in the next. A negative result is carried in `carry` to the
/// next interval rather than dropped, so totals are exact over time.
pub fn interval(
    prev: &CpuSnapshot,
    cur: &CpuSnapshot,
    carry: &mut HashMap<u32, i128>,
) -> CpuInterval {
    let mut run: HashMap<u32, i128> = HashMap::new();
    // (tgid -> (cgroup, ns)) of the cgroup it ran most in.
    let mut top_cgroup: HashMap<u32, (u64, u64)> = HashMap::new();
    for (key, now) in &cur.time {
        let before = prev.time.get(key).filter(|p| p.run_ns <= now.run_ns).map_or(0, |p| p.run_ns);
        let d = now.run_ns - before;
        *run.entry(key.tgid).or_default() += i128::from(d);
        let best = top_cgroup.entry(key.tgid).or_insert((key.cgroup, d));
        if d > best.1 {
            *best = (key.cgroup, d);
        }
    }
    for (tgid, ns) in pending(cur) {
        *run.entry(tgid).or_default() += i128::from(ns);
    }
    for (tgid, ns) in pending(prev) {
        *run.entry(tgid).or_default() -= i128::from(ns);
    }

    let mut out =
        CpuInterval { span_ns: cur.at_ns.saturating_sub(prev.at_ns), ..CpuInterval::default() };
    for (tgid, c) in carry.drain() {
        *run.entry(tgid).or_default() += c;
    }
    for (tgid, ns) in run {
        if ns < 0 {
            carry.insert(tgid, ns);
        }
        let ns = ns.max(0) as u64;
        out.host_run_ns += ns;
        let p = out.procs.entry(tgid).or_default();
        p.run_ns = ns;
        p.cgroup = top_cgroup.get(&tgid).map(|c| c.0);
    }
    for (key, now) in &cur.runq {
        let before =
            prev.runq.get(key).filter(|p| p.count <= now.count).copied().unwrap_or_default();
        let count = now.count - before.count;
        if count == 0 {
            continue;
        }
        let sum = now.sum_ns.saturating_sub(before.sum_ns);
        let p = out.procs.entry(key.tgid).or_default();
        p.runq.add(key.bucket, count, sum, now.max_ns);
        out.host_runq.add(key.bucket, count, sum, now.max_ns);
    }
    out
}

/// The `cpu` group of process and container records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuGroup {
    /// Busy cores: 1.0 is one core busy for the whole interval.
    pub cores: f64,
    /// Busy time / (CPUs x interval) x 100: the share of the host's capacity.
    pub utilization_pct: f64,
    /// Time from becoming runnable to running.
    pub runq_latency_ms: Option<LatencyMs>,
}

impl CpuGroup {
    /// `run_ns` of CPU time over `span_ns`; at most `cpus` cores (a read
    /// racing a switch can count a few microseconds twice).
    pub fn new(run_ns: u64, runq: &Latency, span_ns: u64, cpus: u32, buckets: bool) -> Self {
        let cores = if span_ns > 0 { run_ns as f64 / span_ns as f64 } else { 0.0 };
        let cores = cores.min(f64::from(cpus.max(1)));
        CpuGroup {
            cores: round(cores, 3),
            utilization_pct: round(cores * 100.0 / f64::from(cpus.max(1)), 2),
            runq_latency_ms: runq.summary_ms(buckets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{
        cpu::{CpuKey, CpuValue, RunqKey, RunqValue},
        hist::bucket_of,
    };

    fn key(tgid: u32, cgroup: u64) -> CpuKey {
        CpuKey { tgid, _pad: 0, cgroup }
    }

    fn snap(at_ns: u64, time: &[(u32, u64, u64)], current: &[(u64, u32)]) -> CpuSnapshot {
        CpuSnapshot {
            at_ns,
            time: time
                .iter()
                .map(|&(t, cg, ns)| (key(t, cg), CpuValue { run_ns: ns, runs: 1 }))
                .collect(),
            current: current
                .iter()
                .map(|&(in_ns, tgid)| SchedCurrent { in_ns, tgid, _pad: 0 })
                .collect(),
            runq: HashMap::new(),
        }
    }

    #[test]
    fn a_process_that_never_leaves_its_cpu_is_counted_each_interval() {
        // Switched in at t=100 on CPU 0 and still running at every read.
        let s0 = snap(1_000, &[], &[(100, 7), (0, 0)]);
        let s1 = snap(2_001_000, &[], &[(100, 7), (0, 0)]);
        let s2 = snap(4_001_000, &[], &[(100, 7), (0, 0)]);
        let mut carry = HashMap::new();
        assert_eq!(interval(&s0, &s1, &mut carry).procs[&7].run_ns, 2_000_000);
        assert_eq!(interval(&s1, &s2, &mut carry).procs[&7].run_ns, 2_000_000);
    }

    #[test]
    fn a_run_ending_between_reads_is_not_counted_twice() {
        // Pending 900 at the first read; the run ends at 1500 (kernel adds 1400).
        let s0 = snap(1_000, &[(7, 1, 0)], &[(100, 7)]);
        let s1 = snap(2_000, &[(7, 1, 1_400)], &[(1_500, 9)]);
        let d = interval(&s0, &s1, &mut HashMap::new());
        assert_eq!(d.procs[&7].run_ns, 500); // 1000..1500
        assert_eq!(d.procs[&9].run_ns, 500); // 1500..2000, still running
        assert_eq!(d.host_run_ns, 1_000);
        assert_eq!(d.procs[&7].cgroup, Some(1));
    }

    #[test]
    fn a_run_ending_during_a_read_is_counted_late_not_lost() {
        // Read at 1000: running since 100 (pending 900). At the next read the
        // run (ended at 1500, 1400 in all) was missed by the map walk and
        // the slot shows another task: 0 now, the rest the interval after.
        let mut carry = HashMap::new();
        let s0 = snap(1_000, &[(7, 1, 0)], &[(100, 7)]);
        let s1 = snap(2_000, &[(7, 1, 0)], &[(1_500, 9)]);
        let s2 = snap(3_000, &[(7, 1, 1_400)], &[(1_500, 9)]);
        let a = interval(&s0, &s1, &mut carry).procs[&7].run_ns;
        let b = interval(&s1, &s2, &mut carry).procs[&7].run_ns;
        assert_eq!((a, b), (0, 500), "900 counted before, 1400 in all");
        assert!(carry.is_empty());
    }

    #[test]
    fn runq_deltas_and_cores() {
        let mut s0 = snap(0, &[], &[]);
        let mut s1 = snap(1_000_000_000, &[(3, 5, 500_000_000)], &[]);
        let b = bucket_of(2_000_000);
        s0.runq.insert(
            RunqKey { tgid: 3, bucket: b },
            RunqValue { count: 1, sum_ns: 2_000_000, max_ns: 2_000_000 },
        );
        s1.runq.insert(
            RunqKey { tgid: 3, bucket: b },
            RunqValue { count: 4, sum_ns: 8_000_000, max_ns: 2_000_000 },
        );
        let d = interval(&s0, &s1, &mut HashMap::new());
        assert_eq!(d.procs[&3].runq.count, 3);
        let g = CpuGroup::new(d.procs[&3].run_ns, &d.procs[&3].runq, d.span_ns, 2, false);
        assert_eq!((g.cores, g.utilization_pct), (0.5, 25.0));
        assert_eq!(g.runq_latency_ms.unwrap().avg, 2.0);
    }
}
