// Copyright 2009 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE-GO file.
//
// Ported from Go's src/compress/flate/huffman_bit_writer.go (the parts the lazy-matching levels
// use: `writeBlock`, stored blocks, the dynamic header and its codegen).

//! Go's Huffman bit writer: for each block of tokens it sizes the three encodings (stored, fixed,
//! dynamic) and writes the smallest, ties going to fixed over dynamic and to dynamic/fixed over
//! stored, exactly as Go decides.

use crate::huffman::{
    FIXED_LITERAL_ENCODING, FIXED_OFFSET_ENCODING, HCode, HuffmanEncoder, MAX_NUM_LIT,
};
use crate::token::{
    LENGTH_BASE, LENGTH_EXTRA_BITS, OFFSET_BASE, OFFSET_EXTRA_BITS, Token, length_code, offset_code,
};

const OFFSET_CODE_COUNT: usize = 30;
const LENGTH_CODES_START: usize = 257;
const CODEGEN_CODE_COUNT: usize = 19;
const BAD_CODE: u8 = 255;
/// Largest stored block.
pub(crate) const MAX_STORE_BLOCK_SIZE: usize = 65535;

// The order in which code length code lengths are written (RFC 1951 3.2.7).
const CODEGEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Writes blocks into an in-memory byte buffer (`out`), which the caller drains.
pub(crate) struct BitWriter {
    /// Finished bytes not yet handed to the underlying writer.
    pub(crate) out: Vec<u8>,
    bits: u64,
    nbits: u32,
    literal_freq: [i32; MAX_NUM_LIT],
    offset_freq: [i32; OFFSET_CODE_COUNT],
    codegen_freq: [i32; CODEGEN_CODE_COUNT],
    codegen: Vec<u8>,
    literal_encoding: HuffmanEncoder,
    offset_encoding: HuffmanEncoder,
    codegen_encoding: HuffmanEncoder,
}

impl BitWriter {
    pub(crate) fn new() -> Self {
        BitWriter {
            out: Vec::with_capacity(64 * 1024),
            bits: 0,
            nbits: 0,
            literal_freq: [0; MAX_NUM_LIT],
            offset_freq: [0; OFFSET_CODE_COUNT],
            codegen_freq: [0; CODEGEN_CODE_COUNT],
            codegen: vec![0; MAX_NUM_LIT + OFFSET_CODE_COUNT + 1],
            literal_encoding: HuffmanEncoder::new(MAX_NUM_LIT),
            offset_encoding: HuffmanEncoder::new(OFFSET_CODE_COUNT),
            codegen_encoding: HuffmanEncoder::new(CODEGEN_CODE_COUNT),
        }
    }

    /// Pads the pending bits to a byte boundary and moves them to `out`.
    pub(crate) fn flush(&mut self) {
        while self.nbits > 0 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits = self.nbits.saturating_sub(8);
        }
        self.bits = 0;
    }

    fn write_bits(&mut self, b: u32, nb: u32) {
        self.bits |= u64::from(b) << self.nbits;
        self.nbits += nb;
        if self.nbits >= 48 {
            self.out.extend_from_slice(&self.bits.to_le_bytes()[..6]);
            self.bits >>= 48;
            self.nbits -= 48;
        }
    }

    fn write_code(&mut self, c: HCode) {
        self.write_bits(u32::from(c.code), u32::from(c.len));
    }

    // Byte-aligned raw bytes (a stored block's content).
    fn write_bytes(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.nbits % 8, 0, "write_bytes with unfinished bits");
        self.flush();
        self.out.extend_from_slice(bytes);
    }

    /// A stored block header for `length` bytes (final when `eof`).
    pub(crate) fn write_stored_header(&mut self, length: usize, eof: bool) {
        self.write_bits(u32::from(eof), 3);
        self.flush();
        self.write_bits(length as u32 & 0xffff, 16);
        self.write_bits(!(length as u16) as u32, 16);
    }

    fn write_fixed_header(&mut self, eof: bool) {
        self.write_bits(if eof { 3 } else { 2 }, 3);
    }

    /// Writes `tokens` as one block, stored (when `input`, the bytes they encode, is known and
    /// small enough), fixed or dynamic, whichever is smallest.
    pub(crate) fn write_block(&mut self, tokens: &[Token], eof: bool, input: Option<&[u8]>) {
        let (num_literals, num_offsets) = self.index_tokens(tokens);

        let stored = input.filter(|i| i.len() <= MAX_STORE_BLOCK_SIZE);
        let mut extra_bits = 0usize;
        if stored.is_some() {
            // Extra bits cost the same in fixed and dynamic blocks; they only matter against stored.
            for code in LENGTH_CODES_START + 8..num_literals {
                extra_bits += self.literal_freq[code] as usize
                    * usize::from(LENGTH_EXTRA_BITS[code - LENGTH_CODES_START]);
            }
            for (freq, extra) in self.offset_freq[..num_offsets]
                .iter()
                .zip(OFFSET_EXTRA_BITS)
                .skip(4)
            {
                extra_bits += *freq as usize * usize::from(extra);
            }
        }

        let mut size = self.fixed_size(extra_bits);
        self.generate_codegen(num_literals, num_offsets);
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (dynamic_size, num_codegens) = self.dynamic_size(extra_bits);
        let dynamic = dynamic_size < size;
        if dynamic {
            size = dynamic_size;
        }

        if let Some(input) = stored
            && (input.len() + 5) * 8 < size
        {
            self.write_stored_header(input.len(), eof);
            self.write_bytes(input);
            return;
        }

        if dynamic {
            self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
            let (lit, off) = (
                std::mem::take(&mut self.literal_encoding.codes),
                std::mem::take(&mut self.offset_encoding.codes),
            );
            self.write_tokens(tokens, &lit, &off);
            self.literal_encoding.codes = lit;
            self.offset_encoding.codes = off;
        } else {
            self.write_fixed_header(eof);
            self.write_tokens(
                tokens,
                &FIXED_LITERAL_ENCODING.codes,
                &FIXED_OFFSET_ENCODING.codes,
            );
        }
    }

    // Symbol frequencies of the block (plus its end marker) and the dynamic codes for them;
    // returns how many literal/length and offset codes the header must list.
    fn index_tokens(&mut self, tokens: &[Token]) -> (usize, usize) {
        self.literal_freq.fill(0);
        self.offset_freq.fill(0);
        for t in tokens.iter().chain(std::iter::once(&Token::END_BLOCK)) {
            if t.is_literal() {
                self.literal_freq[t.literal_value()] += 1;
            } else {
                self.literal_freq[LENGTH_CODES_START + length_code(t.xlength())] += 1;
                self.offset_freq[offset_code(t.xoffset())] += 1;
            }
        }
        let mut num_literals = MAX_NUM_LIT;
        while self.literal_freq[num_literals - 1] == 0 {
            num_literals -= 1;
        }
        let mut num_offsets = OFFSET_CODE_COUNT;
        while num_offsets > 0 && self.offset_freq[num_offsets - 1] == 0 {
            num_offsets -= 1;
        }
        if num_offsets == 0 {
            // A block without matches still describes one offset code.
            self.offset_freq[0] = 1;
            num_offsets = 1;
        }
        self.literal_encoding.generate(&self.literal_freq, 15);
        self.offset_encoding.generate(&self.offset_freq, 15);
        (num_literals, num_offsets)
    }

    // The run-length coded code lengths of the dynamic header (RFC 1951 3.2.7) into `codegen`,
    // terminated by BAD_CODE, and their frequencies, with Go's choice of runs.
    fn generate_codegen(&mut self, num_literals: usize, num_offsets: usize) {
        self.codegen_freq.fill(0);
        let codegen = &mut self.codegen;
        for (i, c) in codegen[..num_literals].iter_mut().enumerate() {
            *c = self.literal_encoding.codes[i].len as u8;
        }
        for (i, c) in codegen[num_literals..num_literals + num_offsets]
            .iter_mut()
            .enumerate()
        {
            *c = self.offset_encoding.codes[i].len as u8;
        }
        codegen[num_literals + num_offsets] = BAD_CODE;

        let freq = &mut self.codegen_freq;
        let mut size = codegen[0];
        let mut count: i32 = 1;
        let mut out_index = 0;
        let mut in_index = 1;
        while size != BAD_CODE {
            // The input runs ahead of the output, so rewriting `codegen` in place is safe.
            let next_size = codegen[in_index];
            in_index += 1;
            if next_size == size {
                count += 1;
                continue;
            }
            if size != 0 {
                codegen[out_index] = size;
                out_index += 1;
                freq[usize::from(size)] += 1;
                count -= 1;
                while count >= 3 {
                    let n = count.min(6);
                    codegen[out_index] = 16;
                    codegen[out_index + 1] = (n - 3) as u8;
                    out_index += 2;
                    freq[16] += 1;
                    count -= n;
                }
            } else {
                while count >= 11 {
                    let n = count.min(138);
                    codegen[out_index] = 18;
                    codegen[out_index + 1] = (n - 11) as u8;
                    out_index += 2;
                    freq[18] += 1;
                    count -= n;
                }
                if count >= 3 {
                    codegen[out_index] = 17;
                    codegen[out_index + 1] = (count - 3) as u8;
                    out_index += 2;
                    freq[17] += 1;
                    count = 0;
                }
            }
            count -= 1;
            while count >= 0 {
                codegen[out_index] = size;
                out_index += 1;
                freq[usize::from(size)] += 1;
                count -= 1;
            }
            size = next_size;
            count = 1;
        }
        codegen[out_index] = BAD_CODE;
    }

    fn dynamic_size(&self, extra_bits: usize) -> (usize, usize) {
        let mut num_codegens = CODEGEN_CODE_COUNT;
        while num_codegens > 4 && self.codegen_freq[CODEGEN_ORDER[num_codegens - 1]] == 0 {
            num_codegens -= 1;
        }
        let header = 3
            + 5
            + 5
            + 4
            + 3 * num_codegens
            + self.codegen_encoding.bit_length(&self.codegen_freq)
            + self.codegen_freq[16] as usize * 2
            + self.codegen_freq[17] as usize * 3
            + self.codegen_freq[18] as usize * 7;
        let size = header
            + self.literal_encoding.bit_length(&self.literal_freq)
            + self.offset_encoding.bit_length(&self.offset_freq)
            + extra_bits;
        (size, num_codegens)
    }

    fn fixed_size(&self, extra_bits: usize) -> usize {
        3 + FIXED_LITERAL_ENCODING.bit_length(&self.literal_freq)
            + FIXED_OFFSET_ENCODING.bit_length(&self.offset_freq)
            + extra_bits
    }

    fn write_dynamic_header(
        &mut self,
        num_literals: usize,
        num_offsets: usize,
        num_codegens: usize,
        eof: bool,
    ) {
        self.write_bits(if eof { 5 } else { 4 }, 3);
        self.write_bits((num_literals - 257) as u32, 5);
        self.write_bits((num_offsets - 1) as u32, 5);
        self.write_bits((num_codegens - 4) as u32, 4);
        for &symbol in &CODEGEN_ORDER[..num_codegens] {
            let len = self.codegen_encoding.codes[symbol].len;
            self.write_bits(u32::from(len), 3);
        }
        let mut i = 0;
        loop {
            let word = self.codegen[i];
            i += 1;
            if word == BAD_CODE {
                break;
            }
            let code = self.codegen_encoding.codes[usize::from(word)];
            self.write_code(code);
            let extra = match word {
                16 => 2,
                17 => 3,
                18 => 7,
                _ => continue,
            };
            let value = self.codegen[i];
            i += 1;
            self.write_bits(u32::from(value), extra);
        }
    }

    fn write_tokens(&mut self, tokens: &[Token], lit: &[HCode], off: &[HCode]) {
        for t in tokens.iter().chain(std::iter::once(&Token::END_BLOCK)) {
            if t.is_literal() {
                self.write_code(lit[t.literal_value()]);
                continue;
            }
            let length = t.xlength();
            let lcode = length_code(length);
            self.write_code(lit[lcode + LENGTH_CODES_START]);
            let extra = u32::from(LENGTH_EXTRA_BITS[lcode]);
            if extra > 0 {
                self.write_bits(length - LENGTH_BASE[lcode], extra);
            }
            let offset = t.xoffset();
            let ocode = offset_code(offset);
            self.write_code(off[ocode]);
            let extra = u32::from(OFFSET_EXTRA_BITS[ocode]);
            if extra > 0 {
                self.write_bits(offset - OFFSET_BASE[ocode], extra);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_empty_stored_block_is_go_s_trailer() {
        let mut w = BitWriter::new();
        w.write_stored_header(0, true);
        w.flush();
        assert_eq!(w.out, [0x01, 0x00, 0x00, 0xff, 0xff]);
    }

    #[test]
    fn short_blocks_are_fixed_and_incompressible_ones_stored() {
        // "a": fixed literal 'a' (8 bits) + end of block (7 bits) + 3 header bits beats
        // 5 bytes of stored overhead.
        let mut w = BitWriter::new();
        w.write_block(&[Token::literal(b'a')], false, Some(b"a"));
        w.write_stored_header(0, true);
        w.flush();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&w.out[..]), &mut out)
            .unwrap();
        assert_eq!(out, b"a");
        assert_eq!(w.out[0] & 0b111, 0b010, "a fixed block");

        // 300 distinct-ish bytes as literals: a stored block is smaller than any code.
        let input: Vec<u8> = (0..=255u8).chain(0..44).collect();
        let tokens: Vec<Token> = input.iter().map(|b| Token::literal(*b)).collect();
        let mut w = BitWriter::new();
        w.write_block(&tokens, false, Some(&input));
        assert_eq!(w.out[0] & 0b111, 0b000, "a stored block");
        assert_eq!(&w.out[1..5], &[44, 1, !44u8, !1u8]);
        assert_eq!(&w.out[5..], &input[..]);

        // Without the input (Go passes nil once the window moved on), never stored.
        let mut w = BitWriter::new();
        w.write_block(&tokens, false, None);
        assert_ne!(w.out[0] & 0b110, 0);
    }

    #[test]
    fn codegen_uses_runs_as_go_does() {
        let mut w = BitWriter::new();
        // Literals 0..=3 with frequencies 1, 2, 4, 8 and the end marker (1) get lengths
        // 4, 3, 2, 1 and 4; 252 unused literals lie between 3 and 256.
        let tokens: Vec<Token> = [(0u8, 1), (1, 2), (2, 4), (3, 8)]
            .iter()
            .flat_map(|&(b, n)| std::iter::repeat_n(Token::literal(b), n))
            .collect();
        let (num_literals, num_offsets) = w.index_tokens(&tokens);
        assert_eq!((num_literals, num_offsets), (257, 1));
        w.generate_codegen(num_literals, num_offsets);
        let end = w.codegen.iter().position(|c| *c == BAD_CODE).unwrap();
        // 252 zeros are two 18-runs (138 + 114); the one offset code has length 1.
        assert_eq!(&w.codegen[..end], &[4, 3, 2, 1, 18, 127, 18, 103, 4, 1]);
        assert_eq!(w.codegen_freq[18], 2);
    }
}
