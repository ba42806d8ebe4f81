//! The outbound HTTP client every controller uses for registries and alert providers.
//!
//! TLS is rustls with the `ring` provider (the one kube already links, so no second crypto
//! library), trusting the system roots plus an optional CA from the object's `certSecretRef`.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// How one client should be built.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Extra trusted CA certificates, PEM (Flux's `ca.crt`).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, PEM (Flux's `tls.crt` and `tls.key`), for mutual TLS.
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Proxy for every request, e.g. `http://user:pass@proxy:3128`.
    pub proxy: Option<String>,
    /// Limit for each whole request.
    pub timeout: Option<Duration>,
}

/// Why a client could not be built. Messages say which input was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ca.crt holds no usable PEM certificate")]
    NoCertificate,
    #[error("invalid certificate in ca.crt: {0}")]
    BadCertificate(String),
    #[error("invalid client certificate or key (tls.crt/tls.key): {0}")]
    BadClientCert(String),
    #[error("invalid proxy address {address:?}: {source}")]
    BadProxy {
        address: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("building the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// A client with the system roots, `options.ca_pem`, and the proxy and timeout asked for.
pub fn client(options: &ClientOptions) -> Result<reqwest::Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: a registry with its own CA still works.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = &options.ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        if certs.is_empty() {
            return Err(ClientError::NoCertificate);
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::BadCertificate(e.to_string()))?
        .with_root_certificates(roots);
    let tls = match &options.client_cert_pem {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::BadClientCert(e.to_string()))?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| ClientError::BadClientCert(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::BadClientCert(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")));
    if let Some(timeout) = options.timeout {
        builder = builder.timeout(timeout);
    }
    if let Some(address) = &options.proxy {
        let proxy = reqwest::Proxy::all(address).map_err(|source| ClientError::BadProxy {
            address: address.clone(),
            source,
        })?;
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(ClientError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_client_builds() {
        client(&ClientOptions::default()).unwrap();
    }

    #[test]
    fn ca_without_certificate_is_refused() {
        let err = client(&ClientOptions {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, ClientError::NoCertificate), "{err}");
    }

    #[test]
    fn bad_proxy_is_named() {
        let err = client(&ClientOptions {
            proxy: Some("::not a url".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("::not a url"), "{err}");
    }
}
