//! When a grant is reconciled next: the retry class a reconcile ends with (from the reasons it
//! met), and the per-grant backoff behind [`RetryClass::Soon`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

use crate::api::Reason;
use crate::api::reason::Retry;
use crate::azure::ArmError;

/// How the next reconcile of a grant is scheduled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryClass {
    /// Everything settled: the next resync.
    Resync,
    /// Something may work on its own soon (throttling, outages, replication): back off, at
    /// least as long as Azure asked.
    Soon(Option<Duration>),
    /// Something needs a person (missing role, no permission): retry slowly.
    Slowly,
}

impl RetryClass {
    /// The more urgent of two: `Soon` over `Slowly` over `Resync` (the longest Retry-After).
    pub fn worst(self, other: RetryClass) -> RetryClass {
        match (self, other) {
            (RetryClass::Soon(a), RetryClass::Soon(b)) => RetryClass::Soon(a.max(b)),
            (RetryClass::Soon(a), _) | (_, RetryClass::Soon(a)) => RetryClass::Soon(a),
            (RetryClass::Slowly, _) | (_, RetryClass::Slowly) => RetryClass::Slowly,
            _ => RetryClass::Resync,
        }
    }

    /// The class of a reason (see [`Reason::retry`]).
    pub fn of(reason: Reason, retry_after: Option<Duration>) -> RetryClass {
        match reason.retry() {
            // Changes wake the grant; otherwise the resync looks again.
            Retry::Resync | Retry::OnChange => RetryClass::Resync,
            Retry::Soon => RetryClass::Soon(retry_after),
            Retry::Slowly => RetryClass::Slowly,
        }
    }

    /// The class of an ARM failure.
    pub fn of_arm(e: &ArmError) -> RetryClass {
        RetryClass::of(Reason::of_arm(e), e.retry_after())
    }
}

/// `d` scaled by a random factor in `1 ± share`, so grants spread out instead of moving in step.
pub fn jitter(d: Duration, share: f64) -> Duration {
    let factor = rand::rng().random_range((1.0 - share)..=(1.0 + share));
    d.mul_f64(factor)
}

/// Owns each grant's count of failed attempts in a row and turns a [`RetryClass`] into a delay.
pub struct Backoff {
    resync_interval: Duration,
    slow_retry: Duration,
    attempts: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn new(resync_interval: Duration, slow_retry: Duration) -> Self {
        Backoff { resync_interval, slow_retry, attempts: Mutex::default() }
    }

    /// Exponential backoff with jitter (1 s doubling, at most 5 min); a longer Retry-After wins.
    pub fn next(&self, key: &str, retry_after: Option<Duration>) -> Duration {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            let n = attempts.entry(key.to_owned()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let base = Duration::from_secs(1u64 << attempt.saturating_sub(1).min(9)).min(Duration::from_secs(300));
        jitter(base, 0.2).max(retry_after.unwrap_or_default())
    }

    /// A success: the next failure starts from 1 s again.
    pub fn reset(&self, key: &str) {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    pub fn slow_retry(&self) -> Duration {
        jitter(self.slow_retry, 0.1)
    }

    /// The delay until the grant `key` is reconciled again; a settled grant's backoff resets.
    pub fn after(&self, key: &str, retry: RetryClass) -> Duration {
        match retry {
            RetryClass::Resync => {
                self.reset(key);
                jitter(self.resync_interval, 0.1)
            }
            RetryClass::Soon(after) => self.next(key, after),
            RetryClass::Slowly => self.slow_retry(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn worst_prefers_soon_then_slowly_and_the_longest_retry_after() {
        use RetryClass::*;
        assert_eq!(Resync.worst(Slowly), Slowly);
        assert_eq!(Slowly.worst(Soon(None)), Soon(None));
        assert_eq!(Soon(Some(SECOND)).worst(Soon(Some(5 * SECOND))), Soon(Some(5 * SECOND)));
        assert_eq!(Resync.worst(Resync), Resync);
    }

    #[test]
    fn classes_follow_the_reasons() {
        assert_eq!(RetryClass::of(Reason::Ready, None), RetryClass::Resync);
        assert_eq!(RetryClass::of(Reason::TooManyRequests, Some(SECOND)), RetryClass::Soon(Some(SECOND)));
        assert_eq!(RetryClass::of(Reason::RoleNotFound, Some(SECOND)), RetryClass::Slowly);
        let throttled =
            ArmError::Throttled { code: "TooManyRequests".into(), message: "m".into(), retry_after: Some(SECOND) };
        assert_eq!(RetryClass::of_arm(&throttled), RetryClass::Soon(Some(SECOND)));
    }

    #[test]
    fn backoff_doubles_honours_retry_after_and_resets() {
        let backoff = Backoff::new(600 * SECOND, 300 * SECOND);
        let first = backoff.next("ns/a", None);
        assert!(first >= SECOND.mul_f64(0.8) && first <= SECOND.mul_f64(1.2), "{first:?}");
        let second = backoff.next("ns/a", None);
        assert!(second >= SECOND.mul_f64(1.6), "{second:?}");
        assert!(backoff.next("ns/b", Some(30 * SECOND)) >= 30 * SECOND, "Retry-After wins");
        for _ in 0..20 {
            assert!(backoff.next("ns/a", None) <= 360 * SECOND, "capped at 5 min (+ jitter)");
        }
        let resync = backoff.after("ns/a", RetryClass::Resync);
        assert!(resync >= 540 * SECOND, "{resync:?}");
        let again = backoff.next("ns/a", None);
        assert!(again <= SECOND.mul_f64(1.2), "reset by the settled reconcile: {again:?}");
    }
}
