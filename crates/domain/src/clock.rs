//! The time linkwork goes by: the system clock in production; tests and the demo move
//! a manual one, so a year of a borough's life can pass in minutes with every service
//! agreeing on the date.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};

/// A clock shared by everything that asks it (cheap to clone; clones share the time).
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<Mutex<DateTime<Utc>>>>);

impl Clock {
    pub fn system() -> Self {
        Self(None)
    }

    pub fn manual(at: DateTime<Utc>) -> Self {
        Self(Some(Arc::new(Mutex::new(at))))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            None => Utc::now(),
            Some(at) => *at.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Moves a manual clock; no effect on the system clock.
    pub fn set(&self, to: DateTime<Utc>) {
        if let Some(at) = &self.0 {
            *at.lock().unwrap_or_else(PoisonError::into_inner) = to;
        }
    }

    /// True for a clock that tests or the demo move.
    pub fn is_manual(&self) -> bool {
        self.0.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_of_a_manual_clock_move_together_and_the_system_clock_ignores_set() {
        let start = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let clock = Clock::manual(start);
        let other = clock.clone();
        clock.set(start + chrono::Duration::days(3));
        assert_eq!(other.now(), start + chrono::Duration::days(3));
        let system = Clock::system();
        system.set(start);
        assert!(system.now() > start);
        assert!(!system.is_manual() && clock.is_manual());
    }
}
