//! One module per command group. Each exposes its clap arguments and a `run` function
//! returning the process exit code.

pub mod build;
pub mod ci;
pub mod diff;
pub mod get;
pub mod image;
pub mod image_tags;
pub mod init;
pub mod install;
pub mod push;
pub mod release;
pub mod run;
pub mod serving_router;
pub mod uninstall;
pub mod uptime;
pub mod webhook_url;

/// Shown under `gantry --help`: the command groups that are planned but not built yet,
/// so nobody mistakes them for working commands.
pub const PLANNED: &str = "\
Planned, not yet available:
  scale to zero for staging workloads, waking on the first request";
