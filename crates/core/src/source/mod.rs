//! Pure logic of the source pipeline: Flux's revision strings (`main@sha1:…`, `v1.0@sha256:…`).

pub mod revision;
