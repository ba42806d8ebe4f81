//! Setter markers: rewriting image references in YAML files byte for byte.
//!
//! A marker is a line comment on a scalar, as Flux's image-automation-controller reads them:
//!
//! ```yaml
//! image: ghcr.io/org/app:1.0.0 # {"$imagepolicy": "flux-system:app"}
//! tag: 1.0.0 # {"$imagepolicy": "flux-system:app:tag"}
//! ```
//!
//! `<ns>:<name>` sets `image:tag` (`image:tag@digest` when the policy has a digest); the suffixes
//! `:tag`, `:name` and `:digest` set that part alone. Flux re-serialises the whole file through
//! kyaml, which reflows block scalars and changes quoting; here the file is parsed only to locate
//! the marked scalars (granit-parser gives byte spans and comments), and only those byte ranges
//! are replaced. Everything else (comments, other scalars' quoting, block scalars, indentation,
//! key order, other documents, CRLF line endings) stays byte-identical. A quoted scalar keeps its
//! quote style (re-escaped); a plain one stays plain unless the new value would then read as
//! something other than that string (a number, a boolean, a date, or YAML syntax), in which case it
//! is double-quoted.
//!
//! Outcomes per file: markers naming a policy that is not given are skipped and reported (Flux
//! ignores them silently); a file that is not valid YAML, or a marker that is not on a
//! single-line scalar value, fails that file, which is then left untouched. [`update_path`]
//! applies this to every candidate file under a directory (`*.yaml`, `*.yml` and `Kustomization`
//! files containing `"$imagepolicy"`, as Flux screens them) and never follows a symlink out of it.
//! It is the one function in this crate that touches the disk, kept here so that
//! `gantry image update` and the automation controller run the same code.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use granit_parser::{Event, Parser, ScalarStyle};

/// The text a file must contain to be looked at (Flux screens files the same way).
pub const MARKER_TOKEN: &str = "\"$imagepolicy\"";

/// What a policy resolved to: `status.latestRef`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub tag: String,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `IMAGE:TAG[@DIGEST]`; the tag is what follows the last `:` after the last `/`, so a
    /// registry port (`localhost:5000/app:1.0`) is part of the name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) if !d.is_empty() => (r, Some(d.to_owned())),
            Some(_) => return Err(format!("'{s}': empty digest after '@'")),
            None => (s, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let colon = rest[slash..]
            .rfind(':')
            .map(|i| slash + i)
            .ok_or_else(|| format!("'{s}' has no tag (IMAGE:TAG[@DIGEST])"))?;
        let (name, tag) = (&rest[..colon], &rest[colon + 1..]);
        if name.is_empty() || tag.is_empty() {
            return Err(format!("'{s}': image name and tag must not be empty"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("'{s}': whitespace in an image reference"));
        }
        Ok(ImageRef {
            name: name.to_owned(),
            tag: tag.to_owned(),
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    /// `name:tag`, or `name:tag@digest` (what the plain `<ns>:<name>` marker sets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Policies by `<namespace>:<name>`.
pub type Policies = BTreeMap<String, ImageRef>;

/// The Kubernetes object a change is in (template data: `.Changed` is file -> object -> changes).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = if self.namespace.is_empty() {
            String::new()
        } else {
            format!("{}/", self.namespace)
        };
        write!(f, "{} {}{}", self.kind, ns, self.name)
    }
}

/// One scalar that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The file, relative to the updated directory, with `/` separators.
    pub file: String,
    /// 1-based line of the scalar.
    pub line: usize,
    /// The marker's setter: `<ns>:<name>` or with `:tag`, `:name`, `:digest`.
    pub setter: String,
    pub old: String,
    pub new: String,
    pub object: ObjectId,
}

/// A marker that was left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub file: String,
    pub line: usize,
    pub reason: SkipReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The marker names a policy that was not given (Flux ignores these).
    UnknownPolicy { setter: String },
    /// The comment mentions `"$imagepolicy"` but is not a `{"$imagepolicy": "ns:name"}` object.
    MalformedMarker { comment: String },
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            SkipReason::UnknownPolicy { setter } => write!(
                f,
                "{}:{}: marker for unknown policy '{setter}' left unchanged",
                self.file, self.line
            ),
            SkipReason::MalformedMarker { comment } => write!(
                f,
                "{}:{}: malformed marker comment '{comment}' ignored",
                self.file, self.line
            ),
        }
    }
}

/// Why a file was not updated (it is left untouched).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetterError {
    #[error("{file}: not UTF-8 text")]
    NotUtf8 { file: String },
    #[error("{file}:{line}:{column}: not valid YAML: {message}")]
    InvalidYaml {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "{file}:{line}: the marker for '{setter}' is not on a single-line scalar value ({what})"
    )]
    NotScalar {
        file: String,
        line: usize,
        setter: String,
        what: String,
    },
    #[error("{file}: {message}")]
    Io { file: String, message: String },
    #[error("{file}: a symlink pointing outside {root}")]
    OutsideRoot { file: String, root: String },
}

/// The result of applying the markers of one file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Updated {
    /// The new content (the input itself when nothing changed).
    pub content: Vec<u8>,
    pub changes: Vec<Change>,
    pub skipped: Vec<Skipped>,
}

impl Updated {
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// Applies the markers in one file's bytes; `file` only names it in the results.
pub fn apply(file: &str, input: &[u8], policies: &Policies) -> Result<Updated, SetterError> {
    let unchanged = || Updated {
        content: input.to_vec(),
        ..Updated::default()
    };
    let text = std::str::from_utf8(input).map_err(|_| SetterError::NotUtf8 {
        file: file.to_owned(),
    })?;
    if !text.contains(MARKER_TOKEN) {
        return Ok(unchanged());
    }
    let scan = scan(file, text)?;
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut out = unchanged();
    for m in &scan.markers {
        let line_start = text[..m.start].rfind('\n').map_or(0, |i| i + 1);
        let before = text[line_start..m.start].trim_end_matches([' ', '\t']);
        if before.is_empty() {
            // A comment on a line of its own is not a line comment: Flux does not read it either.
            continue;
        }
        let setter = match parse_marker(&m.text) {
            Some(s) => s,
            None => {
                out.skipped.push(Skipped {
                    file: file.to_owned(),
                    line: m.line,
                    reason: SkipReason::MalformedMarker {
                        comment: m.text.trim().to_owned(),
                    },
                });
                continue;
            }
        };
        let Some(new) = setter_value(&setter, policies) else {
            out.skipped.push(Skipped {
                file: file.to_owned(),
                line: m.line,
                reason: SkipReason::UnknownPolicy { setter },
            });
            continue;
        };
        let end = line_start + before.len();
        let not_scalar = |what: &str| SetterError::NotScalar {
            file: file.to_owned(),
            line: m.line,
            setter: setter.clone(),
            what: what.to_owned(),
        };
        let s = scan.scalars.get(&end).ok_or_else(|| {
            not_scalar(match before.as_bytes()[before.len() - 1] {
                b']' | b'}' => "a flow collection",
                b':' | b'-' | b'?' => "a mapping or sequence",
                b'|' | b'>' => "a block scalar",
                _ => "no scalar ends before the comment",
            })
        })?;
        if s.is_key {
            return Err(not_scalar("a mapping key"));
        }
        if s.start_line != m.line {
            return Err(not_scalar("a multi-line scalar"));
        }
        if !matches!(
            s.style,
            ScalarStyle::Plain | ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted
        ) {
            return Err(not_scalar("a block scalar"));
        }
        if s.value == new {
            continue;
        }
        edits.push((s.start, s.end, render(&new, s.style)));
        out.changes.push(Change {
            file: file.to_owned(),
            line: s.start_line,
            setter,
            old: s.value.clone(),
            new,
            object: scan.objects.get(s.doc).cloned().unwrap_or_default(),
        });
    }
    if edits.is_empty() {
        return Ok(out);
    }
    edits.sort_by_key(|e| e.0);
    let mut content = Vec::with_capacity(input.len() + 64);
    let mut at = 0;
    for (start, end, with) in edits {
        content.extend_from_slice(&input[at..start]);
        content.extend_from_slice(with.as_bytes());
        at = end;
    }
    content.extend_from_slice(&input[at..]);
    out.content = content;
    Ok(out)
}

/// The result for one file under [`update_path`].
#[derive(Debug)]
pub struct FileReport {
    /// Relative to the root, `/`-separated.
    pub file: String,
    /// The content before the update.
    pub original: Vec<u8>,
    pub outcome: Result<Updated, SetterError>,
}

/// Applies the markers of every candidate file under `root` (a directory or one file), in path
/// order, writing changed files back when `write` is set. Files that fail are reported and left
/// alone; the others are still updated (as Flux does). Symlinks to files inside `root` are
/// followed (the target is written); symlinks leading outside are reported, symlinked
/// directories are not descended into.
pub fn update_path(
    root: &Path,
    policies: &Policies,
    write: bool,
) -> std::io::Result<Vec<FileReport>> {
    let root_real = root.canonicalize()?;
    let base = if root_real.is_dir() {
        root_real.clone()
    } else {
        root_real
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    let mut files = Vec::new();
    if root_real.is_dir() {
        collect(&root_real, &mut files)?;
    } else {
        files.push(root_real.clone());
    }
    files.sort();
    let mut reports = Vec::new();
    for path in files {
        let rel = relative(&base, &path);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let candidate =
            name.ends_with(".yaml") || name.ends_with(".yml") || name == "Kustomization";
        if !candidate {
            continue;
        }
        let real = match path.canonicalize() {
            Ok(r) => r,
            Err(e) => {
                reports.push(io_report(&rel, e));
                continue;
            }
        };
        if !real.starts_with(&base) || !real.is_file() {
            if real.is_file() {
                reports.push(FileReport {
                    file: rel.clone(),
                    original: Vec::new(),
                    outcome: Err(SetterError::OutsideRoot {
                        file: rel,
                        root: root.display().to_string(),
                    }),
                });
            }
            continue;
        }
        let original = match std::fs::read(&real) {
            Ok(b) => b,
            Err(e) => {
                reports.push(io_report(&rel, e));
                continue;
            }
        };
        if !contains(&original, MARKER_TOKEN.as_bytes()) {
            continue;
        }
        let mut outcome = apply(&rel, &original, policies);
        if write
            && let Ok(u) = &outcome
            && u.changed()
            && let Err(e) = write_file(&real, &u.content)
        {
            outcome = Err(SetterError::Io {
                file: rel.clone(),
                message: format!("writing: {e}"),
            });
        }
        reports.push(FileReport {
            file: rel,
            original,
            outcome,
        });
    }
    Ok(reports)
}

/// Groups changes the way Flux's commit template sees `.Changed`: file -> object -> changes.
pub fn changed_by_file<'c>(
    changes: impl IntoIterator<Item = &'c Change>,
) -> BTreeMap<String, BTreeMap<ObjectId, Vec<Change>>> {
    let mut out: BTreeMap<String, BTreeMap<ObjectId, Vec<Change>>> = BTreeMap::new();
    for c in changes {
        out.entry(c.file.clone())
            .or_default()
            .entry(c.object.clone())
            .or_default()
            .push(c.clone());
    }
    out
}

fn io_report(rel: &str, e: std::io::Error) -> FileReport {
    FileReport {
        file: rel.to_owned(),
        original: Vec::new(),
        outcome: Err(SetterError::Io {
            file: rel.to_owned(),
            message: e.to_string(),
        }),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// Regular files and symlinks under `dir`; symlinked directories are not entered.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(&entry.path(), out)?;
        } else if kind.is_file() || kind.is_symlink() {
            out.push(entry.path());
        }
    }
    Ok(())
}

fn relative(base: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(base).unwrap_or(path);
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

// Written beside the target and renamed over it, keeping the permissions.
fn write_file(real: &Path, content: &[u8]) -> std::io::Result<()> {
    let name = real.file_name().unwrap_or_default().to_string_lossy();
    let tmp = real.with_file_name(format!(".{name}.gantry-{}", std::process::id()));
    std::fs::write(&tmp, content)?;
    let result = std::fs::metadata(real)
        .and_then(|m| std::fs::set_permissions(&tmp, m.permissions()))
        .and_then(|()| std::fs::rename(&tmp, real));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// `{"$imagepolicy": "<setter>"}` -> the setter.
fn parse_marker(comment: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(comment.trim()).ok()?;
    v.as_object()?
        .get("$imagepolicy")?
        .as_str()
        .map(str::to_owned)
}

fn setter_value(setter: &str, policies: &Policies) -> Option<String> {
    let parts: Vec<&str> = setter.split(':').collect();
    let (policy, field) = match parts.as_slice() {
        [ns, name] => (format!("{ns}:{name}"), None),
        [ns, name, field] => (format!("{ns}:{name}"), Some(*field)),
        _ => return None,
    };
    let r = policies.get(&policy)?;
    match field {
        None => Some(r.to_string()),
        Some("tag") => Some(r.tag.clone()),
        Some("name") => Some(r.name.clone()),
        // Flux sets the digest setter to the digest, empty when the policy reflects none.
        Some("digest") => Some(r.digest.clone().unwrap_or_default()),
        Some(_) => None,
    }
}

struct Marker {
    start: usize,
    line: usize,
    text: String,
}

struct ScalarSpan {
    start: usize,
    end: usize,
    start_line: usize,
    style: ScalarStyle,
    value: String,
    is_key: bool,
    doc: usize,
}

struct Scan {
    markers: Vec<Marker>,
    // Non-empty scalars by end offset.
    scalars: HashMap<usize, ScalarSpan>,
    objects: Vec<ObjectId>,
}

enum Frame {
    Map {
        expect_key: bool,
        key: Option<String>,
    },
    Seq,
}

fn scan(file: &str, text: &str) -> Result<Scan, SetterError> {
    let mut scan = Scan {
        markers: Vec::new(),
        scalars: HashMap::new(),
        objects: Vec::new(),
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut doc = 0usize;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| SetterError::InvalidYaml {
            file: file.to_owned(),
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info(),
        })?;
        let (start, end) = match (span.start.byte_offset(), span.end.byte_offset()) {
            (Some(s), Some(e)) => (s, e),
            _ => continue,
        };
        match event {
            Event::DocumentStart(..) => {
                scan.objects.push(ObjectId::default());
                doc = scan.objects.len() - 1;
                stack.clear();
            }
            Event::Comment(body, _) if body.contains(MARKER_TOKEN) => {
                scan.markers.push(Marker {
                    start,
                    line: span.start.line(),
                    text: body.into_owned(),
                });
            }
            Event::Scalar(value, style, ..) => {
                let is_key = node_position(&mut stack, Some(&value));
                if !is_key {
                    record_identity(&stack, &value, scan.objects.get_mut(doc));
                }
                if end > start {
                    scan.scalars.insert(
                        end,
                        ScalarSpan {
                            start,
                            end,
                            start_line: span.start.line(),
                            style,
                            value: value.into_owned(),
                            is_key,
                            doc,
                        },
                    );
                }
            }
            Event::Alias(_) => {
                node_position(&mut stack, None);
            }
            Event::SequenceStart(..) => {
                node_position(&mut stack, None);
                stack.push(Frame::Seq);
            }
            Event::MappingStart(..) => {
                node_position(&mut stack, None);
                stack.push(Frame::Map {
                    expect_key: true,
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    Ok(scan)
}

// Advances the enclosing mapping past one node; true when that node is a key.
fn node_position(stack: &mut [Frame], scalar: Option<&str>) -> bool {
    match stack.last_mut() {
        Some(Frame::Map { expect_key, key }) => {
            let was_key = *expect_key;
            if was_key {
                *key = scalar.map(str::to_owned);
            }
            *expect_key = !was_key;
            was_key
        }
        _ => false,
    }
}

// apiVersion and kind at the document's top level, name and namespace under metadata.
fn record_identity(stack: &[Frame], value: &str, object: Option<&mut ObjectId>) {
    let Some(object) = object else { return };
    let key_at = |i: usize| match stack.get(i) {
        Some(Frame::Map { key: Some(k), .. }) => Some(k.as_str()),
        _ => None,
    };
    match (stack.len(), key_at(0), key_at(1)) {
        (1, Some("apiVersion"), _) => object.api_version = value.to_owned(),
        (1, Some("kind"), _) => object.kind = value.to_owned(),
        (2, Some("metadata"), Some("name")) => object.name = value.to_owned(),
        (2, Some("metadata"), Some("namespace")) => object.namespace = value.to_owned(),
        _ => {}
    }
}

// The new scalar's source text in the old scalar's style.
fn render(value: &str, style: ScalarStyle) -> String {
    let printable = !value
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'));
    match style {
        ScalarStyle::Plain if plain_safe(value) => value.to_owned(),
        ScalarStyle::SingleQuoted if printable => format!("'{}'", value.replace('\'', "''")),
        _ => double_quoted(value),
    }
}

fn double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c.is_control() => {
                if (c as u32) <= 0xff {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                } else {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// Whether `value` written plain reads back as that same string in YAML 1.1 and 1.2 (what
// Kubernetes tooling uses): a conservative character set, and nothing that resolves to a null,
// boolean, number or timestamp.
fn plain_safe(value: &str) -> bool {
    let Some(first) = value.chars().next() else {
        return false;
    };
    let chars_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._/@:+-".contains(c));
    let first_ok = first.is_ascii_alphanumeric() || "_./".contains(first);
    chars_ok && first_ok && !value.ends_with(':') && !resolves_to_non_string(value)
}

fn resolves_to_non_string(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let words = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", ".inf", "-.inf", "+.inf",
        ".nan",
    ];
    if words.contains(&lower.as_str()) {
        return true;
    }
    let digits = s.replace('_', "");
    if digits.parse::<i128>().is_ok() || digits.parse::<f64>().is_ok() {
        return true;
    }
    let body = lower.trim_start_matches(['+', '-']);
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = body.strip_prefix(prefix)
            && !rest.is_empty()
            && rest.chars().all(|c| c == '_' || c.is_digit(radix))
        {
            return true;
        }
    }
    // YAML 1.1 sexagesimal (`1:20`) and timestamps (`2024-01-02...`).
    let b = s.as_bytes();
    if b.first().is_some_and(u8::is_ascii_digit)
        && s.contains(':')
        && s.chars().all(|c| c.is_ascii_digit() || ":._".contains(c))
    {
        return true;
    }
    b.len() >= 8 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[5].is_ascii_digit()
}

#[cfg(test)]
mod tests;
