//! Manifest parsing, versions, paths, and a pack through pack → sign → verify.

use super::*;

#[test]
fn versions_compare_by_number() {
    assert!(parse_version("1.10") > parse_version("1.9"));
    assert!(parse_version("2") > parse_version("1.99.99"));
    assert!(parse_version("1.0.1") > parse_version("1.0"));
    for bad in ["", "1..2", "v1", "1.x", "-1", &"1.".repeat(20)] {
        assert_eq!(parse_version(bad), None, "{bad}");
    }
}

#[test]
fn manifest_paths_must_be_plain_profile_file_names() {
    for escaping in [
        "../json-a.toml",
        "/etc/json-a.toml",
        "sub/json-a.toml",
        "..",
        ".hidden",
        "a\\b",
    ] {
        assert_eq!(check_path(escaping), Err(Refusal::Escapes(escaping.into())));
    }
    for other in ["README.md", "json-a.txt", "JSON-A.toml", "json-a b.toml"] {
        assert_eq!(check_path(other), Err(Refusal::NotAProfile(other.into())));
    }
    assert!(check_path("json-acme-bp.toml").is_ok());
    assert!(check_path("line-x.toml").is_ok());
}

#[test]
fn manifest_parsing_names_what_is_wrong() {
    let good = Manifest {
        format: 1,
        name: "site-a".into(),
        version: "1.2.0".into(),
        created: "2026-03-01T10:00:00Z".into(),
        key_id: "k1".into(),
        files: vec![FileEntry {
            path: "json-a.toml".into(),
            bytes: 3,
            sha256: "0".repeat(64),
        }],
    };
    assert_eq!(Manifest::parse(&good.to_toml()).unwrap(), good);
    let cases = [
        ("format = 1", "format = 2", "format 2 is not 1"),
        ("name = \"site-a\"", "name = \"Site A\"", "`name`"),
        ("version = \"1.2.0\"", "version = \"one\"", "`version`"),
        (
            "created = \"2026-03-01T10:00:00Z\"",
            "created = \"yesterday\"",
            "`created`",
        ),
        ("key_id = \"k1\"", "key_id = \"\"", "`key_id`"),
        (
            "path = \"json-a.toml\"",
            "path = \"../json-a.toml\"",
            "escapes the pack directory",
        ),
        ("bytes = 3", "bytes = 3\nmode = 7", "unknown field"),
    ];
    for (from, to, says) in cases {
        let text = good.to_toml().replace(from, to);
        let e = Manifest::parse(&text).unwrap_err().to_string();
        assert!(e.contains(says), "{e}\n wanted: {says}");
    }
    let twice = format!(
        "{}\n[[files]]\npath = \"json-a.toml\"\nbytes = 1\nsha256 = \"{}\"\n",
        good.to_toml(),
        "1".repeat(64)
    );
    assert!(Manifest::parse(&twice)
        .unwrap_err()
        .to_string()
        .contains("listed twice"));
}

#[test]
fn a_pack_made_and_signed_verifies_and_a_tampered_one_does_not() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let (name, text) = crate::profile::json::registry::BUILT_IN[0];
    std::fs::write(src.join(name), text).unwrap();
    let key = root.path().join("k.pk8");
    let public = keygen(&key).unwrap();
    let out = root.path().join("pack");
    pack(
        &src,
        &out,
        "site-a",
        "1.0.0",
        "k1",
        time::OffsetDateTime::UNIX_EPOCH,
    )
    .unwrap();
    let keys = [TrustedKey {
        id: "k1".into(),
        public: parse_public_key(&public).unwrap(),
    }];
    assert_eq!(
        verify(&out, &keys, 1 << 20, &mut |_, _| {}).unwrap_err(),
        Refusal::Unsigned
    );
    assert_eq!(sign(&out, &key).unwrap(), public);
    let mut seen = Vec::new();
    let v = verify(&out, &keys, 1 << 20, &mut |d, n| seen.push((d, n))).unwrap();
    assert_eq!(v.files.len(), 1);
    assert_eq!(seen, [(1, 1)], "progress reported per file");
    std::fs::write(
        out.join(name),
        text.replace("version = \"1\"", "version = \"9\""),
    )
    .unwrap();
    assert_eq!(
        verify(&out, &keys, 1 << 20, &mut |_, _| {}).unwrap_err(),
        Refusal::Changed(name.into())
    );
}
