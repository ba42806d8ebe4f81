use super::*;

fn policies() -> Policies {
    let mut p = Policies::new();
    p.insert(
        "flux-system:app".into(),
        ImageRef::parse("ghcr.io/org/app:1.2.0").unwrap(),
    );
    p.insert(
        "flux-system:pinned".into(),
        ImageRef::parse("localhost:5000/team/api:2.0.1@sha256:abc123").unwrap(),
    );
    p.insert(
        "apps:numeric".into(),
        ImageRef::parse("registry.local/x:1.10").unwrap(),
    );
    p
}

fn run(input: &str) -> Updated {
    apply("f.yaml", input.as_bytes(), &policies()).unwrap_or_else(|e| panic!("{e}"))
}

fn out(input: &str) -> String {
    String::from_utf8(run(input).content).unwrap()
}

#[test]
fn only_the_marked_scalar_changes() {
    let input = r#"# a deployment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app   # the name
  namespace: prod
spec:
  template:
    spec:
      containers:
        - name: app
          image: ghcr.io/org/app:1.0.0 # {"$imagepolicy": "flux-system:app"}
          args: ["--flag",   'x']
          command: |
            echo "ghcr.io/org/app:1.0.0" # {"$imagepolicy": "flux-system:app"}
        - image: "ghcr.io/org/app:0.9" # {"$imagepolicy": "flux-system:app"}
        - image: 'ghcr.io/org/app:0.9'    # {"$imagepolicy":"flux-system:app"}
"#;
    let u = run(input);
    let expected = input
        .replace(
            "image: ghcr.io/org/app:1.0.0 #",
            "image: ghcr.io/org/app:1.2.0 #",
        )
        .replace(
            "image: \"ghcr.io/org/app:0.9\"",
            "image: \"ghcr.io/org/app:1.2.0\"",
        )
        .replace(
            "image: 'ghcr.io/org/app:0.9'",
            "image: 'ghcr.io/org/app:1.2.0'",
        );
    assert_eq!(String::from_utf8(u.content).unwrap(), expected);
    assert_eq!(u.changes.len(), 3);
    let c = &u.changes[0];
    assert_eq!(
        (c.line, c.old.as_str(), c.new.as_str()),
        (12, "ghcr.io/org/app:1.0.0", "ghcr.io/org/app:1.2.0")
    );
    assert_eq!(c.setter, "flux-system:app");
    assert_eq!(
        c.object,
        ObjectId {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: "prod".into(),
            name: "app".into(),
        }
    );
    assert!(u.skipped.is_empty());
}

#[test]
fn tags_anchors_and_sequences_around_the_scalar_stay() {
    let input = "a: !!str old:1 # {\"$imagepolicy\": \"flux-system:app\"}\nb: &img old:1 # {\"$imagepolicy\": \"flux-system:app\"}\nc: *img\nd:\n  - old:1 # {\"$imagepolicy\": \"flux-system:app\"}\n  -   \"old:1\"\t# {\"$imagepolicy\": \"flux-system:app\"}\n";
    assert_eq!(out(input), input.replace("old:1", "ghcr.io/org/app:1.2.0"));
}

#[test]
fn tag_name_and_digest_setters() {
    let input = "image:\n  repository: old/repo # {\"$imagepolicy\": \"flux-system:pinned:name\"}\n  tag: \"1.0\" # {\"$imagepolicy\": \"flux-system:pinned:tag\"}\n  digest: sha256:old # {\"$imagepolicy\": \"flux-system:pinned:digest\"}\n  full: x # {\"$imagepolicy\": \"flux-system:pinned\"}\n  nodigest: sha256:zzz # {\"$imagepolicy\": \"flux-system:app:digest\"}\n";
    assert_eq!(
        out(input),
        "image:\n  repository: localhost:5000/team/api # {\"$imagepolicy\": \"flux-system:pinned:name\"}\n  tag: \"2.0.1\" # {\"$imagepolicy\": \"flux-system:pinned:tag\"}\n  digest: sha256:abc123 # {\"$imagepolicy\": \"flux-system:pinned:digest\"}\n  full: localhost:5000/team/api:2.0.1@sha256:abc123 # {\"$imagepolicy\": \"flux-system:pinned\"}\n  nodigest: \"\" # {\"$imagepolicy\": \"flux-system:app:digest\"}\n"
    );
}

#[test]
fn plain_values_that_would_change_type_are_quoted() {
    let input = "tag: 1.0 # {\"$imagepolicy\": \"apps:numeric:tag\"}\n";
    assert_eq!(
        out(input),
        "tag: \"1.10\" # {\"$imagepolicy\": \"apps:numeric:tag\"}\n"
    );
    for (v, plain) in [
        ("1.2.3", true),
        ("v1.2.3", true),
        ("main-abc123-1700000000", true),
        ("1.10", false),
        ("10", false),
        ("true", false),
        ("no", false),
        ("null", false),
        ("1e3", false),
        ("0x1f", false),
        ("2024-01-02", false),
        ("12:30", false),
        ("", false),
        ("a b", false),
        ("a #b", false),
        ("-x", false),
        ("@x", false),
        ("x:", false),
        ("{x}", false),
    ] {
        assert_eq!(plain_safe(v), plain, "{v:?}");
    }
}

#[test]
fn quoted_styles_are_re_escaped() {
    assert_eq!(render("it's", ScalarStyle::SingleQuoted), "'it''s'");
    assert_eq!(
        render("a\"b\\c\n", ScalarStyle::DoubleQuoted),
        "\"a\\\"b\\\\c\\n\""
    );
    assert_eq!(render("a\u{1}", ScalarStyle::SingleQuoted), "\"a\\x01\"");
    assert_eq!(render("a b", ScalarStyle::Plain), "\"a b\"");
    // Every rendering reads back as the same string.
    for v in [
        "it's",
        "a\"b\\c\n",
        "tab\there",
        "é",
        "1.10",
        "x: y",
        "#x",
        "- a",
        "\u{2028}",
    ] {
        for style in [
            ScalarStyle::Plain,
            ScalarStyle::SingleQuoted,
            ScalarStyle::DoubleQuoted,
        ] {
            let doc = format!("k: {}\n", render(v, style));
            let back: BTreeMap<String, String> = serde_saphyr::from_str(&doc).unwrap();
            assert_eq!(back["k"], v, "{doc}");
        }
    }
}

#[test]
fn crlf_and_other_documents_stay_byte_identical() {
    let input = "apiVersion: v1\r\nkind: ConfigMap\r\nmetadata: {name: a}\r\ndata:\r\n  x: |\r\n    keep   \r\n---\r\napiVersion: apps/v1\r\nkind: Deployment\r\nmetadata:\r\n  name: b\r\nspec:\r\n  image: old:1 # {\"$imagepolicy\": \"flux-system:app\"}\r\n...\r\n";
    let u = run(input);
    assert_eq!(
        String::from_utf8(u.content).unwrap(),
        input.replace("old:1", "ghcr.io/org/app:1.2.0")
    );
    assert_eq!(u.changes[0].object.kind, "Deployment");
    assert_eq!(u.changes[0].object.name, "b");
    assert_eq!(u.changes[0].line, 13);
}

#[test]
fn unknown_policies_are_skipped_and_reported() {
    let input = "a: x # {\"$imagepolicy\": \"other:p\"}\nb: y # {\"$imagepolicy\": \"flux-system:app:tag\"}\nc: z # {\"$imagepolicy\": \"flux-system:app:size\"}\nd: w # {\"$imagepolicy\": 42}\n";
    let u = run(input);
    assert_eq!(
        String::from_utf8(u.content).unwrap(),
        input.replace("b: y", "b: 1.2.0")
    );
    assert_eq!(u.changes.len(), 1);
    assert_eq!(u.skipped.len(), 3);
    assert_eq!(
        u.skipped[0].reason,
        SkipReason::UnknownPolicy {
            setter: "other:p".into()
        }
    );
    assert_eq!(u.skipped[0].line, 1);
    assert!(matches!(
        u.skipped[2].reason,
        SkipReason::MalformedMarker { .. }
    ));
    assert!(
        u.skipped[0]
            .to_string()
            .contains("unknown policy 'other:p'")
    );
}

#[test]
fn markers_not_on_a_scalar_fail_the_file() {
    for (input, what) in [
        (
            "image: # {\"$imagepolicy\": \"flux-system:app\"}\n  a: b\n",
            "mapping",
        ),
        (
            "list: [a, b] # {\"$imagepolicy\": \"flux-system:app\"}\n",
            "flow collection",
        ),
        (
            "s: | # {\"$imagepolicy\": \"flux-system:app\"}\n  text\n",
            "block scalar",
        ),
        (
            "- # {\"$imagepolicy\": \"flux-system:app\"}\n  - a\n",
            "mapping or sequence",
        ),
        (
            "a: plain\n  more # {\"$imagepolicy\": \"flux-system:app\"}\n",
            "multi-line",
        ),
        (
            "? k # {\"$imagepolicy\": \"flux-system:app\"}\n: v\n",
            "key",
        ),
    ] {
        let err = apply("f.yaml", input.as_bytes(), &policies()).unwrap_err();
        assert!(
            matches!(err, SetterError::NotScalar { .. }),
            "{input}: {err}"
        );
        assert!(err.to_string().contains(what), "{input}: {err}");
    }
}

#[test]
fn invalid_yaml_is_reported_with_its_position() {
    let input = "a: x # {\"$imagepolicy\": \"flux-system:app\"}\nb: [unclosed\nc: d\n";
    let err = apply("bad.yaml", input.as_bytes(), &policies()).unwrap_err();
    match &err {
        SetterError::InvalidYaml { file, line, .. } => {
            assert_eq!(file, "bad.yaml");
            assert!(*line >= 2, "{err}");
        }
        other => panic!("{other}"),
    }
    let err = apply("bin.yaml", b"\xff\xfe\"$imagepolicy\"", &policies()).unwrap_err();
    assert!(matches!(err, SetterError::NotUtf8 { .. }));
}

#[test]
fn unchanged_values_and_unmarked_files_are_untouched() {
    let input = "image: ghcr.io/org/app:1.2.0 # {\"$imagepolicy\": \"flux-system:app\"}\n";
    let u = run(input);
    assert!(!u.changed());
    assert_eq!(u.content, input.as_bytes());
    // No token: not even parsed.
    let broken = "a: [\n";
    assert_eq!(run(broken).content, broken.as_bytes());
    // A comment on a line of its own is no marker.
    let own = "# {\"$imagepolicy\": \"flux-system:app\"}\nimage: x\n";
    assert!(!run(own).changed());
}

#[test]
fn image_refs_parse() {
    let r = ImageRef::parse("localhost:5000/a/b:1.0@sha256:ff").unwrap();
    assert_eq!(
        (r.name.as_str(), r.tag.as_str(), r.digest.as_deref()),
        ("localhost:5000/a/b", "1.0", Some("sha256:ff"))
    );
    assert_eq!(r.to_string(), "localhost:5000/a/b:1.0@sha256:ff");
    for bad in [
        "app",
        "localhost:5000/app",
        ":1.0",
        "app:",
        "app:1@",
        "a b:1",
    ] {
        assert!(ImageRef::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn changes_group_by_file_and_object() {
    let input = "kind: A\nmetadata: {name: one}\nx: a # {\"$imagepolicy\": \"flux-system:app\"}\ny: b # {\"$imagepolicy\": \"flux-system:app:tag\"}\n---\nkind: B\nmetadata: {name: two}\nx: a # {\"$imagepolicy\": \"flux-system:app\"}\n";
    let u = run(input);
    let grouped = changed_by_file(&u.changes);
    let objects = &grouped["f.yaml"];
    assert_eq!(objects.len(), 2);
    let a = objects.iter().find(|(o, _)| o.kind == "A").unwrap();
    assert_eq!(a.1.len(), 2);
    assert_eq!(a.0.name, "one");
}

#[test]
fn update_path_writes_good_files_and_reports_bad_ones() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let d = root.path();
    let marked = "image: old:1 # {\"$imagepolicy\": \"flux-system:app\"}\n";
    std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
    std::fs::write(d.join("a.yaml"), marked).unwrap();
    std::fs::write(d.join("sub/deeper/Kustomization"), marked).unwrap();
    std::fs::write(d.join("sub/b.yml"), format!("{marked}c: [\n")).unwrap();
    std::fs::write(d.join("notes.txt"), marked).unwrap();
    std::fs::write(d.join("plain.yaml"), "image: old:1\n").unwrap();
    std::fs::write(outside.path().join("secret.yaml"), marked).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.yaml"), d.join("escape.yaml")).unwrap();
    std::os::unix::fs::symlink(d.join("a.yaml"), d.join("sub/link.yaml")).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.join("outdir")).unwrap();

    let dry = update_path(d, &policies(), false).unwrap();
    assert_eq!(std::fs::read_to_string(d.join("a.yaml")).unwrap(), marked);
    let files: Vec<&str> = dry.iter().map(|r| r.file.as_str()).collect();
    assert_eq!(
        files,
        [
            "a.yaml",
            "escape.yaml",
            "sub/b.yml",
            "sub/deeper/Kustomization",
            "sub/link.yaml"
        ]
    );

    let reports = update_path(d, &policies(), true).unwrap();
    let by = |f: &str| reports.iter().find(|r| r.file == f).unwrap();
    let new = marked.replace("old:1", "ghcr.io/org/app:1.2.0");
    assert_eq!(std::fs::read_to_string(d.join("a.yaml")).unwrap(), new);
    assert_eq!(
        std::fs::read_to_string(d.join("sub/deeper/Kustomization")).unwrap(),
        new
    );
    assert!(by("a.yaml").outcome.as_ref().unwrap().changed());
    assert!(matches!(
        by("sub/b.yml").outcome,
        Err(SetterError::InvalidYaml { .. })
    ));
    assert_eq!(
        std::fs::read_to_string(d.join("sub/b.yml")).unwrap(),
        format!("{marked}c: [\n")
    );
    assert!(matches!(
        by("escape.yaml").outcome,
        Err(SetterError::OutsideRoot { .. })
    ));
    assert_eq!(
        std::fs::read_to_string(outside.path().join("secret.yaml")).unwrap(),
        marked
    );
    assert_eq!(
        std::fs::read_to_string(d.join("notes.txt")).unwrap(),
        marked
    );
    assert!(
        std::fs::symlink_metadata(d.join("sub/link.yaml"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // One file given directly.
    std::fs::write(d.join("a.yaml"), marked).unwrap();
    let one = update_path(&d.join("a.yaml"), &policies(), true).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].file, "a.yaml");
    assert_eq!(std::fs::read_to_string(d.join("a.yaml")).unwrap(), new);
}

// Fragments of YAML put around a marked line: the output must be the input with the marked
// scalar alone replaced.
const FRAGMENTS: &[&str] = &[
    "# comment with \"$imagepolicy\" in it\n",
    "k: v\n",
    "quoted: 'it''s # not a comment'\n",
    "dq: \"a # {\\\"$imagepolicy\\\": \\\"flux-system:app\\\"}\"\n",
    "block: |\n  x: y # {\"$imagepolicy\": \"flux-system:app\"}\n  z\n",
    "folded: >-\n  long\n  text\n",
    "flow: {a: 1, b: [2, 3]}   # trailing\n",
    "list:\n- a\n-   b  # c\n",
    "anchor: &x val\nalias: *x\n",
    "tagged: !!str 12\n",
    "empty:\n",
    "\n",
    "indented:\n    deep:\n        deeper: 1\n",
    "crlf: yes\r\n",
];

proptest::proptest! {
    #[test]
    fn unmarked_bytes_are_preserved(
        pre in proptest::collection::vec(0..FRAGMENTS.len(), 0..6),
        post in proptest::collection::vec(0..FRAGMENTS.len(), 0..6),
        style in 0..3usize,
        old in "[a-z0-9.:/-]{1,20}",
        setter in proptest::sample::select(vec!["flux-system:app", "flux-system:app:tag", "flux-system:pinned:name", "apps:numeric:tag"]),
    ) {
        let pre: String = pre.iter().map(|&i| FRAGMENTS[i]).collect();
        let post: String = post.iter().map(|&i| FRAGMENTS[i]).collect();
        let old_src = match style {
            0 => format!("'{old}'"),
            1 => format!("\"{old}\""),
            _ => format!("x{old}x"),
        };
        let line = |v: &str| format!("marked: {v}  # {{\"$imagepolicy\": \"{setter}\"}}\n");
        let input = format!("{pre}{}{post}", line(&old_src));
        let u = apply("p.yaml", input.as_bytes(), &policies()).unwrap();
        let new = setter_value(setter, &policies()).unwrap();
        let style = [ScalarStyle::SingleQuoted, ScalarStyle::DoubleQuoted, ScalarStyle::Plain][style];
        let expected = format!("{pre}{}{post}", line(&render(&new, style)));
        proptest::prop_assert_eq!(String::from_utf8(u.content).unwrap(), expected);
        proptest::prop_assert_eq!(u.changes.len(), 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        at in 0..200usize,
    ) {
        let at = at.min(bytes.len());
        let marker = b"x: y # {\"$imagepolicy\": \"flux-system:app\"}\n";
        bytes.splice(at..at, marker.iter().copied());
        if let Ok(u) = apply("r.yaml", &bytes, &policies()) {
            // Whatever changed, the bytes before the first change are the input's.
            if let Some(c) = u.changes.first() {
                proptest::prop_assert!(c.line >= 1);
            } else {
                proptest::prop_assert_eq!(u.content, bytes);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in "[ -~\n\t]{0,120}") {
        let s = format!("{s}\na: b # {{\"$imagepolicy\": \"flux-system:app\"}}\n{s}");
        let _ = apply("t.yaml", s.as_bytes(), &policies());
    }
}
