//! Loopback HTTP endpoints tests point Gantry at.

use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Every JSON body an endpoint received, in arrival order.
pub type Seen = Arc<Mutex<Vec<Value>>>;

/// An endpoint on 127.0.0.1 that answers every POST with `ok` and records its JSON body (a body
/// that is not JSON is answered and not recorded), as a `generic` Provider's or a webhook's
/// receiver. Returns what it saw and its URL ending in `path`; it stops with the test's runtime.
pub async fn json_sink(path: &str) -> (Seen, String) {
    let seen = Seen::default();
    let state = seen.clone();
    let app = axum::Router::new().fallback(axum::routing::post(move |body: axum::body::Bytes| {
        let state = state.clone();
        async move {
            if let Ok(json) = serde_json::from_slice(&body) {
                state.lock().unwrap_or_else(|e| e.into_inner()).push(json);
            }
            "ok"
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (
        seen,
        format!("http://{addr}/{}", path.trim_start_matches('/')),
    )
}
