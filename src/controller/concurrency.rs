//! How many ARM requests run at once: a slot per in-flight request per subscription, and one
//! writer at a time per assignment name (grants sharing a tuple must not PUT it twice at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use crate::azure::ResourceId;

/// Owns the per-subscription request slots and the per-assignment write locks.
pub struct Concurrency {
    per_subscription: usize,
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
    writers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Concurrency {
    /// `per_subscription` in-flight ARM requests per subscription (at least one).
    pub fn new(per_subscription: usize) -> Self {
        Concurrency { per_subscription: per_subscription.max(1), gates: Mutex::default(), writers: Mutex::default() }
    }

    /// Waits for a slot among the in-flight ARM requests of `scope`'s subscription.
    pub async fn arm_permit(&self, scope: &ResourceId) -> Option<OwnedSemaphorePermit> {
        let key = scope.subscription_id().unwrap_or("tenant").to_ascii_lowercase();
        let gate = self
            .gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_subscription)))
            .clone();
        gate.acquire_owned().await.ok()
    }

    /// Waits until no other reconcile is writing the assignment `name`; the guard holds it.
    pub async fn assignment_writer(&self, name: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
            // Forget locks nobody holds or waits for.
            writers.retain(|_, l| Arc::strong_count(l) > 1);
            writers.entry(name.to_ascii_lowercase()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Write locks currently remembered (held or waited for).
    #[cfg(test)]
    fn writers_held(&self) -> usize {
        let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        writers.retain(|_, l| Arc::strong_count(l) > 1);
        writers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB_A: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
    const SUB_B: &str = "7f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";

    #[tokio::test]
    async fn slots_are_per_subscription() {
        let c = Concurrency::new(2);
        let a = ResourceId::resource_group(SUB_A, "rg");
        let _one = c.arm_permit(&a).await;
        let _two = c.arm_permit(&ResourceId::subscription(SUB_A)).await;
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), c.arm_permit(&a)).await;
        assert!(third.is_err(), "a third request in one subscription waits");
        let other =
            tokio::time::timeout(std::time::Duration::from_millis(50), c.arm_permit(&ResourceId::subscription(SUB_B)))
                .await;
        assert!(other.is_ok(), "another subscription has its own slots");
    }

    #[tokio::test]
    async fn one_writer_per_assignment_name_any_case() {
        let c = Concurrency::new(1);
        let held = c.assignment_writer("ABC").await;
        let same = tokio::time::timeout(std::time::Duration::from_millis(50), c.assignment_writer("abc")).await;
        assert!(same.is_err(), "the same name (any case) waits");
        let other = tokio::time::timeout(std::time::Duration::from_millis(50), c.assignment_writer("def")).await;
        assert!(other.is_ok());
        drop(held);
        drop(other);
        assert_eq!(c.writers_held(), 0, "released locks are forgotten");
    }
}
