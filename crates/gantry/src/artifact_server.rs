//! The artifact server: `status.artifact.url` answers with the stored file, under Flux's path
//! layout (`/<kind>/<namespace>/<name>/<file>`), so Flux's own controllers and tools that
//! download artifacts work against Gantry (Flux's source-controller serves its storage the same
//! way on `--storage-addr`, default `:9090`).
//!
//! Only `GET` and `HEAD` of a regular file below the storage root are answered; anything else,
//! a path with `..`, `.` or an empty segment, a directory or a symlink, is 404 (or 405 for other
//! methods). Files are streamed, never read whole; no lock or shared state on the path.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gantry_source::ArtifactStore;

/// The router serving `store`.
pub fn router(store: ArtifactStore) -> Router {
    Router::new().fallback(serve).with_state(store)
}

async fn serve(State(store): State<ArtifactStore>, request: Request) -> Response {
    let head = match *request.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => return StatusCode::METHOD_NOT_ALLOWED.into_response(),
    };
    let Some(path) = resolve(&store, request.uri().path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    let len = match file.metadata().await {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let content_type = if path.extension().is_some_and(|e| e == "gz") {
        "application/x-gzip"
    } else {
        "application/octet-stream"
    };
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 << 10))
    };
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

/// The stored file a request path names, if it is a plain path below the root with no symlink
/// on the way (the store never writes one; a planted one must not lead outside).
pub fn resolve(store: &ArtifactStore, raw_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(raw_path)?;
    if decoded.split('/').skip(1).any(|s| s.is_empty()) {
        return None;
    }
    let path = store.file_for(&decoded)?;
    let mut at = store.root().to_path_buf();
    for part in path.strip_prefix(store.root()).ok()?.components() {
        at.push(part);
        let meta = std::fs::symlink_metadata(&at).ok()?;
        if meta.file_type().is_symlink() {
            return None;
        }
    }
    Some(path).filter(|p| Path::is_file(p))
}

// `%XX` decoding; `None` for malformed escapes, NUL or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.contains('\0')).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(app: &Router, method: Method, path: &str) -> (StatusCode, Vec<u8>) {
        let response = app
            .clone()
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body.to_vec())
    }

    #[tokio::test]
    async fn serves_stored_files_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
        let store = ArtifactStore::new(root.path().join("artifacts"), "http://x");
        let dir = root.path().join("artifacts/ocirepository/ns/app");
        std::fs::create_dir_all(&dir).unwrap();
        let name = format!("sha256:{}.tar.gz", "a".repeat(64));
        std::fs::write(dir.join(&name), b"tarball").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.join("link.tar.gz")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.join("out")).unwrap();
        let app = router(store);

        let path = format!("/ocirepository/ns/app/{name}");
        assert_eq!(
            get(&app, Method::GET, &path).await,
            (StatusCode::OK, b"tarball".to_vec())
        );
        let escaped = path.replace(':', "%3A");
        assert_eq!(get(&app, Method::GET, &escaped).await.0, StatusCode::OK);
        assert_eq!(
            get(&app, Method::HEAD, &path).await,
            (StatusCode::OK, vec![])
        );
        assert_eq!(
            get(&app, Method::POST, &path).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        for bad in [
            "/",
            "/ocirepository/ns/app",
            "/ocirepository/ns/app/",
            "/ocirepository/ns/app/missing.tar.gz",
            "/ocirepository/ns/app/../../../../etc/passwd",
            "/ocirepository/ns/app/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/ocirepository/ns/app/..%2f..%2f..%2f..%2fetc%2fpasswd",
            "/ocirepository/ns/app/link.tar.gz",
            "/ocirepository/ns/app/out/secret",
            "/ocirepository//ns/app/x",
            "/%00",
            "/%zz",
        ] {
            let (status, body) = get(&app, Method::GET, bad).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
            assert!(!body.windows(6).any(|w| w == b"s3cret"), "{bad}");
        }
    }
}
