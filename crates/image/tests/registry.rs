//! The registry client against a real `docker-registry` (CNCF distribution 2.8) on loopback, in
//! each of its auth modes, and against every fault a scan can meet.
//!
//! Two faults cannot be produced with the real registry: it never answers 429, and it never
//! sends a malformed tag list. For those (and for a registry that paginates with `n`/`last` but
//! sends no `Link` header, which distribution always sends) a small loopback HTTP server plays
//! the registry; each such test says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gantry_image::registry::{ClientConfig, Credentials, Reference, RegistryClient, RegistryError};
use gantry_testkit::registry::{Registry, RegistryAuth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(insecure: bool) -> ClientConfig {
    ClientConfig {
        insecure,
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

async fn list(client: &RegistryClient) -> Result<(Vec<String>, u32), RegistryError> {
    let mut all = Vec::new();
    let stats = client
        .list_tags(|page| {
            all.extend(page);
            Ok(())
        })
        .await?;
    Ok((all, stats.pages))
}

fn client(registry: &Registry, repo: &str, config: ClientConfig) -> RegistryClient {
    RegistryClient::new(&Reference::parse(&registry.image(repo)).unwrap(), config).unwrap()
}

fn tags(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("1.0.{i}")).collect()
}

#[tokio::test]
async fn anonymous_registry_lists_every_tag() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let mut wanted = tags(25);
    registry.push_tags("team/app", &wanted).await;
    wanted.sort();

    // Distribution 2.8 ignores `n` and `last` on tag lists (pagination of tags came with 3.0):
    // whatever is asked, everything arrives in one page, in storage order, without a `Link`.
    for page_size in [Some(10), Some(25), None] {
        let config = ClientConfig {
            page_size,
            ..config(true)
        };
        let (mut got, pages) = list(&client(&registry, "team/app", config)).await.unwrap();
        got.sort();
        assert_eq!(got, wanted, "n={page_size:?}");
        assert_eq!(pages, 1, "n={page_size:?}: 2.8 answers with one page");
    }
}

#[tokio::test]
async fn manifest_digests_match_what_was_pushed() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let digest = registry.push("app", "v1").await;
    let other = registry.push_variant("app", "v2", "other").await;
    assert_ne!(digest, other);
    let client = client(&registry, "app", config(true));
    assert_eq!(client.manifest_digest("v1").await.unwrap(), digest);
    assert_eq!(client.manifest_digest("v2").await.unwrap(), other);
    let err = client.manifest_digest("missing").await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn htpasswd_registry_takes_basic_credentials_and_refuses_wrong_ones() {
    let registry = Registry::start(RegistryAuth::htpasswd("ci", "s3cret"));
    registry.push_tags("app", &tags(3)).await;

    let docker_config = registry.docker_config("ci", "s3cret");
    let creds = Credentials::from_docker_config(docker_config.as_bytes(), &registry.host())
        .unwrap()
        .expect("credentials for the registry host");
    let good = ClientConfig {
        credentials: Some(creds),
        ..config(true)
    };
    let (got, _) = list(&client(&registry, "app", good)).await.unwrap();
    assert_eq!(got.len(), 3);

    let wrong = ClientConfig {
        credentials: Some(Credentials {
            username: "ci".into(),
            password: "wrong".into(),
        }),
        ..config(true)
    };
    let err = list(&client(&registry, "app", wrong)).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("authentication to 127.0.0.1:"),
        "{err}"
    );

    let err = list(&client(&registry, "app", config(true)))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("requires credentials and none were given"),
        "{err}"
    );
}

#[tokio::test]
async fn token_registry_goes_through_the_bearer_challenge() {
    let registry = Registry::start(RegistryAuth::token("robot", "t0ken"));
    registry.push_tags("team/app", &tags(30)).await;
    let creds = Credentials {
        username: "robot".into(),
        password: "t0ken".into(),
    };
    let paged = ClientConfig {
        credentials: Some(creds),
        page_size: Some(7),
        ..config(true)
    };
    let before = registry.tokens_issued();
    let (got, pages) = list(&client(&registry, "team/app", paged)).await.unwrap();
    assert_eq!((got.len(), pages), (30, 1));
    assert_eq!(
        registry.tokens_issued() - before,
        1,
        "one token serves every page"
    );

    let wrong = ClientConfig {
        credentials: Some(Credentials {
            username: "robot".into(),
            password: "nope".into(),
        }),
        ..config(true)
    };
    let err = list(&client(&registry, "team/app", wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("refused the credentials"), "{err}");
}

#[tokio::test]
async fn tls_registry_needs_its_ca() {
    let registry = Registry::start_tls(RegistryAuth::htpasswd("u", "p"));
    registry.push_tags("app", &tags(4)).await;
    let creds = Some(Credentials {
        username: "u".into(),
        password: "p".into(),
    });
    let with_ca = ClientConfig {
        ca_pem: registry.ca_pem().map(|c| c.as_bytes().to_vec()),
        credentials: creds.clone(),
        ..config(false)
    };
    let (got, _) = list(&client(&registry, "app", with_ca)).await.unwrap();
    assert_eq!(got.len(), 4);

    let without_ca = ClientConfig {
        credentials: creds.clone(),
        ..config(false)
    };
    let err = list(&client(&registry, "app", without_ca))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // `insecure` speaks plain HTTP, which a TLS registry does not answer properly.
    let plain = ClientConfig {
        credentials: creds,
        ..config(true)
    };
    assert!(list(&client(&registry, "app", plain)).await.is_err());
}

#[tokio::test]
async fn token_registry_over_tls() {
    let registry = Registry::start_tls(RegistryAuth::token("robot", "pw"));
    registry.push("app", "1.0.0").await;
    let config = ClientConfig {
        ca_pem: registry.ca_pem().map(|c| c.as_bytes().to_vec()),
        credentials: Some(Credentials {
            username: "robot".into(),
            password: "pw".into(),
        }),
        ..config(false)
    };
    let (got, _) = list(&client(&registry, "app", config)).await.unwrap();
    assert_eq!(got, ["1.0.0"]);
}

#[tokio::test]
async fn unknown_repository_is_not_found() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    registry.push("exists", "v1").await;
    let err = list(&client(&registry, "does/not/exist", config(true)))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("NAME_UNKNOWN"), "{err}");
}

#[tokio::test]
async fn a_registry_that_is_down_is_unreachable() {
    let port = {
        let registry = Registry::start(RegistryAuth::Anonymous);
        registry.port()
    }; // dropped: killed, the port no longer answers
    let reference = Reference::parse(&format!("127.0.0.1:{port}/app")).unwrap();
    let client = RegistryClient::new(&reference, config(true)).unwrap();
    let err = list(&client).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("registry 127.0.0.1:{port} is unreachable")),
        "{err}"
    );
}

// ---- faults the real registry cannot produce: a loopback server plays the registry ----

/// Serves one scripted answer per request (the last one repeats), counting requests.
struct Scripted {
    port: u16,
    requests: Arc<AtomicUsize>,
    targets: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scripted(answers: Vec<String>) -> Scripted {
    scripted_with(move |i, _| answers[i.min(answers.len() - 1)].clone()).await
}

async fn scripted_with(answer: impl Fn(usize, &str) -> String + Send + Sync + 'static) -> Scripted {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let targets = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, seen) = (requests.clone(), targets.clone());
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (count, seen, answer) = (count.clone(), seen.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                        buffer.drain(..end + 4);
                        let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                        seen.lock().unwrap().push(target.clone());
                        let i = count.fetch_add(1, Ordering::SeqCst);
                        let response = answer(i, &target);
                        if socket.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Scripted {
        port,
        requests,
        targets,
        task,
    }
}

fn http(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
}

fn scripted_client(server: &Scripted, config: ClientConfig) -> RegistryClient {
    let reference = Reference::parse(&format!("127.0.0.1:{}/app", server.port)).unwrap();
    RegistryClient::new(&reference, config).unwrap()
}

// distribution never answers 429; a loopback server does, as Docker Hub and GHCR do.
#[tokio::test]
async fn too_many_requests_waits_for_retry_after_then_succeeds() {
    let server = scripted(vec![
        http("429 Too Many Requests", "Retry-After: 1\r\n", "{}"),
        http("429 Too Many Requests", "Retry-After: 1\r\n", "{}"),
        http("200 OK", "", r#"{"name":"app","tags":["a","b"]}"#),
    ])
    .await;
    let started = Instant::now();
    let (got, _) = list(&scripted_client(&server, config(true))).await.unwrap();
    assert_eq!(got, ["a", "b"]);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After was not honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
}

// distribution never answers 429; a loopback server does.
#[tokio::test]
async fn too_many_requests_beyond_the_bound_fails_at_once() {
    let server = scripted(vec![http(
        "429 Too Many Requests",
        "Retry-After: 3600\r\n",
        "{}",
    )])
    .await;
    let started = Instant::now();
    let err = list(&scripted_client(&server, config(true)))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(err, RegistryError::TooManyRequests { retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("429 Too Many Requests, retry after 3600s"),
        "{err}"
    );

    // Retries are bounded too when the registry keeps asking for short waits.
    let server = scripted(vec![http(
        "429 Too Many Requests",
        "Retry-After: 0\r\n",
        "{}",
    )])
    .await;
    let bounded = ClientConfig {
        max_retries: 3,
        ..config(true)
    };
    let err = list(&scripted_client(&server, bounded)).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::TooManyRequests { .. }),
        "{err}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 4, "1 + 3 retries");
}

// distribution always answers well-formed JSON; a loopback server does not.
#[tokio::test]
async fn a_malformed_tag_list_is_reported() {
    for body in [
        r#"{"name":"app","tags":["a","b""#,
        r#"<html>oops</html>"#,
        r#"{"name":"app","tags":"not a list"}"#,
        r#"{"name":"app","tags":["ok","bad tag\nwith newline"]}"#,
    ] {
        let server = scripted(vec![http("200 OK", "", body)]).await;
        let err = list(&scripted_client(&server, config(true)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::Malformed { .. }),
            "{body}: {err}"
        );
        assert!(
            err.to_string()
                .contains("malformed answer from http://127.0.0.1:"),
            "{err}"
        );
    }
}

// distribution always sends a Link header; some registries page with `n`/`last` alone.
#[tokio::test]
async fn pages_without_link_headers_continue_from_the_last_tag() {
    let all: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
    let served = all.clone();
    let server = scripted_with(move |_, target| {
        let url = reqwest::Url::parse(&format!("http://x{target}")).unwrap();
        let n: usize = url
            .query_pairs()
            .find(|(k, _)| k == "n")
            .map_or(100, |(_, v)| v.parse().unwrap());
        let last = url
            .query_pairs()
            .find(|(k, _)| k == "last")
            .map(|(_, v)| v.into_owned());
        let page: Vec<&String> = served
            .iter()
            .filter(|t| last.as_ref().is_none_or(|l| *t > l))
            .take(n)
            .collect();
        http(
            "200 OK",
            "",
            &serde_json::json!({"name": "app", "tags": page}).to_string(),
        )
    })
    .await;
    let paged = ClientConfig {
        page_size: Some(3),
        ..config(true)
    };
    let (got, pages) = list(&scripted_client(&server, paged)).await.unwrap();
    assert_eq!(got, all);
    assert_eq!(pages, 3);
    let targets = server.targets.lock().unwrap().clone();
    assert_eq!(
        targets,
        [
            "/v2/app/tags/list?n=3",
            "/v2/app/tags/list?n=3&last=t2",
            "/v2/app/tags/list?n=3&last=t5",
        ]
    );
}

// A registry that ignores `last` would loop forever; the client stops.
#[tokio::test]
async fn a_registry_ignoring_last_does_not_loop() {
    let server = scripted(vec![http(
        "200 OK",
        "",
        r#"{"name":"app","tags":["a","b"]}"#,
    )])
    .await;
    let paged = ClientConfig {
        page_size: Some(2),
        ..config(true)
    };
    let (got, pages) = list(&scripted_client(&server, paged)).await.unwrap();
    assert_eq!((got, pages), (vec!["a".to_string(), "b".to_string()], 1));
}

// distribution 2.8 never paginates tag lists; a loopback server pages with `Link` headers as
// distribution 3, Docker Hub, GHCR and Quay do.
#[tokio::test]
async fn link_headers_are_followed_to_the_end() {
    let all: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
    let served = all.clone();
    let server = scripted_with(move |_, target| {
        let url = reqwest::Url::parse(&format!("http://x{target}")).unwrap();
        let n: usize = url
            .query_pairs()
            .find(|(k, _)| k == "n")
            .map_or(100, |(_, v)| v.parse().unwrap());
        let last = url
            .query_pairs()
            .find(|(k, _)| k == "last")
            .map(|(_, v)| v.into_owned());
        let page: Vec<&String> = served
            .iter()
            .filter(|t| last.as_ref().is_none_or(|l| *t > l))
            .take(n)
            .collect();
        let more = page.last().is_some_and(|l| *l != served.last().unwrap());
        let link = if more {
            format!(
                "Link: </v2/app/tags/list?last={}&n={n}>; rel=\"next\"\r\n",
                page.last().unwrap()
            )
        } else {
            String::new()
        };
        http(
            "200 OK",
            &link,
            &serde_json::json!({"name": "app", "tags": page}).to_string(),
        )
    })
    .await;
    let paged = ClientConfig {
        page_size: Some(10),
        ..config(true)
    };
    let (got, pages) = list(&scripted_client(&server, paged)).await.unwrap();
    assert_eq!(got, all);
    assert_eq!(pages, 3);
    let targets = server.targets.lock().unwrap().clone();
    assert_eq!(
        targets,
        [
            "/v2/app/tags/list?n=10",
            "/v2/app/tags/list?last=t09&n=10",
            "/v2/app/tags/list?last=t19&n=10",
        ]
    );
}

/// What `cargo xtask image --push` does: blobs, then the manifest, through the bearer flow with
/// a token scoped for push; a blob already there is not sent again.
#[tokio::test]
async fn pushes_blobs_and_a_manifest_with_a_push_scoped_token() {
    use sha2::{Digest, Sha256};
    let sha = |data: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(data)));
    let registry = Registry::start(RegistryAuth::token("robot", "t0ken"));
    let creds = ClientConfig {
        credentials: Some(Credentials {
            username: "robot".into(),
            password: "t0ken".into(),
        }),
        ..config(true)
    };
    let pusher = client(&registry, "team/gantry", creds);
    let blob = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"not really a tar, the registry does not look".to_vec();
    assert!(pusher.push_blob(&sha(&layer), &layer).await.unwrap());
    assert!(
        !pusher.push_blob(&sha(&layer), &layer).await.unwrap(),
        "a blob already there is not sent again"
    );
    assert!(pusher.push_blob(&sha(blob), blob).await.unwrap());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(blob), "size": blob.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let digest = pusher
        .push_manifest(
            "1.0.0",
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .await
        .unwrap();
    assert_eq!(digest, sha(&manifest));
    assert_eq!(pusher.manifest_digest("1.0.0").await.unwrap(), digest);

    // Without credentials the token endpoint refuses a push scope.
    let anonymous = client(&registry, "team/gantry", config(true));
    let err = anonymous
        .push_blob(&sha(b"other"), b"other")
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err}");
}
