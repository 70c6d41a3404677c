//! The HAProxy-style health counter (pure, no I/O, no clock): a backend's state changes only
//! after `rise` consecutive successes (Down → Up) or `fall` consecutive failures (Up → Down).
//!
//! As in pingora's `Health` and HAProxy's `check->health`, only results that *disagree* with
//! the current state are counted; one agreeing result resets the streak, so an alternating
//! sequence never flips a backend that needs two or more in a row.

use std::num::NonZeroU32;

use crate::snapshot::HealthState;

/// One backend's rise/fall counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    state: HealthState,
    /// Consecutive results disagreeing with `state`.
    streak: u32,
    rise: NonZeroU32,
    fall: NonZeroU32,
}

impl Hysteresis {
    /// Starts in `state` (the controller starts every backend `Up`, HAProxy's default).
    pub fn new(state: HealthState, rise: NonZeroU32, fall: NonZeroU32) -> Self {
        Hysteresis {
            state,
            streak: 0,
            rise,
            fall,
        }
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    pub fn rise(&self) -> u32 {
        self.rise.get()
    }

    pub fn fall(&self) -> u32 {
        self.fall.get()
    }

    /// Consecutive results so far that disagree with the current state.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Feeds one result; returns the new state when it changed.
    pub fn record(&mut self, success: bool) -> Option<HealthState> {
        let (disagrees, need, next) = match self.state {
            HealthState::Up => (!success, self.fall.get(), HealthState::Down),
            HealthState::Down => (success, self.rise.get(), HealthState::Up),
        };
        if !disagrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak >= need {
            self.state = next;
            self.streak = 0;
            return Some(next);
        }
        None
    }

    /// Forces the state (fail-static restores a last good state); clears the streak.
    pub fn reset(&mut self, state: HealthState) {
        self.state = state;
        self.streak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn falls_after_fall_failures_rises_after_rise_successes() {
        let mut h = Hysteresis::new(HealthState::Up, nz(2), nz(3));
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(HealthState::Down));
        assert_eq!(h.state(), HealthState::Down);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(HealthState::Up));
        assert_eq!(h.state(), HealthState::Up);
    }

    #[test]
    fn an_agreeing_result_resets_the_streak() {
        let mut h = Hysteresis::new(HealthState::Up, nz(2), nz(2));
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.streak(), 0);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(HealthState::Down));
    }

    #[test]
    fn one_and_one_flips_at_once() {
        let mut h = Hysteresis::new(HealthState::Up, nz(1), nz(1));
        assert_eq!(h.record(false), Some(HealthState::Down));
        assert_eq!(h.record(true), Some(HealthState::Up));
    }

    #[test]
    fn alternating_never_flips_with_thresholds_of_two() {
        let mut h = Hysteresis::new(HealthState::Up, nz(2), nz(2));
        for i in 0..100 {
            assert_eq!(h.record(i % 2 == 0), None);
        }
        assert_eq!(h.state(), HealthState::Up);
    }

    proptest! {
        /// Between two flips there are at least `rise` (to Up) or `fall` (to Down) results,
        /// all of them agreeing with the new state: flapping input never flips faster.
        #[test]
        fn never_flips_faster_than_rise_fall(
            rise in 1u32..5,
            fall in 1u32..5,
            results in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let mut h = Hysteresis::new(HealthState::Up, nz(rise), nz(fall));
            let mut run_ok = 0u32;
            let mut run_bad = 0u32;
            for r in results {
                if r { run_ok += 1; run_bad = 0; } else { run_bad += 1; run_ok = 0; }
                match h.record(r) {
                    Some(HealthState::Down) => {
                        prop_assert!(!r);
                        prop_assert!(run_bad >= fall);
                        run_bad = 0;
                    }
                    Some(HealthState::Up) => {
                        prop_assert!(r);
                        prop_assert!(run_ok >= rise);
                        run_ok = 0;
                    }
                    None => {}
                }
            }
        }

        /// Strictly alternating results never flip a backend when rise and fall are ≥ 2.
        #[test]
        fn alternating_is_stable(rise in 2u32..6, fall in 2u32..6, start in any::<bool>(), n in 0usize..300) {
            let mut h = Hysteresis::new(HealthState::Up, nz(rise), nz(fall));
            for i in 0..n {
                prop_assert_eq!(h.record((i % 2 == 0) == start), None);
            }
        }
    }
}
