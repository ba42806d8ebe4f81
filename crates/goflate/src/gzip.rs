// Copyright 2010 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE-GO file.
//
// Ported from Go's src/compress/gzip/gzip.go (the writer, without name, comment and extra).

//! Go's gzip writer: a 10-byte header (no name, comment or extra field; mtime only when set;
//! XFL 0 at the default level; OS 255 "unknown"), the DEFLATE stream, then CRC-32 and size.

use std::io::{self, Write};

use crate::deflate::DeflateWriter;

/// A gzip (RFC 1952) writer whose output is byte for byte what Go's `gzip.NewWriter(w)` writes
/// (DefaultCompression) for the same sequence of `Write` calls followed by `Close`.
///
/// Each `write` is one Go `Write` call (the whole buffer is consumed); see [`DeflateWriter`] for
/// why that matters and what `flush` does.
pub struct GzipWriter<W: Write> {
    deflate: DeflateWriter<W>,
    crc: crc32fast::Hasher,
    size: u32,
}

impl<W: Write> GzipWriter<W> {
    /// A writer with Go's default header: modification time 0 (unset), as Flux's artifact
    /// storage writes it.
    pub fn new(inner: W) -> Self {
        Self::with_mtime(inner, 0)
    }

    /// A writer whose header carries `mtime` (seconds since the Unix epoch; 0 means unset), as
    /// Go writes `Header.ModTime`.
    pub fn with_mtime(inner: W, mtime: u32) -> Self {
        let mut deflate = DeflateWriter::new(inner);
        let mut header = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        header[4..8].copy_from_slice(&mtime.to_le_bytes());
        deflate.put_raw(&header);
        GzipWriter {
            deflate,
            crc: crc32fast::Hasher::new(),
            size: 0,
        }
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        self.deflate.get_ref()
    }

    /// Ends the stream (Go's `Close`): the final DEFLATE block, CRC-32 and size (mod 2^32), all
    /// written to the underlying writer, which is returned.
    pub fn finish(mut self) -> io::Result<W> {
        let crc = self.crc.clone().finalize();
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&crc.to_le_bytes());
        trailer[4..].copy_from_slice(&self.size.to_le_bytes());
        self.deflate.finish_with(&trailer)?;
        Ok(self.deflate.into_inner())
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.deflate.write(buf)?;
        self.crc.update(&buf[..n]);
        self.size = self.size.wrapping_add(n as u32);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.deflate.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn empty_input_is_go_s_empty_gzip() {
        // What Go's gzip.NewWriter writes when closed without input.
        let out = GzipWriter::new(Vec::new()).finish().unwrap();
        assert_eq!(
            out,
            [
                0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0,
                0, 0, 0
            ]
        );
    }

    #[test]
    fn the_header_carries_mtime_and_the_trailer_crc_and_size() {
        let mut w = GzipWriter::with_mtime(Vec::new(), 0x0102_0304);
        w.write_all(b"hello, ").unwrap();
        w.write_all(b"world").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..10], &[0x1f, 0x8b, 8, 0, 4, 3, 2, 1, 0, 0xff]);
        let n = out.len();
        assert_eq!(&out[n - 4..], &12u32.to_le_bytes());
        assert_eq!(
            &out[n - 8..n - 4],
            &crc32fast::hash(b"hello, world").to_le_bytes()
        );
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"hello, world");
    }
}
