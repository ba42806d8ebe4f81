// Copyright 2009 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE-GO file.
//
// Ported from Go's src/compress/flate/huffman_code.go.

//! Go's Huffman code construction: length-limited code lengths by the package-merge variant in
//! `bitCounts`, canonical codes assigned per length in literal order. Which code lengths a
//! frequency table gets is not unique (ties), so this follows Go's choices exactly.

use std::sync::LazyLock;

/// Literal/length alphabet size (256 literals, end of block, 29 length codes).
pub(crate) const MAX_NUM_LIT: usize = 286;
/// Longest code `bitCounts` can produce plus one.
const MAX_BITS_LIMIT: usize = 16;

/// A code (bit-reversed, ready to emit LSB first) and its length in bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HCode {
    pub(crate) code: u16,
    pub(crate) len: u16,
}

#[derive(Clone, Copy, Debug)]
struct LiteralNode {
    literal: u16,
    freq: i32,
}

// The sentinel Go appends after the last leaf.
const MAX_NODE: LiteralNode = LiteralNode {
    literal: u16::MAX,
    freq: i32::MAX,
};

#[derive(Clone, Copy, Default)]
struct LevelInfo {
    last_freq: i32,
    next_char_freq: i32,
    next_pair_freq: i32,
    needed: i32,
}

/// The codes of one alphabet.
#[derive(Clone, Debug)]
pub(crate) struct HuffmanEncoder {
    pub(crate) codes: Vec<HCode>,
    bit_count: [i32; 17],
    // Scratch list reused across blocks.
    list: Vec<LiteralNode>,
}

impl HuffmanEncoder {
    pub(crate) fn new(size: usize) -> Self {
        HuffmanEncoder {
            codes: vec![HCode::default(); size],
            bit_count: [0; 17],
            list: Vec::with_capacity(MAX_NUM_LIT + 1),
        }
    }

    /// Total bits to encode `freq` with these codes.
    pub(crate) fn bit_length(&self, freq: &[i32]) -> usize {
        freq.iter()
            .zip(&self.codes)
            .filter(|(f, _)| **f != 0)
            .map(|(f, c)| *f as usize * usize::from(c.len))
            .sum()
    }

    /// Codes for `freq` (one entry per symbol) no longer than `max_bits`.
    pub(crate) fn generate(&mut self, freq: &[i32], max_bits: i32) {
        let mut list = std::mem::take(&mut self.list);
        list.clear();
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                list.push(LiteralNode {
                    literal: i as u16,
                    freq: f,
                });
            } else {
                self.codes[i].len = 0;
            }
        }
        if list.len() <= 2 {
            // Go gives one or two used symbols 1-bit codes 0 and 1 in literal order.
            for (i, node) in list.iter().enumerate() {
                self.codes[usize::from(node.literal)] = HCode {
                    code: i as u16,
                    len: 1,
                };
            }
        } else {
            // Go's byFreq order: frequency, then literal (a total order, so any sort agrees).
            list.sort_unstable_by_key(|n| (n.freq, n.literal));
            let bit_count = self.bit_counts(&mut list, max_bits);
            self.assign_encoding_and_size(bit_count, &mut list);
        }
        self.list = list;
    }

    // How many literals get each code length (index = length), `list` sorted by frequency.
    // Go's `bitCounts`: a boundary package-merge that tracks, per level, the frequencies of the
    // next leaf and the next pair, and how many leaves each level's chain has taken.
    fn bit_counts(&mut self, list: &mut Vec<LiteralNode>, max_bits: i32) -> usize {
        let n = list.len() as i32;
        list.push(MAX_NODE);
        let max_bits = max_bits.min(n - 1);
        let mb = max_bits as usize;

        let mut levels = [LevelInfo::default(); MAX_BITS_LIMIT + 1];
        let mut leaf_counts = [[0i32; MAX_BITS_LIMIT]; MAX_BITS_LIMIT];

        for level in 1..=mb {
            levels[level] = LevelInfo {
                last_freq: list[1].freq,
                next_char_freq: list[2].freq,
                next_pair_freq: list[0].freq + list[1].freq,
                needed: 0,
            };
            leaf_counts[level][level] = 2;
            if level == 1 {
                levels[level].next_pair_freq = i32::MAX;
            }
        }
        levels[mb].needed = 2 * n - 4;

        let mut level = mb;
        loop {
            let l = levels[level];
            if l.next_pair_freq == i32::MAX && l.next_char_freq == i32::MAX {
                // No more chains at this level: the level above takes no more pairs.
                levels[level].needed = 0;
                levels[level + 1].next_pair_freq = i32::MAX;
                level += 1;
                continue;
            }
            let prev_freq = l.last_freq;
            if l.next_char_freq < l.next_pair_freq {
                // The next item on this row is a leaf.
                let next = leaf_counts[level][level] + 1;
                levels[level].last_freq = l.next_char_freq;
                leaf_counts[level][level] = next;
                levels[level].next_char_freq = list[next as usize].freq;
            } else {
                // The next item is a pair from the previous row: take its chain.
                levels[level].last_freq = l.next_pair_freq;
                let (lower, upper) = leaf_counts.split_at_mut(level);
                upper[0][..level].copy_from_slice(&lower[level - 1][..level]);
                levels[level - 1].needed = 2;
            }
            levels[level].needed -= 1;
            if levels[level].needed == 0 {
                if level == mb {
                    break;
                }
                levels[level + 1].next_pair_freq = prev_freq + levels[level].last_freq;
                level += 1;
            } else {
                while levels[level - 1].needed > 0 {
                    level -= 1;
                }
            }
        }
        list.pop();

        let counts = &leaf_counts[mb];
        // Leaves at the deepest level of the chain have the shortest codes.
        for (bits, level) in (1..).zip((1..=mb).rev()) {
            self.bit_count[bits] = counts[level] - counts[level - 1];
        }
        mb + 1
    }

    // Canonical codes: the least frequent literals get the longest codes; within one length,
    // codes go up in literal order.
    fn assign_encoding_and_size(&mut self, bit_count_len: usize, list: &mut Vec<LiteralNode>) {
        let mut code: u16 = 0;
        for n in 0..bit_count_len {
            let bits = self.bit_count[n];
            code <<= 1;
            if n == 0 || bits == 0 {
                continue;
            }
            let start = list.len() - bits as usize;
            let chunk = &mut list[start..];
            chunk.sort_unstable_by_key(|node| node.literal);
            for node in chunk.iter() {
                self.codes[usize::from(node.literal)] = HCode {
                    code: reverse_bits(code, n as u8),
                    len: n as u16,
                };
                code = code.wrapping_add(1);
            }
            list.truncate(start);
        }
    }
}

/// The low `bit_length` bits of `number`, reversed.
pub(crate) fn reverse_bits(number: u16, bit_length: u8) -> u16 {
    (number << (16 - u32::from(bit_length))).reverse_bits()
}

/// The fixed literal/length code of RFC 1951 3.2.6.
pub(crate) static FIXED_LITERAL_ENCODING: LazyLock<HuffmanEncoder> = LazyLock::new(|| {
    let mut h = HuffmanEncoder::new(MAX_NUM_LIT);
    for ch in 0..MAX_NUM_LIT as u16 {
        let (bits, size) = match ch {
            0..144 => (ch + 48, 8),
            144..256 => (ch + 400 - 144, 9),
            256..280 => (ch - 256, 7),
            _ => (ch + 192 - 280, 8),
        };
        h.codes[usize::from(ch)] = HCode {
            code: reverse_bits(bits, size),
            len: u16::from(size),
        };
    }
    h
});

/// The fixed offset code: 5 bits each.
pub(crate) static FIXED_OFFSET_ENCODING: LazyLock<HuffmanEncoder> = LazyLock::new(|| {
    let mut h = HuffmanEncoder::new(30);
    for (ch, code) in h.codes.iter_mut().enumerate() {
        *code = HCode {
            code: reverse_bits(ch as u16, 5),
            len: 5,
        };
    }
    h
});

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(freq: &[i32], max_bits: i32) -> Vec<u16> {
        let mut h = HuffmanEncoder::new(freq.len());
        h.generate(freq, max_bits);
        h.codes.iter().map(|c| c.len).collect()
    }

    // Kraft sum of the used codes is exactly 1 for a complete prefix code.
    fn kraft(lens: &[u16]) -> f64 {
        lens.iter()
            .filter(|l| **l > 0)
            .map(|l| 0.5f64.powi(i32::from(*l)))
            .sum()
    }

    #[test]
    fn one_or_two_symbols_get_one_bit_codes() {
        assert_eq!(lengths(&[0, 5, 0], 15), [0, 1, 0]);
        let mut h = HuffmanEncoder::new(4);
        h.generate(&[3, 0, 0, 9], 15);
        assert_eq!(h.codes[0], HCode { code: 0, len: 1 });
        assert_eq!(h.codes[3], HCode { code: 1, len: 1 });
    }

    #[test]
    fn codes_are_complete_prefix_codes_within_the_limit() {
        // Fibonacci frequencies force the longest unlimited codes.
        let mut fib = vec![1i32, 1];
        while fib.len() < 30 {
            let n = fib[fib.len() - 1] + fib[fib.len() - 2];
            fib.push(n);
        }
        for max_bits in [7, 9, 15] {
            let lens = lengths(&fib, max_bits);
            assert!(lens.iter().all(|l| (1..=max_bits as u16).contains(l)));
            assert!((kraft(&lens) - 1.0).abs() < 1e-12, "{lens:?}");
        }
        // Unlimited, the most frequent symbol gets 1 bit.
        assert_eq!(lengths(&fib[..10], 15)[9], 1);
    }

    #[test]
    fn canonical_codes_go_up_in_literal_order_within_a_length() {
        let mut h = HuffmanEncoder::new(4);
        h.generate(&[1, 1, 1, 1], 15);
        let codes: Vec<_> = h
            .codes
            .iter()
            .map(|c| (c.len, reverse_bits(c.code, 2)))
            .collect();
        assert_eq!(codes, [(2, 0), (2, 1), (2, 2), (2, 3)]);
    }

    #[test]
    fn fixed_codes_are_rfc_1951_s() {
        let lit = &FIXED_LITERAL_ENCODING.codes;
        assert_eq!((lit[0].len, reverse_bits(lit[0].code, 8)), (8, 0x30));
        assert_eq!((lit[144].len, reverse_bits(lit[144].code, 9)), (9, 0x190));
        assert_eq!((lit[256].len, reverse_bits(lit[256].code, 7)), (7, 0));
        assert_eq!((lit[280].len, reverse_bits(lit[280].code, 8)), (8, 0xc0));
        assert_eq!(
            FIXED_OFFSET_ENCODING.codes[3],
            HCode {
                code: reverse_bits(3, 5),
                len: 5
            }
        );
    }
}
