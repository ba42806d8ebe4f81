//! The PKI of the local control plane: one CA, a serving certificate for the API server, client
//! certificates for each component, and the service-account signing key.
//!
//! Generated in-process (rcgen) so no `openssl` binary is needed; ECDSA P-256 throughout, which
//! Kubernetes accepts both for TLS and for signing service-account tokens (ES256).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Paths of the files [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub dir: PathBuf,
}

impl Pki {
    /// Client certificate and key of a component (see [`CLIENTS`]).
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }
}

/// Client identities: (file name, common name, organisation).
pub const CLIENTS: &[(&str, &str, Option<&str>)] = &[
    ("admin", "gantry-admin", Some("system:masters")),
    (
        "kube-controller-manager",
        "system:kube-controller-manager",
        None,
    ),
    ("kube-scheduler", "system:kube-scheduler", None),
];

pub fn generate(dir: &Path) -> Result<Pki> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, contents: String| -> Result<PathBuf> {
        let path = dir.join(name);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gantry-local-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_cert_path = write("ca.crt", ca_cert.pem())?;
    let ca_key_path = write("ca.key", ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    // The in-cluster names matter for anything that later talks to the API through its Service.
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "10.96.0.1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;
    let serving_cert_path = write("apiserver.crt", serving_cert.pem())?;
    let serving_key_path = write("apiserver.key", serving_key.serialize_pem())?;

    for (file, cn, org) in CLIENTS {
        let mut params = CertificateParams::new(Vec::new())?;
        params.distinguished_name.push(DnType::CommonName, *cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *org);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(&format!("{file}.crt"), cert.pem())?;
        write(&format!("{file}.key"), key.serialize_pem())?;
    }

    let sa = KeyPair::generate()?;
    let sa_key = write("sa.key", sa.serialize_pem())?;
    let sa_pub = write("sa.pub", sa.public_key_pem())?;

    Ok(Pki {
        ca_cert: ca_cert_path,
        ca_key: ca_key_path,
        serving_cert: serving_cert_path,
        serving_key: serving_key_path,
        sa_key,
        sa_pub,
        dir: dir.to_path_buf(),
    })
}
