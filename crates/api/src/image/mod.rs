//! `image.toolkit.fluxcd.io`: image automation (registry scans, tag policies, commits back to git).

pub mod v1;
