//! The image controllers, one module per kind.

pub mod repository;
