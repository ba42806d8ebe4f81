//! Gantry's pure logic: everything that can be decided without a cluster, a network or a disk.
//!
//! Keeping these rules free of I/O lets them be unit- and property-tested exhaustively, and lets
//! the offline CLI commands (`gantry image policy`, `gantry release next`, ...) share exactly the
//! code the controllers run.

pub mod alert;
pub mod depgraph;
pub mod gotemplate;
pub mod image;
pub mod inventory;
pub mod kstatus;
pub mod release;
pub mod revision;
pub mod semver;
pub mod substitute;
pub mod transform;
pub mod webhook;
