//! Differential test against the real Go: a tiny stdlib-only Go program (built here with the `go`
//! on PATH, offline) compresses each input with `compress/gzip` / `compress/flate` at
//! `DefaultCompression`, issuing the same sequence of `Write` calls as this test issues to
//! goflate; the outputs must be identical bytes.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use goflate::{DeflateWriter, GzipWriter};

const GO_PROGRAM: &str = r#"package main

// Usage: ref gzip|flate INPUT OUTPUT CHUNKS MTIME
// Writes INPUT through Go's writer in Write calls of the sizes CHUNKS lists (comma-separated,
// cycled; 0 = everything left), then closes it.

import (
	"compress/flate"
	"compress/gzip"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	data, err := os.ReadFile(os.Args[2])
	check(err)
	out, err := os.Create(os.Args[3])
	check(err)
	var sizes []int
	for _, s := range strings.Split(os.Args[4], ",") {
		n, err := strconv.Atoi(s)
		check(err)
		sizes = append(sizes, n)
	}
	mtime, err := strconv.ParseInt(os.Args[5], 10, 64)
	check(err)
	var w io.WriteCloser
	if os.Args[1] == "gzip" {
		z := gzip.NewWriter(out)
		if mtime != 0 {
			z.ModTime = time.Unix(mtime, 0)
		}
		w = z
	} else {
		w, err = flate.NewWriter(out, flate.DefaultCompression)
		check(err)
	}
	for i := 0; len(data) > 0; i++ {
		n := sizes[i%len(sizes)]
		if n == 0 || n > len(data) {
			n = len(data)
		}
		_, err := w.Write(data[:n])
		check(err)
		data = data[n:]
	}
	check(w.Close())
	check(out.Close())
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}
"#;

fn cache_dir() -> PathBuf {
    std::env::var_os("GANTRY_CACHE_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/gantry"),
        PathBuf::from,
    )
}

struct Reference {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

// Built once per test binary; stdlib only, so nothing is downloaded (GOPROXY=off).
fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.go"), GO_PROGRAM).unwrap();
        let bin = dir.path().join("ref");
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg("main.go")
            .current_dir(dir.path())
            .env("GOCACHE", cache_dir().join("go/build"))
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .env_remove("GOFLAGS")
            .env_remove("GOPATH")
            .output()
            .expect("the `go` command is needed to build the reference compressor");
        assert!(
            out.status.success(),
            "go build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Reference { dir, bin }
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Gzip { mtime: u32 },
    Flate,
}

fn go_compress(name: &str, data: &[u8], chunks: &[usize], format: Format) -> Vec<u8> {
    let r = reference();
    let input = r.dir.path().join(format!("{name}.in"));
    let output = r.dir.path().join(format!("{name}.out"));
    std::fs::write(&input, data).unwrap();
    let (mode, mtime) = match format {
        Format::Gzip { mtime } => ("gzip", mtime),
        Format::Flate => ("flate", 0),
    };
    let chunks = chunks
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let status = Command::new(&r.bin)
        .arg(mode)
        .arg(&input)
        .arg(&output)
        .arg(&chunks)
        .arg(mtime.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "the Go reference failed on {name}");
    let bytes = std::fs::read(&output).unwrap();
    std::fs::remove_file(&input).unwrap();
    std::fs::remove_file(&output).unwrap();
    bytes
}

fn write_in_chunks(w: &mut impl Write, mut data: &[u8], chunks: &[usize]) {
    for i in 0.. {
        if data.is_empty() {
            break;
        }
        let n = match chunks[i % chunks.len()] {
            0 => data.len(),
            n => n.min(data.len()),
        };
        // One `write` call is one Go `Write`: goflate consumes the whole buffer.
        assert_eq!(w.write(&data[..n]).unwrap(), n);
        data = &data[n..];
    }
}

fn ours(data: &[u8], chunks: &[usize], format: Format) -> Vec<u8> {
    match format {
        Format::Gzip { mtime } => {
            let mut w = GzipWriter::with_mtime(Vec::new(), mtime);
            write_in_chunks(&mut w, data, chunks);
            w.finish().unwrap()
        }
        Format::Flate => {
            let mut w = DeflateWriter::new(Vec::new());
            write_in_chunks(&mut w, data, chunks);
            w.finish().unwrap()
        }
    }
}

fn assert_same(name: &str, data: &[u8], chunks: &[usize], format: Format) {
    let go = go_compress(name, data, chunks, format);
    let rust = ours(data, chunks, format);
    if let Some(at) = go.iter().zip(&rust).position(|(a, b)| a != b) {
        panic!(
            "{name} (writes {chunks:?}): outputs differ at byte {at} of {} (Go) / {} (goflate)",
            go.len(),
            rust.len()
        );
    }
    assert_eq!(
        go.len(),
        rust.len(),
        "{name} (writes {chunks:?}): one output is a prefix of the other"
    );
}

// Deterministic pseudo-random bytes (xorshift64).
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

// Text-like input: words from a small vocabulary in a pseudo-random order, so matches of all
// lengths and distances occur.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "apiVersion: ",
        "kind: Kustomization\n",
        "metadata:\n  name: ",
        "flux-system",
        "  namespace: default\n",
        "spec:\n",
        "  interval: 10m\n",
        "  sourceRef:\n    kind: GitRepository\n",
        "gantry",
        " ",
        "-",
        "\n",
        "replicas: 3\n",
        "image: ghcr.io/example/app:v1.2.3\n",
    ];
    let r = random(len, seed);
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[usize::from(r[i % r.len()]) % WORDS.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

// Stretches of text, noise, zeros, long repeats and copies from far back (beyond the window).
fn mixed(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut part = 0u64;
    while out.len() < len {
        let n = 1000 + (random(1, seed + part)[0] as usize) * 700;
        match part % 5 {
            0 => out.extend(text(n, seed + part)),
            1 => out.extend(random(n, seed + part)),
            2 => out.extend(std::iter::repeat_n(0u8, n)),
            3 => out.extend(b"abcabcabd".iter().cycle().take(n)),
            _ => {
                let from = out.len().saturating_sub(40_000 + n);
                let copy: Vec<u8> = out[from..].iter().take(n).copied().collect();
                out.extend(copy);
            }
        }
        part += 1;
    }
    out.truncate(len);
    out
}

const ALL: &[usize] = &[0];

#[test]
fn tiny_inputs() {
    let gz = Format::Gzip { mtime: 0 };
    assert_same("empty", b"", ALL, gz);
    assert_same("empty-flate", b"", ALL, Format::Flate);
    assert_same("one-byte", b"x", ALL, gz);
    assert_same("four-bytes", b"abab", ALL, gz);
    assert_same("sixteen", b"0123456789abcdef", ALL, gz);
    assert_same(
        "mtime",
        b"hello, world\n",
        ALL,
        Format::Gzip {
            mtime: 1_700_000_000,
        },
    );
}

#[test]
fn text_random_and_repetitive() {
    let gz = Format::Gzip { mtime: 0 };
    assert_same("text", &text(300_000, 1), ALL, gz);
    assert_same("text-flate", &text(300_000, 2), ALL, Format::Flate);
    assert_same("random", &random(300_000, 3), ALL, gz);
    assert_same("zeros", &vec![0u8; 1 << 20], ALL, gz);
    assert_same("abc", &b"abc".repeat(200_000), ALL, gz);
    // A short period with a near miss every so often: long chains of 4-byte matches.
    let near: Vec<u8> = (0..500_000u32)
        .map(|i| {
            if i % 1021 == 0 {
                b'#'
            } else {
                b"abcd"[(i % 4) as usize]
            }
        })
        .collect();
    assert_same("near-repeats", &near, ALL, gz);
    // This crate's own sources: real text. Embedded when compiled: the test executable may be
    // reused from a checkout at another path (CI clones share the target directory).
    let src = [
        include_bytes!("../src/deflate.rs").as_slice(),
        include_bytes!("../src/bit_writer.rs"),
        include_bytes!("../src/huffman.rs"),
        include_bytes!("../src/gzip.rs"),
        include_bytes!("../src/token.rs"),
    ]
    .concat();
    assert_same("sources", &src, ALL, gz);
}

#[test]
fn block_and_window_boundaries() {
    let gz = Format::Gzip { mtime: 0 };
    // Random bytes are all literals: 16384 tokens end a block. 65535 is the largest stored
    // block; 32768 the window; 65274 = 2 * 32768 - 262 is where the window slides.
    for base in [
        258usize, 262, 16_384, 32_768, 65_274, 65_535, 65_536, 98_304, 131_072,
    ] {
        for len in [base - 1, base, base + 1] {
            assert_same(&format!("random-{len}"), &random(len, len as u64), ALL, gz);
            assert_same(&format!("mixed-{len}"), &mixed(len, len as u64), ALL, gz);
            assert_same(&format!("text-{len}"), &text(len, len as u64), ALL, gz);
        }
    }
}

#[test]
fn write_call_patterns() {
    let gz = Format::Gzip { mtime: 0 };
    let data = mixed(400_000, 7);
    for chunks in [
        &[1][..],
        &[7],
        &[512],
        &[4096],
        &[32_768],
        &[65_536],
        &[100_000],
        &[1, 511, 4096, 32_768, 3],
        // A tar stream's shape: a header block, file data in 32 KiB reads, padding.
        &[512, 32_768, 32_768, 1000, 24, 512, 300, 212],
    ] {
        assert_same("patterns", &data, chunks, gz);
    }
    assert_same("patterns-flate", &data, &[333], Format::Flate);
}

#[test]
fn ten_mib_mixed() {
    let data = mixed(10 << 20, 11);
    assert_same("10mib", &data, ALL, Format::Gzip { mtime: 0 });
    assert_same("10mib-32k", &data, &[32_768], Format::Gzip { mtime: 0 });
}

#[test]
fn past_the_hash_offset_rebase() {
    // Go rebases its hash chain positions once 16 MiB have gone through the window.
    let data = mixed(20 << 20, 13);
    assert_same("20mib", &data, &[32_768, 512], Format::Gzip { mtime: 0 });
}

// A random block repeated at distance 32766: the match search at window index 65274 (where the
// window slides) lands on a match 32766 back, which exists only if the slide comes after it.
// Whether it does depends on the write sizes (a single write fills the window first; 1-byte
// writes slide it as soon as the index reaches 65274).
fn slide_sensitive() -> Vec<u8> {
    random(32_766, 5).repeat(4)
}

#[test]
fn go_s_output_depends_on_the_write_sizes() {
    // Why every caller must issue Go's sequence of writes (e.g. a tar writer's), and a check
    // that the patterns below exercise it.
    let data = slide_sensitive();
    let gz = Format::Gzip { mtime: 0 };
    let whole = go_compress("whole", &data, ALL, gz);
    let bytewise = go_compress("bytewise", &data, &[1], gz);
    assert_ne!(
        whole, bytewise,
        "Go's output did not depend on the write sizes"
    );
    for chunks in [ALL, &[1][..], &[7], &[512], &[32_768]] {
        assert_same("slide", &data, chunks, gz);
    }
}
