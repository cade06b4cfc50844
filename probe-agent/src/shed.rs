//! The overhead budget: the agent measures its own cost every interval (its
//! process CPU plus its kernel programs') and, when that exceeds the budget
//! (default 1% of the host's CPU), sheds load in steps: it times only 1 in
//! 4, then 16, then 64 system calls for latency, while still counting every
//! call and error exactly. It restores full timing, a step at a time, once
//! the cost has stayed under half the budget for three intervals.

/// Steps: time 1 in 4^step calls.
const MAX_STEP: u32 = 3;
/// Intervals under half the budget before stepping back.
const CALM_INTERVALS: u32 = 3;

#[derive(Clone, Debug)]
pub struct Shedder {
    /// Percent of the host's CPU capacity (0: never shed).
    pub budget_pct: f64,
    step: u32,
    calm: u32,
}

impl Shedder {
    pub fn new(budget_pct: f64) -> Self {
        Shedder { budget_pct, step: 0, calm: 0 }
    }

    /// Time 1 in this many system calls.
    pub fn every(&self) -> u32 {
        1 << (2 * self.step)
    }

    /// The kernel's sampling mask for [`Self::every`].
    pub fn mask(&self) -> u32 {
        self.every() - 1
    }

    /// Feeds one interval's cost; returns the new `every` when it changes.
    pub fn observe(&mut self, cost_pct: f64) -> Option<u32> {
        if self.budget_pct <= 0.0 {
            return None;
        }
        if cost_pct > self.budget_pct {
            self.calm = 0;
            if self.step < MAX_STEP {
                self.step += 1;
                return Some(self.every());
            }
            return None;
        }
        if cost_pct < self.budget_pct / 2.0 && self.step > 0 {
            self.calm += 1;
            if self.calm >= CALM_INTERVALS {
                self.calm = 0;
                self.step -= 1;
                return Some(self.every());
            }
        } else {
            self.calm = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_in_steps_and_restores_when_calm() {
        let mut s = Shedder::new(1.0);
        let seen: Vec<Option<u32>> = [0.5, 3.0, 2.0, 1.5, 1.2, 0.9, 0.4, 0.4, 0.4, 0.3, 0.3, 0.3]
            .iter()
            .map(|&c| s.observe(c))
            .collect();
        assert_eq!(
            seen,
            [
                None,
                Some(4),
                Some(16),
                Some(64),
                None,
                None,
                None,
                None,
                Some(16),
                None,
                None,
                Some(4)
            ]
        );
        assert_eq!(s.mask(), 3);
    }

    #[test]
    fn zero_budget_never_sheds() {
        let mut s = Shedder::new(0.0);
        assert_eq!(s.observe(99.0), None);
        assert_eq!(s.every(), 1);
    }
}
