//! Black-box tests: each starts the real server on 127.0.0.1:0 with a temporary config
//! and data dir (see `helpers::spawn_app`) and talks to it over HTTP.
//!
//! This target runs the suite on the embedded store; `tests/api_postgres.rs` runs the
//! same modules, less those about sled itself, on PostgreSQL.

/// Which store `helpers::config_text` configures.
const ON_POSTGRES: bool = false;

#[path = "../support/postgres.rs"]
mod pg;

mod audit;
mod auth;
mod brute_force;
mod changes;
mod conditional;
mod config;
mod damage;
mod disk_full;
mod durability;
mod edges;
mod embedded;
mod errors;
mod feed;
mod helpers;
mod hostile;
mod images;
mod listing;
mod nodes;
mod operations;
mod power_cut;
mod process;
mod proxy;
mod reads;
mod reload;
mod secrets;
mod store_config;
mod tls;
mod transfer;
mod ui;
mod ui_browser;
mod waits;
mod webdriver;
