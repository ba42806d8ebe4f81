//! TLS for checks: the system roots (loaded once), an optional extra CA and client certificate,
//! verification that can be switched off per Monitor, and clear words for handshake failures.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

/// The ring provider, the one kube and the rest of Gantry link.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's trusted roots, read once per process.
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            Arc::new(roots)
        })
        .clone()
}

/// The roots plus `ca_pem`, if any.
pub fn roots_with(ca_pem: Option<&[u8]>) -> Result<Arc<RootCertStore>, String> {
    let Some(pem) = ca_pem else {
        return Ok(system_roots());
    };
    let mut roots = (*system_roots()).clone();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid ca.crt: {e}"))?;
    if certs.is_empty() {
        return Err("ca.crt holds no PEM certificate".into());
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("invalid ca.crt: {e}"))?;
    }
    Ok(Arc::new(roots))
}

/// Accepts any certificate (a Monitor with `insecureSkipVerify`), still checking that the
/// handshake's signatures are made with the certificate's key.
#[derive(Debug)]
pub struct AcceptAny(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies as `inner` does and keeps the leaf certificate, so a TLS check reports the expiry
/// even of a certificate it refuses.
#[derive(Debug)]
pub struct Recording {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub leaf: Mutex<Option<Vec<u8>>>,
}

impl Recording {
    pub fn leaf(&self) -> Option<Vec<u8>> {
        self.leaf
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.leaf.lock().unwrap_or_else(PoisonError::into_inner) = Some(end_entity.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The verifier a Monitor asks for: the roots' (with its CA), or none at all.
pub fn verifier(
    roots: Arc<RootCertStore>,
    insecure: bool,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    if insecure {
        return Ok(Arc::new(AcceptAny(provider())));
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("building the certificate verifier: {e}"))?;
    Ok(verifier)
}

/// A client configuration with `verifier` and an optional client certificate (PEM).
pub fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    client_cert: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client_cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("invalid tls.crt: {e}"))?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("invalid tls.key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("invalid client certificate: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Seconds from now until the certificate's `notAfter` (negative once expired).
pub fn seconds_left(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    Some(not_after - jiff::Timestamp::now().as_second())
}

/// Plain words for a TLS failure found anywhere in an error's chain.
pub fn describe_chain(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = find(e) {
            return Some(describe(tls));
        }
        current = e.source();
    }
    None
}

// `io::Error::source` skips the error it wraps, and boxed errors hide their type: look inside.
fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io.get_ref().and_then(|inner| find(inner));
    }
    None
}

/// Plain words for a TLS failure.
pub fn describe(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS certificate not valid yet".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "TLS certificate not valid for this host name (wrong host)".into()
            }
            CertificateError::UnknownIssuer => {
                "TLS certificate signed by an unknown authority (self-signed?)".into()
            }
            other => format!("TLS certificate refused: {other:?}"),
        },
        other => format!("TLS handshake failed: {other}"),
    }
}
