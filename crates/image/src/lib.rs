//! Image automation, the registry half: a client for the OCI distribution API ([`registry`]),
//! the on-disk store of each ImageRepository's tags ([`tags`]) and the ImageRepository
//! controller ([`controller::repository`]) that scans registries into it.
//!
//! The ImagePolicy controller reads the store with [`tags::TagStore::for_each_tag`] and is
//! woken in-process through [`controller::repository::Context::with_scan_hook`] whenever a scan
//! changed a repository's tag list.

pub mod controller;
pub mod registry;
pub mod tags;
