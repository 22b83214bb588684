//! Kubernetes API-server emulator (grows with the sandbox issue). For now: structural schema
//! validation of custom resources.

pub mod schema;
