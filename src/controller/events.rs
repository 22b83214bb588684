//! Kubernetes Events about grants (events.k8s.io/v1), with repeats folded into a series.
//!
//! kube-runtime's `Recorder` does the folding by keeping every Event it sent, whole, for six
//! minutes, and sweeps that cache on each publish under a lock: at 5000 grants that was
//! ~12 MiB and a scan of thousands of entries per Event. This keeps ~100 bytes per recent
//! Event and sweeps at most once a minute. Repeats are identical (object, type, reason, note);
//! kube's key ignores the note, so a different note was shown as a repeat of the first one.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, Client};
use serde_json::json;

use crate::api::Reason;

/// An Event a reconcile decided to publish about its grant; its type follows from the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantEvent {
    pub reason: Reason,
    pub note: String,
}

impl GrantEvent {
    pub fn new(reason: Reason, note: impl Into<String>) -> Self {
        GrantEvent { reason, note: note.into() }
    }

    pub fn event_type(&self) -> EventType {
        if self.reason.is_warning() { EventType::Warning } else { EventType::Normal }
    }

    /// One Event per reason (notes joined, first-seen order): a grant with ten assignments makes
    /// one "Created" Event, not ten API writes. Notes are cut to 1000 characters.
    pub fn merged(events: Vec<GrantEvent>) -> Vec<GrantEvent> {
        let mut merged: Vec<GrantEvent> = Vec::new();
        for event in events {
            match merged.iter_mut().find(|m| m.reason == event.reason) {
                Some(m) => {
                    m.note.push_str("; ");
                    m.note.push_str(&event.note);
                }
                None => merged.push(event),
            }
        }
        for m in &mut merged {
            m.note = m.note.chars().take(1000).collect();
        }
        merged
    }
}

/// How long a repeat is folded into the earlier Event (kube-runtime uses the same).
const SERIES_WINDOW: Duration = Duration::from_secs(360);
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Sent {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

#[derive(Debug)]
struct Recent {
    sent: HashMap<u64, Sent>,
    swept: Instant,
}

/// Publishes Events as one controller instance.
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<Recent>,
}

fn key(reference: &ObjectReference, type_: EventType, reason: &str, note: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    (&reference.uid, &reference.namespace, &reference.name, type_ == EventType::Warning, reason, note)
        .hash(&mut hasher);
    hasher.finish()
}

impl EventPublisher {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        EventPublisher {
            client,
            controller: controller.to_owned(),
            instance: instance.to_owned(),
            recent: Mutex::new(Recent { sent: HashMap::new(), swept: Instant::now() }),
        }
    }

    /// The earlier identical Event still in its series window, counted once more.
    fn repeat_of(&self, key: u64) -> Option<(String, String, i32)> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.swept.elapsed() > SWEEP_EVERY {
            recent.sent.retain(|_, s| s.last.elapsed() < SERIES_WINDOW);
            recent.swept = Instant::now();
        }
        let sent = recent.sent.get_mut(&key).filter(|s| s.last.elapsed() < SERIES_WINDOW)?;
        sent.count = sent.count.saturating_add(1);
        sent.last = Instant::now();
        Some((sent.namespace.clone(), sent.name.clone(), sent.count))
    }

    /// Creates the Event, or bumps the series of an identical recent one.
    pub async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let key = key(reference, type_, reason, note);
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        if let Some((namespace, name, count)) = self.repeat_of(key) {
            let series = EventSeries { count, last_observed_time: now.clone() };
            let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"series": series}))).await {
                Ok(_) => return Ok(()),
                // Expired or deleted meanwhile: start a new Event.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let namespace = reference.namespace.clone().unwrap_or_else(|| "default".into());
        let name = format!(
            "{}.{:x}",
            reference.name.as_deref().unwrap_or(&self.controller),
            k8s_openapi::jiff::Timestamp::now().as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            action: Some(action.to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(note.to_owned()),
            event_time: Some(now),
            regarding: Some(reference.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if type_ == EventType::Warning { "Warning" } else { "Normal" }.to_owned()),
            ..Event::default()
        };
        Api::<Event>::namespaced(self.client.clone(), &namespace).create(&PostParams::default(), &event).await?;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.sent.insert(key, Sent { namespace, name, count: 1, last: Instant::now() });
        Ok(())
    }

    /// Recent Events remembered for folding (for tests and gauges).
    pub fn remembered(&self) -> usize {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).sent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_one_per_reason_in_order_and_typed_by_reason() {
        let merged = GrantEvent::merged(vec![
            GrantEvent::new(Reason::Created, "a"),
            GrantEvent::new(Reason::DriftCorrected, "b"),
            GrantEvent::new(Reason::Created, "c"),
        ]);
        assert_eq!(
            merged,
            vec![GrantEvent::new(Reason::Created, "a; c"), GrantEvent::new(Reason::DriftCorrected, "b")]
        );
        assert_eq!(merged[0].event_type(), EventType::Normal);
        assert_eq!(merged[1].event_type(), EventType::Warning);
        let long = GrantEvent::merged(vec![GrantEvent::new(Reason::Deleted, "x".repeat(5000))]);
        assert_eq!(long[0].note.chars().count(), 1000);
    }
}
