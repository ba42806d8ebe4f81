//! Artifacts: a normalised gzip tarball per revision, addressed by its sha256 digest.
//!
//! Normalisation makes the digest depend on content only, as Flux's `storage.Archive` does: walk
//! order, owner and group 0 with no names, mtime 0, files 0600 (0700 when executable),
//! directories 0750, only regular files and directories (see [`write_tarball`]). Two checkouts of
//! the same tree therefore give the same digest.
//!
//! Files live at `<root>/<kind>/<namespace>/<name>/<file>` (Flux's layout, served as such by
//! `gantry run --storage-addr`): `<digest hex>.tar.gz` for GitRepositories,
//! `sha256:<manifest hex>.tar.gz` for OCIRepositories (Flux's name); the last
//! [`ArtifactStore::retention`] files per object are kept. Consumers in the same process call
//! [`ArtifactStore::open`] to get the tree unpacked into a temporary directory.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flate2::read::GzDecoder;
use gantry_api::source::v1::Artifact;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::sync::Notify;

use crate::sourceignore::SourceIgnore;

/// Artifacts kept per object when nothing else is configured.
pub const DEFAULT_RETENTION: usize = 3;
/// Storage sub-directory of GitRepository artifacts (Flux's kind path segment).
pub const GIT_REPOSITORY_KIND: &str = "gitrepository";
/// Storage sub-directory of OCIRepository artifacts.
pub const OCI_REPOSITORY_KIND: &str = "ocirepository";

/// Name of the link to an object's current artifact in its storage directory (Flux's
/// `latest.tar.gz`, which OCIRepository's `status.url` names).
pub const LATEST_FILE: &str = "latest.tar.gz";

/// Errors of the artifact store.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Reading the source tree or writing the archive failed.
    #[error("archiving {dir}: {source}")]
    Archive {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A storage file operation failed.
    #[error("storage operation on {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The stored file does not have the digest the artifact claims.
    #[error("artifact {path} has digest {actual}, expected {expected}")]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// The artifact's path does not belong to this store.
    #[error("artifact path '{0}' is not a storage path")]
    InvalidPath(String),
}

/// Where artifacts are stored and how they are addressed.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    base_url: String,
    retention: usize,
    // Woken after every store, for consumers in the process that wait for an artifact.
    stored: Arc<Notify>,
}

impl ArtifactStore {
    /// A store under `root`; artifact URLs are `<base_url>/<path>` (the address Gantry serves
    /// them at, e.g. `http://gantry.flux-system.svc.cluster.local./`).
    pub fn new(root: impl Into<PathBuf>, base_url: impl Into<String>) -> Self {
        ArtifactStore {
            root: root.into(),
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            retention: DEFAULT_RETENTION,
            stored: Arc::default(),
        }
    }

    /// Keep the last `n` (at least 1) artifacts per object.
    pub fn with_retention(mut self, n: usize) -> Self {
        self.retention = n.max(1);
        self
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many artifacts are kept per object.
    pub fn retention(&self) -> usize {
        self.retention
    }

    /// Directory holding the artifacts of one object.
    pub fn object_dir(&self, kind: &str, namespace: &str, name: &str) -> PathBuf {
        self.root.join(kind).join(namespace).join(name)
    }

    /// The file an artifact refers to.
    pub fn local_path(&self, artifact: &Artifact) -> Result<PathBuf, ArtifactError> {
        self.file_for(&artifact.path)
            .ok_or_else(|| ArtifactError::InvalidPath(artifact.path.clone()))
    }

    /// Where a storage-relative path such as an artifact URL's path lives (for serving artifacts
    /// over HTTP); `None` for paths that could leave the storage root. The file may not exist.
    pub fn file_for(&self, rel: &str) -> Option<PathBuf> {
        let rel = Path::new(rel.trim_start_matches('/'));
        let safe = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        (safe && !rel.as_os_str().is_empty()).then(|| self.root.join(rel))
    }

    /// Whether the artifact's file is present.
    pub fn exists(&self, artifact: &Artifact) -> bool {
        self.local_path(artifact).is_ok_and(|p| p.is_file())
    }

    /// Waits until `artifact` is present, at most `patience`; whether it is. A source's status
    /// outlives the process that stored its artifact: just after a start or a leader handover it
    /// names an artifact this process's source controller is still fetching.
    pub async fn wait_for(&self, artifact: &Artifact, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before the check, so a store between the check and the wait wakes it.
            let stored = self.stored.notified();
            if self.exists(artifact) {
                return true;
            }
            if tokio::time::timeout_at(deadline, stored).await.is_err() {
                return self.exists(artifact);
            }
        }
    }

    /// Archives `dir` (minus what `ignore` excludes) as the artifact of `revision` for the object,
    /// then drops the object's oldest artifacts beyond the retention.
    pub fn store(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        dir: &Path,
        ignore: &SourceIgnore,
        revision: &str,
    ) -> Result<Artifact, ArtifactError> {
        self.store_named(kind, namespace, name, dir, ignore, revision, None)
    }

    /// [`store`](Self::store) under `file_name` instead of `<digest hex>.tar.gz`.
    #[allow(clippy::too_many_arguments)]
    pub fn store_named(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        dir: &Path,
        ignore: &SourceIgnore,
        revision: &str,
        file_name: Option<&str>,
    ) -> Result<Artifact, ArtifactError> {
        let mut pending = self.begin(kind, namespace, name)?;
        write_tarball(dir, ignore, &mut pending).map_err(|source| ArtifactError::Archive {
            dir: dir.to_owned(),
            source,
        })?;
        pending.commit(revision, file_name)
    }

    /// A new artifact of the object written by the caller (e.g. a layer streamed from a
    /// registry): write the bytes to it, then [`PendingArtifact::commit`]. Dropped uncommitted, it
    /// leaves nothing behind.
    pub fn begin(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<PendingArtifact, ArtifactError> {
        let object_dir = self.object_dir(kind, namespace, name);
        std::fs::create_dir_all(&object_dir).map_err(|source| ArtifactError::Storage {
            path: object_dir.clone(),
            source,
        })?;
        let file = tempfile::NamedTempFile::new_in(&object_dir).map_err(|source| {
            ArtifactError::Storage {
                path: object_dir.clone(),
                source,
            }
        })?;
        Ok(PendingArtifact {
            store: self.clone(),
            rel_dir: format!("{kind}/{namespace}/{name}"),
            object_dir,
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Points the object's [`LATEST_FILE`] at `artifact` and returns its URL: what Flux's
    /// OCIRepository reconciler writes to `status.url`. Flux makes a symlink; this is a hard link
    /// (replaced atomically), because the artifact server serves no symlinks.
    pub fn link_latest(&self, artifact: &Artifact) -> Result<String, ArtifactError> {
        let target = self.local_path(artifact)?;
        let (rel_dir, _) = artifact
            .path
            .trim_start_matches('/')
            .rsplit_once('/')
            .ok_or_else(|| ArtifactError::InvalidPath(artifact.path.clone()))?;
        let dir = self.root.join(rel_dir);
        let link = dir.join(LATEST_FILE);
        let tmp = dir.join(format!(".{LATEST_FILE}.tmp"));
        let storage_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ArtifactError::Storage { path, source }
        };
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(storage_err(&tmp)(e)),
            _ => {}
        }
        std::fs::hard_link(&target, &tmp).map_err(storage_err(&tmp))?;
        std::fs::rename(&tmp, &link).map_err(storage_err(&link))?;
        Ok(format!("{}/{rel_dir}/{LATEST_FILE}", self.base_url))
    }

    /// Removes every artifact of an object (when the object is deleted).
    pub fn remove_all(&self, kind: &str, namespace: &str, name: &str) -> Result<(), ArtifactError> {
        let dir = self.object_dir(kind, namespace, name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ArtifactError::Storage {
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Removes the artifacts of every object of `kind` not in `live` (namespace, name): the
    /// clean-up for objects deleted while nothing watched them. Returns the removed objects.
    pub fn remove_orphans(
        &self,
        kind: &str,
        live: &std::collections::HashSet<(String, String)>,
    ) -> Result<Vec<(String, String)>, ArtifactError> {
        let mut removed = Vec::new();
        let kind_dir = self.root.join(kind);
        let list = |dir: &Path| -> Result<Vec<String>, ArtifactError> {
            match std::fs::read_dir(dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(source) => Err(ArtifactError::Storage {
                    path: dir.to_owned(),
                    source,
                }),
                Ok(entries) => Ok(entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()),
            }
        };
        for namespace in list(&kind_dir)? {
            for name in list(&kind_dir.join(&namespace))? {
                let key = (namespace.clone(), name);
                if !live.contains(&key) {
                    self.remove_all(kind, &key.0, &key.1)?;
                    removed.push(key);
                }
            }
        }
        Ok(removed)
    }

    /// Verifies the artifact's digest and unpacks it into a fresh temporary directory, removed
    /// when the returned value is dropped.
    pub fn open(&self, artifact: &Artifact) -> Result<TempDir, ArtifactError> {
        let dir = tempfile::Builder::new()
            .prefix("gantry-artifact-")
            .tempdir()
            .map_err(|source| ArtifactError::Storage {
                path: std::env::temp_dir(),
                source,
            })?;
        self.extract_to(artifact, dir.path())?;
        Ok(dir)
    }

    /// Verifies the artifact's digest and unpacks it into `dest`.
    pub fn extract_to(&self, artifact: &Artifact, dest: &Path) -> Result<(), ArtifactError> {
        let path = self.local_path(artifact)?;
        let storage_err = |source| ArtifactError::Storage {
            path: path.clone(),
            source,
        };
        let mut hasher = Sha256::new();
        io::copy(
            &mut File::open(&path).map_err(storage_err)?,
            &mut HashOnly(&mut hasher),
        )
        .map_err(storage_err)?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != artifact.digest {
            return Err(ArtifactError::DigestMismatch {
                path,
                expected: artifact.digest.clone(),
                actual,
            });
        }
        let file = File::open(&path).map_err(storage_err)?;
        unpack(BufReader::new(file), dest).map_err(storage_err)
    }

    // Keeps `current` and the newest others up to the retention; removes the rest.
    fn garbage_collect(&self, object_dir: &Path, current: &Path) -> Result<(), ArtifactError> {
        let storage_err = |source| ArtifactError::Storage {
            path: object_dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(object_dir).map_err(storage_err)? {
            let entry = entry.map_err(storage_err)?;
            let path = entry.path();
            let is_artifact = path.extension().is_some_and(|e| e == "gz")
                && entry.file_name() != LATEST_FILE
                && entry.file_type().is_ok_and(|t| t.is_file());
            if !is_artifact || path == current {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            files.push((modified, path));
        }
        files.sort_by(|a, b| b.cmp(a));
        for (_, path) in files.into_iter().skip(self.retention.saturating_sub(1)) {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(ArtifactError::Storage { path, source: e });
            }
            tracing::debug!(path = %path.display(), "removed old artifact");
        }
        Ok(())
    }
}

/// An artifact being written; see [`ArtifactStore::begin`].
pub struct PendingArtifact {
    store: ArtifactStore,
    rel_dir: String,
    object_dir: PathBuf,
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
}

impl Write for PendingArtifact {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl PendingArtifact {
    /// Moves the bytes into place as `file_name` (`<digest hex>.tar.gz` when `None`) and drops
    /// the object's oldest artifacts beyond the retention.
    pub fn commit(
        mut self,
        revision: &str,
        file_name: Option<&str>,
    ) -> Result<Artifact, ArtifactError> {
        let storage_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ArtifactError::Storage { path, source }
        };
        self.file.flush().map_err(storage_err(&self.object_dir))?;
        let digest = hex::encode(self.hasher.finalize());
        let file_name = match file_name {
            Some(name) if !name.is_empty() && !name.contains('/') && name != ".." => {
                name.to_owned()
            }
            Some(name) => return Err(ArtifactError::InvalidPath(name.to_owned())),
            None => format!("{digest}.tar.gz"),
        };
        let path = self.object_dir.join(&file_name);
        self.file
            .persist(&path)
            .map_err(|e| ArtifactError::Storage {
                path: path.clone(),
                source: e.error,
            })?
            .set_modified(SystemTime::now())
            .map_err(storage_err(&path))?;
        self.store.garbage_collect(&self.object_dir, &path)?;
        self.store.stored.notify_waiters();
        let rel = format!("{}/{file_name}", self.rel_dir);
        Ok(Artifact {
            url: format!("{}/{rel}", self.store.base_url),
            path: rel,
            revision: revision.to_owned(),
            digest: format!("sha256:{digest}"),
            last_update_time: Time(jiff::Timestamp::now()),
            size: Some(self.size as i64),
            metadata: Default::default(),
        })
    }
}

/// Mode of regular files in an artifact (Flux's `DefaultFileMode`).
pub const FILE_MODE: u32 = 0o600;
/// Mode of executable files in an artifact (Flux's `DefaultExeFileMode`).
pub const EXE_FILE_MODE: u32 = 0o700;
/// Mode of directories in an artifact (Flux's `DefaultDirMode`).
pub const DIR_MODE: u32 = 0o750;
/// Largest tree [`unpack`] writes: a gzip bomb stops here instead of filling the disk.
pub const MAX_UNPACKED_BYTES: u64 = 4 << 30;

/// Writes the normalised gzip tarball of `dir` to `out`, laid out as Flux's source-controller
/// archives a directory (`storage.Archive`): a pre-order walk with the entries of each directory
/// sorted by name, the root itself first as `.`, names relative to the root without a trailing
/// slash, USTAR headers as Go's `archive/tar` writes them (uid/gid 0, no user or group names,
/// mtime 0), files 0600 (0700 when executable) and directories 0750, and nothing but regular
/// files and directories. The tar stream is byte for byte Flux's (proved by the fixture test
/// `the_tar_stream_is_flux_s`), and so is the gzip around it: `goflate` is Go's
/// `compress/gzip` at the default level, fed the same sequence of writes as Go's tar writer
/// issues, so the digest is the one Flux computes for the same tree (`the_artifact_is_flux_s`).
pub fn write_tarball(dir: &Path, ignore: &SourceIgnore, out: impl Write) -> io::Result<()> {
    let gz = write_tar(dir, ignore, goflate::GzipWriter::new(out))?;
    gz.finish()?.flush()
}

/// Bytes Go's `io.Copy` moves per read and write (the size of its buffer).
const GO_COPY_BUFFER: usize = 32 * 1024;

/// The uncompressed tar stream of [`write_tarball`]. `out` sees the same sequence of `write`
/// calls as the gzip writer in Flux's `storage.Archive` (what Go's tar writer and `io.Copy` issue:
/// one per header block, file data in 32 KiB reads, one per padding and per trailer block),
/// because Go's deflate output depends on the write sizes.
pub fn write_tar<W: Write>(dir: &Path, ignore: &SourceIgnore, mut out: W) -> io::Result<W> {
    let mut entries = vec![Entry {
        name: ".".into(),
        is_dir: true,
        executable: false,
    }];
    collect(dir, Path::new(""), ignore, &mut entries)?;
    let mut buf = vec![0u8; GO_COPY_BUFFER];
    for entry in &entries {
        if entry.is_dir {
            write_header(&mut out, &entry.name, DIR_MODE, 0, b'5')?;
            continue;
        }
        let file = File::open(dir.join(&entry.name))?;
        let len = file.metadata()?.len();
        let mode = if entry.executable {
            EXE_FILE_MODE
        } else {
            FILE_MODE
        };
        write_header(&mut out, &entry.name, mode, len, b'0')?;
        let copied = copy_like_go(&mut file.take(len), &mut out, &mut buf)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being archived", entry.name),
            ));
        }
        let pad = (512 - len % 512) % 512;
        out.write_all(&[0; 512][..pad as usize])?;
    }
    // End of archive: two zero blocks written one by one, no padding to a record size (as Go).
    out.write_all(&[0; 512])?;
    out.write_all(&[0; 512])?;
    Ok(out)
}

// Go's `io.Copy` from a regular file: full buffers (a read(2) on a regular file returns all it
// was asked for until the end), each passed on in one write.
fn copy_like_go(from: &mut impl Read, out: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match from.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        out.write_all(&buf[..filled])?;
        total += filled as u64;
        if filled < buf.len() {
            return Ok(total);
        }
    }
}

// One header block as Go's `archive/tar` writes it for a sanitised header: USTAR, with names
// longer than 100 bytes split into prefix and name at a `/` like Go's `splitUSTARPath`; a name
// that fits neither way (or is not ASCII) gets a PAX record first, as Go chooses, and the block
// keeps the name's ASCII characters only (Go's `toASCII`), cut to the field.
fn write_header(
    out: &mut impl Write,
    name: &str,
    mode: u32,
    size: u64,
    kind: u8,
) -> io::Result<()> {
    let mut block = [0u8; 512];
    match ustar_split(name) {
        Some((prefix, short)) => {
            put_str(&mut block[0..100], short);
            put_str(&mut block[345..500], prefix);
        }
        None => {
            write_pax(out, name)?;
            put_name(&mut block[0..100], &to_ascii(name));
        }
    }
    put_octal(&mut block[100..108], u64::from(mode));
    put_octal(&mut block[108..116], 0);
    put_octal(&mut block[116..124], 0);
    put_octal(&mut block[124..136], size);
    put_octal(&mut block[136..148], 0);
    block[156] = kind;
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    put_octal(&mut block[329..337], 0);
    put_octal(&mut block[337..345], 0);
    finish_checksum(&mut block);
    out.write_all(&block)
}

// A PAX extended header carrying `path`, named and laid out as Go's `writeRawFile` writes one:
// `<dir>/PaxHeaders.0/<base>` in ASCII, cut to 100 bytes, no trailing `/`, device fields unset.
fn write_pax(out: &mut impl Write, name: &str) -> io::Result<()> {
    let record = pax_record("path", name);
    let pax_name = match name.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/PaxHeaders.0/{base}"),
        None => format!("PaxHeaders.0/{name}"),
    };
    let pax_name = to_ascii(&pax_name);
    let pax_name = pax_name[..pax_name.len().min(100)].trim_end_matches('/');
    let mut block = [0u8; 512];
    put_str(&mut block[0..100], pax_name);
    put_octal(&mut block[100..108], 0);
    put_octal(&mut block[108..116], 0);
    put_octal(&mut block[116..124], 0);
    put_octal(&mut block[124..136], record.len() as u64);
    put_octal(&mut block[136..148], 0);
    block[156] = b'x';
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    finish_checksum(&mut block);
    out.write_all(&block)?;
    out.write_all(record.as_bytes())?;
    let pad = (512 - record.len() % 512) % 512;
    out.write_all(&[0; 512][..pad])
}

// `"%d %s=%s\n"` where the length counts itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}")
}

// Go's `toASCII`: the string without its non-ASCII characters (and NULs).
fn to_ascii(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii() && *c != '\0').collect()
}

// Go's `formatString` for the name field: cut to the field; when that leaves a `/` in the last
// byte, the run of slashes it ends becomes the terminator (buggy readers take a trailing slash
// for a directory).
fn put_name(field: &mut [u8], ascii: &str) {
    put_str(field, ascii);
    let width = field.len();
    if ascii.len() > width && field[width - 1] == b'/' {
        let n = ascii[..width - 1].trim_end_matches('/').len();
        field[n] = 0;
    }
}

fn ustar_split(name: &str) -> Option<(&str, &str)> {
    if !name.is_ascii() {
        return None;
    }
    if name.len() <= 100 {
        return Some(("", name));
    }
    let mut length = name.len();
    if length > 156 {
        length = 156;
    } else if name.as_bytes()[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].rfind('/')?;
    let (prefix, suffix) = (&name[..i], &name[i + 1..]);
    (i > 0 && !suffix.is_empty() && suffix.len() <= 100 && prefix.len() <= 155)
        .then_some((prefix, suffix))
}

fn put_str(field: &mut [u8], s: &str) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

// Zero-padded octal leaving room for a trailing NUL, as Go's `formatOctal`.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:o}");
    let width = field.len() - 1;
    let text = format!("{digits:0>width$}");
    put_str(field, &text);
}

// The checksum field: six octal digits, NUL, space, computed with the field as spaces.
fn finish_checksum(block: &mut [u8; 512]) {
    block[148..156].copy_from_slice(b"        ");
    let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
    block[148..155].fill(0);
    put_octal(&mut block[148..155], sum);
    block[155] = b' ';
}

/// Unpacks a gzip tarball into `dest`. Paths escaping `dest` are refused (by `tar`); symlinks,
/// hard links and devices are skipped, as Flux's `tar.Untar` with `WithSkipSymlinks` does; more
/// than [`MAX_UNPACKED_BYTES`] of content is refused.
pub fn unpack(reader: impl Read, dest: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(GzDecoder::new(reader));
    archive.set_preserve_mtime(false);
    archive.set_preserve_permissions(false);
    let mut total = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        total += entry.size();
        if total > MAX_UNPACKED_BYTES {
            return Err(io::Error::other(format!(
                "the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes"
            )));
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
}

/// The `sha256:<hex>` digest of a byte slice (e.g. a tarball held in memory).
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

struct Entry {
    name: String,
    is_dir: bool,
    executable: bool,
}

// Pre-order walk, each directory's entries sorted by name (Go's `filepath.Walk` order).
fn collect(root: &Path, rel: &Path, ignore: &SourceIgnore, out: &mut Vec<Entry>) -> io::Result<()> {
    let mut dirents = std::fs::read_dir(root.join(rel))?.collect::<io::Result<Vec<_>>>()?;
    dirents.sort_by_key(|d| d.file_name());
    for dirent in dirents {
        let file_type = dirent.file_type()?;
        let rel_path = rel.join(dirent.file_name());
        // The repository's `.git` directory and the `.git` files of submodules.
        if dirent.file_name() == ".git" {
            continue;
        }
        if !(file_type.is_dir() || file_type.is_file()) {
            continue;
        }
        let name = rel_path
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if file_type.is_dir() {
            if !ignore.is_ignored(&rel_path, true) {
                out.push(Entry {
                    name,
                    is_dir: true,
                    executable: false,
                });
            }
            // Descend anyway: a later pattern may re-include a file below an excluded directory.
            collect(root, &rel_path, ignore, out)?;
        } else if !ignore.is_ignored(&rel_path, false) {
            out.push(Entry {
                name,
                is_dir: false,
                executable: is_executable(&dirent.metadata()?),
            });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::Metadata) -> bool {
    false
}

struct HashOnly<'a>(&'a mut Sha256);

impl Write for HashOnly<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    fn tarball(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        write_tarball(dir, &SourceIgnore::from_patterns(&[]).unwrap(), &mut out).unwrap();
        out
    }

    #[test]
    fn the_digest_depends_on_content_only() {
        let files = [("b.yaml", "b"), ("a/x.yaml", "x"), ("a/y.yaml", "y")];
        let one = tree(&files);
        let mut reversed = files;
        reversed.reverse();
        let two = tree(&reversed);
        // Different mtimes and creation order must not matter.
        std::fs::File::options()
            .write(true)
            .open(two.path().join("b.yaml"))
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
            .unwrap();
        assert_eq!(
            digest_of(&tarball(one.path())),
            digest_of(&tarball(two.path()))
        );

        let changed = tree(&[("b.yaml", "B"), ("a/x.yaml", "x"), ("a/y.yaml", "y")]);
        assert_ne!(
            digest_of(&tarball(one.path())),
            digest_of(&tarball(changed.path()))
        );
    }

    #[test]
    fn entries_are_normalised_and_vcs_files_left_out() {
        let dir = tree(&[
            ("deploy/app.yaml", "a"),
            (".git/HEAD", "ref"),
            ("logo.png", "p"),
        ]);
        let bytes = tarball(dir.path());
        let mut archive = tar::Archive::new(GzDecoder::new(&bytes[..]));
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (0, 0, 0)
            );
            let mode = h.mode().unwrap();
            assert!(mode == FILE_MODE || mode == DIR_MODE, "mode {mode:o}");
            assert!(h.as_ustar().is_some(), "USTAR headers, as Go writes");
            names.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(names, [".", "deploy", "deploy/app.yaml"]);
    }

    #[test]
    fn store_keeps_the_last_n_and_open_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(root.path(), "http://gantry.test/").with_retention(2);
        let ignore = SourceIgnore::from_patterns(&[]).unwrap();
        let mut stored = Vec::new();
        for i in 0..4 {
            let src = tree(&[("app.yaml", &format!("v{i}"))]);
            let a = store
                .store(
                    "gitrepository",
                    "ns",
                    "repo",
                    src.path(),
                    &ignore,
                    &format!("r{i}"),
                )
                .unwrap();
            assert!(
                a.url
                    .starts_with("http://gantry.test/gitrepository/ns/repo/")
            );
            assert_eq!(
                a.path,
                format!("gitrepository/ns/repo/{}.tar.gz", &a.digest[7..])
            );
            stored.push(a);
        }
        let kept: Vec<bool> = stored.iter().map(|a| store.exists(a)).collect();
        assert_eq!(kept, [false, false, true, true]);
        let opened = store.open(&stored[3]).unwrap();
        assert_eq!(
            std::fs::read_to_string(opened.path().join("app.yaml")).unwrap(),
            "v3"
        );

        let mut forged = stored[3].clone();
        forged.digest = "sha256:00".into();
        assert!(matches!(
            store.open(&forged),
            Err(ArtifactError::DigestMismatch { .. })
        ));
        // The latest link follows the newest artifact, is served as a file and is never
        // counted or collected as an artifact.
        let url = store.link_latest(&stored[3]).unwrap();
        assert_eq!(
            url,
            "http://gantry.test/gitrepository/ns/repo/latest.tar.gz"
        );
        let latest = root.path().join("gitrepository/ns/repo").join(LATEST_FILE);
        assert_eq!(
            digest_of(&std::fs::read(&latest).unwrap()),
            stored[3].digest
        );
        let src = tree(&[("app.yaml", "v4")]);
        let newest = store
            .store("gitrepository", "ns", "repo", src.path(), &ignore, "r4")
            .unwrap();
        assert!(store.exists(&stored[3]), "the link is not an artifact");
        store.link_latest(&newest).unwrap();
        assert_eq!(digest_of(&std::fs::read(&latest).unwrap()), newest.digest);

        forged.path = "../etc/passwd".into();
        assert!(matches!(
            store.open(&forged),
            Err(ArtifactError::InvalidPath(_))
        ));
        assert_eq!(store.file_for("/../etc/passwd"), None);
        assert_eq!(
            store.file_for(&format!("/{}", stored[3].path)),
            Some(root.path().join(&stored[3].path))
        );
    }
}
