// Copyright 2009 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE-GO file.
//
// This crate is a port of Go's src/compress/flate and src/compress/gzip writers to Rust.

//! DEFLATE and gzip output that is byte for byte what Go writes.
//!
//! Flux's source-controller stores artifacts with Go's `compress/gzip` at its default level, and
//! `status.artifact.digest` is the sha256 of those bytes. DEFLATE allows many encodings of the
//! same data; to compute the digest Flux computes, Gantry must choose exactly Go's. This crate is
//! therefore an honest port of Go's compressor (from Go 1.26's sources), not an independent
//! implementation: Go's hash chains and lazy matching at `DefaultCompression`
//! (level 6), its block splitting (16384 tokens, window slides), its choice between stored, fixed
//! and dynamic blocks, its length-limited Huffman codes and its code-length runs. Only that level
//! is ported; Go's `Flush` (sync marker), dictionaries and `BestSpeed` are not.
//!
//! Go's output depends on the sizes of the `Write` calls (they decide when the window slides), so
//! each `write` here stands for one Go `Write`: the same sequence of writes gives the same bytes.
//! The `go_parity` test compares both on many inputs and write patterns against the `go` on the
//! machine.
//!
//! The code is derived from Go's (Copyright 2009 The Go Authors, BSD-3-Clause, see `LICENSE-GO`).

mod bit_writer;
mod deflate;
mod gzip;
mod huffman;
mod token;

pub use deflate::DeflateWriter;
pub use gzip::GzipWriter;
