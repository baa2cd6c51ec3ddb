//! A cap on how many times a second a log line may be written, for lines a flood of
//! clients or a failing syscall would otherwise repeat thousands of times a second.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Lets at most `per_window` events through per window and counts the ones held back, so
/// the next line written can say how many were not.
///
/// A window starts at the first event after the previous one ended: a quiet throttle lets
/// the next event through at once.
#[derive(Debug)]
pub struct Throttle {
    per_window: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the current window began; `None` before the first event.
    started: Option<Instant>,
    /// Events let through in the current window.
    passed: u32,
    /// Events held back since the last one let through.
    held: u64,
}

impl Throttle {
    pub const fn new(per_window: u32, window: Duration) -> Throttle {
        Throttle { per_window, window, state: Mutex::new(State { started: None, passed: 0, held: 0 }) }
    }

    /// `Some(n)` when this event should be written, `n` being how many were held back since
    /// the last one that was; `None` when it is held back (and counted).
    pub fn ready(&self, now: Instant) -> Option<u64> {
        // Nothing under this lock can panic; a poisoned one still holds valid counts.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.started.is_none_or(|started| now.saturating_duration_since(started) >= self.window) {
            state.started = Some(now);
            state.passed = 0;
        }
        if state.passed < self.per_window {
            state.passed += 1;
            Some(std::mem::take(&mut state.held))
        } else {
            state.held += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_a_second_lets_the_first_through_and_counts_the_rest_into_the_next() {
        let throttle = Throttle::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(throttle.ready(t0), Some(0));
        for i in 1..=19 {
            assert_eq!(throttle.ready(t0 + Duration::from_millis(50 * i)), None);
        }
        assert_eq!(throttle.ready(t0 + Duration::from_secs(1)), Some(19));
        assert_eq!(throttle.ready(t0 + Duration::from_millis(1500)), None);
        assert_eq!(throttle.ready(t0 + Duration::from_secs(5)), Some(1));
    }

    #[test]
    fn several_a_window_pass_before_any_is_held() {
        let throttle = Throttle::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let first: Vec<_> = (0..5).map(|i| throttle.ready(at(i))).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        // The next window: the first line carries the two held back, the others none.
        let next: Vec<_> = (0..4).map(|i| throttle.ready(at(1000 + i))).collect();
        assert_eq!(next, [Some(2), Some(0), Some(0), None]);
        assert_eq!(throttle.ready(at(2500)), Some(1));
    }
}
