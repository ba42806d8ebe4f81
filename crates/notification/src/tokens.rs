//! Receiver tokens in memory, kept current by one watch per referenced Secret.
//!
//! The webhook server checks a call's signature with the token from here, so a forged call costs
//! no API request at all (Flux reads tokens from its informer cache for the same reason). Only
//! the Secrets some Receiver names are followed, each by name: a `get`, then a `watch` with the
//! field selector `metadata.name=<name>` from the resourceVersion the `get` returned. Gantry's
//! ClusterRole grants `get` and `watch` on Secrets but never `list` (see `gantry install`).
//!
//! A rotated token is seen within the watch's latency; a deleted Secret (or one without a
//! `token` key) makes the token unavailable until it is back.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use gantry_api::notification::v1::{Receiver, TOKEN_KEY};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A Secret by namespace and name.
pub type SecretKey = (String, String);

/// What is known of one Secret's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// Not read yet.
    Pending,
    Ready(Arc<str>),
    /// Why there is no token (no Secret, no `token` key, not UTF-8, the API refused).
    Unavailable(String),
}

struct Followed {
    token: watch::Receiver<Token>,
    stop: CancellationToken,
}

/// The tokens of the Secrets that Receivers name; cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    client: Client,
    followed: Arc<Mutex<HashMap<SecretKey, Followed>>>,
    shutdown: CancellationToken,
}

impl Tokens {
    /// Follows nothing yet; every watch stops with `shutdown`.
    pub fn new(client: Client, shutdown: CancellationToken) -> Self {
        Tokens {
            client,
            followed: Default::default(),
            shutdown,
        }
    }

    /// Follows exactly the Secrets these Receivers name: starts the missing watches and stops
    /// those no Receiver names any more.
    pub fn follow<'a>(&self, receivers: impl IntoIterator<Item = &'a Receiver>) {
        let wanted: BTreeSet<SecretKey> = receivers
            .into_iter()
            .filter_map(|r| Some((r.namespace()?, r.spec.secret_ref.as_ref()?.name.clone())))
            .collect();
        let Ok(mut followed) = self.followed.lock() else {
            return;
        };
        followed.retain(|key, f| {
            let keep = wanted.contains(key);
            if !keep {
                f.stop.cancel();
            }
            keep
        });
        for key in wanted {
            if followed.contains_key(&key) {
                continue;
            }
            let (tx, rx) = watch::channel(Token::Pending);
            let stop = self.shutdown.child_token();
            tokio::spawn(follow_secret(
                Api::namespaced(self.client.clone(), &key.0),
                key.1.clone(),
                tx,
                stop.clone(),
            ));
            followed.insert(key, Followed { token: rx, stop });
        }
    }

    /// The token of `namespace/name`, waiting up to `wait` for a Secret whose watch has just
    /// started. Never calls the API.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
        wait: Duration,
    ) -> Result<Arc<str>, String> {
        let key = (namespace.to_string(), name.to_string());
        let rx = self
            .followed
            .lock()
            .ok()
            .and_then(|f| f.get(&key).map(|f| f.token.clone()));
        let Some(mut rx) = rx else {
            return Err(format!("secret '{namespace}/{name}' is not followed yet"));
        };
        let known = match tokio::time::timeout(wait, rx.wait_for(|t| *t != Token::Pending)).await {
            Ok(Ok(token)) => token.clone(),
            Ok(Err(_)) | Err(_) => Token::Pending,
        };
        match known {
            Token::Ready(token) => Ok(token),
            Token::Unavailable(reason) => Err(format!(
                "unable to read token from secret '{namespace}/{name}': {reason}"
            )),
            Token::Pending => Err(format!(
                "the token from secret '{namespace}/{name}' is not read yet"
            )),
        }
    }
}

fn token_of(secret: &Secret) -> Token {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .map(|b| b.0.clone());
    match bytes.map(String::from_utf8) {
        Some(Ok(token)) => Token::Ready(token.into()),
        Some(Err(_)) => Token::Unavailable(format!("'{TOKEN_KEY}' is not UTF-8")),
        None => Token::Unavailable(format!("the secret has no '{TOKEN_KEY}' key")),
    }
}

/// Keeps `tx` current for the Secret `name` until `stop`: a `get`, then a field-selected watch,
/// resumed from the last resourceVersion when the server ends it, started over when that
/// version is too old (410) or the connection fails.
async fn follow_secret(
    api: Api<Secret>,
    name: String,
    tx: watch::Sender<Token>,
    stop: CancellationToken,
) {
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(290);
    let mut failures = 0u32;
    loop {
        let followed = async {
            let mut version = match api.get_opt(&name).await? {
                Some(secret) => {
                    tx.send_replace(token_of(&secret));
                    secret.resource_version().unwrap_or_default()
                }
                None => {
                    tx.send_replace(Token::Unavailable("secret not found".into()));
                    // Unset: a Secret created since the `get` arrives as a synthetic ADDED.
                    String::new()
                }
            };
            failures = 0;
            loop {
                let mut events = api.watch(&params, &version).await?.boxed();
                while let Some(event) = events.try_next().await? {
                    match event {
                        WatchEvent::Added(secret) | WatchEvent::Modified(secret) => {
                            tx.send_replace(token_of(&secret));
                            version = secret.resource_version().unwrap_or_default();
                        }
                        WatchEvent::Deleted(secret) => {
                            tx.send_replace(Token::Unavailable("secret not found".into()));
                            version = secret.resource_version().unwrap_or_default();
                        }
                        WatchEvent::Bookmark(bookmark) => {
                            version = bookmark.metadata.resource_version;
                        }
                        // 410 Gone (the version was compacted away) and the like: read again.
                        WatchEvent::Error(status) => {
                            return Err::<(), _>(kube::Error::Api(status));
                        }
                    }
                }
            }
        };
        let result = tokio::select! {
            result = followed => result,
            _ = stop.cancelled() => return,
        };
        if let Err(err) = result {
            failures += 1;
            // A token already read stays usable while the API is unreachable; a refusal is
            // reported when nothing was read yet.
            if *tx.borrow() == Token::Pending {
                tx.send_replace(Token::Unavailable(err.to_string()));
            }
            tracing::warn!(secret = %name, %err, "following a Receiver's Secret");
        }
        let delay = Duration::from_millis(200 * 2u64.pow(failures.min(7)));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}
