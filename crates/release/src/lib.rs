//! Release tooling over a real git repository: the I/O around [`gantry_core::release`].
//!
//! - [`config`]: `.gantry/release.toml`, every key optional;
//! - [`repo`]: reading release tags and the commits since the last release, planning the next
//!   release, creating and pushing its annotated tag;
//! - [`workflows`]: the GitHub Actions workflows `gantry init ci --github` writes.

pub mod config;
pub mod repo;
pub mod workflows;

pub use config::{CONFIG_PATH, ConfigError, ReleaseConfig};
pub use repo::{Plan, ReleaseRepo, ReleaseTag, RepoError, TagOutcome};
