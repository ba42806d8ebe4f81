//! Shared by the status page tests: a served page over a store, and a plain HTTP/1.1 GET.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gantry_uptime_store::status::{self, StatusOptions, StatusPage};
use gantry_uptime_store::{MonitorInfo, MonitorKey, Sample, State, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The status page of `store` on 127.0.0.1 with a free port, rebuilt on every new write.
pub async fn serve(store: Store) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let page = StatusPage::new(
        store,
        StatusOptions {
            title: "Example <Status>".into(),
            min_refresh: Duration::ZERO,
            max_age: Duration::from_secs(60),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(status::serve(listener, Arc::clone(&page), async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// `GET path` → (status code, content type, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response within 30s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, content_type, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

pub fn key(name: &str) -> MonitorKey {
    MonitorKey::new("prod", name)
}

pub fn info(name: &str, display: &str, group: &str) -> MonitorInfo {
    MonitorInfo {
        key: key(name),
        display_name: display.into(),
        group: group.into(),
        kind: "http".into(),
        target: format!("http://127.0.0.1:9/{name}"),
    }
}

pub fn sample(name: &str, at: i64, state: State) -> Sample {
    let up = state == State::Up;
    Sample {
        key: key(name),
        at,
        state,
        success: up,
        response_us: Some(if up { 42_000 } else { 10_000_000 }),
        http_status: Some(if up { 200 } else { 502 }),
        message: (!up).then(|| format!("{name}: HTTP 502 <bad gateway>")),
    }
}
