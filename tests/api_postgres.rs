//! The black-box API suite of `tests/api/` again, on PostgreSQL: the same test modules,
//! whose configs (`helpers::config_text`) name a database of a private PostgreSQL
//! (tests/support/postgres.rs), one per test. Modules about sled itself (its files,
//! its lock, a full disk, kill -9 of the embedded store) run only in `tests/api`.
//!
//! Without PostgreSQL (and not in CI, where it is required) the configs fall back to
//! the embedded store, after one printed line saying why.

// The helpers serve the sled-only modules too, which this target leaves out.
#![allow(dead_code)]

const ON_POSTGRES: bool = true;

#[path = "support/postgres.rs"]
mod pg;

#[path = "api/audit.rs"]
mod audit;
#[path = "api/auth.rs"]
mod auth;
#[path = "api/brute_force.rs"]
mod brute_force;
#[path = "api/changes.rs"]
mod changes;
#[path = "api/conditional.rs"]
mod conditional;
#[path = "api/config.rs"]
mod config;
#[path = "api/edges.rs"]
mod edges;
#[path = "api/errors.rs"]
mod errors;
#[path = "api/feed.rs"]
mod feed;
#[path = "api/helpers.rs"]
mod helpers;
#[path = "api/hostile.rs"]
mod hostile;
#[path = "api/images.rs"]
mod images;
#[path = "api/listing.rs"]
mod listing;
#[path = "api/operations.rs"]
mod operations;
#[path = "api/process.rs"]
mod process;
#[path = "api/proxy.rs"]
mod proxy;
#[path = "api/reads.rs"]
mod reads;
#[path = "api/reload.rs"]
mod reload;
#[path = "api/secrets.rs"]
mod secrets;
#[path = "api/tls.rs"]
mod tls;
#[path = "api/waits.rs"]
mod waits;
