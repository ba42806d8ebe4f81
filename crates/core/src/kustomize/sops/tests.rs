//! Round trips through files built here the way sops builds them; files written by the real
//! `sops` CLI are tested in the kustomize crate (`tests/sops.rs`).

use super::*;

const KEY: [u8; 32] = [7; 32];
const LAST_MODIFIED: &str = "2026-12-04T21:00:00Z";

/// Encrypts every scalar of `plain` that `encrypts` selects and appends sops metadata with
/// `extra` fields (e.g. `encrypted_regex`).
fn encrypt_yaml(plain: &str, extra: &[(&str, &str)], encrypts: &dyn Fn(&[&str]) -> bool) -> String {
    let mut doc: Node = serde_saphyr::from_str(plain).unwrap();
    let mac = encrypt_mac(&KEY, &[1; 32], std::slice::from_ref(&doc), LAST_MODIFIED).unwrap();
    fn walk(node: &mut Node, path: &mut Vec<String>, encrypts: &dyn Fn(&[&str]) -> bool) {
        match node {
            Node::Map(items) => {
                for (k, v) in items {
                    path.push(k.clone());
                    walk(v, path, encrypts);
                    path.pop();
                }
            }
            Node::Seq(items) => items.iter_mut().for_each(|v| walk(v, path, encrypts)),
            Node::Null => {}
            leaf => {
                let keys: Vec<&str> = path.iter().map(String::as_str).collect();
                if encrypts(&keys) {
                    *leaf = Node::Str(encrypt_value(&KEY, &[2; 32], leaf, &keys).unwrap());
                }
            }
        }
    }
    walk(&mut doc, &mut Vec::new(), encrypts);
    let mut meta = vec![
        ("lastmodified".to_string(), Node::Str(LAST_MODIFIED.into())),
        ("mac".to_string(), Node::Str(mac)),
        ("version".to_string(), Node::Str("3.13.3".into())),
    ];
    for (k, v) in extra {
        meta.push((k.to_string(), Node::Str(v.to_string())));
    }
    if let Node::Map(items) = &mut doc {
        items.push(("sops".into(), Node::Map(meta)));
    }
    serde_saphyr::to_string(&doc).unwrap()
}

const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: hunter2\n  port: 5432\n  ratio: 1.5\n  enabled: true\n  list:\n    - a\n    - b\n";

#[test]
fn a_file_round_trips_with_types_and_order() {
    let file = encrypt_yaml(SECRET, &[], &|_| true);
    assert!(!file.contains("hunter2"));
    let mut doc = Document::parse(file.as_bytes(), Format::Yaml).unwrap();
    doc.decrypt(&KEY).unwrap();
    let branch = &doc.branches[0];
    assert_eq!(branch.get("kind"), Some(&Node::Str("Secret".into())));
    let data = branch.get("stringData").unwrap();
    assert_eq!(data.get("password"), Some(&Node::Str("hunter2".into())));
    assert_eq!(data.get("port"), Some(&Node::Int(5432)));
    assert_eq!(data.get("ratio"), Some(&Node::Float(1.5)));
    assert_eq!(data.get("enabled"), Some(&Node::Bool(true)));
    let out = String::from_utf8(doc.emit(Format::Yaml).unwrap()).unwrap();
    assert!(!out.contains("sops"), "{out}");
    let keys: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(
        keys,
        ["apiVersion: v1", "kind: Secret", "metadata:", "stringData:"]
    );
}

#[test]
fn a_changed_plain_value_fails_the_mac() {
    // With encrypted_regex only `stringData` is encrypted: `metadata.name` stays plain but is
    // still covered by the MAC, as sops computes it.
    let regex = |p: &[&str]| p.contains(&"stringData");
    let file = encrypt_yaml(SECRET, &[("encrypted_regex", "^stringData$")], &regex);
    assert!(file.contains("name: db"));
    let mut ok = Document::parse(file.as_bytes(), Format::Yaml).unwrap();
    ok.decrypt(&KEY).unwrap();
    let tampered = file.replace("name: db", "name: dc");
    let mut doc = Document::parse(tampered.as_bytes(), Format::Yaml).unwrap();
    assert!(matches!(doc.decrypt(&KEY), Err(SopsError::MacMismatch)));
}

#[test]
fn mac_only_encrypted_ignores_plain_values() {
    let regex = |p: &[&str]| p.contains(&"stringData");
    // Built by hand: the MAC over encrypted values only, after the fixed prefix.
    let mut doc: Node = serde_saphyr::from_str("a: plain\nstringData:\n  k: v\n").unwrap();
    let mut hash = Sha512::new();
    hash.update(MAC_ONLY_ENCRYPTED_INIT);
    hash.update(b"v");
    let mac = hex::encode_upper(hash.finalize());
    let cipher = Cipher::new(GenericArray::from_slice(&KEY));
    let sealed = cipher
        .encrypt(
            GenericArray::from_slice(&[3u8; 32]),
            Payload {
                msg: mac.as_bytes(),
                aad: LAST_MODIFIED.as_bytes(),
            },
        )
        .unwrap();
    let (data, tag) = sealed.split_at(sealed.len() - 16);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mac = format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:str]",
        b64.encode(data),
        b64.encode([3u8; 32]),
        b64.encode(tag)
    );
    if let Node::Map(items) = &mut doc {
        let enc =
            encrypt_value(&KEY, &[4; 32], &Node::Str("v".into()), &["stringData", "k"]).unwrap();
        items[1].1 = Node::Map(vec![("k".into(), Node::Str(enc))]);
        items.push((
            "sops".into(),
            Node::Map(vec![
                ("lastmodified".into(), Node::Str(LAST_MODIFIED.into())),
                ("mac".into(), Node::Str(mac)),
                ("encrypted_regex".into(), Node::Str("^stringData$".into())),
                ("mac_only_encrypted".into(), Node::Bool(true)),
            ]),
        ));
    }
    let file = serde_saphyr::to_string(&doc).unwrap();
    assert!(regex(&["stringData"]));
    for plain in ["a: plain", "a: changed"] {
        let text = file.replace("a: plain", plain);
        let mut parsed = Document::parse(text.as_bytes(), Format::Yaml).unwrap();
        parsed.decrypt(&KEY).unwrap();
        assert_eq!(
            parsed.branches[0].get("stringData").unwrap().get("k"),
            Some(&Node::Str("v".into()))
        );
    }
}

#[test]
fn a_wrong_data_key_names_the_value_not_its_content() {
    let file = encrypt_yaml(SECRET, &[], &|_| true);
    let mut doc = Document::parse(file.as_bytes(), Format::Yaml).unwrap();
    let err = doc.decrypt(&[9; 32]).unwrap_err().to_string();
    assert!(err.contains("value at 'apiVersion'"), "{err}");
    assert!(!err.contains("ENC["), "{err}");
}

#[test]
fn unencrypted_suffix_is_the_default_rule() {
    let plain = "name_unencrypted: visible\nsecret: hidden\n";
    let file = encrypt_yaml(plain, &[], &|p| {
        !p.iter().any(|k| k.ends_with("_unencrypted"))
    });
    assert!(file.contains("name_unencrypted: visible"));
    let mut doc = Document::parse(file.as_bytes(), Format::Yaml).unwrap();
    doc.decrypt(&KEY).unwrap();
    assert_eq!(
        doc.branches[0].get("secret"),
        Some(&Node::Str("hidden".into()))
    );
}

#[test]
fn a_plain_value_where_one_is_expected_encrypted_is_refused() {
    let file = encrypt_yaml("a: 1\n", &[], &|_| false);
    let mut doc = Document::parse(file.as_bytes(), Format::Yaml).unwrap();
    let err = doc.decrypt(&KEY).unwrap_err().to_string();
    assert!(err.contains("expected an encrypted value"), "{err}");
}

#[test]
fn dotenv_metadata_is_unflattened() {
    let text = "A=ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]\n#comment\nsops_age__list_0__map_recipient=age1abc\nsops_age__list_0__map_enc=-----BEGIN AGE ENCRYPTED FILE-----\\nabc\\n-----END AGE ENCRYPTED FILE-----\\n\nsops_lastmodified=2026-12-04T21:00:00Z\nsops_mac=ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]\nsops_unencrypted_suffix=_unencrypted\nsops_version=3.13.3\n";
    assert_eq!(Format::detect(text.as_bytes()), Some(Format::Dotenv));
    let doc = Document::parse(text.as_bytes(), Format::Dotenv).unwrap();
    assert_eq!(
        doc.branches[0],
        Node::Map(vec![(
            "A".into(),
            Node::Str("ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]".into())
        )])
    );
    match &doc.metadata.keys[..] {
        [WrappedKey::Age { recipient, enc }] => {
            assert_eq!(recipient, "age1abc");
            assert!(enc.contains("\nabc\n"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn kms_keys_are_named() {
    let text = "{\"data\": \"ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]\", \"sops\": {\"kms\": [{\"arn\": \"arn:aws:kms:x\"}], \"hc_vault\": [{\"vault_address\": \"http://127.0.0.1\"}], \"lastmodified\": \"2026-12-04T21:00:00Z\", \"mac\": \"ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]\"}}";
    assert_eq!(Format::detect(text.as_bytes()), Some(Format::Json));
    let doc = Document::parse(text.as_bytes(), Format::Binary).unwrap();
    assert_eq!(
        doc.metadata.keys,
        vec![WrappedKey::Other("kms"), WrappedKey::Other("hc_vault")]
    );
}

#[test]
fn formats_by_path_and_marker() {
    assert_eq!(Format::for_path("secret.yaml"), Format::Yaml);
    assert_eq!(Format::for_path("a.yml"), Format::Yaml);
    assert_eq!(Format::for_path("a.json"), Format::Json);
    assert_eq!(Format::for_path(".env"), Format::Dotenv);
    assert_eq!(Format::for_path("app.env"), Format::Dotenv);
    assert_eq!(Format::for_path("key.bin"), Format::Binary);
    assert_eq!(Format::for_path("config.dockerconfigjson"), Format::Json);
    assert_eq!(Format::for_path(".dockerconfigjson"), Format::Json);
    assert_eq!(
        Format::detect(b"sops:\n  mac: ENC[AES256_GCM,data:x]\n"),
        Some(Format::Yaml)
    );
    assert_eq!(Format::detect(b"plain: yes\n"), None);
}

#[test]
fn numbers_are_hashed_as_go_prints_them() {
    assert_eq!(go_float(1.5), "1.5");
    assert_eq!(go_float(1.0), "1");
    assert_eq!(go_float(0.1), "0.1");
    assert_eq!(go_float(1e21), "1000000000000000000000");
    assert_eq!(
        mac_additional_data("2026-12-04T21:00:00.123456Z"),
        "2026-12-04T21:00:00Z"
    );
    assert_eq!(
        mac_additional_data("2026-12-04T21:00:00+01:00"),
        "2026-12-04T21:00:00+01:00"
    );
}

#[test]
fn missing_metadata_is_an_error() {
    let err = Document::parse(b"a: 1\n", Format::Yaml).unwrap_err();
    assert!(matches!(err, SopsError::Metadata(_)), "{err}");
}

#[test]
fn secrets_are_masked_as_flux_build_masks_them() {
    let mut encrypted = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "data": {"a": "RU5DW3hd"}, "stringData": {"b": "ENC[AES256_GCM,data:x]"},
        "sops": {"mac": "ENC[AES256_GCM,data:x]"}
    });
    mask_secret(&mut encrypted);
    assert!(encrypted.get("sops").is_none());
    assert_eq!(encrypted["data"]["a"], "KipTT1BTKio=");
    assert_eq!(encrypted["stringData"]["b"], "**SOPS**");

    let mut docker = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "RU5DW3hd"},
        "sops": {"mac": "ENC[AES256_GCM,data:x]"}
    });
    mask_secret(&mut docker);
    let b64 = base64::engine::general_purpose::STANDARD;
    let shown = b64
        .decode(docker["data"][".dockerconfigjson"].as_str().unwrap())
        .unwrap();
    assert_eq!(shown, br#"{"mask":"**SOPS**"}"#);

    // Without metadata only entries holding a SOPS file are masked.
    let file = b64.encode("A=ENC[AES256_GCM,data:x]\nsops_mac=ENC[AES256_GCM,data:y]\n");
    let mut generated = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "g"},
        "data": {"app.env": file, "plain": "eA=="}
    });
    mask_secret(&mut generated);
    assert_eq!(generated["data"]["app.env"], "KipTT1BTKio=");
    assert_eq!(generated["data"]["plain"], "eA==");

    let mut config_map = serde_json::json!({"kind": "ConfigMap", "sops": {"mac": "ENC[x]"}});
    let before = config_map.clone();
    mask_secret(&mut config_map);
    assert_eq!(config_map, before);
}
