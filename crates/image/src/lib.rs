//! Image automation: a client for the OCI distribution API ([`registry`]), the on-disk store of
//! each ImageRepository's tags ([`tags`]) and the three image controllers ([`controller`]): the
//! ImageRepository controller scans registries into the store, the ImagePolicy controller
//! chooses from it and is woken in-process whenever a scan changed a repository's tag list, and
//! the ImageUpdateAutomation controller commits the choices to git
//! ([`controller::ImageControllers`] wires the three).

pub mod controller;
/// The OCI registry client lives in `gantry-source` (the OCIRepository controller uses it too).
pub use gantry_source::registry;
pub mod tags;
