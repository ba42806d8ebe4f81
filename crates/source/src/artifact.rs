//! Artifacts: a normalised gzip tarball per revision, addressed by its sha256 digest.
//!
//! Normalisation makes the digest depend on content only (like Flux's `sanitizeHeader`): entries
//! are sorted by path, owner and group are 0 with no names, every mtime is 0, files are 0644 (0755
//! when executable), directories 0755, and only regular files and directories are kept (symlinks
//! are skipped, as Flux does). Two checkouts of the same tree therefore give the same digest.
//!
//! Files live at `<root>/<kind>/<namespace>/<name>/<digest hex>.tar.gz`; the last
//! [`ArtifactStore::retention`] files per object are kept. Consumers in the same process call
//! [`ArtifactStore::open`] to get the tree unpacked into a temporary directory.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
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
        let object_dir = self.object_dir(kind, namespace, name);
        std::fs::create_dir_all(&object_dir).map_err(|source| ArtifactError::Storage {
            path: object_dir.clone(),
            source,
        })?;
        let storage_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ArtifactError::Storage { path, source }
        };
        let mut tmp =
            tempfile::NamedTempFile::new_in(&object_dir).map_err(storage_err(&object_dir))?;
        let (digest, size) = {
            let mut sink = HashingWriter::new(tmp.as_file_mut());
            write_tarball(dir, ignore, &mut sink).map_err(|source| ArtifactError::Archive {
                dir: dir.to_owned(),
                source,
            })?;
            sink.finish()
        };
        let file_name = format!("{digest}.tar.gz");
        let path = object_dir.join(&file_name);
        tmp.persist(&path)
            .map_err(|e| ArtifactError::Storage {
                path: path.clone(),
                source: e.error,
            })?
            .set_modified(SystemTime::now())
            .map_err(storage_err(&path))?;
        self.garbage_collect(&object_dir, &path)?;
        self.stored.notify_waiters();
        let rel = format!("{kind}/{namespace}/{name}/{file_name}");
        Ok(Artifact {
            url: format!("{}/{rel}", self.base_url),
            path: rel,
            revision: revision.to_owned(),
            digest: format!("sha256:{digest}"),
            last_update_time: Time(jiff::Timestamp::now()),
            size: Some(size as i64),
            metadata: Default::default(),
        })
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

/// Writes the normalised gzip tarball of `dir` to `out`.
pub fn write_tarball(dir: &Path, ignore: &SourceIgnore, out: impl Write) -> io::Result<()> {
    let mut entries = Vec::new();
    collect(dir, Path::new(""), ignore, &mut entries)?;
    // Sorting by the `/`-joined path string keeps the order independent of the file system.
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let gz = GzEncoder::new(out, Compression::default());
    let mut tar = tar::Builder::new(gz);
    for entry in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        if entry.is_dir {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, format!("{}/", entry.name), io::empty())?;
        } else {
            let file = File::open(dir.join(&entry.name))?;
            let len = file.metadata()?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if entry.executable { 0o755 } else { 0o644 });
            header.set_size(len);
            tar.append_data(&mut header, &entry.name, file.take(len))?;
        }
    }
    tar.into_inner()?.finish()?.flush()
}

/// Unpacks a gzip tarball into `dest` (paths escaping `dest` are refused by `tar`).
pub fn unpack(reader: impl Read, dest: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(GzDecoder::new(reader));
    archive.set_preserve_mtime(false);
    archive.unpack(dest)
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

fn collect(root: &Path, rel: &Path, ignore: &SourceIgnore, out: &mut Vec<Entry>) -> io::Result<()> {
    for dirent in std::fs::read_dir(root.join(rel))? {
        let dirent = dirent?;
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

// Counts and hashes what goes to the file.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.size)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
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
            assert!(mode == 0o644 || mode == 0o755, "mode {mode:o}");
            names.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(names, ["deploy/", "deploy/app.yaml"]);
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
