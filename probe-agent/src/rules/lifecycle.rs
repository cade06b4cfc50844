//! The alert lifecycle of one (rule, scope): ok, investigate or escalate.
//!
//! - A new level must hold `hold_intervals` evaluations in a row to fire.
//! - A level clears (to a lower one) only once the value is below its
//!   threshold by the clear margin: no flapping at the boundary.
//! - While a level other than ok holds, it is repeated every
//!   `repeat_every`, so it cannot silently be ignored.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::AlertSettings;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Investigate,
    Escalate,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Investigate => "investigate",
            Level::Escalate => "escalate",
        }
    }
}

/// What an evaluation produced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transition {
    /// The level changed (fired, escalated, de-escalated or resolved).
    Changed { from: Level, to: Level, since_s: f64 },
    /// The level held and its repeat interval has passed.
    Repeated { level: Level, since_s: f64 },
}

#[derive(Clone, Debug)]
pub struct Lifecycle {
    level: Level,
    pending: Option<(Level, u32)>,
    /// Seconds (on the caller's clock) the level has held since, and last said.
    since_s: f64,
    last_said_s: f64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { level: Level::Ok, pending: None, since_s: 0.0, last_said_s: 0.0 }
    }
}

impl Lifecycle {
    /// The level `value` calls for, given the current level (hysteresis:
    /// staying above `threshold x (1 - margin)` keeps a raised level).
    fn target(&self, value: f64, investigate: f64, escalate: f64, margin: f64) -> Level {
        let raw = if value > escalate {
            Level::Escalate
        } else if value > investigate {
            Level::Investigate
        } else {
            Level::Ok
        };
        if raw >= self.level {
            return raw;
        }
        // Going down: each level left must be cleared by the margin.
        let clear = |t: f64| value < t * (1.0 - margin);
        match self.level {
            Level::Escalate if !clear(escalate) => Level::Escalate,
            Level::Escalate | Level::Investigate if raw == Level::Ok && !clear(investigate) => {
                Level::Investigate
            }
            _ => raw,
        }
    }

    /// Feeds one value observed at `now_s`; returns what to say, if anything.
    pub fn observe(
        &mut self,
        value: f64,
        now_s: f64,
        investigate: f64,
        escalate: f64,
        s: &AlertSettings,
    ) -> Option<Transition> {
        let target = self.target(value, investigate, escalate, s.clear_margin);
        if target == self.level {
            self.pending = None;
            let repeat = s.repeat_every.max(Duration::from_millis(1)).as_secs_f64();
            if self.level != Level::Ok && now_s - self.last_said_s >= repeat - 1e-9 {
                self.last_said_s = now_s;
                return Some(Transition::Repeated { level: self.level, since_s: self.since_s });
            }
            return None;
        }
        let count = match self.pending {
            Some((l, n)) if l == target => n + 1,
            _ => 1,
        };
        if count < s.hold_intervals {
            self.pending = Some((target, count));
            return None;
        }
        let from = self.level;
        self.level = target;
        self.pending = None;
        self.since_s = now_s;
        self.last_said_s = now_s;
        Some(Transition::Changed { from, to: target, since_s: now_s })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hold: u32, margin: f64, repeat_s: u64) -> AlertSettings {
        AlertSettings {
            hold_intervals: hold,
            clear_margin: margin,
            repeat_every: Duration::from_secs(repeat_s),
        }
    }

    fn run(values: &[f64], s: &AlertSettings) -> Vec<(usize, Transition)> {
        let mut l = Lifecycle::default();
        values
            .iter()
            .enumerate()
            .filter_map(|(i, &v)| l.observe(v, i as f64 * 10.0, 500.0, 1000.0, s).map(|t| (i, t)))
            .collect()
    }

    #[test]
    fn a_level_must_hold_before_it_fires() {
        let s = settings(2, 0.1, 1800);
        // One spike does not fire; two in a row do.
        let t = run(&[100.0, 612.0, 100.0, 612.0, 640.0], &s);
        assert_eq!(
            t,
            [(4, Transition::Changed { from: Level::Ok, to: Level::Investigate, since_s: 40.0 })]
        );
    }

    #[test]
    fn investigate_then_escalate_then_resolve() {
        let s = settings(1, 0.1, 1800);
        let t = run(&[600.0, 1200.0, 1200.0, 700.0, 200.0], &s);
        let to: Vec<(usize, Level)> = t
            .iter()
            .map(|(i, t)| match t {
                Transition::Changed { to, .. } => (*i, *to),
                Transition::Repeated { level, .. } => (*i, *level),
            })
            .collect();
        assert_eq!(
            to,
            [
                (0, Level::Investigate),
                (1, Level::Escalate),
                (3, Level::Investigate),
                (4, Level::Ok)
            ]
        );
    }

    #[test]
    fn no_flapping_at_the_boundary() {
        let s = settings(1, 0.1, 1800);
        // Hovering around 500 (between 450 and 500 after firing) keeps the level.
        let t = run(&[510.0, 490.0, 505.0, 460.0, 499.0, 440.0], &s);
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(matches!(t[0], (0, Transition::Changed { to: Level::Investigate, .. })));
        assert!(matches!(t[1], (5, Transition::Changed { to: Level::Ok, .. })));
    }

    #[test]
    fn a_held_level_repeats() {
        let s = settings(1, 0.1, 30); // every 30 s; values every 10 s
        let t = run(&[600.0; 8], &s);
        let repeats: Vec<usize> = t
            .iter()
            .filter(|(_, t)| matches!(t, Transition::Repeated { .. }))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(repeats, [3, 6]);
        assert!(t.iter().all(|(_, t)| match t {
            Transition::Repeated { since_s, .. } => *since_s == 0.0,
            _ => true,
        }));
    }

    #[test]
    fn resolving_also_holds() {
        let s = settings(3, 0.0, 1800);
        let t = run(&[600.0, 600.0, 600.0, 100.0, 100.0, 600.0, 100.0, 100.0, 100.0], &s);
        let changes: Vec<(usize, Level)> = t
            .iter()
            .filter_map(|(i, t)| match t {
                Transition::Changed { to, .. } => Some((*i, *to)),
                _ => None,
            })
            .collect();
        assert_eq!(changes, [(2, Level::Investigate), (8, Level::Ok)]);
    }
}
