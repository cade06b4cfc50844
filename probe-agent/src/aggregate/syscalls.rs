//! System-call KPIs: per-interval deltas of the kernel's cumulative slots,
//! grouped per (process, system call), per process and per host.

use std::collections::{BTreeMap, HashMap};

use probe_common::syscalls::{EAGAIN, SLOT_ERRNO, SLOT_UNTIMED, SyscallKey, SyscallValue};
use serde::{Deserialize, Serialize};

use super::{
    latency::{Latency, LatencyMs},
    pct, round,
};

/// One read of `SYSCALL_STATS`, summed over CPUs.
pub type Snapshot = HashMap<SyscallKey, SyscallValue>;

/// Calls of one interval: latency distribution (which holds the count),
/// errors and errors by errno.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallStats {
    /// Calls, timed or not.
    pub calls: u64,
    /// Latency of the timed calls (all of them unless load is shed).
    pub latency: Latency,
    pub errors: u64,
    pub errnos: BTreeMap<u16, u64>,
}

impl CallStats {
    pub fn count(&self) -> u64 {
        self.calls
    }

    pub fn merge(&mut self, other: &CallStats) {
        self.calls += other.calls;
        self.latency.merge(&other.latency);
        self.errors += other.errors;
        for (&e, &n) in &other.errnos {
            *self.errnos.entry(e).or_default() += n;
        }
    }

    /// The `syscalls` group of process and host records.
    pub fn group(&self, interval_s: f64, buckets: bool) -> SyscallsGroup {
        SyscallsGroup {
            count: self.count(),
            errors: self.errors,
            error_rate_pct: pct(self.errors, self.count()),
            rate_per_s: rate(self.count(), interval_s),
            latency_ms: self.latency.summary_ms(buckets),
        }
    }
}

/// `count / interval_s`, rounded to milli-units.
pub fn rate(count: u64, interval_s: f64) -> f64 {
    if interval_s <= 0.0 { 0.0 } else { round(count as f64 / interval_s, 3) }
}

/// System-call totals as they appear in `process` and `host` records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyscallsGroup {
    pub count: u64,
    pub errors: u64,
    pub error_rate_pct: f64,
    pub rate_per_s: f64,
    pub latency_ms: Option<LatencyMs>,
}

/// What happened between two reads, per (tgid, syscall nr).
///
/// A slot missing from `prev` (new) or smaller than in `prev` (deleted and
/// created again) counts from zero. Slots are cumulative, so nothing that
/// arrives between two reads is lost or counted twice.
pub fn interval(prev: &Snapshot, cur: &Snapshot) -> BTreeMap<(u32, u16), CallStats> {
    let mut out: BTreeMap<(u32, u16), CallStats> = BTreeMap::new();
    for (key, now) in cur {
        let before = prev.get(key).filter(|p| p.count <= now.count).copied().unwrap_or_default();
        let count = now.count - before.count;
        if count == 0 {
            continue;
        }
        let stats = out.entry((key.tgid, key.nr)).or_default();
        if key.slot & SLOT_ERRNO != 0 {
            *stats.errnos.entry(key.slot & !SLOT_ERRNO).or_default() += count;
            continue;
        }
        // EAGAIN is counted in the calls' own slot (see SyscallValue).
        let eagain = now.eagain.saturating_sub(before.eagain);
        if eagain > 0 {
            *stats.errnos.entry(EAGAIN).or_default() += eagain;
        }
        if key.slot == SLOT_UNTIMED {
            stats.calls += count;
            stats.errors += now.errors.saturating_sub(before.errors);
        } else {
            stats.calls += count;
            // Errors live in the latency slot with the calls they belong to,
            // so a record never shows more errors than calls.
            stats.errors += now.errors.saturating_sub(before.errors);
            // The kernel bumps count before sum; a read between the two can
            // see one lagging the other. saturating_sub keeps that harmless.
            let sum = now.sum_ns.saturating_sub(before.sum_ns);
            stats.latency.add(u32::from(key.slot), count, sum, now.max_ns);
        }
    }
    out
}

/// One process's calls in an interval: its total and each system call.
#[derive(Clone, Debug, Default)]
pub struct ProcessCalls {
    pub tgid: u32,
    pub total: CallStats,
    pub calls: Vec<(u16, CallStats)>,
}

/// Groups an interval per process; also returns the host-wide total.
pub fn by_process(calls: BTreeMap<(u32, u16), CallStats>) -> (CallStats, Vec<ProcessCalls>) {
    let mut host = CallStats::default();
    let mut procs: Vec<ProcessCalls> = Vec::new();
    // BTreeMap order: all of one tgid's entries are adjacent.
    for ((tgid, nr), stats) in calls {
        host.merge(&stats);
        if procs.last().is_none_or(|p| p.tgid != tgid) {
            procs.push(ProcessCalls { tgid, ..Default::default() });
        }
        if let Some(p) = procs.last_mut() {
            p.total.merge(&stats);
            p.calls.push((nr, stats));
        }
    }
    (host, procs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::hist::bucket_of;

    fn key(tgid: u32, nr: u16, slot: u16) -> SyscallKey {
        SyscallKey { tgid, nr, slot }
    }

    fn val(count: u64, sum_ns: u64, max_ns: u64) -> SyscallValue {
        SyscallValue { count, errors: 0, sum_ns, max_ns, eagain: 0 }
    }

    fn failed(count: u64, errors: u64, sum_ns: u64, max_ns: u64) -> SyscallValue {
        SyscallValue { count, errors, sum_ns, max_ns, eagain: 0 }
    }

    #[test]
    fn deltas_count_each_call_once() {
        let b = bucket_of(1000) as u16;
        let mut prev = Snapshot::new();
        prev.insert(key(7, 0, b), val(10, 10_000, 1000));
        let mut cur = prev.clone();
        cur.insert(key(7, 0, b), failed(15, 4, 15_000, 1000));
        cur.insert(key(7, 0, SLOT_ERRNO | 2), val(4, 0, 0));
        cur.insert(key(8, 1, b), val(3, 3000, 1000));
        let d = interval(&prev, &cur);
        assert_eq!(d[&(7, 0)].count(), 5);
        assert_eq!(d[&(7, 0)].errors, 4);
        assert_eq!(d[&(7, 0)].errnos[&2], 4);
        assert_eq!(d[&(7, 0)].latency.sum_ns, 5000);
        assert_eq!(d[&(8, 1)].count(), 3);
        // Nothing new: nothing reported.
        assert!(interval(&cur, &cur).is_empty());
    }

    #[test]
    fn untimed_calls_count_without_latency() {
        let b = bucket_of(1000) as u16;
        let mut cur = Snapshot::new();
        cur.insert(key(3, 0, b), failed(4, 1, 4000, 1000));
        cur.insert(key(3, 0, SLOT_UNTIMED), failed(60, 15, 0, 0));
        cur.insert(key(3, 0, SLOT_ERRNO | 2), val(16, 0, 0));
        let d = interval(&Snapshot::new(), &cur);
        let g = d[&(3, 0)].group(1.0, false);
        assert_eq!((g.count, g.errors, g.error_rate_pct), (64, 16, 25.0));
        assert_eq!(d[&(3, 0)].latency.count, 4, "latency from the timed calls only");
        assert_eq!(g.latency_ms.unwrap().avg, 0.001);
    }

    #[test]
    fn eagain_counted_in_the_calls_slot_joins_the_errno_breakdown() {
        let (b, c) = (bucket_of(1000) as u16, bucket_of(90_000) as u16);
        let mut prev = Snapshot::new();
        prev.insert(key(5, 0, b), SyscallValue { eagain: 2, ..failed(10, 2, 10_000, 1000) });
        let mut cur = Snapshot::new();
        cur.insert(key(5, 0, b), SyscallValue { eagain: 9, ..failed(20, 9, 20_000, 1000) });
        cur.insert(key(5, 0, c), SyscallValue { eagain: 1, ..failed(3, 2, 270_000, 90_000) });
        cur.insert(key(5, 0, SLOT_UNTIMED), SyscallValue { eagain: 4, ..failed(8, 4, 0, 0) });
        cur.insert(key(5, 0, SLOT_ERRNO | 4), val(1, 0, 0));
        let d = &interval(&prev, &cur)[&(5, 0)];
        assert_eq!(d.errors, 7 + 2 + 4);
        assert_eq!(d.errnos[&EAGAIN], 7 + 1 + 4);
        assert_eq!(d.errnos[&4], 1, "other errnos keep their own slots");
    }

    #[test]
    fn recreated_slot_counts_from_zero() {
        let b = bucket_of(50) as u16;
        let mut prev = Snapshot::new();
        prev.insert(key(9, 3, b), val(100, 5000, 50));
        let mut cur = Snapshot::new();
        cur.insert(key(9, 3, b), val(2, 100, 50));
        assert_eq!(interval(&prev, &cur)[&(9, 3)].count(), 2);
    }

    #[test]
    fn group_rates_and_error_pct() {
        let b = bucket_of(2_000_000) as u16;
        let mut cur = Snapshot::new();
        cur.insert(key(1, 2, b), failed(200, 3, 400_000_000, 2_000_000));
        cur.insert(key(1, 2, SLOT_ERRNO | 13), val(3, 0, 0));
        let d = interval(&Snapshot::new(), &cur);
        let g = d[&(1, 2)].group(10.0, false);
        assert_eq!((g.count, g.errors, g.error_rate_pct, g.rate_per_s), (200, 3, 1.5, 20.0));
        assert_eq!(g.latency_ms.unwrap().avg, 2.0);
    }

    #[test]
    fn by_process_totals_add_up() {
        let b = bucket_of(100) as u16;
        let mut cur = Snapshot::new();
        cur.insert(key(1, 0, b), val(2, 200, 100));
        cur.insert(key(1, 1, b), val(3, 300, 100));
        cur.insert(key(2, 0, b), val(5, 500, 100));
        let (host, procs) = by_process(interval(&Snapshot::new(), &cur));
        assert_eq!(host.count(), 10);
        assert_eq!(procs.len(), 2);
        assert_eq!((procs[0].tgid, procs[0].total.count(), procs[0].calls.len()), (1, 5, 2));
        assert_eq!((procs[1].tgid, procs[1].total.count()), (2, 5));
    }
}
