//! ARM's request throttling: token buckets per subscription for reads, writes and deletes.
//! A request that finds its bucket empty gets 429 with `Retry-After` (whole seconds, rounded
//! up, as ARM sends); every response carries the remaining budget in
//! `x-ms-ratelimit-remaining-subscription-{reads,writes,deletes}`.
//!
//! Behind ARM, resource providers throttle on their own ("Throttling happens at two levels …
//! The resource provider applies throttling limits that are tailored to its operations",
//! learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling).
//! Their answer differs: a fixed window, no remaining count before it, and a 429 with code
//! `ResourceRequestsThrottled` and a message naming the limit and the window, as seen for
//! Microsoft.Authorization in Azure/alzlib#168 (2025): "Number of requests for
//! Microsoft.Authorization exceeded the limit of '120' for time interval '00:01:00'. Please try
//! again after '5' seconds." [`ProviderLimit`] models it, off unless configured.

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
    /// Resource providers' own limits (none by default).
    #[serde(default)]
    pub providers: Vec<ProviderLimit>,
}

/// A resource provider's own limit: at most `limit` requests per fixed window of
/// `window_seconds`, counted per `per`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderLimit {
    /// Namespace, e.g. `Microsoft.Authorization` (compared case-insensitively).
    pub provider: String,
    pub limit: u32,
    pub window_seconds: u64,
    #[serde(default)]
    pub per: ProviderScope,
}

impl ProviderLimit {
    /// Microsoft.Authorization's limit as seen in Azure/alzlib#168: 120 requests a minute.
    pub fn authorization() -> Self {
        ProviderLimit {
            provider: "Microsoft.Authorization".into(),
            limit: 120,
            window_seconds: 60,
            per: ProviderScope::SubscriptionAndPrincipal,
        }
    }
}

/// What a provider counts together. Azure: "per principal user ID" and per subscription and
/// region (the request-limits article); the emulator has one region.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum ProviderScope {
    #[default]
    SubscriptionAndPrincipal,
    Subscription,
    Principal,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: true,
            reads: Bucket { burst: 250.0, per_second: 25.0 },
            writes: Bucket { burst: 200.0, per_second: 10.0 },
            deletes: Bucket { burst: 200.0, per_second: 10.0 },
            providers: Vec::new(),
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
            providers: self
                .providers
                .iter()
                .map(|p| ProviderLimit { limit: ((f64::from(p.limit) * factor).round() as u32).max(1), ..p.clone() })
                .collect(),
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

/// Buckets keyed by (subscription, class), and providers' windows.
#[derive(Debug, Default)]
pub struct Throttle {
    pub config: ThrottleConfig,
    levels: HashMap<(String, RequestClass), Level>,
    /// (provider, counted key) → (window start, requests in it).
    windows: HashMap<(String, String), (Instant, u32)>,
}

/// A provider refused a request: its limit, its window and how long until the window ends.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderThrottled {
    pub provider: String,
    pub limit: u32,
    pub window: Duration,
    pub retry_after: Duration,
}

impl ProviderThrottled {
    /// ARM's error code for it.
    pub const CODE: &'static str = "ResourceRequestsThrottled";

    /// The message, worded as Azure words it (Azure/alzlib#168).
    pub fn message(&self) -> String {
        let secs = self.window.as_secs();
        format!(
            "Number of requests for {} exceeded the limit of '{}' for time interval '{:02}:{:02}:{:02}'. Please try again after '{}' seconds.",
            self.provider,
            self.limit,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            self.retry_after.as_secs()
        )
    }
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
        Throttle { config, levels: HashMap::new(), windows: HashMap::new() }
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

    /// Counts one request to `provider` (for `subscription`, by `principal`) against its limit,
    /// if it has one.
    pub fn draw_provider(
        &mut self,
        provider: &str,
        subscription: &str,
        principal: &str,
    ) -> Result<(), ProviderThrottled> {
        if !self.config.enabled {
            return Ok(());
        }
        let Some(limit) = self.config.providers.iter().find(|p| p.provider.eq_ignore_ascii_case(provider)) else {
            return Ok(());
        };
        let counted = match limit.per {
            ProviderScope::SubscriptionAndPrincipal => format!("{}|{}", subscription, principal),
            ProviderScope::Subscription => subscription.to_owned(),
            ProviderScope::Principal => principal.to_owned(),
        }
        .to_ascii_lowercase();
        let window = Duration::from_secs(limit.window_seconds.max(1));
        let now = Instant::now();
        let (start, count) = self.windows.entry((provider.to_ascii_lowercase(), counted)).or_insert((now, 0));
        if now.duration_since(*start) >= window {
            // Fixed windows, back to back from the first request.
            let windows = now.duration_since(*start).as_secs() / window.as_secs();
            *start += window * u32::try_from(windows).unwrap_or(u32::MAX);
            *count = 0;
        }
        if *count >= limit.limit {
            let left = (*start + window).saturating_duration_since(now);
            return Err(ProviderThrottled {
                provider: limit.provider.clone(),
                limit: limit.limit,
                window,
                retry_after: Duration::from_secs(left.as_secs_f64().ceil().max(1.0) as u64),
            });
        }
        *count += 1;
        Ok(())
    }

    /// Forgets all levels (buckets start full again) and windows, e.g. after a config change.
    pub fn reset(&mut self) {
        self.levels.clear();
        self.windows.clear();
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
    fn a_provider_counts_a_fixed_window_and_says_so_as_azure_does() {
        let mut t = Throttle::new(ThrottleConfig {
            providers: vec![ProviderLimit { limit: 2, window_seconds: 60, ..ProviderLimit::authorization() }],
            ..ThrottleConfig::default()
        });
        assert_eq!(t.draw_provider("microsoft.authorization", "s", "p"), Ok(()));
        assert_eq!(t.draw_provider("Microsoft.Authorization", "s", "p"), Ok(()));
        let refused = t.draw_provider("Microsoft.Authorization", "s", "p").expect_err("third in the window");
        assert_eq!(refused.retry_after, Duration::from_secs(60));
        assert_eq!(
            refused.message(),
            "Number of requests for Microsoft.Authorization exceeded the limit of '2' for time interval '00:01:00'. Please try again after '60' seconds."
        );
        // Counted per subscription and principal; other providers are not limited.
        assert_eq!(t.draw_provider("Microsoft.Authorization", "s", "other"), Ok(()));
        assert_eq!(t.draw_provider("Microsoft.Authorization", "t", "p"), Ok(()));
        assert_eq!(t.draw_provider("Microsoft.Databricks", "s", "p"), Ok(()));
    }

    #[test]
    fn scaling_keeps_the_shape() {
        let scaled = ThrottleConfig::default().scaled(0.1);
        assert_eq!(scaled.writes, Bucket { burst: 20.0, per_second: 1.0 });
    }
}
