//! In-process stand-ins for Azure Resource Manager and the Kubernetes API server, used by tests,
//! the demo and benchmarks. Production code never depends on this module.

pub mod arm;
pub mod estate;
pub mod kube;
