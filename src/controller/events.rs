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
