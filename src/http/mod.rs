//! What sits between actix and the routes: the extractor that proves a policy
//! ([`extract::Authorized`]), header parsing, listings, connection and size limits,
//! and the middleware every request passes.

pub mod extract;
pub mod headers;
pub mod limits;
pub mod listing;
pub mod middleware;
pub mod wait;
