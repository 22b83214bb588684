//! GrantPolicy: glob patterns (`glob.rs`) and evaluation (`evaluate.rs`).

pub mod evaluate;
pub mod glob;
