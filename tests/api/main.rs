//! Black-box tests: each starts the real server on 127.0.0.1:0 with a temporary config
//! and data dir (see `helpers::spawn_app`) and talks to it over HTTP.

mod audit;
mod auth;
mod brute_force;
mod conditional;
mod config;
mod damage;
mod disk_full;
mod durability;
mod edges;
mod errors;
mod helpers;
mod hostile;
mod images;
mod listing;
mod nodes;
mod operations;
#[path = "../support/postgres.rs"]
mod postgres;
mod process;
mod proxy;
mod reload;
mod secrets;
mod tls;
mod transfer;
