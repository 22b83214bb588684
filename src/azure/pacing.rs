//! Client-side pacing from ARM's throttling headers.
//!
//! ARM meters every subscription with token buckets (reads, writes, deletes) and reports what is
//! left in `x-ms-ratelimit-remaining-subscription-{reads,writes,deletes}` on each response. Once
//! a bucket runs dry every further request is a 429, and a client that keeps firing only burns
//! requests (and, on real Azure, can extend the penalty). So the operator spends the burst freely
//! and, when the bucket is nearly empty, sends requests no faster than the bucket refills: the
//! refill rate is learned from the headers themselves (remaining tokens over time, corrected for
//! the requests drawn meanwhile), and a 429's `Retry-After` holds every request of that bucket,
//! not only the one that got it.
//!
//! Behind ARM, resource providers throttle on their own, and differently: a fixed window, no
//! header counting down to it, and a 429 `ResourceRequestsThrottled` whose message names the
//! limit and the window ("… exceeded the limit of '120' for time interval '00:01:00' …",
//! Microsoft.Authorization in Azure/alzlib#168). The first such 429 teaches the pacer the
//! provider's window ([`parse_provider_limit`]); from then on requests to that provider (per
//! subscription) go at most the limit per window, counted over a sliding window (plus a small
//! margin for latency), so no fixed window of the provider's sees more. A 429 to a request sent
//! under the learned limit means something else shares the count (another client of the same
//! identity) or the provider counts differently: the pacer then keeps [`PROVIDER_SHARE_STEP`]
//! further below it, each time, down to [`MIN_PROVIDER_SHARE`].
//!
//! [`PaceBook`] holds the decisions and is pure (time is passed in) so it is unit-tested without
//! a server; [`PacingPolicy`] plugs it into azure_core's pipeline as a per-try policy.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};

/// Which bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BucketClass {
    Reads,
    Writes,
    Deletes,
}

impl BucketClass {
    /// The bucket of an HTTP method.
    pub fn of_method(method: &str) -> Self {
        match method.to_ascii_uppercase().as_str() {
            "GET" | "HEAD" => BucketClass::Reads,
            "DELETE" => BucketClass::Deletes,
            _ => BucketClass::Writes,
        }
    }

    /// The bucket's name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            BucketClass::Reads => "reads",
            BucketClass::Writes => "writes",
            BucketClass::Deletes => "deletes",
        }
    }

    /// The header ARM reports this bucket's remaining budget in.
    pub fn header(self) -> &'static str {
        match self {
            BucketClass::Reads => "x-ms-ratelimit-remaining-subscription-reads",
            BucketClass::Writes => "x-ms-ratelimit-remaining-subscription-writes",
            BucketClass::Deletes => "x-ms-ratelimit-remaining-subscription-deletes",
        }
    }
}

/// A bucket: the subscription (lower case; `tenant` for tenant-level calls) and the class.
pub type BucketKey = (String, BucketClass);

/// The bucket key of a request to `path` with `method`.
pub fn bucket_key(method: &str, path: &str) -> BucketKey {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let subscription = loop {
        match segments.next() {
            Some(s) if s.eq_ignore_ascii_case("subscriptions") => {
                break segments.next().map_or_else(|| "tenant".to_owned(), str::to_ascii_lowercase);
            }
            Some(_) => continue,
            None => break "tenant".to_owned(),
        }
    };
    (subscription, BucketClass::of_method(method))
}

/// A resource provider, per subscription: (subscription or `tenant`, provider namespace), lower case.
pub type ProviderKey = (String, String);

/// The provider a request to `path` is served by: the namespace after the last `/providers/`
/// (`…/storageAccounts/x/providers/Microsoft.Authorization/roleAssignments/n` is
/// Microsoft.Authorization's). `None` for paths with no provider (e.g. `/subscriptions`).
pub fn provider_key(path: &str) -> Option<ProviderKey> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let at = segments.iter().rposition(|s| s.eq_ignore_ascii_case("providers"))?;
    let provider = segments.get(at + 1)?.to_ascii_lowercase();
    Some((bucket_key("GET", path).0, provider))
}

/// A provider's limit, as its 429 stated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderWindow {
    pub limit: u32,
    pub window: Duration,
}

/// ARM's code for a resource provider's own throttling.
pub const PROVIDER_THROTTLED: &str = "ResourceRequestsThrottled";

/// Reads the limit and window out of a `ResourceRequestsThrottled` message: "Number of requests
/// for X exceeded the limit of '120' for time interval '00:01:00'. …". `None` when it does not
/// say (or says nonsense: a zero limit or window, a window past a day).
pub fn parse_provider_limit(message: &str) -> Option<ProviderWindow> {
    let quoted_after = |marker: &str| {
        let start = message.find(marker)? + marker.len();
        let rest = &message[start..];
        Some(&rest[..rest.find('\'')?])
    };
    let limit: u32 = quoted_after("limit of '")?.trim().parse().ok().filter(|l| *l > 0)?;
    let interval = quoted_after("time interval '")?;
    let mut seconds = 0u64;
    for part in interval.trim().split(':') {
        seconds = seconds.checked_mul(60)?.checked_add(part.parse::<u64>().ok()?)?;
    }
    (seconds > 0 && seconds <= 86_400).then(|| ProviderWindow { limit, window: Duration::from_secs(seconds) })
}

/// How much of a provider's stated limit the pacer gives up after each 429 to a request it sent
/// within that limit (at most once per window). It starts at the whole limit: the requests on
/// their way when the limit was learned are counted with the rest, and the floor a benchmark
/// measures against is the whole limit too.
pub const PROVIDER_SHARE_STEP: f64 = 0.05;
/// The least share of a provider's limit the pacer keeps to, however often it is surprised.
pub const MIN_PROVIDER_SHARE: f64 = 0.5;

/// Extra wait past a full window before its oldest send's slot is reused: the provider counts
/// arrivals in windows of its own clock, and a request sent on the boundary may arrive early
/// relative to it (latency varies). A fiftieth of the window, between 50 ms and 1 s.
fn provider_margin(window: Duration) -> Duration {
    (window / 50).clamp(Duration::from_millis(50), Duration::from_secs(1))
}
/// How long sends to a provider are remembered before its window is known.
const PROVIDER_MEMORY: Duration = Duration::from_secs(600);

/// What the pacer knows about one provider.
#[derive(Debug, Default)]
struct ProviderState {
    learned: Option<ProviderWindow>,
    /// Send times (reserved slots), oldest first.
    sent: VecDeque<Instant>,
    /// Nothing is sent before this (a 429's Retry-After).
    blocked_until: Option<Instant>,
    /// The send slot of the last request that had to wait for the learned limit.
    last_held: Option<Instant>,
    /// When the current busy spell began ([`PaceBook::provider_busy`]).
    busy_since: Option<Instant>,
    /// How far below the learned limit the pacer keeps ([`PROVIDER_SHARE_STEP`]), and when it
    /// last went further.
    shortfall: f64,
    lowered_at: Option<Instant>,
}

impl ProviderState {
    fn busy(&self, now: Instant) -> Option<ProviderWindow> {
        let learned = self.learned?;
        let blocked = self.blocked_until.is_some_and(|until| until > now);
        let held = self.last_held.is_some_and(|slot| now < slot + learned.window);
        (blocked || held).then_some(learned)
    }

    /// Marks the provider busy from `now` on, starting a spell unless one runs.
    fn stay_busy(&mut self, now: Instant) {
        if self.busy(now).is_none() {
            self.busy_since = Some(now);
        }
    }
}

/// A provider whose budget is spent: its learned limit, and since when it has been spent
/// without a break (a cache entry that was fresh then cannot have been changed by our writes
/// since, which are what the budget goes to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderBusy {
    pub limit: ProviderWindow,
    pub since: Instant,
}

/// Below this many estimated tokens the bucket is paced; above it requests go at once.
const PACE_BELOW: f64 = 1.0;
/// Shortest window over which a refill rate is measured (the headers count whole tokens).
const MIN_SAMPLE_WINDOW: Duration = Duration::from_secs(2);
/// When nothing was learned yet: assume a slow bucket rather than hammer an empty one.
const UNKNOWN_RATE_WAIT: Duration = Duration::from_secs(1);

/// Longest a 429's `Retry-After` holds a bucket. Azure asks for seconds to a few minutes; a
/// larger value (a proxy's, a bug's, or hostile) is capped rather than obeyed for hours — or
/// overflowing `Instant + Duration`.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Retry-After assumed for a 429 without a usable one.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// `x-ms-ratelimit-remaining-*`: ARM sends a count of whole requests. Anything else (negative,
/// fractional, `inf`, `NaN`, absurdly large, junk) is ignored, as if the header were absent —
/// TLS-inspecting proxies sit on this path and are not trusted to keep it intact.
pub fn parse_remaining(value: &str) -> Option<f64> {
    value.trim().parse::<u32>().ok().map(f64::from)
}

/// A 429's `Retry-After` in whole seconds (ARM's form), capped at [`MAX_RETRY_AFTER`]; missing
/// or unparsable means [`DEFAULT_RETRY_AFTER`].
pub fn parse_retry_after(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, |secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Seconds as a Duration for waits computed from learned rates: never negative, NaN or huge.
fn wait_secs(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.clamp(0.0, MAX_RETRY_AFTER.as_secs_f64())).unwrap_or(UNKNOWN_RATE_WAIT)
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    remaining: f64,
    drawn_since: f64,
}

/// What the pacer knows about one bucket.
#[derive(Debug, Clone)]
struct BucketState {
    /// Last reported remaining tokens, and when.
    remaining: f64,
    at: Instant,
    /// Largest remaining ever reported (≈ the burst size): refill stops there.
    largest: f64,
    /// Learned refill, tokens per second.
    rate: Option<f64>,
    /// Start of the current rate measurement.
    sample: Option<Sample>,
    /// Requests sent whose responses have not arrived (each will draw a token).
    in_flight: f64,
    /// Nothing is sent before this (a 429's Retry-After).
    blocked_until: Option<Instant>,
    /// When paced, the next free send slot.
    next_slot: Option<Instant>,
}

/// The pacer's decision for one request; `Go` and `After` count it in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Send now.
    Go,
    /// Send after this long: the slot is reserved, do not ask again (only a 429 arriving
    /// meanwhile holds it longer, see [`PaceBook::held`]).
    After(Duration),
    /// Nothing is known of the bucket yet and the first request to it is on its way: ask again
    /// after this long (its answer tells how much budget there is). Not counted in flight.
    Probing(Duration),
}

/// Pacing state for every bucket one client draws from.
#[derive(Debug, Default)]
pub struct PaceBook {
    buckets: HashMap<BucketKey, BucketState>,
    /// Buckets nothing is known of yet, whose first request is on its way (since when).
    probes: HashMap<BucketKey, Instant>,
    providers: HashMap<ProviderKey, ProviderState>,
}

/// How often a request waiting for a bucket's first answer asks again.
const PROBE_POLL: Duration = Duration::from_millis(20);
/// A first request unanswered this long no longer holds the others back.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl BucketState {
    fn estimate(&self, now: Instant) -> f64 {
        let refill = self.rate.unwrap_or(0.0) * now.saturating_duration_since(self.at).as_secs_f64();
        (self.remaining + refill).min(self.largest) - self.in_flight
    }

    /// Nearly empty: one request per refilled token, in order of asking. Reserves the slot.
    fn next_paced_slot(&mut self, now: Instant, estimate: f64) -> Instant {
        let spacing = self.rate.map_or(UNKNOWN_RATE_WAIT, |r| wait_secs(1.0 / r.max(0.01)));
        let earliest = match self.rate {
            Some(rate) => now + wait_secs((PACE_BELOW - estimate) / rate.max(0.01)),
            None => now + UNKNOWN_RATE_WAIT,
        };
        let slot = self.next_slot.map_or(earliest, |s| s.max(earliest));
        self.next_slot = Some(slot + spacing);
        slot
    }
}

impl PaceBook {
    /// Asks whether a request to `key` may go at `now`. `Go` counts it in flight; the caller
    /// must report its outcome with [`PaceBook::observe`] (or [`PaceBook::abandon`]).
    pub fn ask(&mut self, key: &BucketKey, now: Instant) -> Pace {
        let asked = now;
        let Some(state) = self.buckets.get_mut(key) else {
            // Nothing known yet: one request finds out (its response reports the budget), the
            // rest wait for that answer instead of all drawing on a bucket that may be empty.
            return match self.probes.get(key) {
                Some(since) if now.saturating_duration_since(*since) < PROBE_TIMEOUT => Pace::Probing(PROBE_POLL),
                _ => {
                    self.probes.insert(key.clone(), now);
                    Pace::Go
                }
            };
        };
        let held = state.blocked_until.filter(|until| *until > now);
        if held.is_none() {
            state.blocked_until = None;
        }
        let now = held.unwrap_or(now);
        let estimate = state.estimate(now);
        if estimate >= PACE_BELOW {
            state.next_slot = None;
            state.in_flight += 1.0;
            return if now > asked { Pace::After(now - asked) } else { Pace::Go };
        }
        let slot = state.next_paced_slot(now, estimate);
        state.in_flight += 1.0;
        Pace::After(slot.saturating_duration_since(asked))
    }

    /// For a request already counted in flight that a 429 held ([`PaceBook::held`]): how much
    /// longer it waits for a paced slot. Everything a hold kept back is released at the same
    /// instant; without this it would all go at once into a bucket that has just refilled a
    /// token or two, and mostly draw 429s again.
    pub fn reslot(&mut self, key: &BucketKey, now: Instant) -> Option<Duration> {
        let state = self.buckets.get_mut(key)?;
        // It is among those in flight already; the estimate is of what is left for it.
        let estimate = state.estimate(now) + 1.0;
        if estimate >= PACE_BELOW {
            return None;
        }
        Some(state.next_paced_slot(now, estimate).saturating_duration_since(now))
    }

    /// How much longer a 429 holds `key`'s bucket, if it does.
    pub fn held(&self, key: &BucketKey, now: Instant) -> Option<Duration> {
        self.buckets.get(key)?.blocked_until.filter(|until| *until > now).map(|until| until - now)
    }

    /// Records a response: the remaining budget ARM reported (if it did) and whether it was
    /// throttled with a `Retry-After`.
    pub fn observe(
        &mut self,
        key: &BucketKey,
        now: Instant,
        remaining: Option<f64>,
        throttled: Option<Duration>,
        counted_in_flight: bool,
    ) {
        self.probes.remove(key);
        let state = self.buckets.entry(key.clone()).or_insert_with(|| BucketState {
            remaining: remaining.unwrap_or(0.0),
            at: now,
            largest: remaining.unwrap_or(0.0),
            rate: None,
            sample: None,
            in_flight: 0.0,
            blocked_until: None,
            next_slot: None,
        });
        if counted_in_flight {
            state.in_flight = (state.in_flight - 1.0).max(0.0);
        }
        if let Some(retry_after) = throttled {
            // The bucket is empty: hold every request of it, not only this one.
            let until = now + retry_after.min(MAX_RETRY_AFTER);
            state.blocked_until = Some(state.blocked_until.map_or(until, |b| b.max(until)));
            state.remaining = 0.0;
            state.at = now;
            state.next_slot = None;
            return;
        }
        let Some(remaining) = remaining else { return };
        state.largest = state.largest.max(remaining);
        // Learn the refill rate: tokens reported now − then, plus those drawn in between.
        match &mut state.sample {
            Some(sample) => {
                sample.drawn_since += 1.0;
                let window = now.saturating_duration_since(sample.at);
                if window >= MIN_SAMPLE_WINDOW {
                    // A bucket at its cap refills nothing; such windows say nothing about the rate.
                    let below_cap = sample.remaining < state.largest * 0.9 && remaining < state.largest * 0.9;
                    let refilled = remaining - sample.remaining + sample.drawn_since;
                    if below_cap && refilled > 0.0 {
                        let measured = refilled / window.as_secs_f64();
                        state.rate = Some(state.rate.map_or(measured, |r| 0.5 * r + 0.5 * measured));
                    }
                    state.sample = Some(Sample { at: now, remaining, drawn_since: 0.0 });
                }
            }
            None => state.sample = Some(Sample { at: now, remaining, drawn_since: 0.0 }),
        }
        state.remaining = remaining;
        state.at = now;
    }

    /// Reserves a send slot with the request's provider and says how long to wait for it: none
    /// until the provider's limit is known, then at most its share of it in any span
    /// of its window. Slots are handed out in order of asking.
    pub fn ask_provider(&mut self, key: &ProviderKey, now: Instant) -> Duration {
        let state = self.providers.entry(key.clone()).or_default();
        let horizon = state.learned.map_or(PROVIDER_MEMORY, |l| l.window);
        while state.sent.front().is_some_and(|t| now.saturating_duration_since(*t) >= horizon) {
            state.sent.pop_front();
        }
        let mut slot = state.blocked_until.filter(|b| *b > now).unwrap_or(now);
        if let Some(last) = state.sent.back() {
            slot = slot.max(*last);
        }
        if let Some(learned) = state.learned {
            // `shortfall` is kept within 1 − MIN_PROVIDER_SHARE where it grows.
            let cap = ((f64::from(learned.limit) * (1.0 - state.shortfall)).floor() as usize).max(1);
            if state.sent.len() >= cap {
                let reusable = state.sent[state.sent.len() - cap] + learned.window + provider_margin(learned.window);
                slot = slot.max(reusable);
            }
        }
        if slot > now && state.learned.is_some() {
            state.stay_busy(now);
            state.last_held = Some(slot);
        }
        state.sent.push_back(slot);
        slot.saturating_duration_since(now)
    }

    /// How much longer a provider's 429 holds its requests, if it does.
    pub fn provider_held(&self, key: &ProviderKey, now: Instant) -> Option<Duration> {
        self.providers.get(key)?.blocked_until.filter(|until| *until > now).map(|until| until - now)
    }

    /// A provider answered 429 `ResourceRequestsThrottled`: hold its requests for `retry_after`
    /// and, when the message stated it, keep to its limit from now on. `sent_within`: the request
    /// was sent under a learned limit, so the count was not ours alone — keep further below it
    /// (once per window: the requests in flight with it were sent on the same count).
    pub fn provider_throttled(
        &mut self,
        key: &ProviderKey,
        now: Instant,
        stated: Option<ProviderWindow>,
        retry_after: Duration,
        sent_within: bool,
    ) {
        let state = self.providers.entry(key.clone()).or_default();
        if let Some(learned) = state.learned.filter(|_| sent_within)
            && state.lowered_at.is_none_or(|at| now >= at + learned.window)
        {
            state.shortfall = (state.shortfall + PROVIDER_SHARE_STEP).min(1.0 - MIN_PROVIDER_SHARE);
            state.lowered_at = Some(now);
        }
        if stated.is_some() {
            state.learned = stated;
        }
        state.stay_busy(now);
        let until = now + retry_after.min(MAX_RETRY_AFTER);
        state.blocked_until = Some(state.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// The provider's limit as learned, if any.
    pub fn provider_limit(&self, key: &ProviderKey) -> Option<ProviderWindow> {
        self.providers.get(key).and_then(|p| p.learned)
    }

    /// The provider's learned limit while its budget is spent: a 429's Retry-After runs, or a
    /// request had to wait for the limit within the last window (the pacer sends a window's
    /// allowance at once and then nothing until the next, so whether anything waits right now
    /// flickers; at each window's start nothing does). `None` when no limit is learned.
    pub fn provider_busy(&self, key: &ProviderKey, now: Instant) -> Option<ProviderBusy> {
        let state = self.providers.get(key)?;
        let limit = state.busy(now)?;
        Some(ProviderBusy { limit, since: state.busy_since.unwrap_or(now) })
    }

    /// A bucket's first request ended without a response: the next request probes instead.
    pub fn forget_probe(&mut self, key: &BucketKey) {
        self.probes.remove(key);
    }

    /// A request counted in flight ended without a response (transport error).
    pub fn abandon(&mut self, key: &BucketKey) {
        if let Some(state) = self.buckets.get_mut(key) {
            state.in_flight = (state.in_flight - 1.0).max(0.0);
        }
    }

    /// The learned refill rate of a bucket (tokens per second), if any.
    pub fn rate(&self, key: &BucketKey) -> Option<f64> {
        self.buckets.get(key).and_then(|s| s.rate)
    }
}

/// Told how long each request the pacer held waited (the operator exports it as metrics).
pub trait PacingObserver: Send + Sync + std::fmt::Debug {
    fn held(&self, class: BucketClass, waited: Duration);
}

/// azure_core per-try policy applying a shared [`PaceBook`].
#[derive(Debug, Default, Clone)]
pub struct PacingPolicy {
    book: Arc<Mutex<PaceBook>>,
    observer: Option<Arc<dyn PacingObserver>>,
}

impl PacingPolicy {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pacer that reports each hold to `observer`.
    pub fn observed_by(observer: Option<Arc<dyn PacingObserver>>) -> Self {
        PacingPolicy { observer, ..Self::default() }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, PaceBook> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read-only view of this pacer's book, for callers that decide whether a request is
    /// worth its budget (see [`PacerView::busy`]).
    pub fn view(&self) -> PacerView {
        PacerView { book: self.book.clone() }
    }
}

/// What a [`PacingPolicy`] knows, for the code above the pipeline: background reads (drift
/// checks, cache refreshes) ask it before spending a provider's budget that writes need.
#[derive(Debug, Clone)]
pub struct PacerView {
    book: Arc<Mutex<PaceBook>>,
}

impl PacerView {
    /// The limit of the provider serving `path`, while its budget is spent
    /// ([`PaceBook::provider_busy`]), with the provider it is.
    pub fn busy(&self, path: &str) -> Option<(ProviderKey, ProviderBusy)> {
        let key = provider_key(path)?;
        let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let busy = book.provider_busy(&key, Instant::now())?;
        Some((key, busy))
    }
}

#[async_trait::async_trait]
impl Policy for PacingPolicy {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let key = bucket_key(request.method().as_ref(), request.url().path());
        let provider = provider_key(request.url().path());
        let (first, rest) = crate::azure::client::next_policy("PacingPolicy", next)?;
        let asked = Instant::now();
        let mut waited = false;
        let decision = loop {
            let decision = self.book().ask(&key, Instant::now());
            match decision {
                Pace::Probing(poll) => {
                    waited = true;
                    tokio::time::sleep(poll).await;
                }
                _ => break decision,
            }
        };
        let counted = self.book().buckets.contains_key(&key);
        if let Pace::After(wait) = decision {
            waited = true;
            tokio::time::sleep(wait).await;
        }
        // A 429 that arrived while this request waited holds it too; when the hold ends it
        // takes a paced slot like the others the hold kept back.
        loop {
            let held = self.book().held(&key, Instant::now());
            let Some(wait) = held else { break };
            waited = true;
            tokio::time::sleep(wait).await;
            let slot = self.book().reslot(&key, Instant::now());
            if let Some(slot) = slot {
                tokio::time::sleep(slot).await;
            }
        }
        // The provider's own limit, once a 429 has stated it.
        if let Some(provider) = &provider {
            loop {
                let wait = self.book().ask_provider(provider, Instant::now());
                if !wait.is_zero() {
                    waited = true;
                    tokio::time::sleep(wait).await;
                }
                let held = self.book().provider_held(provider, Instant::now());
                let Some(hold) = held else { break };
                waited = true;
                tokio::time::sleep(hold).await;
            }
        }
        // Whether this request goes under a learned provider limit (a 429 to it then says the
        // count is not ours alone).
        let within_limit = provider.as_ref().is_some_and(|p| self.book().provider_limit(p).is_some());
        if waited && let Some(observer) = &self.observer {
            observer.held(key.1, asked.elapsed());
        }
        let result = first.send(ctx, request, rest).await;
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                if counted {
                    self.book().abandon(&key);
                } else {
                    self.book().forget_probe(&key);
                }
                return Err(e);
            }
        };
        let (remaining, retry_after) = {
            let header = |name: &'static str| response.headers().get_optional_str(&name.into()).map(str::to_owned);
            (
                header(key.1.header()).as_deref().and_then(parse_remaining),
                parse_retry_after(header("retry-after").as_deref()),
            )
        };
        if u16::from(response.status()) != 429 {
            self.book().observe(&key, Instant::now(), remaining, None, counted);
            return Ok(response);
        }
        // A 429: ARM's bucket, or the provider behind it (its body says which).
        let (status, headers, body) = response.deconstruct();
        let bytes = match body.collect().await {
            Ok(bytes) => bytes,
            Err(e) => {
                self.book().observe(&key, Instant::now(), remaining, Some(retry_after), counted);
                return Err(e);
            }
        };
        let error = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        let code = error.as_ref().and_then(|e| e.pointer("/error/code")).and_then(serde_json::Value::as_str);
        match (code, &provider) {
            (Some(PROVIDER_THROTTLED), Some(provider)) => {
                let message =
                    error.as_ref().and_then(|e| e.pointer("/error/message")).and_then(serde_json::Value::as_str);
                let stated = message.and_then(parse_provider_limit);
                let mut book = self.book();
                // ARM let it through: its bucket is not empty.
                book.observe(&key, Instant::now(), remaining, None, counted);
                book.provider_throttled(provider, Instant::now(), stated, retry_after, within_limit);
            }
            _ => self.book().observe(&key, Instant::now(), remaining, Some(retry_after), counted),
        }
        Ok(azure_core::http::AsyncRawResponse::from_bytes(status, headers, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BucketKey {
        ("sub".into(), BucketClass::Writes)
    }

    #[test]
    fn hostile_rate_limit_headers_are_ignored_or_capped_never_a_panic() {
        for junk in ["-inf", "inf", "-1e300", "1e300", "NaN", "-1", "2.5", "", "  ", "99999999999", "0x10", "１２"] {
            assert_eq!(parse_remaining(junk), None, "{junk:?}");
        }
        assert_eq!(parse_remaining(" 11999 "), Some(11999.0));
        assert_eq!(parse_retry_after(Some("18446744073709551615")), MAX_RETRY_AFTER);
        assert_eq!(parse_retry_after(Some("99999999999999999999999")), DEFAULT_RETRY_AFTER);
        assert_eq!(parse_retry_after(Some("-5")), DEFAULT_RETRY_AFTER);
        assert_eq!(parse_retry_after(None), DEFAULT_RETRY_AFTER);
        assert_eq!(parse_retry_after(Some("7")), Duration::from_secs(7));
        // Whatever reaches the book stays finite: a huge hold is capped, junk rates never panic.
        let mut book = PaceBook::default();
        let now = Instant::now();
        book.observe(&key(), now, Some(5.0), None, false);
        book.observe(&key(), now, None, Some(Duration::MAX), false);
        assert_eq!(book.held(&key(), now), Some(MAX_RETRY_AFTER));
        let later = now + Duration::from_secs(400);
        book.observe(&key(), later, Some(0.0), None, false);
        book.observe(&key(), later + Duration::from_secs(3), Some(f64::from(u32::MAX)), None, false);
        assert!(matches!(book.ask(&key(), later + Duration::from_secs(4)), Pace::Go | Pace::After(_)));
    }

    #[test]
    fn keys_come_from_the_path_and_method() {
        assert_eq!(
            bucket_key("PUT", "/subscriptions/ABC/resourceGroups/rg/providers/x"),
            ("abc".into(), BucketClass::Writes)
        );
        assert_eq!(bucket_key("GET", "/providers/Microsoft.Authorization/roleDefinitions").0, "tenant");
        assert_eq!(bucket_key("DELETE", "/subscriptions/").1, BucketClass::Deletes);
    }

    #[test]
    fn a_full_bucket_is_spent_freely() {
        let mut book = PaceBook::default();
        let t0 = Instant::now();
        assert_eq!(book.ask(&key(), t0), Pace::Go);
        book.observe(&key(), t0, Some(199.0), None, false);
        for _ in 0..150 {
            assert_eq!(book.ask(&key(), t0), Pace::Go);
        }
    }

    #[test]
    fn in_flight_requests_count_against_the_budget() {
        let mut book = PaceBook::default();
        let t0 = Instant::now();
        book.observe(&key(), t0, Some(3.0), None, false);
        assert_eq!(book.ask(&key(), t0), Pace::Go);
        assert_eq!(book.ask(&key(), t0), Pace::Go);
        assert_eq!(book.ask(&key(), t0), Pace::Go);
        assert!(matches!(book.ask(&key(), t0), Pace::After(_)));
    }

    #[test]
    fn a_429_holds_the_whole_bucket_for_retry_after() {
        let mut book = PaceBook::default();
        let t0 = Instant::now();
        book.observe(&key(), t0, Some(100.0), None, false);
        book.observe(&key(), t0, None, Some(Duration::from_secs(3)), false);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(book.held(&key(), later), Some(Duration::from_secs(2)));
        assert!(matches!(book.ask(&key(), later), Pace::After(d) if d >= Duration::from_secs(2)));
        // Other buckets are not held.
        assert_eq!(book.ask(&("sub".into(), BucketClass::Reads), t0), Pace::Go);
    }

    /// The first request to an unknown bucket finds out; the others wait for its answer.
    #[test]
    fn an_unknown_bucket_is_probed_by_one_request() {
        let mut book = PaceBook::default();
        let t0 = Instant::now();
        assert_eq!(book.ask(&key(), t0), Pace::Go);
        assert_eq!(book.ask(&key(), t0), Pace::Probing(PROBE_POLL));
        // A probe that never answers stops holding the others back.
        assert_eq!(book.ask(&key(), t0 + PROBE_TIMEOUT), Pace::Go);
        // Its answer tells the budget: the rest go.
        book.observe(&key(), t0, Some(3.0), None, false);
        assert_eq!(book.ask(&key(), t0), Pace::Go);
        // A first request lost to a transport error lets the next one probe.
        let other = ("other".to_owned(), BucketClass::Reads);
        assert_eq!(book.ask(&other, t0), Pace::Go);
        book.forget_probe(&other);
        assert_eq!(book.ask(&other, t0), Pace::Go);
    }

    /// Requests a hold kept back leave it one per refilled token, not all at once.
    #[test]
    fn what_a_429_held_leaves_in_paced_slots() {
        let mut book = PaceBook::default();
        let t0 = Instant::now();
        book.observe(&key(), t0, Some(10.0), None, false);
        // Four requests go, then the bucket answers 429 with Retry-After 1 s.
        for _ in 0..4 {
            assert_eq!(book.ask(&key(), t0), Pace::Go);
        }
        book.observe(&key(), t0, None, Some(Duration::from_secs(1)), true);
        let released = t0 + Duration::from_secs(1);
        assert_eq!(book.held(&key(), released), None);
        // The three still in flight get distinct, increasing slots (1 s apart: no rate learned).
        let slots: Vec<Duration> = (0..3).filter_map(|_| book.reslot(&key(), released)).collect();
        assert_eq!(slots.len(), 3, "{slots:?}");
        assert!(slots.windows(2).all(|w| w[1] >= w[0] + Duration::from_millis(900)), "{slots:?}");
        // With tokens to spare nothing waits.
        book.observe(&key(), released, Some(50.0), None, false);
        assert_eq!(book.reslot(&key(), released), None);
    }

    #[test]
    fn the_refill_rate_is_learned_and_an_empty_bucket_is_paced_at_it() {
        // Simulate a server bucket refilling 5 tokens/s, drained by one request every 0.1 s.
        let mut book = PaceBook::default();
        let t0 = Instant::now();
        book.observe(&key(), t0, Some(200.0), None, false);
        let mut server = 100.0f64;
        let mut t = t0;
        for _ in 0..60 {
            t += Duration::from_millis(100);
            server = server + 0.5 - 1.0;
            book.observe(&key(), t, Some(server.floor()), None, false);
        }
        let rate = book.rate(&key()).expect("a rate");
        assert!((rate - 5.0).abs() < 0.8, "learned {rate}");

        // Empty: requests are spaced at about 1/rate, first come first served.
        book.observe(&key(), t, Some(0.0), None, false);
        let waits: Vec<Duration> = (0..4)
            .map(|_| match book.ask(&key(), t) {
                Pace::After(d) | Pace::Probing(d) => d,
                Pace::Go => Duration::ZERO,
            })
            .collect();
        assert!(waits[0] > Duration::ZERO);
        for pair in waits.windows(2) {
            let gap = pair[1].saturating_sub(pair[0]).as_secs_f64();
            assert!((gap - 1.0 / rate).abs() < 0.01, "gap {gap} for rate {rate}: {waits:?}");
        }
        // Once the bucket has refilled (and the reserved requests were answered), requests go
        // at once again.
        let later = t + Duration::from_secs(10);
        for _ in 0..4 {
            book.observe(&key(), later, Some(40.0), None, true);
        }
        assert_eq!(book.ask(&key(), later), Pace::Go);
    }

    #[test]
    fn a_providers_limit_is_read_from_its_429() {
        let stated = parse_provider_limit(
            "Number of requests for Microsoft.Authorization exceeded the limit of '120' for time interval '00:01:00'. Please try again after '5' seconds.",
        );
        assert_eq!(stated, Some(ProviderWindow { limit: 120, window: Duration::from_secs(60) }));
        // The per-action form (Azure/azqr#34).
        let action = parse_provider_limit(
            "Number of requests for action 'Microsoft.Cdn/profiles/read' exceeded the limit of '50' for time interval '00:05:00'. Please try again after '372' seconds.",
        );
        assert_eq!(action, Some(ProviderWindow { limit: 50, window: Duration::from_secs(300) }));
        for junk in [
            "",
            "The request is being throttled.",
            "exceeded the limit of '0' for time interval '00:01:00'",
            "exceeded the limit of '10' for time interval '00:00:00'",
            "exceeded the limit of '-3' for time interval '00:01:00'",
            "exceeded the limit of '10' for time interval '99:99:99:99'",
            "exceeded the limit of '10' for time interval 'soon'",
        ] {
            assert_eq!(parse_provider_limit(junk), None, "{junk:?}");
        }
        assert_eq!(
            provider_key(
                "/subscriptions/S/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st/providers/Microsoft.Authorization/roleAssignments/n"
            ),
            Some(("s".into(), "microsoft.authorization".into()))
        );
        assert_eq!(provider_key("/subscriptions/s"), None);
    }

    #[test]
    fn a_learned_provider_window_is_kept_below_its_limit() {
        let mut book = PaceBook::default();
        let key: ProviderKey = ("s".into(), "microsoft.authorization".into());
        let t0 = Instant::now();
        // Unknown: nothing waits.
        for _ in 0..5 {
            assert_eq!(book.ask_provider(&key, t0), Duration::ZERO);
        }
        // The provider says 10 per 60 s and to come back in 5 s.
        let window = Duration::from_secs(60);
        book.provider_throttled(&key, t0, Some(ProviderWindow { limit: 10, window }), Duration::from_secs(5), false);
        assert_eq!(book.provider_held(&key, t0 + Duration::from_secs(1)), Some(Duration::from_secs(4)));
        // 10 per window, counting the 5 already sent.
        let asked = t0 + Duration::from_secs(5);
        let slots: Vec<Instant> = (0..30).map(|_| asked + book.ask_provider(&key, asked)).collect();
        let mut all: Vec<Instant> = vec![t0; 5];
        all.extend(&slots);
        for (i, start) in all.iter().enumerate() {
            let within = all[i..].iter().filter(|t| t.saturating_duration_since(*start) < window).count();
            assert!(within <= 10, "{within} requests within a window from slot {i}");
        }
        assert!(slots.windows(2).all(|w| w[1] >= w[0]), "slots in order of asking");
        // 35 requests at 10 per minute: the last goes in the fourth minute, not sooner.
        let last = slots.last().expect("slots").saturating_duration_since(t0);
        assert!(last >= Duration::from_secs(180) && last < Duration::from_secs(241), "{last:?}");
        // Other providers and subscriptions are not held.
        assert_eq!(book.ask_provider(&("s".into(), "microsoft.databricks".into()), asked), Duration::ZERO);
        assert_eq!(book.ask_provider(&("t".into(), "microsoft.authorization".into()), asked), Duration::ZERO);
    }

    #[test]
    fn a_429_within_the_learned_limit_keeps_the_pacer_further_below_it() {
        let key: ProviderKey = ("s".into(), "microsoft.authorization".into());
        let window = Duration::from_secs(60);
        let limit = ProviderWindow { limit: 100, window };
        // Requests a window allows at `at`, asked at once (the first held one is counted too: it
        // is sent a window later, so windows are asked three apart).
        let allowance = |book: &mut PaceBook, at: Instant| {
            std::iter::repeat_with(|| book.ask_provider(&key, at)).take_while(Duration::is_zero).count()
        };
        let t0 = Instant::now();
        let mut book = PaceBook::default();
        book.provider_throttled(&key, t0, Some(limit), Duration::ZERO, false);
        // The 429s of the requests on their way while it was learned say nothing more.
        book.provider_throttled(&key, t0, Some(limit), Duration::ZERO, false);
        assert_eq!(allowance(&mut book, t0), 100, "the whole limit");
        // One sent within the limit met a 429: 5% below it. Those in flight with it (the same
        // window) change nothing more.
        let t1 = t0 + window * 3;
        for _ in 0..3 {
            book.provider_throttled(&key, t1, Some(limit), Duration::ZERO, true);
        }
        assert_eq!(allowance(&mut book, t1), 95);
        // Again in a later window: 10% below; and never below half, however often.
        let t2 = t1 + window * 3;
        book.provider_throttled(&key, t2, Some(limit), Duration::ZERO, true);
        assert_eq!(allowance(&mut book, t2), 90);
        let mut at = t2;
        for _ in 0..20 {
            at += window * 3;
            book.provider_throttled(&key, at, Some(limit), Duration::ZERO, true);
        }
        assert_eq!(allowance(&mut book, at), 50);
    }

    #[test]
    fn a_provider_is_busy_for_a_window_after_a_request_waited_for_it() {
        let mut book = PaceBook::default();
        let key: ProviderKey = ("s".into(), "microsoft.authorization".into());
        let busy = |book: &PaceBook, at: Instant| book.provider_busy(&key, at);
        let t0 = Instant::now();
        for _ in 0..5 {
            book.ask_provider(&key, t0);
        }
        assert_eq!(busy(&book, t0), None, "no limit learned: never busy");
        let limit = ProviderWindow { limit: 4, window: Duration::from_secs(10) };
        book.provider_throttled(&key, t0, Some(limit), Duration::from_secs(2), false);
        let spell = |since| Some(ProviderBusy { limit, since });
        assert_eq!(busy(&book, t0 + Duration::from_secs(1)), spell(t0), "Retry-After runs");
        let later = t0 + Duration::from_secs(30);
        assert_eq!(busy(&book, later), None, "nothing waited");
        // The pacer allows 4 per window: four asked at once go, the fifth waits a window.
        let waits: Vec<Duration> = (0..5).map(|_| book.ask_provider(&key, later)).collect();
        assert!(waits[..4].iter().all(Duration::is_zero) && waits[4] > Duration::ZERO, "{waits:?}");
        assert_eq!(busy(&book, later), spell(later), "a request waits: a new spell");
        // At its slot nothing waits any more; the provider stays busy for a window after it, and
        // requests held meanwhile continue the same spell.
        let sent = later + waits[4];
        assert_eq!(busy(&book, sent + Duration::from_secs(9)), spell(later));
        let held = std::iter::repeat_with(|| book.ask_provider(&key, sent)).find(|w| *w > Duration::ZERO);
        let last = sent + held.unwrap_or_default();
        assert_eq!(busy(&book, last + Duration::from_secs(9)), spell(later), "still the spell begun then");
        assert_eq!(busy(&book, last + Duration::from_secs(10)), None, "a window later");
        // Up to the allowance, nothing waits: not busy.
        let mut book = PaceBook::default();
        book.provider_throttled(&key, t0, Some(limit), Duration::ZERO, false);
        (0..4).for_each(|_| assert_eq!(book.ask_provider(&key, later), Duration::ZERO));
        assert_eq!(busy(&book, later), None);
    }

    #[test]
    fn an_unknown_rate_waits_rather_than_hammers() {
        let mut book = PaceBook::default();
        let t0 = Instant::now();
        book.observe(&key(), t0, Some(0.0), None, false);
        assert_eq!(book.ask(&key(), t0), Pace::After(UNKNOWN_RATE_WAIT));
    }

    /// Answers every request with Microsoft.Authorization's 429, counting what reaches it.
    #[derive(Debug, Default)]
    struct ThrottledProvider {
        seen: Mutex<usize>,
    }

    #[async_trait::async_trait]
    impl Policy for ThrottledProvider {
        async fn send(&self, _: &Context, _: &mut Request, _: &[Arc<dyn Policy>]) -> PolicyResult {
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            let mut headers = azure_core::http::headers::Headers::new();
            headers.insert("retry-after", "0");
            let body = serde_json::json!({"error": {"code": PROVIDER_THROTTLED, "message":
                "Number of requests for Microsoft.Authorization exceeded the limit of '100' for time interval '00:01:00'. Please try again after '0' seconds."}});
            Ok(azure_core::http::AsyncRawResponse::from_bytes(
                azure_core::http::StatusCode::TooManyRequests,
                headers,
                body.to_string().into_bytes(),
            ))
        }
    }

    /// The pipeline's part of the adaptive share: whether a 429'd request went under a learned
    /// limit is decided in `send`, before the request leaves (the book's rule has its own test).
    #[tokio::test]
    async fn only_a_429_to_a_request_sent_under_a_learned_limit_lowers_the_share() {
        let pacer = PacingPolicy::new();
        let provider = Arc::new(ThrottledProvider::default());
        let next: Vec<Arc<dyn Policy>> = vec![provider.clone()];
        let key: ProviderKey = ("s".into(), "microsoft.authorization".into());
        let shortfall = |pacer: &PacingPolicy| pacer.book().providers.get(&key).map(|p| p.shortfall);
        let send = || async {
            let url = "https://management.azure.com/subscriptions/s/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01";
            let mut request = Request::new(url.parse().expect("url"), azure_core::http::Method::Get);
            let response = pacer.send(&Context::new(), &mut request, &next).await.expect("a response");
            assert_eq!(u16::from(response.status()), 429);
        };
        // The first 429 states the limit: learned, not a surprise (nothing was known when it went).
        send().await;
        assert_eq!(
            pacer.book().provider_limit(&key),
            Some(ProviderWindow { limit: 100, window: Duration::from_secs(60) })
        );
        assert_eq!(shortfall(&pacer), Some(0.0));
        // The next went under the learned limit and still met a 429: the count is not ours alone.
        send().await;
        assert_eq!(shortfall(&pacer), Some(PROVIDER_SHARE_STEP));
        // More in the same window change nothing more.
        send().await;
        assert_eq!(shortfall(&pacer), Some(PROVIDER_SHARE_STEP));
        assert_eq!(*provider.seen.lock().expect("count"), 3);
    }
}
