//! One builder at a time per cached tool, across processes.
//!
//! Several worktrees (or a test run and a sandbox) may start the same first-time Go build at
//! once. Without a lock the second one deletes the first one's scratch directory mid-build. The
//! lock is an advisory `flock` on a file beside the cache entry, released when the file closes,
//! so a killed builder never leaves it held.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use anyhow::{Context as _, Result};

/// Blocks until this process is the only builder of `name` under `cache`; the build is exclusive
/// while the returned file is open. Callers re-check whether the tool exists after this returns:
/// the previous holder may have built it.
pub fn exclusive(cache: &Path, name: &str) -> Result<File> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let path = cache.join(format!("{name}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        eprintln!("[build] waiting for another build of {name} to finish");
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = exclusive(dir.path(), "tool").unwrap();
        let second = File::options()
            .write(true)
            .open(dir.path().join("tool.lock"))
            .unwrap();
        assert!(second.try_lock().is_err(), "the lock is held by the first");
        drop(first);
        assert!(second.try_lock().is_ok(), "closing the file releases it");
    }
}
