//! What the image controllers read from Secrets: the registry credentials, TLS material and
//! proxy of an ImageRepository (its scans and its policies' digest lookups use the same), and
//! the data of any Secret (an automation's git credentials).

use std::collections::BTreeMap;

use gantry_api::image::v1::ImageRepository;
use gantry_source::git::auth::proxy_url;
use kube::Client;

use super::repository::Error;
use crate::registry::{ClientConfig, Credentials, Reference};

/// How to reach the repository's registry: credentials, TLS material and proxy from the
/// referenced Secrets (the ImagePolicy controller resolves digests with the same).
pub(crate) async fn client_config(
    obj: &ImageRepository,
    client: &Client,
    namespace: &str,
) -> Result<ClientConfig, Error> {
    let mut config = ClientConfig {
        insecure: obj.spec.insecure,
        ..ClientConfig::default()
    };
    let registry = Reference::parse(&obj.spec.image)
        .map(|r| r.registry)
        .unwrap_or_default();
    if let Some(secret_ref) = &obj.spec.secret_ref {
        let data = secret_data(client, namespace, &secret_ref.name)
            .await
            .map_err(Error::Auth)?;
        config.credentials = credentials_from_secret(&data, &registry, &secret_ref.name)?;
    }
    if let Some(cert_ref) = &obj.spec.cert_secret_ref {
        let data = secret_data(client, namespace, &cert_ref.name)
            .await
            .map_err(Error::Auth)?;
        let get = |keys: &[&str]| keys.iter().find_map(|k| data.get(*k).cloned());
        config.ca_pem = get(&["ca.crt", "caFile"]);
        match (get(&["tls.crt", "certFile"]), get(&["tls.key", "keyFile"])) {
            (Some(cert), Some(key)) => config.client_cert_pem = Some((cert, key)),
            (None, None) => {}
            _ => {
                return Err(Error::Auth(format!(
                    "secret '{}': 'tls.crt' and 'tls.key' must be given together",
                    cert_ref.name
                )));
            }
        }
        if config.ca_pem.is_none() && config.client_cert_pem.is_none() {
            return Err(Error::Auth(format!(
                "secret '{}' has none of 'ca.crt', 'tls.crt', 'tls.key'",
                cert_ref.name
            )));
        }
    }
    if let Some(proxy_ref) = &obj.spec.proxy_secret_ref {
        let data = secret_data(client, namespace, &proxy_ref.name)
            .await
            .map_err(Error::Auth)?;
        config.proxy = Some(proxy_url(&data).map_err(Error::Auth)?);
    }
    Ok(config)
}

/// Credentials for `registry` from a docker-registry Secret's data (`.dockerconfigjson`, or the
/// legacy `.dockercfg`, whose content is the `auths` map itself).
pub fn credentials_from_secret(
    data: &BTreeMap<String, Vec<u8>>,
    registry: &str,
    secret: &str,
) -> Result<Option<Credentials>, Error> {
    let json = if let Some(json) = data.get(".dockerconfigjson") {
        json.clone()
    } else if let Some(legacy) = data.get(".dockercfg") {
        let mut wrapped = b"{\"auths\":".to_vec();
        wrapped.extend_from_slice(legacy);
        wrapped.push(b'}');
        wrapped
    } else {
        return Err(Error::Auth(format!(
            "secret '{secret}' has no '.dockerconfigjson' (create it with `kubectl create secret docker-registry`)"
        )));
    };
    let creds = Credentials::from_docker_config(&json, registry)
        .map_err(|e| Error::Auth(format!("secret '{secret}': {e}")))?;
    if creds.is_none() {
        tracing::debug!(
            secret,
            registry,
            "no credentials for this registry in the secret"
        );
    }
    Ok(creds)
}

/// The data of Secret `namespace/name`; the error is a message for a condition.
pub(crate) async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    gantry_runtime::secrets::data(client, namespace, name)
        .await
        .map_err(|e| {
            let cause = gantry_runtime::secrets::api_message(&e);
            format!("failed to get secret '{namespace}/{name}': {cause}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::image::v1::AUTHENTICATION_FAILED_REASON;

    #[test]
    fn docker_secrets_need_a_docker_config() {
        let mut data = BTreeMap::new();
        let err = credentials_from_secret(&data, "r:5000", "creds").unwrap_err();
        assert_eq!(err.reason(), AUTHENTICATION_FAILED_REASON);
        assert!(
            err.to_string().contains("has no '.dockerconfigjson'"),
            "{err}"
        );
        data.insert(
            ".dockercfg".into(),
            br#"{"r:5000": {"username": "u", "password": "p"}}"#.to_vec(),
        );
        let creds = credentials_from_secret(&data, "r:5000", "creds")
            .unwrap()
            .unwrap();
        assert_eq!(creds.username, "u");
        data.insert(".dockerconfigjson".into(), b"{".to_vec());
        assert!(credentials_from_secret(&data, "r:5000", "creds").is_err());
    }
}
