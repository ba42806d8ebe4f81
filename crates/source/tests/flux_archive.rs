//! Tarball parity with Flux: `fixtures/flux-archive/repo` archived by Flux's own
//! `storage.Archive` (github.com/fluxcd/pkg/artifact v0.18.0, the code source-controller stores
//! artifacts with, called from a one-off Go program built from the Go module proxy) gave
//! `fixtures/flux-archive/flux.tar.gz`, digest `FLUX_DIGEST`, whose tar stream has sha256
//! `FLUX_TAR_SHA256`. Gantry's tar stream for the same tree must be those bytes exactly:
//! walk order, `.` root entry, names, modes 0600/0700/0750, USTAR headers and the prefix split of
//! long names. (The gzip wrapper differs: Go's deflate and zlib's emit different, equally valid
//! streams; see docs/sources.md "Artifacts".)

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use gantry_source::artifact::{digest_of, write_tar};
use gantry_source::sourceignore::SourceIgnore;

/// `status.artifact.digest` Flux computes for the fixture repository.
const FLUX_DIGEST: &str = "sha256:0bf6ba17717136176fa4356b39a24c2c1335adad78ff7a7d5018ae767da8d623";
/// sha256 of the uncompressed tar stream inside Flux's artifact.
const FLUX_TAR_SHA256: &str =
    "sha256:8cd4cfa091b82a682ad9289680c7da1c8dad67f810c2a694db3630bf455db726";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flux-archive")
}

// The fixture copied to a scratch directory with the modes git gives it (run.sh executable),
// so the result does not depend on the checkout's umask or mtimes.
fn checkout() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    fn copy(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                std::fs::create_dir(&target).unwrap();
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
                let executable = entry.file_name() == "run.sh";
                let mode = if executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&fixtures().join("repo"), dir.path());
    dir
}

#[test]
fn the_fixture_is_flux_s_artifact() {
    let bytes = std::fs::read(fixtures().join("flux.tar.gz")).unwrap();
    assert_eq!(digest_of(&bytes), FLUX_DIGEST);
    let mut tar = Vec::new();
    GzDecoder::new(&bytes[..]).read_to_end(&mut tar).unwrap();
    assert_eq!(digest_of(&tar), FLUX_TAR_SHA256);
}

#[test]
fn the_tar_stream_is_flux_s() {
    let dir = checkout();
    let rules = SourceIgnore::load(dir.path(), None).unwrap();
    let ours = write_tar(dir.path(), &rules, Vec::new()).unwrap();
    let mut flux = Vec::new();
    GzDecoder::new(&std::fs::read(fixtures().join("flux.tar.gz")).unwrap()[..])
        .read_to_end(&mut flux)
        .unwrap();
    // On a mismatch, name the first differing 512-byte block (a header or file data).
    if let Some(at) = ours.iter().zip(&flux).position(|(a, b)| a != b) {
        panic!(
            "tar streams differ at byte {at} (block {}): ours {:?} flux {:?}",
            at / 512,
            String::from_utf8_lossy(&ours[at / 512 * 512..(at / 512 * 512 + 160).min(ours.len())]),
            String::from_utf8_lossy(&flux[at / 512 * 512..(at / 512 * 512 + 160).min(flux.len())]),
        );
    }
    assert_eq!(ours.len(), flux.len());
    assert_eq!(digest_of(&ours), FLUX_TAR_SHA256);
}
