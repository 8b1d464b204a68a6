//! The edge node's services: origins, the shared cache, the read and write paths and
//! the REST API.

pub mod backoff;
pub mod cache;
mod cache_status;
pub mod cluster;
pub mod consistency;
pub mod dashboard;
pub mod freshness;
pub mod hash;
pub mod http;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod plan;
pub mod projection;
pub mod purge;
pub mod readiness;
pub mod shutdown;
mod startup;
pub mod tags;
mod telemetry;
mod tier;

pub use cache_status::{CacheStatus, CacheStatusHeaders};
pub use node::{Node, ReadError, ReadOutcome, SessionCtx, SessionError, WriteFailure};
pub use shutdown::Shutdown;
pub use startup::{migrate, Application, StartError};
pub use tier::Tier;
