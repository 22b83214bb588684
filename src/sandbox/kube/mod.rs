//! Kubernetes API-server emulator for tests and the sandbox (never used in production): storage
//! and semantics (`store.rs`), HTTP (`http.rs`), selectors, tables, and structural schema checks.

pub mod schema;
pub mod selectors;
pub mod store;
