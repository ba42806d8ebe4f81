//! Gantry's pure logic: everything that can be decided without a cluster, a network or a disk.
//!
//! Keeping these rules free of I/O lets them be unit- and property-tested exhaustively, and lets
//! the offline CLI commands (`gantry image policy`, `gantry release next`, ...) share exactly the
//! code the controllers run.

// One room per pipeline (source → kustomize, image, notification, release, uptime); shared helpers
// (Go templates, Masterminds semver) below.
pub mod image;
pub mod kustomize;
pub mod notification;
pub mod release;
pub mod source;
pub mod uptime;

pub mod gotemplate;
pub mod semver;
pub mod serving;
