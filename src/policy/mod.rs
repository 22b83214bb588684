//! GrantPolicy: pattern matching and (later) evaluation.

pub mod glob;
