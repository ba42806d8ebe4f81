//! The artifact format `flux push artifact` writes, read and written the same way.
//!
//! One OCI image manifest (`application/vnd.oci.image.manifest.v1+json`) whose config blob has
//! media type `application/vnd.cncf.flux.config.v1+json` (the go-containerregistry empty config
//! Flux's CLI uploads, byte for byte) and one layer `application/vnd.cncf.flux.content.v1.tar+gzip`
//! holding the directory; the manifest carries `org.opencontainers.image.created` (RFC 3339, UTC),
//! `.source` and `.revision` annotations.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::registry::{Reference, RegistryClient, RegistryError};
use crate::sourceignore::SourceIgnore;

/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's manifest media type, also accepted when reading.
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of Flux's config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.flux.config.v1+json";
/// Media type of Flux's content layer.
pub const CONTENT_MEDIA_TYPE: &str = "application/vnd.cncf.flux.content.v1.tar+gzip";
/// Annotation: when the artifact was made.
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";
/// Annotation: where its content comes from (e.g. the git URL).
pub const SOURCE_ANNOTATION: &str = "org.opencontainers.image.source";
/// Annotation: the revision of the source (e.g. `main@sha1:<hex>`).
pub const REVISION_ANNOTATION: &str = "org.opencontainers.image.revision";
/// The config blob `flux push artifact` uploads (go-containerregistry's empty image config).
pub const CONFIG_BLOB: &[u8] = br#"{"architecture":"","created":"0001-01-01T00:00:00Z","os":"","rootfs":{"type":"layers","diff_ids":null},"config":{}}"#;

/// A content descriptor (config or layer).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub size: i64,
    pub digest: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest, fields in the order go-containerregistry writes them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Why a manifest cannot be used as an artifact.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("failed to parse artifact manifest: {0}")]
    Json(#[source] serde_json::Error),
    #[error("failed to parse artifact manifest: unsupported media type '{0}'")]
    MediaType(String),
    #[error("failed to parse artifact manifest: schemaVersion {0}, expected 2")]
    SchemaVersion(i64),
    #[error("no layers found in artifact")]
    NoLayers,
    #[error("failed to find layer with media type '{0}' in artifact")]
    NoSuchLayer(String),
    #[error("layer {digest} has an invalid descriptor: {why}")]
    BadLayer { digest: String, why: &'static str },
}

impl Manifest {
    /// Parses and checks a manifest fetched from a registry.
    pub fn parse(bytes: &[u8]) -> Result<Self, LayoutError> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(LayoutError::Json)?;
        if manifest.schema_version != 2 {
            return Err(LayoutError::SchemaVersion(manifest.schema_version));
        }
        if !(manifest.media_type.is_empty()
            || manifest.media_type == MANIFEST_MEDIA_TYPE
            || manifest.media_type == DOCKER_MANIFEST_MEDIA_TYPE)
        {
            return Err(LayoutError::MediaType(manifest.media_type));
        }
        Ok(manifest)
    }

    /// The layer Flux would pick: the first with `media_type`, else the first.
    pub fn select_layer(&self, media_type: Option<&str>) -> Result<&Descriptor, LayoutError> {
        if self.layers.is_empty() {
            return Err(LayoutError::NoLayers);
        }
        let layer = match media_type {
            Some(wanted) => self
                .layers
                .iter()
                .find(|l| l.media_type == wanted)
                .ok_or_else(|| LayoutError::NoSuchLayer(wanted.to_owned()))?,
            None => &self.layers[0],
        };
        let bad = |why| LayoutError::BadLayer {
            digest: layer.digest.clone(),
            why,
        };
        if layer.size < 0 {
            return Err(bad("negative size"));
        }
        let valid_digest = layer
            .digest
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid_digest {
            return Err(bad("the digest is not sha256:<64 hex>"));
        }
        Ok(layer)
    }
}

/// What `gantry push artifact` puts in the annotations.
#[derive(Clone, Debug, Default)]
pub struct PushMetadata {
    pub source: String,
    pub revision: String,
    /// RFC 3339 in UTC; now when `None`.
    pub created: Option<String>,
    /// Extra annotations (`--annotations key=value`).
    pub annotations: BTreeMap<String, String>,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("archiving {dir}: {source}")]
    Archive {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ignore(#[from] crate::sourceignore::IgnoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The result of a push: `<registry>/<repository>@sha256:<manifest digest>`.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub digest: String,
    pub reference: String,
}

/// The bytes of a Flux artifact for `dir`: layer (tar+gzip), manifest.
pub fn build(
    dir: &Path,
    ignore: &SourceIgnore,
    meta: &PushMetadata,
) -> Result<(Vec<u8>, Vec<u8>), PushError> {
    let mut layer = Vec::new();
    crate::artifact::write_tarball(dir, ignore, &mut layer).map_err(|source| {
        PushError::Archive {
            dir: dir.display().to_string(),
            source,
        }
    })?;
    let created = meta.created.clone().unwrap_or_else(|| {
        jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    });
    let mut annotations = BTreeMap::from([
        (CREATED_ANNOTATION.to_owned(), created),
        (SOURCE_ANNOTATION.to_owned(), meta.source.clone()),
        (REVISION_ANNOTATION.to_owned(), meta.revision.clone()),
    ]);
    annotations.extend(meta.annotations.clone());
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE.into(),
            size: CONFIG_BLOB.len() as i64,
            digest: crate::artifact::digest_of(CONFIG_BLOB),
            annotations: BTreeMap::new(),
        },
        layers: vec![Descriptor {
            media_type: CONTENT_MEDIA_TYPE.into(),
            size: layer.len() as i64,
            digest: crate::artifact::digest_of(&layer),
            annotations: BTreeMap::new(),
        }],
        annotations,
    };
    let manifest = serde_json::to_vec(&manifest).map_err(|e| PushError::Archive {
        dir: dir.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    Ok((layer, manifest))
}

/// Pushes `dir` as a Flux artifact tagged `tag`.
pub async fn push(
    client: &RegistryClient,
    tag: &str,
    dir: &Path,
    ignore: &SourceIgnore,
    meta: &PushMetadata,
) -> Result<Pushed, PushError> {
    let (dir, ignore_owned, meta_owned) = (dir.to_owned(), ignore.clone(), meta.clone());
    let (layer, manifest) =
        tokio::task::spawn_blocking(move || build(&dir, &ignore_owned, &meta_owned))
            .await
            .map_err(|e| PushError::Archive {
                dir: String::new(),
                source: std::io::Error::other(e),
            })??;
    client
        .push_blob(&crate::artifact::digest_of(CONFIG_BLOB), CONFIG_BLOB)
        .await?;
    client
        .push_blob(&crate::artifact::digest_of(&layer), &layer)
        .await?;
    let digest = client
        .push_manifest(tag, MANIFEST_MEDIA_TYPE, &manifest)
        .await?;
    let reference: &Reference = client.reference();
    Ok(Pushed {
        reference: format!("{}@{digest}", reference.canonical_name()),
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_blob_is_flux_s() {
        // What `flux push artifact` (v2.9.5) uploaded to a local registry.
        assert_eq!(CONFIG_BLOB.len(), 115);
        assert_eq!(
            crate::artifact::digest_of(CONFIG_BLOB),
            "sha256:5b943e2b943f6c81dbbd4e2eca5121f4fcc39139e3d1219d6d89bd925b77d9fe"
        );
    }

    #[test]
    fn layers_are_selected_as_flux_does() {
        let d = |m: &str, h: char| Descriptor {
            media_type: m.into(),
            size: 1,
            digest: format!("sha256:{}", h.to_string().repeat(64)),
            annotations: BTreeMap::new(),
        };
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            config: d(CONFIG_MEDIA_TYPE, '0'),
            layers: vec![d("a/b", '1'), d(CONTENT_MEDIA_TYPE, '2')],
            annotations: BTreeMap::new(),
        };
        assert_eq!(manifest.select_layer(None).unwrap().media_type, "a/b");
        assert_eq!(
            manifest
                .select_layer(Some(CONTENT_MEDIA_TYPE))
                .unwrap()
                .digest,
            format!("sha256:{}", "2".repeat(64))
        );
        assert_eq!(
            manifest.select_layer(Some("x/y")).unwrap_err().to_string(),
            "failed to find layer with media type 'x/y' in artifact"
        );
        let empty = Manifest {
            layers: vec![],
            ..manifest.clone()
        };
        assert_eq!(
            empty.select_layer(None).unwrap_err().to_string(),
            "no layers found in artifact"
        );
        let mut bad = manifest;
        bad.layers[0].digest = "sha256:../../etc".into();
        assert!(matches!(
            bad.select_layer(None),
            Err(LayoutError::BadLayer { .. })
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","config":{"mediaType":"x","size":1,"digest":"sha256:0"}}"#),
            Err(LayoutError::MediaType(_))
        ));
        assert!(matches!(
            Manifest::parse(b"<html>"),
            Err(LayoutError::Json(_))
        ));
    }
}
