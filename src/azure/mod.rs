//! Everything the operator knows about Azure: ARM ids, role references, and (later) the ARM
//! client.

pub mod condition;
pub mod guid;
pub mod resource_id;
pub mod role_ref;

pub use resource_id::{ResourceId, ResourceIdError};
pub use role_ref::{RoleRef, RoleRefError};
