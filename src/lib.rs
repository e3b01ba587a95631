//! image-catalog: a catalog of machine images served over the v3 Images API.
//!
//! A request flows `startup` (middleware) -> `routes` -> `policy::Authorized`
//! (`auth`, `config`) -> `image` (parsing) -> `store`, and every failure becomes an
//! `error::ApiError`.

pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod forwarded;
pub mod headers;
pub mod image;
pub mod limits;
pub mod listing;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod pg_store;
pub mod policy;
pub mod routes;
pub mod startup;
pub mod store;
pub mod store_mark;
pub mod store_open;
pub mod throttle;
pub mod tls;
