//! The grant versions this operator's own writes have replaced, so a reconcile started from a
//! copy its own last write already replaced is skipped instead of run.
//!
//! kube-runtime reconciles a grant again for the watch event of each write (the finalizer's,
//! the status'). The second run often starts before the store has the status just written: it
//! computed the same status again and wrote it, and the resourceVersion check refused it (409),
//! one wasted Kubernetes write for a quarter of the grants of a cold start (converge bench,
//! issue 24). The watch event of the write it would have seen is still coming and reconciles
//! the grant again, so skipping loses nothing.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct OwnWrites {
    /// Per grant uid: the resourceVersion our last write produced, and those our writes replaced
    /// since the store last caught up with us.
    grants: Mutex<HashMap<String, Written>>,
}

#[derive(Default)]
struct Written {
    latest: Option<String>,
    replaced: Vec<String>,
}

impl OwnWrites {
    /// Our write replaced version `from` of grant `uid` with version `to`.
    pub fn wrote(&self, uid: &str, from: Option<&str>, to: Option<String>) {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let written = grants.entry(uid.to_owned()).or_default();
        written.replaced.extend(from.map(str::to_owned));
        // A store that skipped our last version (a relist) never clears the entry: keep it small.
        if written.replaced.len() > 8 {
            written.replaced.remove(0);
        }
        written.latest = to;
    }

    /// Whether a reconcile of grant `uid` at `version` starts from a copy our own write already
    /// replaced. Forgets the grant once the store has caught up with our last write.
    pub fn replaced(&self, uid: &str, version: Option<&str>) -> bool {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let Some(written) = grants.get(uid) else { return false };
        if version.is_some() && written.latest.as_deref() == version {
            grants.remove(uid);
            return false;
        }
        version.is_some_and(|v| written.replaced.iter().any(|r| r == v))
    }

    /// A deleted grant is forgotten.
    pub fn forget(&self, uid: &str) {
        self.grants.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_our_write_replaced_is_stale_until_the_store_catches_up() {
        let own = OwnWrites::default();
        assert!(!own.replaced("u", Some("1")), "nothing written yet");
        // The finalizer's write (1 -> 2), then the status' (2 -> 3).
        own.wrote("u", Some("1"), Some("2".into()));
        own.wrote("u", Some("2"), Some("3".into()));
        assert!(own.replaced("u", Some("1")));
        assert!(own.replaced("u", Some("2")), "the copy before our status write");
        assert!(!own.replaced("other", Some("2")));
        // The store caught up: forgotten, and a later version (someone else's edit) is fresh.
        assert!(!own.replaced("u", Some("3")));
        assert!(!own.replaced("u", Some("2")), "forgotten once caught up");
        assert!(!own.replaced("u", Some("4")));
    }

    #[test]
    fn a_version_someone_else_wrote_is_never_skipped() {
        let own = OwnWrites::default();
        own.wrote("u", Some("1"), Some("2".into()));
        // A user's edit after ours: a version we never replaced.
        assert!(!own.replaced("u", Some("5")));
        assert!(!own.replaced("u", None));
        own.forget("u");
        assert!(!own.replaced("u", Some("1")));
    }
}
