// Copyright 2009 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE-GO file.
//
// Ported from Go's src/compress/flate/token.go.

//! LZ77 tokens packed in a `u32` as Go packs them: literals below `1 << 30`, matches as
//! `1 << 30 | (length - 3) << 22 | (offset - 1)`.

const LENGTH_SHIFT: u32 = 22;
const OFFSET_MASK: u32 = (1 << LENGTH_SHIFT) - 1;
const MATCH_TYPE: u32 = 1 << 30;

/// A literal byte (or the end-of-block marker 256) or a back-reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token(u32);

impl Token {
    pub(crate) const END_BLOCK: Token = Token(256);

    pub(crate) fn literal(value: u8) -> Self {
        Token(u32::from(value))
    }

    /// A match of `xlength = length - 3`, `xoffset = offset - 1`.
    pub(crate) fn matched(xlength: u32, xoffset: u32) -> Self {
        Token(MATCH_TYPE + (xlength << LENGTH_SHIFT) + xoffset)
    }

    pub(crate) fn is_literal(self) -> bool {
        self.0 < MATCH_TYPE
    }

    /// The literal value (0..=256) of a literal token.
    pub(crate) fn literal_value(self) -> usize {
        self.0 as usize
    }

    /// `length - 3` of a match token.
    pub(crate) fn xlength(self) -> u32 {
        (self.0 - MATCH_TYPE) >> LENGTH_SHIFT
    }

    /// `offset - 1` of a match token.
    pub(crate) fn xoffset(self) -> u32 {
        self.0 & OFFSET_MASK
    }
}

/// Base of each length code's range (`length - 3`), RFC 1951 3.2.5.
pub(crate) const LENGTH_BASE: [u32; 29] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
    160, 192, 224, 255,
];

/// Base of each offset code's range (`offset - 1`).
pub(crate) const OFFSET_BASE: [u32; 30] = [
    0x000000, 0x000001, 0x000002, 0x000003, 0x000004, 0x000006, 0x000008, 0x00000c, 0x000010,
    0x000018, 0x000020, 0x000030, 0x000040, 0x000060, 0x000080, 0x0000c0, 0x000100, 0x000180,
    0x000200, 0x000300, 0x000400, 0x000600, 0x000800, 0x000c00, 0x001000, 0x001800, 0x002000,
    0x003000, 0x004000, 0x006000,
];

/// Extra bits of each length code.
pub(crate) const LENGTH_EXTRA_BITS: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];

/// Extra bits of each offset code.
pub(crate) const OFFSET_EXTRA_BITS: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

// Go spells these two tables out; they are "the last code whose base is not above the value",
// computed here from the bases so there is nothing to mistype.
const fn code_table<const N: usize>(bases: &[u32; N]) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut value = 0;
    while value < 256 {
        let mut code = 0;
        while code + 1 < N && bases[code + 1] <= value as u32 {
            code += 1;
        }
        table[value] = code as u8;
        value += 1;
    }
    table
}

const LENGTH_CODES: [u8; 256] = code_table(&LENGTH_BASE);
const OFFSET_CODES: [u8; 256] = code_table(&OFFSET_BASE);

/// The length code (0..=28) of `length - 3`.
pub(crate) fn length_code(xlength: u32) -> usize {
    usize::from(LENGTH_CODES[(xlength & 0xff) as usize])
}

/// The offset code (0..=29) of `offset - 1`.
pub(crate) fn offset_code(xoffset: u32) -> usize {
    let code = if xoffset < 256 {
        OFFSET_CODES[xoffset as usize]
    } else if xoffset >> 7 < 256 {
        OFFSET_CODES[(xoffset >> 7) as usize] + 14
    } else {
        OFFSET_CODES[((xoffset >> 14) & 0xff) as usize] + 28
    };
    usize::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_tables_match_go_s() {
        // Spot checks against Go's spelled-out lengthCodes/offsetCodes.
        assert_eq!(
            [0, 7, 8, 9, 10, 16, 31, 32, 254, 255].map(length_code),
            [0, 7, 8, 8, 9, 12, 15, 16, 27, 28]
        );
        assert_eq!(
            [0, 3, 4, 5, 6, 8, 15, 16, 128, 255].map(offset_code),
            [0, 3, 4, 4, 5, 6, 7, 8, 14, 15]
        );
        // Beyond 255 Go shifts by 7 (then 14) and adds 14 (28).
        assert_eq!(offset_code(256), 16);
        assert_eq!(offset_code(32767), 29);
        assert_eq!(offset_code(0x6000), 29);
        assert_eq!(offset_code(0x5fff), 28);
    }

    #[test]
    fn tokens_round_trip() {
        let t = Token::matched(255, 32767);
        assert!(!t.is_literal());
        assert_eq!((t.xlength(), t.xoffset()), (255, 32767));
        let l = Token::literal(b'a');
        assert!(l.is_literal());
        assert_eq!(l.literal_value(), 97);
        assert!(Token::END_BLOCK.is_literal());
    }
}
