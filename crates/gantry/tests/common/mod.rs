//! Helpers shared by the integration tests of this crate. Each test binary compiles the whole
//! module and uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod serving;
