//! The image controllers, one module per kind.

pub mod policy;
pub mod repository;
