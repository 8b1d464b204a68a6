//! The edge node's services: origins, the shared cache, the read and write paths and
//! the REST API.

pub mod origin;
