//! Everything the operator knows about Azure: ARM ids, role references, ABAC condition checks,
//! the typed ARM error, and the ARM client on azure_core.

pub mod client;
pub mod condition;
pub mod credentials;
pub mod error;
pub mod guid;
pub mod models;
pub mod pacing;
pub mod permissions;
pub mod resource_id;
pub mod role_assignment_id;
pub mod role_ref;

pub use client::ArmClient;
pub use error::ArmError;
pub use resource_id::{ResourceId, ResourceIdError};
pub use role_assignment_id::RoleAssignmentId;
pub use role_ref::{RoleRef, RoleRefError};
