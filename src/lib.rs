//! image-catalog: a catalog of machine images served over the v3 Images API.
//!
//! The modules in layers, each using only the ones listed before it:
//!
//! 1. `domain`: images, changes and the audit trail, policies and users. No I/O.
//! 2. `config`, `database_url`, `forwarded`, `tls`, `logging`: config.toml and what
//!    it sets up.
//! 3. `metrics`: the figures `/metrics` shows (the store fills in its own); then
//!    `store`: the catalog on disk (sled) or in PostgreSQL; `auth`: credentials to
//!    users, with the brute-force throttle.
//! 4. `feed`: the requests waiting for a change, and the dispatcher that wakes them.
//! 5. `error`: every failure as the API's `{"message"}`.
//! 6. `app`: the state every request may reach, and only through a proof of policy.
//! 7. `http`: extractors (`Authorized<P>`), headers, listings, limits, middleware.
//! 8. `routes`, then `ui` (the read-only page for people, over the same proofs),
//!    `openapi` (the document of the route table), `startup` (the server), `cli` (the
//!    command line).

pub mod domain;

pub mod config;
pub mod database_url;
pub mod forwarded;
pub mod logging;
pub mod tls;

pub mod metrics;

pub mod auth;
pub mod store;

pub mod feed;

pub mod error;

pub mod app;

pub mod http;

pub mod cli;
pub mod openapi;
pub mod routes;
pub mod startup;
pub mod ui;
