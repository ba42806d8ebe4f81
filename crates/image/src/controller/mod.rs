//! The image controllers, one module per kind.

pub mod automation;
pub mod policy;
pub mod repository;
