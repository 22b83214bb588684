//! ARM's request throttling: token buckets per subscription for reads, writes and deletes.
//! A request that finds its bucket empty gets 429 with `Retry-After` (whole seconds, rounded
//! up, as ARM sends); every response carries the remaining budget in
//! `x-ms-ratelimit-remaining-subscription-{reads,writes,deletes}`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One bucket's size and refill rate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    pub burst: f64,
    pub per_second: f64,
}

/// Throttling settings. Azure's defaults: reads 250 + 25/s, writes and deletes 200 + 10/s.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleConfig {
    pub enabled: bool,
    pub reads: Bucket,
    pub writes: Bucket,
    pub deletes: Bucket,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: true,
            reads: Bucket { burst: 250.0, per_second: 25.0 },
            writes: Bucket { burst: 200.0, per_second: 10.0 },
            deletes: Bucket { burst: 200.0, per_second: 10.0 },
        }
    }
}

impl ThrottleConfig {
    /// The same shape with bucket sizes and refill rates multiplied by `factor` (benchmarks
    /// scale throttling down to finish quickly while keeping its shape).
    pub fn scaled(&self, factor: f64) -> Self {
        let scale = |b: Bucket| Bucket { burst: (b.burst * factor).max(1.0), per_second: b.per_second * factor };
        ThrottleConfig {
            enabled: self.enabled,
            reads: scale(self.reads),
            writes: scale(self.writes),
            deletes: scale(self.deletes),
        }
    }
}

/// Which bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestClass {
    Read,
    Write,
    Delete,
}

impl RequestClass {
    pub fn header(self) -> &'static str {
        match self {
            RequestClass::Read => "x-ms-ratelimit-remaining-subscription-reads",
            RequestClass::Write => "x-ms-ratelimit-remaining-subscription-writes",
            RequestClass::Delete => "x-ms-ratelimit-remaining-subscription-deletes",
        }
    }
}

#[derive(Debug)]
struct Level {
    tokens: f64,
    updated: Instant,
}

/// Buckets keyed by (subscription, class).
#[derive(Debug, Default)]
pub struct Throttle {
    pub config: ThrottleConfig,
    levels: HashMap<(String, RequestClass), Level>,
}

/// The outcome of drawing from a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Draw {
    /// Allowed; this many whole requests remain.
    Allowed { remaining: u64 },
    /// Refused; retry after this long.
    Throttled { retry_after: Duration },
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Self {
        Throttle { config, levels: HashMap::new() }
    }

    /// Draws one request for `subscription` from its `class` bucket.
    pub fn draw(&mut self, subscription: &str, class: RequestClass) -> Draw {
        let bucket = match class {
            RequestClass::Read => self.config.reads,
            RequestClass::Write => self.config.writes,
            RequestClass::Delete => self.config.deletes,
        };
        if !self.config.enabled {
            return Draw::Allowed { remaining: bucket.burst as u64 };
        }
        let now = Instant::now();
        let level = self
            .levels
            .entry((subscription.to_ascii_lowercase(), class))
            .or_insert(Level { tokens: bucket.burst, updated: now });
        let elapsed = now.duration_since(level.updated).as_secs_f64();
        level.tokens = (level.tokens + elapsed * bucket.per_second).min(bucket.burst);
        level.updated = now;
        if level.tokens >= 1.0 {
            level.tokens -= 1.0;
            Draw::Allowed { remaining: level.tokens.floor() as u64 }
        } else {
            let missing = 1.0 - level.tokens;
            let seconds = if bucket.per_second > 0.0 { (missing / bucket.per_second).ceil() } else { 60.0 };
            Draw::Throttled { retry_after: Duration::from_secs_f64(seconds.max(1.0)) }
        }
    }

    /// Forgets all levels (buckets start full again), e.g. after a config change.
    pub fn reset(&mut self) {
        self.levels.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_with_retry_after() {
        let mut t = Throttle::new(ThrottleConfig {
            enabled: true,
            reads: Bucket { burst: 3.0, per_second: 0.5 },
            ..ThrottleConfig::default()
        });
        assert_eq!(t.draw("s", RequestClass::Read), Draw::Allowed { remaining: 2 });
        assert_eq!(t.draw("s", RequestClass::Read), Draw::Allowed { remaining: 1 });
        assert_eq!(t.draw("s", RequestClass::Read), Draw::Allowed { remaining: 0 });
        assert!(
            matches!(t.draw("s", RequestClass::Read), Draw::Throttled { retry_after } if retry_after == Duration::from_secs(2))
        );
        // Other subscriptions and classes have their own buckets.
        assert!(matches!(t.draw("other", RequestClass::Read), Draw::Allowed { .. }));
        assert!(matches!(t.draw("s", RequestClass::Write), Draw::Allowed { remaining: 199 }));
    }

    #[test]
    fn scaling_keeps_the_shape() {
        let scaled = ThrottleConfig::default().scaled(0.1);
        assert_eq!(scaled.writes, Bucket { burst: 20.0, per_second: 1.0 });
    }
}
