//! The desired state: what every Service needs on this node, computed from
//! Services and EndpointSlices with kube-proxy's semantics. Pure functions
//! only; nothing here knows about BPF.
mod build;
mod skip;
mod types;

pub use build::{build_desired_state, BuildOutput};
pub use skip::{Skip, SkipReason};
pub use types::{DesiredState, Endpoint, Frontend, FrontendState, Protocol, ServicePortName};
