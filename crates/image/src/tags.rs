//! The tag store: each ImageRepository's last scanned tag list, on disk, one tag per line.
//!
//! `<root>/<namespace>/<name>.tags` is replaced whole on every scan (written to a temporary file
//! in the same directory, synced, renamed), so a crash leaves either the old list or the new one,
//! never half of one, and the store never holds more than the current lists. Readers stream the
//! file; nothing keeps a whole list in memory.
//!
//! While a list is written, [`TagWriter`] also computes what `status.lastScanResult` needs: the
//! count, Flux's revision (the Adler-32 checksum of the JSON array of the tags, in decimal, as
//! image-reflector-controller computes it when storing them) and the 10 greatest tags.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use gantry_api::image::v1::LATEST_TAGS_COUNT;

/// Where tag lists live (`<storage-path>/images`).
#[derive(Debug, Clone)]
pub struct TagStore {
    root: PathBuf,
}

impl TagStore {
    /// A store under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        TagStore { root: root.into() }
    }

    /// The file holding the tags of `namespace/name`.
    pub fn path(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join(namespace).join(format!("{name}.tags"))
    }

    /// Whether a list is stored for `namespace/name`.
    pub fn exists(&self, namespace: &str, name: &str) -> bool {
        self.path(namespace, name).is_file()
    }

    /// Starts writing a new list for `namespace/name`; it replaces the old one on
    /// [`TagWriter::commit`], and is discarded if the writer is dropped.
    pub fn writer(&self, namespace: &str, name: &str) -> io::Result<TagWriter> {
        let target = self.path(namespace, name);
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let file = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)?;
        Ok(TagWriter {
            target,
            file: BufWriter::with_capacity(64 * 1024, file),
            summary: TagSummary::default(),
        })
    }

    /// Calls `f` with each stored tag, in stored order, until it returns `false`. `Ok(false)`
    /// when nothing is stored for `namespace/name`.
    pub fn for_each_tag(
        &self,
        namespace: &str,
        name: &str,
        mut f: impl FnMut(&str) -> bool,
    ) -> io::Result<bool> {
        let Some(tags) = self.tags(namespace, name)? else {
            return Ok(false);
        };
        let mut reader = tags.reader;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(true);
            }
            let tag = line.trim_end_matches(['\n', '\r']);
            if !tag.is_empty() && !f(tag) {
                return Ok(true);
            }
        }
    }

    /// An iterator over the stored tags of `namespace/name`, `None` when nothing is stored.
    pub fn tags(&self, namespace: &str, name: &str) -> io::Result<Option<Tags>> {
        match File::open(self.path(namespace, name)) {
            Ok(file) => Ok(Some(Tags {
                reader: BufReader::with_capacity(64 * 1024, file),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the list of `namespace/name` (a deleted ImageRepository); missing is fine.
    pub fn remove(&self, namespace: &str, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(namespace, name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The stored tags of one repository, read line by line.
pub struct Tags {
    reader: BufReader<File>,
}

impl Iterator for Tags {
    type Item = io::Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {
                    let tag = line.trim_end_matches(['\n', '\r']);
                    if !tag.is_empty() {
                        return Some(Ok(tag.to_owned()));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A new tag list being written; see [`TagStore::writer`].
pub struct TagWriter {
    target: PathBuf,
    file: BufWriter<tempfile::NamedTempFile>,
    summary: TagSummary,
}

impl TagWriter {
    /// Appends `tag` (which must not contain a line break; registry tags cannot).
    pub fn push(&mut self, tag: &str) -> io::Result<()> {
        if tag.contains(['\n', '\r']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tag {tag:?} contains a line break"),
            ));
        }
        self.file.write_all(tag.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.summary.add(tag);
        Ok(())
    }

    /// The summary of what was pushed so far.
    pub fn summary(&self) -> &TagSummary {
        &self.summary
    }

    /// Makes the new list the stored one, atomically, and returns its summary.
    pub fn commit(self) -> io::Result<TagSummary> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.as_file().sync_all()?;
        file.persist(&self.target).map_err(|e| e.error)?;
        if let Some(dir) = self.target.parent() {
            // The rename itself must survive a crash too.
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(self.summary)
    }
}

/// Count, revision and greatest tags of a list, computed in one pass with constant memory.
#[derive(Debug, Clone)]
pub struct TagSummary {
    count: u64,
    adler: Adler32,
    // The greatest tags seen so far, as a min-heap so the smallest of them is dropped first.
    latest: BinaryHeap<Reverse<String>>,
}

impl Default for TagSummary {
    fn default() -> Self {
        let mut adler = Adler32::default();
        adler.update(b"[");
        TagSummary {
            count: 0,
            adler,
            latest: BinaryHeap::new(),
        }
    }
}

impl TagSummary {
    /// Adds the next tag of the list.
    pub fn add(&mut self, tag: &str) {
        if self.count > 0 {
            self.adler.update(b",");
        }
        json_string(tag, &mut self.adler);
        self.count += 1;
        if self.latest.len() < LATEST_TAGS_COUNT {
            self.latest.push(Reverse(tag.to_owned()));
        } else if self
            .latest
            .peek()
            .is_some_and(|Reverse(min)| tag > min.as_str())
        {
            self.latest.pop();
            self.latest.push(Reverse(tag.to_owned()));
        }
    }

    /// How many tags.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Flux's revision of the list: Adler-32 of its JSON encoding, in decimal.
    pub fn revision(&self) -> String {
        let mut adler = self.adler.clone();
        adler.update(b"]");
        adler.value().to_string()
    }

    /// The greatest tags, at most 10, in descending string order (`latestTags`).
    pub fn latest_tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self.latest.iter().map(|Reverse(t)| t.clone()).collect();
        tags.sort_unstable_by(|a, b| b.cmp(a));
        tags
    }
}

// Go's encoding/json spelling of a string (with its HTML escaping), fed to the checksum.
fn json_string(s: &str, adler: &mut Adler32) {
    adler.update(b"\"");
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<String> = match c {
            '"' => Some("\\\"".into()),
            '\\' => Some("\\\\".into()),
            '\n' => Some("\\n".into()),
            '\r' => Some("\\r".into()),
            '\t' => Some("\\t".into()),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => Some(format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => Some(format!("\\u{:04x}", c as u32)),
            _ => None,
        };
        if let Some(escape) = escape {
            adler.update(&s.as_bytes()[start..i]);
            adler.update(escape.as_bytes());
            start = i + c.len_utf8();
        }
    }
    adler.update(&s.as_bytes()[start..]);
    adler.update(b"\"");
}

/// Adler-32 (RFC 1950), what Go's `hash/adler32` computes.
#[derive(Debug, Clone)]
struct Adler32 {
    a: u32,
    b: u32,
}

impl Default for Adler32 {
    fn default() -> Self {
        Adler32 { a: 1, b: 0 }
    }
}

impl Adler32 {
    const MOD: u32 = 65521;
    // Largest run that cannot overflow `b` before reducing.
    const RUN: usize = 5552;

    fn update(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(Self::RUN) {
            for &byte in chunk {
                self.a += u32::from(byte);
                self.b += self.a;
            }
            self.a %= Self::MOD;
            self.b %= Self::MOD;
        }
    }

    fn value(&self) -> u32 {
        (self.b << 16) | self.a
    }
}

/// Reads a whole stored list into memory (tests and small tools only).
pub fn read_all(path: &Path) -> io::Result<Vec<String>> {
    let reader = BufReader::new(File::open(path)?);
    reader
        .lines()
        .filter(|l| l.as_ref().map_or(true, |l| !l.is_empty()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(tags: &[&str]) -> TagSummary {
        let mut s = TagSummary::default();
        tags.iter().for_each(|t| s.add(t));
        s
    }

    #[test]
    fn adler32_matches_known_values() {
        // Values of Go's adler32.Checksum (and zlib's adler32).
        let mut a = Adler32::default();
        a.update(b"Wikipedia");
        assert_eq!(a.value(), 0x11E6_0398);
        let mut a = Adler32::default();
        a.update(&vec![0xff; 100_000]);
        let mut naive = (1u64, 0u64);
        for _ in 0..100_000 {
            naive.0 = (naive.0 + 0xff) % 65521;
            naive.1 = (naive.1 + naive.0) % 65521;
        }
        assert_eq!(u64::from(a.value()), (naive.1 << 16) | naive.0);
    }

    #[test]
    fn revision_is_adler32_of_the_json_array() {
        let mut a = Adler32::default();
        a.update(br#"["1.0.0","1.1.0","latest"]"#);
        assert_eq!(
            summary(&["1.0.0", "1.1.0", "latest"]).revision(),
            a.value().to_string()
        );
        let mut empty = Adler32::default();
        empty.update(b"[]");
        assert_eq!(summary(&[]).revision(), empty.value().to_string());
        assert_ne!(
            summary(&["a", "b"]).revision(),
            summary(&["b", "a"]).revision(),
            "order matters, as in Flux"
        );
    }

    #[test]
    fn latest_tags_are_the_ten_greatest_descending() {
        let tags: Vec<String> = (0..25).map(|i| format!("v{i}")).collect();
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        let s = summary(&refs);
        assert_eq!(s.count(), 25);
        assert_eq!(
            s.latest_tags(),
            [
                "v9", "v8", "v7", "v6", "v5", "v4", "v3", "v24", "v23", "v22"
            ]
        );
        assert_eq!(summary(&["b", "a"]).latest_tags(), ["b", "a"]);
    }

    #[test]
    fn store_replaces_atomically_and_streams() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::new(dir.path().join("images"));
        assert!(!store.for_each_tag("ns", "app", |_| true).unwrap());
        let mut w = store.writer("ns", "app").unwrap();
        for t in ["a", "b", "c"] {
            w.push(t).unwrap();
        }
        assert!(!store.exists("ns", "app"), "nothing visible before commit");
        let s = w.commit().unwrap();
        assert_eq!(s.count(), 3);
        let mut seen = Vec::new();
        assert!(
            store
                .for_each_tag("ns", "app", |t| {
                    seen.push(t.to_owned());
                    true
                })
                .unwrap()
        );
        assert_eq!(seen, ["a", "b", "c"]);

        // An abandoned write leaves the old list and no temporary file.
        let mut w = store.writer("ns", "app").unwrap();
        w.push("x").unwrap();
        drop(w);
        let listed: Vec<String> = store
            .tags("ns", "app")
            .unwrap()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(listed, ["a", "b", "c"]);
        assert_eq!(
            std::fs::read_dir(dir.path().join("images/ns"))
                .unwrap()
                .count(),
            1
        );

        // A new scan replaces, never appends.
        let mut w = store.writer("ns", "app").unwrap();
        w.push("d").unwrap();
        w.commit().unwrap();
        assert_eq!(read_all(&store.path("ns", "app")).unwrap(), ["d"]);

        assert!(store.writer("ns", "app").unwrap().push("a\nb").is_err());
        store.remove("ns", "app").unwrap();
        store.remove("ns", "app").unwrap();
        assert!(!store.exists("ns", "app"));
    }

    #[test]
    fn for_each_tag_stops_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::new(dir.path());
        let mut w = store.writer("ns", "r").unwrap();
        (0..100).for_each(|i| w.push(&i.to_string()).unwrap());
        w.commit().unwrap();
        let mut n = 0;
        store
            .for_each_tag("ns", "r", |_| {
                n += 1;
                n < 5
            })
            .unwrap();
        assert_eq!(n, 5);
    }
}
