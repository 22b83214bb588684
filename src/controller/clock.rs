//! The time expiry is judged by: the wall clock, which tests move forward together with the
//! ARM emulator's (`ArmState::advance_clock`) so that Azure PIM's ends and the operator's agree
//! without anyone sleeping for PIM's 5-minute minimum. Nothing in production moves it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// A clock that reads the wall clock plus an offset (zero unless a test moved it).
#[derive(Debug, Clone, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        let ahead = SignedDuration::from_millis(self.ahead_ms.load(Ordering::Relaxed));
        Timestamp::now().checked_add(ahead).unwrap_or_else(|_| Timestamp::now())
    }

    /// Moves this clock (and every copy of it) forward.
    pub fn advance(&self, by: Duration) {
        self.ahead_ms.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}
