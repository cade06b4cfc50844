//! Latency distributions over the kernel's log-linear buckets.
//!
//! Each bucket carries its exact count and sum for the interval, so a
//! percentile is reported as the mean of the values in the bucket that holds
//! its rank: never further from the truth than the bucket's width (3.1%, see
//! `probe_common::hist`), and exact when the values in that bucket are equal.

use std::collections::BTreeMap;

use probe_common::hist::{bucket_lower, bucket_upper};
use serde::{Deserialize, Serialize};

use super::round;

/// One interval's latency distribution.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    /// Non-empty buckets: index -> (count, sum of values in ns).
    pub buckets: BTreeMap<u32, (u64, u64)>,
    pub count: u64,
    pub sum_ns: u64,
    /// Largest value, exact or at most one bucket width above the truth.
    pub max_ns: u64,
}

/// The latency summary every KPI record carries, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub avg: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    /// The non-empty buckets, each `[upper_bound_ms, count, sum_ms]`, in
    /// the layout of `probe_common::hist` (so buckets of many hosts merge by
    /// their upper bound; see `probe-agent merge`). Kept when `--histograms`
    /// or the metrics endpoint needs them; written only with `--histograms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<(f64, u64, f64)>>,
}

impl Latency {
    /// Adds `count` values summing to `sum_ns` in `bucket`, the largest of
    /// which is at most `max_ns`.
    pub fn add(&mut self, bucket: u32, count: u64, sum_ns: u64, max_ns: u64) {
        if count == 0 {
            return;
        }
        // Saturating: `merge` adds other hosts' figures, which may be anything.
        let slot = self.buckets.entry(bucket).or_default();
        slot.0 = slot.0.saturating_add(count);
        slot.1 = slot.1.saturating_add(sum_ns);
        self.count = self.count.saturating_add(count);
        self.sum_ns = self.sum_ns.saturating_add(sum_ns);
        self.max_ns = self.max_ns.max(max_ns.min(bucket_upper(bucket)));
    }

    pub fn merge(&mut self, other: &Latency) {
        for (&b, &(count, sum)) in &other.buckets {
            let slot = self.buckets.entry(b).or_default();
            slot.0 += count;
            slot.1 += sum;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The `p`-th percentile (0 < p <= 100) by nearest rank, in ns.
    pub fn percentile_ns(&self, p: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (&b, &(count, sum)) in &self.buckets {
            seen += count;
            if seen >= rank {
                let mean = sum as f64 / count as f64;
                // The mean lies in the bucket unless the kernel's sum was
                // torn by a concurrent read; clamp to be safe.
                let v = mean.clamp(bucket_lower(b) as f64, bucket_upper(b) as f64);
                return Some(v.min(self.max_ns as f64));
            }
        }
        Some(self.max_ns as f64)
    }

    /// avg, p50, p95, p99 and max in milliseconds, and the buckets if
    /// asked; `None` when empty.
    pub fn summary_ms(&self, buckets: bool) -> Option<LatencyMs> {
        if self.count == 0 {
            return None;
        }
        let ms = |ns: f64| round(ns / 1e6, 6);
        Some(LatencyMs {
            avg: ms(self.sum_ns as f64 / self.count as f64),
            p50: ms(self.percentile_ns(50.0)?),
            p95: ms(self.percentile_ns(95.0)?),
            p99: ms(self.percentile_ns(99.0)?),
            max: ms(self.max_ns as f64),
            buckets: buckets.then(|| {
                self.buckets
                    .iter()
                    .map(|(&b, &(count, sum))| (ms(bucket_upper(b) as f64), count, ms(sum as f64)))
                    .collect()
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::hist::bucket_of;

    fn from_values(values: &[u64]) -> Latency {
        let mut l = Latency::default();
        for &v in values {
            l.add(bucket_of(v), 1, v, v);
        }
        l
    }

    fn exact_percentile(values: &[u64], p: f64) -> f64 {
        let mut v = values.to_vec();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank - 1] as f64
    }

    #[test]
    fn equal_values_are_exact() {
        let l = from_values(&[10_062_345; 100]);
        let s = l.summary_ms(false).unwrap();
        assert_eq!((s.avg, s.p50, s.p99, s.max), (10.062345, 10.062345, 10.062345, 10.062345));
    }

    #[test]
    fn percentiles_within_bucket_width_of_truth() {
        // A spread-out distribution: a deterministic pseudo-random walk over
        // six decades, so every bucket width is exercised.
        let mut x = 12345u64;
        let values: Vec<u64> = (0..20_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                100 + (x >> 11) % 100_000_000 / ((x >> 50) % 1000 + 1)
            })
            .collect();
        let l = from_values(&values);
        for p in [1.0, 10.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0] {
            let truth = exact_percentile(&values, p);
            let got = l.percentile_ns(p).unwrap();
            let err = (got - truth).abs() / truth;
            assert!(err <= 1.0 / 32.0, "p{p}: got {got}, truth {truth}, err {err}");
        }
        assert_eq!(l.max_ns, *values.iter().max().unwrap());
        assert_eq!(l.count, values.len() as u64);
    }

    #[test]
    fn merge_equals_union() {
        let a = [5u64, 900, 70_000, 3_000_000];
        let b = [6u64, 1_000, 80_000, 9_000_000, 12];
        let mut m = from_values(&a);
        m.merge(&from_values(&b));
        let all: Vec<u64> = a.iter().chain(b.iter()).copied().collect();
        assert_eq!(m, from_values(&all));
    }

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(Latency::default().summary_ms(false), None);
    }
}
