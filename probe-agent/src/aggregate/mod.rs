//! Aggregate: turns cumulative kernel counters into per-interval KPIs.

pub mod cpu;
pub mod latency;
pub mod syscalls;
pub mod tcp;

/// Rounds to `digits` decimals, for stable, readable JSON numbers.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// `part / whole` in percent, 0 when `whole` is 0.
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { round(part as f64 * 100.0 / whole as f64, 3) }
}
