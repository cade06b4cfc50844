//! Infrastructure cost: measured use priced by the configuration, projected
//! over a month, against a monthly budget.

use crate::{aggregate::round, config::Cost, records::HostCost};

/// Hours in a month, for projecting hourly prices (365 x 24 / 12).
const HOURS_PER_MONTH: f64 = 730.0;
const GIB: f64 = (1u64 << 30) as f64;

/// The host's projected cost and its budget.
pub fn host(c: &Cost, busy_cores: f64, used_memory_bytes: f64) -> HostCost {
    let projected = if c.host_usd_month > 0.0 {
        Some(c.host_usd_month)
    } else if c.core_hour_usd > 0.0 || c.gib_hour_usd > 0.0 {
        Some(by_use(c, busy_cores, used_memory_bytes))
    } else {
        None
    };
    let budget = (c.budget_usd_month > 0.0).then_some(c.budget_usd_month);
    HostCost {
        projected_usd_month: projected.map(|p| round(p, 2)),
        budget_usd_month: budget,
        over_budget_pct: projected.zip(budget).map(|(p, b)| round((p - b) / b * 100.0, 2)),
    }
}

/// A container's share: its use priced per unit, or, with a flat host
/// price, half of that price split by CPU share and half by memory share.
pub fn container(
    c: &Cost,
    cores: f64,
    memory_bytes: f64,
    host_cores: f64,
    host_memory_bytes: f64,
) -> Option<f64> {
    let share = |part: f64, whole: f64| if whole > 0.0 { (part / whole).min(1.0) } else { 0.0 };
    let v = if c.host_usd_month > 0.0 {
        c.host_usd_month
            * (0.5 * share(cores, host_cores) + 0.5 * share(memory_bytes, host_memory_bytes))
    } else if c.core_hour_usd > 0.0 || c.gib_hour_usd > 0.0 {
        by_use(c, cores, memory_bytes)
    } else {
        return None;
    };
    Some(round(v, 2))
}

fn by_use(c: &Cost, cores: f64, memory_bytes: f64) -> f64 {
    (cores * c.core_hour_usd + memory_bytes / GIB * c.gib_hour_usd) * HOURS_PER_MONTH
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(host: f64, core: f64, gib: f64, budget: f64) -> Cost {
        Cost {
            host_usd_month: host,
            core_hour_usd: core,
            gib_hour_usd: gib,
            budget_usd_month: budget,
        }
    }

    #[test]
    fn flat_price_against_budget() {
        let h = host(&cost(120.0, 0.0, 0.0, 100.0), 1.0, GIB);
        assert_eq!((h.projected_usd_month, h.over_budget_pct), (Some(120.0), Some(20.0)));
        // Half by CPU (1 of 2 busy cores), half by memory (1 of 4 GiB used).
        let c = container(&cost(120.0, 0.0, 0.0, 0.0), 1.0, GIB, 2.0, 4.0 * GIB);
        assert_eq!(c, Some(45.0));
    }

    #[test]
    fn priced_by_use() {
        // 2 cores at $0.05/h and 4 GiB at $0.01/h for 730 h.
        let h = host(&cost(0.0, 0.05, 0.01, 0.0), 2.0, 4.0 * GIB);
        assert_eq!(h.projected_usd_month, Some(102.2));
        assert_eq!((h.budget_usd_month, h.over_budget_pct), (None, None));
        assert_eq!(container(&cost(0.0, 0.05, 0.01, 0.0), 1.0, 0.0, 2.0, GIB), Some(36.5));
    }

    #[test]
    fn unconfigured_is_null() {
        let h = host(&cost(0.0, 0.0, 0.0, 50.0), 1.0, GIB);
        assert_eq!((h.projected_usd_month, h.over_budget_pct), (None, None));
        assert_eq!(container(&cost(0.0, 0.0, 0.0, 0.0), 1.0, 1.0, 1.0, 1.0), None);
    }
}
