//! The catalog's own terms, with no HTTP and no storage: images and their fields
//! ([`image`]), what a listing keeps ([`filter`]), changes and the audit trail ([`change`]), policies and users
//! ([`access`]).

pub mod access;
pub mod change;
pub mod filter;
pub mod image;
