//! Integration tests over real HTTP: each test spawns its own nodes on port 0 over a
//! temporary embedded store. `TEST_LOG=1` shows the nodes' logs.

mod helpers;
mod nginx;
mod pg;
#[path = "../../flags/tests/common/admin.rs"]
#[allow(dead_code)]
mod unleash_admin;

mod adversity;
mod browser;
mod cluster;
mod conditional;
mod consistency;
mod dashboard;
mod domain;
mod durability;
mod errors;
mod exactly_once;
mod feed_vouch;
mod freshness;
mod guarantees;
mod metrics;
mod negative;
mod openapi;
mod pg_feed;
mod pg_versions;
mod pg_writes;
mod postgres;
mod process;
mod projection;
mod purge;
mod readiness;
mod session_bounds;
mod sessions;
mod unleash;
