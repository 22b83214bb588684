//! dbx-identity-operator: grants Azure RBAC roles to Azure Databricks identities, declaratively.
//!
//! Layout (see README "Code tour"): `api` (CRD types and validation), `azure` (ARM ids, role
//! references, ARM client), `policy` (GrantPolicy patterns and evaluation), `cli` (commands).

pub mod api;
pub mod azure;
pub mod cli;
pub mod controller;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod policy;
pub mod review;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod telemetry;
