//! The overhead budget: the agent measures its own cost every interval (its
//! process CPU plus its kernel programs') and, when that exceeds the budget
//! (default 1% of the host's CPU), sheds load in steps, one per interval
//! while over budget:
//!
//! 1. time only 1 in 4, then 16, then 64 system calls for latency, while
//!    still counting every call and error exactly;
//! 2. then switch off the optional probes (TCP, run-queue latency), the
//!    costliest first, one per step.
//!
//! It restores in the reverse order, a step at a time, once the cost has
//! stayed under half the budget for two intervals.

/// Sampling steps: time 1 in 4^step calls.
const SAMPLE_STEPS: u32 = 3;
/// Intervals under half the budget before stepping back.
const CALM_INTERVALS: u32 = 2;

#[derive(Clone, Debug)]
pub struct Shedder {
    /// Percent of the host's CPU capacity (0: never shed).
    pub budget_pct: f64,
    /// Optional probes that can be switched off.
    optional: u32,
    step: u32,
    calm: u32,
}

impl Shedder {
    pub fn new(budget_pct: f64, optional: u32) -> Self {
        Shedder { budget_pct, optional, step: 0, calm: 0 }
    }

    /// How far it sheds: 0 is full measurement.
    pub fn step(&self) -> u32 {
        self.step
    }

    /// Time 1 in this many system calls.
    pub fn every(&self) -> u32 {
        1 << (2 * self.step.min(SAMPLE_STEPS))
    }

    /// The kernel's sampling mask for [`Self::every`].
    pub fn mask(&self) -> u32 {
        self.every() - 1
    }

    /// How many optional probes should be off.
    pub fn probes_off(&self) -> u32 {
        self.step.saturating_sub(SAMPLE_STEPS)
    }

    /// Feeds one interval's cost; returns whether the step changed.
    pub fn observe(&mut self, cost_pct: f64) -> bool {
        if self.budget_pct <= 0.0 {
            return false;
        }
        if cost_pct > self.budget_pct {
            self.calm = 0;
            if self.step < SAMPLE_STEPS + self.optional {
                self.step += 1;
                return true;
            }
            return false;
        }
        if cost_pct < self.budget_pct / 2.0 && self.step > 0 {
            self.calm += 1;
            if self.calm >= CALM_INTERVALS {
                self.calm = 0;
                self.step -= 1;
                return true;
            }
        } else {
            self.calm = 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_in_steps_and_restores_when_calm() {
        let mut s = Shedder::new(1.0, 2);
        let mut seen = Vec::new();
        for c in [0.5, 3.0, 2.0, 1.5, 1.2, 1.1, 1.1, 0.9, 0.4, 0.4, 0.4, 0.3, 0.3] {
            s.observe(c);
            seen.push((s.every(), s.probes_off()));
        }
        assert_eq!(
            seen,
            [
                (1, 0),
                (4, 0),
                (16, 0),
                (64, 0),
                (64, 1),
                (64, 2),
                (64, 2),
                (64, 2),
                (64, 2),
                (64, 1),
                (64, 1),
                (64, 0),
                (64, 0),
            ]
        );
        assert_eq!(s.mask(), 63);
    }

    #[test]
    fn zero_budget_never_sheds() {
        let mut s = Shedder::new(0.0, 2);
        assert!(!s.observe(99.0));
        assert_eq!(s.every(), 1);
    }
}
