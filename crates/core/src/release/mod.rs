//! Release versioning from Conventional Commits, without git or disk.
//!
//! The flow, as `gantry release` runs it: the commits since the last release tag are
//! [`analyze`]d (reverts cancel their targets, squash bodies count once per message), the
//! largest [`Bump`] is applied by [`next_version`] on the branch's [`Channel`], the tag is
//! named by a [`TagFormat`] and the notes come from [`render_notes`]. [`image_tag`] is the
//! `<sha>-<YYYYMMDDHHMM>` convention for staging images.

pub mod analysis;
pub mod commit;
pub mod image_tag;
pub mod notes;
pub mod tag;
pub mod version;

pub use analysis::{Analysis, Bump, Change, Commit, analyze};
pub use commit::{ConventionalCommit, Footer, ParseError, parse, parse_all};
pub use image_tag::{ImageTagError, image_tag};
pub use notes::render_notes;
pub use tag::{TagFormat, TagFormatError, TagMatch};
pub use version::{Channel, VersionError, VersionRules, next_version};
