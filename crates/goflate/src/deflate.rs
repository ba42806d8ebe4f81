// Copyright 2009 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE-GO file.
//
// Ported from Go's src/compress/flate/deflate.go (the lazy-matching compressor at
// DefaultCompression, level 6).

//! Go's LZ77 stage at level 6: hash chains over 4-byte hashes (17 bits), lazy matching, blocks of
//! at most 16384 tokens, a 64 KiB window that slides by 32 KiB. Go's output depends on when the
//! window slides, which depends on the sizes of the writes: [`DeflateWriter::write`] keeps Go's
//! `write` loop, so the same sequence of writes gives the same bytes.

use std::io::{self, Write};

use crate::bit_writer::BitWriter;
use crate::token::Token;

const WINDOW_SIZE: usize = 1 << 15;
const WINDOW_MASK: usize = WINDOW_SIZE - 1;
/// The shortest match RFC 1951 allows.
const BASE_MATCH_LENGTH: usize = 3;
/// The shortest match Go emits.
const MIN_MATCH_LENGTH: usize = 4;
const MAX_MATCH_LENGTH: usize = 258;
const BASE_MATCH_OFFSET: usize = 1;
const MAX_FLATE_BLOCK_TOKENS: usize = 1 << 14;
const HASH_BITS: u32 = 17;
const HASH_SIZE: usize = 1 << HASH_BITS;
const MAX_HASH_OFFSET: i64 = 1 << 24;
const HASH_MUL: u32 = 0x1e35a7bd;
// Go's `blockStart` sentinel (math.MaxInt32) once the block's start has slid out of the window.
const BLOCK_START_GONE: usize = i32::MAX as usize;

// Level 6 of Go's table: a match this good searches a quarter of the chain; no lazy search after
// a match this long; stop at a match this long; follow the chain this far.
const GOOD: usize = 8;
const LAZY: usize = 16;
const NICE: usize = 128;
const CHAIN: usize = 128;

/// Bytes of compressed output buffered before they go to the underlying writer.
const OUTPUT_CHUNK: usize = 32 * 1024;

struct Compressor {
    w: BitWriter,
    // Input window: unprocessed data is window[index..window_end].
    window: Vec<u8>,
    index: usize,
    window_end: usize,
    // Window index where the current block's tokens start.
    block_start: usize,
    // Whether window[index - 1] still waits to be emitted (lazy matching).
    byte_available: bool,
    sync: bool,
    tokens: Vec<Token>,
    length: usize,
    offset: usize,
    max_insert_index: usize,
    // hash_head[h] is the latest position (plus hash_offset) with hash h; hash_prev chains
    // earlier ones, indexed by position & WINDOW_MASK.
    chain_head: i64,
    hash_head: Vec<u32>,
    hash_prev: Vec<u32>,
    hash_offset: i64,
}

fn hash4(b: &[u8]) -> u32 {
    let v = u32::from(b[3]) | u32::from(b[2]) << 8 | u32::from(b[1]) << 16 | u32::from(b[0]) << 24;
    v.wrapping_mul(HASH_MUL) >> (32 - HASH_BITS)
}

/// Length of the common prefix of `a` and `b`, at most `max` (both at least `max` long).
fn match_len(a: &[u8], b: &[u8], max: usize) -> usize {
    let (a, b) = (&a[..max], &b[..max]);
    let mut n = 0;
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
        x.copy_from_slice(ca);
        y.copy_from_slice(cb);
        let diff = u64::from_le_bytes(x) ^ u64::from_le_bytes(y);
        if diff != 0 {
            return n + diff.trailing_zeros() as usize / 8;
        }
        n += 8;
    }
    n + a[n..]
        .iter()
        .zip(&b[n..])
        .take_while(|(x, y)| x == y)
        .count()
}

impl Compressor {
    fn new() -> Self {
        Compressor {
            w: BitWriter::new(),
            window: vec![0; 2 * WINDOW_SIZE],
            index: 0,
            window_end: 0,
            block_start: 0,
            byte_available: false,
            sync: false,
            tokens: Vec::with_capacity(MAX_FLATE_BLOCK_TOKENS + 1),
            length: MIN_MATCH_LENGTH - 1,
            offset: 0,
            max_insert_index: 0,
            chain_head: -1,
            hash_head: vec![0; HASH_SIZE],
            hash_prev: vec![0; WINDOW_SIZE],
            hash_offset: 1,
        }
    }

    // Go's fillDeflate: slide the window when the next match could run past its end.
    fn fill(&mut self, b: &[u8]) -> usize {
        if self.index >= 2 * WINDOW_SIZE - (MIN_MATCH_LENGTH + MAX_MATCH_LENGTH) {
            self.window.copy_within(WINDOW_SIZE..2 * WINDOW_SIZE, 0);
            self.index -= WINDOW_SIZE;
            self.window_end -= WINDOW_SIZE;
            self.block_start = if self.block_start >= WINDOW_SIZE {
                self.block_start - WINDOW_SIZE
            } else {
                BLOCK_START_GONE
            };
            self.hash_offset += WINDOW_SIZE as i64;
            if self.hash_offset > MAX_HASH_OFFSET {
                // Rebase the stored positions before they outgrow u32.
                let delta = self.hash_offset - 1;
                self.hash_offset -= delta;
                self.chain_head -= delta;
                let rebase = |v: &mut u32| {
                    *v = if i64::from(*v) > delta {
                        (i64::from(*v) - delta) as u32
                    } else {
                        0
                    }
                };
                self.hash_prev.iter_mut().for_each(rebase);
                self.hash_head.iter_mut().for_each(rebase);
            }
        }
        let n = b.len().min(self.window.len() - self.window_end);
        self.window[self.window_end..self.window_end + n].copy_from_slice(&b[..n]);
        self.window_end += n;
        n
    }

    fn write_block(&mut self, index: usize) {
        if index > 0 {
            let input = (self.block_start <= index).then(|| &self.window[self.block_start..index]);
            self.w.write_block(&self.tokens, false, input);
            self.block_start = index;
        }
        self.tokens.clear();
    }

    fn insert_hash(&mut self, index: usize) {
        let hash = hash4(&self.window[index..index + MIN_MATCH_LENGTH]) as usize;
        self.hash_prev[index & WINDOW_MASK] = self.hash_head[hash];
        self.hash_head[hash] = (index as i64 + self.hash_offset) as u32;
    }

    // The longest match at `pos` longer than `prev_length`, following the hash chain from
    // `prev_head`: (length, offset).
    fn find_match(
        &self,
        pos: usize,
        prev_head: i64,
        prev_length: usize,
        lookahead: usize,
    ) -> Option<(usize, usize)> {
        let min_match_look = lookahead.min(MAX_MATCH_LENGTH);
        let win = &self.window[..pos + min_match_look];
        let nice = (win.len() - pos).min(NICE);
        let mut tries = CHAIN;
        let mut length = prev_length;
        if length >= GOOD {
            tries >>= 2;
        }
        let mut w_end = win[pos + length];
        let w_pos = &win[pos..];
        let min_index = pos as i64 - WINDOW_SIZE as i64;
        let mut found = None;
        let mut i = prev_head;
        while tries > 0 {
            let at = i as usize;
            if w_end == win[at + length] {
                let n = match_len(&win[at..], w_pos, min_match_look);
                // Go takes 4-byte matches only when they are near.
                if n > length && (n > MIN_MATCH_LENGTH || pos - at <= 4096) {
                    length = n;
                    found = Some((n, pos - at));
                    if n >= nice {
                        break;
                    }
                    w_end = win[pos + n];
                }
            }
            if i == min_index {
                // hash_prev[i & WINDOW_MASK] has been overwritten already.
                break;
            }
            i = i64::from(self.hash_prev[at & WINDOW_MASK]) - self.hash_offset;
            if i < min_index || i < 0 {
                break;
            }
            tries -= 1;
        }
        found
    }

    // Go's `deflate` step for the lazy levels: tokenise while a full match fits in the lookahead
    // (everything when syncing).
    fn deflate(&mut self) {
        if self.window_end - self.index < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH && !self.sync {
            return;
        }
        self.max_insert_index = self.window_end.saturating_sub(MIN_MATCH_LENGTH - 1);
        loop {
            let lookahead = self.window_end - self.index;
            if lookahead < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH {
                if !self.sync {
                    return;
                }
                if lookahead == 0 {
                    if self.byte_available {
                        self.tokens
                            .push(Token::literal(self.window[self.index - 1]));
                        self.byte_available = false;
                    }
                    if !self.tokens.is_empty() {
                        self.write_block(self.index);
                    }
                    return;
                }
            }
            if self.index < self.max_insert_index {
                let hash = hash4(&self.window[self.index..self.index + MIN_MATCH_LENGTH]) as usize;
                self.chain_head = i64::from(self.hash_head[hash]);
                self.hash_prev[self.index & WINDOW_MASK] = self.hash_head[hash];
                self.hash_head[hash] = (self.index as i64 + self.hash_offset) as u32;
            }
            let prev_length = self.length;
            let prev_offset = self.offset;
            self.length = MIN_MATCH_LENGTH - 1;
            self.offset = 0;
            let min_index = self.index.saturating_sub(WINDOW_SIZE) as i64;

            if self.chain_head - self.hash_offset >= min_index
                && lookahead > prev_length
                && prev_length < LAZY
                && let Some((length, offset)) = self.find_match(
                    self.index,
                    self.chain_head - self.hash_offset,
                    MIN_MATCH_LENGTH - 1,
                    lookahead,
                )
            {
                self.length = length;
                self.offset = offset;
            }

            if prev_length >= MIN_MATCH_LENGTH && self.length <= prev_length {
                // The match at the previous byte is at least as good: emit it.
                self.tokens.push(Token::matched(
                    (prev_length - BASE_MATCH_LENGTH) as u32,
                    (prev_offset - BASE_MATCH_OFFSET) as u32,
                ));
                // Hash the strings up to the end of the match (index and index - 1 are done).
                let new_index = self.index + prev_length - 1;
                let mut index = self.index + 1;
                while index < new_index {
                    if index < self.max_insert_index {
                        self.insert_hash(index);
                    }
                    index += 1;
                }
                self.index = index;
                self.byte_available = false;
                self.length = MIN_MATCH_LENGTH - 1;
                if self.tokens.len() == MAX_FLATE_BLOCK_TOKENS {
                    self.write_block(self.index);
                }
            } else {
                if self.byte_available {
                    let i = self.index - 1;
                    self.tokens.push(Token::literal(self.window[i]));
                    if self.tokens.len() == MAX_FLATE_BLOCK_TOKENS {
                        self.write_block(i + 1);
                    }
                }
                self.index += 1;
                self.byte_available = true;
            }
        }
    }

    fn write(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            self.deflate();
            let n = self.fill(b);
            b = &b[n..];
        }
    }

    fn close(&mut self) {
        self.sync = true;
        self.deflate();
        self.w.write_stored_header(0, true);
        self.w.flush();
    }
}

/// A raw DEFLATE (RFC 1951) compressor whose output is byte for byte what Go's
/// `flate.NewWriter(w, flate.DefaultCompression)` writes for the same sequence of `Write` calls
/// followed by `Close`.
///
/// Every `write` consumes the whole buffer, as one Go `Write` call does (so `write_all` is one Go
/// call). [`flush`](Write::flush) only hands finished bytes to the underlying writer; it does not
/// emit a sync marker (Go's `Flush` is not ported), so it never changes the stream. After an
/// error from the underlying writer the stream is broken and every later call fails.
pub struct DeflateWriter<W: Write> {
    c: Box<Compressor>,
    inner: W,
    failed: bool,
}

impl<W: Write> DeflateWriter<W> {
    /// A compressor writing to `inner`.
    pub fn new(inner: W) -> Self {
        DeflateWriter {
            c: Box::new(Compressor::new()),
            inner,
            failed: false,
        }
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    // Bytes that precede the compressed stream (the gzip header).
    pub(crate) fn put_raw(&mut self, bytes: &[u8]) {
        self.c.w.out.extend_from_slice(bytes);
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "goflate: an earlier write to the underlying writer failed",
            ));
        }
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        if self.c.w.out.is_empty() {
            return Ok(());
        }
        match self.inner.write_all(&self.c.w.out) {
            Ok(()) => {
                self.c.w.out.clear();
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Ends the stream (Go's `Close`: pending tokens, then an empty final stored block), writes
    /// it out and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.finish_stream()?;
        Ok(self.inner)
    }

    // `finish` without giving up the writer, followed by `trailer` (the gzip trailer).
    pub(crate) fn finish_with(&mut self, trailer: &[u8]) -> io::Result<()> {
        self.check()?;
        self.c.close();
        self.put_raw(trailer);
        self.drain()?;
        self.inner.flush()
    }

    fn finish_stream(&mut self) -> io::Result<()> {
        self.finish_with(&[])
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for DeflateWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        self.c.write(buf);
        if self.c.w.out.len() >= OUTPUT_CHUNK {
            self.drain()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.drain()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn deflate(chunks: &[&[u8]]) -> Vec<u8> {
        let mut w = DeflateWriter::new(Vec::new());
        for c in chunks {
            w.write_all(c).unwrap();
        }
        w.finish().unwrap()
    }

    fn inflate(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn empty_input_is_go_s_empty_stream() {
        // Go's flate writer closed without input: just the final empty stored block.
        assert_eq!(deflate(&[]), [0x01, 0x00, 0x00, 0xff, 0xff]);
    }

    #[test]
    fn output_inflates_to_the_input() {
        let mut data = Vec::new();
        let mut x: u32 = 1;
        for i in 0..300_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // Mostly text-like with runs and noise, so all block kinds and long chains occur.
            data.push(match i % 7 {
                0 => (x >> 24) as u8,
                _ => b"gantry flux "[(i as usize / 3) % 12],
            });
        }
        let out = deflate(&[&data]);
        assert_eq!(inflate(&out), data);
        assert!(out.len() < data.len() / 2, "{} bytes", out.len());
    }

    #[test]
    fn long_runs_use_matches() {
        let data = vec![b'a'; 100_000];
        let out = deflate(&[&data]);
        assert_eq!(inflate(&out), data);
        assert!(out.len() < 1000, "{} bytes", out.len());
    }

    #[test]
    fn match_len_counts_the_common_prefix() {
        let a = b"abcdefghijklmnopqrstuvwxyz";
        let mut b = *a;
        assert_eq!(match_len(a, &b, 26), 26);
        b[11] = b'!';
        assert_eq!(match_len(a, &b, 26), 11);
        assert_eq!(match_len(a, &b, 5), 5);
        b[0] = b'!';
        assert_eq!(match_len(a, &b, 26), 0);
    }

    #[test]
    fn hash4_is_go_s() {
        // ((0x61626364 * 0x1e35a7bd) mod 2^32) >> 15, computed by hand.
        let v: u32 = 0x6162_6364u32.wrapping_mul(0x1e35_a7bd) >> 15;
        assert_eq!(hash4(b"abcd"), v);
        assert!(hash4(b"\xff\xff\xff\xff") < HASH_SIZE as u32);
    }

    #[test]
    fn a_failed_underlying_write_poisons_the_writer() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        // Incompressible input, so output exceeds the buffer and reaches `Broken`.
        let mut x: u64 = 7;
        let data: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut w = DeflateWriter::new(Broken);
        assert!(data.chunks(4096).any(|c| w.write(c).is_err()));
        let err = w.write(b"more").unwrap_err();
        assert!(err.to_string().contains("earlier write"), "{err}");
        assert!(w.flush().is_err());
        assert!(w.finish().is_err());
    }
}
