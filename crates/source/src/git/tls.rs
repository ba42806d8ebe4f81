//! Verifying an HTTPS server against the `ca.crt` of a GitRepository's secret.
//!
//! libgit2 verifies TLS against the system roots only, and setting other roots is process-wide
//! (and `unsafe` in `git2`). So with a `ca.crt`, the certificate-check callback verifies the
//! server's certificate itself: chain to one of the given CAs, valid now, for server use, for the
//! host in the URL. libgit2 hands over the leaf certificate only, so the CA must sign the server
//! certificate directly or be that certificate.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage, anchor_from_trusted_cert};

/// Checks `leaf_der` (the server's certificate) against the PEM CAs in `ca_pem` for `host`.
pub fn verify_server_certificate(ca_pem: &str, leaf_der: &[u8], host: &str) -> Result<(), String> {
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid 'ca.crt': {e}"))?;
    if cas.is_empty() {
        return Err("invalid 'ca.crt': no PEM certificate in it".into());
    }
    let anchors = cas
        .iter()
        .map(|c| anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid 'ca.crt': {e}"))?;
    let leaf_der = CertificateDer::from(leaf_der);
    let leaf = EndEntityCert::try_from(&leaf_der)
        .map_err(|e| format!("unparsable server certificate: {e}"))?;
    leaf.verify_for_usage(
        ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        UnixTime::now(),
        KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| format!("x509: certificate signed by unknown authority ({e:?})"))?;
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| format!("invalid host name '{host}': {e}"))?;
    leaf.verify_is_valid_for_subject_name(&name)
        .map_err(|e| format!("x509: certificate is not valid for {host} ({e:?})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_ca_is_a_clear_error() {
        let err = verify_server_certificate("not a pem", b"\x30\x00", "h").unwrap_err();
        assert!(err.contains("ca.crt"), "{err}");
    }
}
