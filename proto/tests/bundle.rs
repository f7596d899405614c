//! Agent bundles: a deterministic round trip, and hostile bundles refused with nothing written anywhere.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use omnigent_proto::agent::bundle::{self, BundleError, Limits};
use omnigent_proto::agent::spec::AgentSpec;
use omnigent_proto::agent::{UploadError, check_upload};
use tar::EntryType;

const SPEC: &str = "spec_version: 1\nname: bundled\ninstructions: prompts/system.md\nexecutor: {harness: openai-agents}\n";

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            out.push(path.strip_prefix(dir).expect("prefix").to_path_buf());
            if fs::symlink_metadata(&path).expect("meta").is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

fn agent_dir(root: &Path) -> PathBuf {
    let dir = root.join("agent");
    fs::create_dir_all(dir.join("prompts")).expect("mkdir");
    fs::create_dir_all(dir.join("bin")).expect("mkdir");
    fs::create_dir_all(dir.join("empty")).expect("mkdir");
    fs::write(dir.join("config.yaml"), SPEC).expect("write");
    fs::write(dir.join("prompts/system.md"), "Be kind.\n").expect("write");
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    fs::write(dir.join("bin/data.bin"), &binary).expect("write");
    fs::write(
        dir.join("bin/server.py"),
        "#!/usr/bin/env python3\nprint('hi')\n",
    )
    .expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join("bin/server.py"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    dir
}

#[test]
fn a_directory_round_trips_byte_identical_and_packs_deterministically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = agent_dir(tmp.path());
    let limits = Limits::default();
    let bytes = bundle::pack_dir(&dir, &limits).expect("pack");
    assert_eq!(
        bytes,
        bundle::pack_dir(&dir, &limits).expect("pack again"),
        "same directory, same bytes"
    );

    let inspected = bundle::inspect(&bytes, &limits).expect("inspect");
    assert_eq!(inspected.spec_text, SPEC);
    let spec = AgentSpec::parse(&inspected.spec_text).expect("spec");
    spec.validate(|rel| inspected.has_file(rel))
        .expect("the bundle holds the spec's instructions file");

    let target = tmp.path().join("unpacked");
    bundle::unpack(&bytes, &target, &limits).expect("unpack");
    for rel in [
        "config.yaml",
        "prompts/system.md",
        "bin/data.bin",
        "bin/server.py",
    ] {
        assert_eq!(
            fs::read(dir.join(rel)).expect("src"),
            fs::read(target.join(rel)).expect("dst"),
            "{rel}"
        );
    }
    let files = |root: &Path| -> Vec<PathBuf> {
        tree(root)
            .into_iter()
            .filter(|p| root.join(p).is_file())
            .collect()
    };
    assert_eq!(files(&dir), files(&target));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |rel: &str| {
            fs::metadata(target.join(rel))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("bin/server.py"), 0o755, "the execute bit survives");
        assert_eq!(mode("config.yaml"), 0o644);
    }
    spec.validate_in_dir(&target).expect("valid unpacked");
    assert_eq!(
        spec.instructions(&target).expect("read").as_deref(),
        Some("Be kind.\n")
    );
}

#[test]
fn packing_refuses_a_symlink_and_a_directory_without_config_yaml() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = agent_dir(tmp.path());
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).expect("symlink");
        let err = bundle::pack_dir(&dir, &Limits::default()).expect_err("symlink");
        assert!(
            matches!(err, BundleError::UnsafeEntry { ref path, .. } if path == "passwd"),
            "{err}"
        );
        fs::remove_file(dir.join("passwd")).expect("rm");
    }
    fs::remove_file(dir.join("config.yaml")).expect("rm");
    let err = bundle::pack_dir(&dir, &Limits::default()).expect_err("no spec");
    assert!(matches!(err, BundleError::NoSpec), "{err}");
}

/// A tar entry written header byte by header byte, so a test can say what `tar::Builder` would refuse to.
struct Raw<'a> {
    path: &'a str,
    kind: EntryType,
    link: &'a str,
    data: &'a [u8],
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        path,
        kind: EntryType::Regular,
        link: "",
        data,
    }
}

/// A data-less entry: a link (to `link`), a device, a fifo.
fn entry<'a>(path: &'a str, kind: EntryType, link: &'a str) -> Raw<'a> {
    Raw {
        path,
        kind,
        link,
        data: b"",
    }
}

fn raw_bundle(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        {
            let old = header.as_old_mut();
            old.name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
            old.linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        }
        header.set_entry_type(entry.kind);
        header.set_size(entry.data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append(&header, entry.data).expect("append");
    }
    let tar = tar.into_inner().expect("tar");
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&tar).expect("gz");
    gz.finish().expect("gz")
}

/// Unpacks `bytes` into `tmp/out` expecting a refusal, and checks that nothing at all was written in `tmp`
/// (the target included) nor at `elsewhere`.
fn refused(bytes: &[u8], limits: &Limits, elsewhere: &[PathBuf]) -> BundleError {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = bundle::unpack(bytes, &tmp.path().join("out"), limits).expect_err("refused");
    assert_eq!(
        tree(tmp.path()),
        Vec::<PathBuf>::new(),
        "nothing written: {err}"
    );
    for path in elsewhere {
        assert!(
            fs::symlink_metadata(path).is_err(),
            "{} written: {err}",
            path.display()
        );
    }
    assert!(
        bundle::inspect(bytes, limits).is_err(),
        "inspect refuses it too"
    );
    err
}

fn unsafe_entry(err: &BundleError, want: &str) {
    assert!(
        matches!(err, BundleError::UnsafeEntry { path, .. } if path == want),
        "{err}"
    );
}

#[test]
fn a_parent_directory_path_is_refused() {
    let bytes = raw_bundle(&[
        file("config.yaml", SPEC.as_bytes()),
        file("../escape.txt", b"x"),
    ]);
    let err = refused(&bytes, &Limits::default(), &[]);
    unsafe_entry(&err, "../escape.txt");
    let bytes = raw_bundle(&[
        file("config.yaml", SPEC.as_bytes()),
        file("a/../../escape.txt", b"x"),
    ]);
    unsafe_entry(
        &refused(&bytes, &Limits::default(), &[]),
        "a/../../escape.txt",
    );
}

#[test]
fn an_absolute_path_is_refused() {
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("abs.txt");
    let path = target.to_str().expect("utf8");
    let bytes = raw_bundle(&[file("config.yaml", SPEC.as_bytes()), file(path, b"x")]);
    unsafe_entry(
        &refused(&bytes, &Limits::default(), std::slice::from_ref(&target)),
        path,
    );
}

#[test]
fn a_symlink_out_is_refused_and_nothing_is_written_through_it() {
    let outside = tempfile::tempdir().expect("tempdir");
    let victim = outside.path().join("victim.txt");
    let link_target = outside.path().to_str().expect("utf8").to_owned();
    let bytes = raw_bundle(&[
        file("config.yaml", SPEC.as_bytes()),
        entry("link", EntryType::Symlink, &link_target),
        file("link/victim.txt", b"owned"),
    ]);
    unsafe_entry(&refused(&bytes, &Limits::default(), &[victim]), "link");
    let relative = raw_bundle(&[
        file("config.yaml", SPEC.as_bytes()),
        entry("up", EntryType::Symlink, "../.."),
    ]);
    unsafe_entry(&refused(&relative, &Limits::default(), &[]), "up");
}

#[test]
fn a_hard_link_out_is_refused() {
    let bytes = raw_bundle(&[
        file("config.yaml", SPEC.as_bytes()),
        entry("passwd", EntryType::Link, "/etc/passwd"),
    ]);
    unsafe_entry(&refused(&bytes, &Limits::default(), &[]), "passwd");
}

#[test]
fn device_files_and_fifos_are_refused() {
    for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
        let bytes = raw_bundle(&[file("config.yaml", SPEC.as_bytes()), entry("dev", kind, "")]);
        unsafe_entry(&refused(&bytes, &Limits::default(), &[]), "dev");
    }
}

#[test]
fn a_gzip_bomb_is_refused_by_its_expansion_ratio() {
    let zeros = vec![0u8; 20 * 1024 * 1024];
    let bytes = raw_bundle(&[
        file("config.yaml", SPEC.as_bytes()),
        file("bomb.bin", &zeros),
    ]);
    assert!(
        bytes.len() < 100 * 1024,
        "the bomb is small: {}",
        bytes.len()
    );
    let err = refused(&bytes, &Limits::default(), &[]);
    assert!(
        matches!(err, BundleError::ExpansionRatio { ratio: 100 }),
        "{err}"
    );
}

#[test]
fn a_bundle_over_the_unpacked_size_is_refused() {
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let bytes = raw_bundle(&[
        file("config.yaml", SPEC.as_bytes()),
        file("noise.bin", &noise),
    ]);
    let limits = Limits {
        max_unpacked_bytes: 100_000,
        ..Limits::default()
    };
    let err = refused(&bytes, &limits, &[]);
    assert!(
        matches!(err, BundleError::UnpackedTooLarge { limit: 100_000 }),
        "{err}"
    );
    let limits = Limits {
        max_bundle_bytes: 1000,
        ..Limits::default()
    };
    let err = refused(&bytes, &limits, &[]);
    assert!(
        matches!(err, BundleError::TooLarge { limit: 1000, .. }),
        "{err}"
    );
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<String> = (0..11).map(|i| format!("f{i}.txt")).collect();
    let mut entries = vec![file("config.yaml", SPEC.as_bytes())];
    entries.extend(names.iter().map(|n| file(n, b"x")));
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let err = refused(&raw_bundle(&entries), &limits, &[]);
    assert!(
        matches!(err, BundleError::TooManyEntries { limit: 10 }),
        "{err}"
    );
}

#[test]
fn a_huge_config_yaml_is_refused() {
    let mut huge = SPEC.to_owned();
    while huge.len() <= 300 * 1024 {
        huge.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let err = refused(
        &raw_bundle(&[file("config.yaml", huge.as_bytes())]),
        &Limits::default(),
        &[],
    );
    assert!(
        matches!(err, BundleError::SpecTooLarge { limit: 262_144, .. }),
        "{err}"
    );
}

#[test]
fn a_bundle_without_config_yaml_with_duplicates_or_not_gzip_is_refused() {
    let err = refused(
        &raw_bundle(&[file("other.yaml", b"x")]),
        &Limits::default(),
        &[],
    );
    assert!(matches!(err, BundleError::NoSpec), "{err}");
    let dup = raw_bundle(&[
        file("config.yaml", SPEC.as_bytes()),
        file("./config.yaml", b"name: b\n"),
    ]);
    assert!(matches!(
        refused(&dup, &Limits::default(), &[]),
        BundleError::Duplicate { .. }
    ));
    let err = refused(b"this is not gzip", &Limits::default(), &[]);
    assert!(matches!(err, BundleError::Corrupt(_)), "{err}");
}

#[test]
fn a_file_used_as_a_directory_is_refused_before_anything_is_written() {
    let bytes = raw_bundle(&[
        file("config.yaml", SPEC.as_bytes()),
        file("a", b"x"),
        file("a/b", b"y"),
    ]);
    let err = refused(&bytes, &Limits::default(), &[]);
    assert!(
        matches!(err, BundleError::FileAsDirectory { ref parent, .. } if parent == "a"),
        "{err}"
    );
}

#[test]
fn unpacking_refuses_an_existing_target() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = agent_dir(tmp.path());
    let bytes = bundle::pack_dir(&dir, &Limits::default()).expect("pack");
    let err = bundle::unpack(&bytes, &dir, &Limits::default()).expect_err("exists");
    assert!(matches!(err, BundleError::Io { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(dir.join("config.yaml")).expect("kept"),
        SPEC,
        "the existing dir is untouched"
    );
}

#[test]
fn the_upload_check_refuses_a_bundle_whose_spec_cannot_run_with_its_field_path() {
    let limits = Limits::default();
    let (bundle, spec) = check_upload(
        &raw_bundle(&[
            file("config.yaml", SPEC.as_bytes()),
            file("prompts/system.md", b"Be kind."),
        ]),
        &limits,
    )
    .expect("valid");
    assert_eq!(spec.name.as_deref(), Some("bundled"));
    assert!(bundle.has_file("prompts/system.md"));

    let cases: &[(&[u8], &str)] = &[
        (SPEC.as_bytes(), "instructions"),
        (b"name: x\nexecutor: {harness: nope}\n", "executor.harness"),
        (b"executor: [\n", "$"),
    ];
    for (text, path) in cases {
        let err =
            check_upload(&raw_bundle(&[file("config.yaml", text)]), &limits).expect_err("refused");
        assert!(
            matches!(&err, UploadError::Spec(e) if e.path == *path),
            "{path}: {err}"
        );
    }
    let err = check_upload(
        &raw_bundle(&[file("../config.yaml", SPEC.as_bytes())]),
        &limits,
    )
    .expect_err("refused");
    assert!(
        matches!(err, UploadError::Bundle(BundleError::UnsafeEntry { .. })),
        "{err}"
    );
}

#[test]
fn a_pax_global_header_as_git_archive_writes_is_skipped() {
    let comment = b"52 comment=0123456789abcdef0123456789abcdef01234567\n";
    let bytes = raw_bundle(&[
        Raw {
            path: "pax_global_header",
            kind: EntryType::XGlobalHeader,
            link: "",
            data: comment,
        },
        file("config.yaml", SPEC.as_bytes()),
        file("prompts/system.md", b"Be kind."),
    ]);
    let bundle = bundle::inspect(&bytes, &Limits::default()).expect("accepted");
    assert_eq!(
        bundle.files.keys().collect::<Vec<_>>(),
        ["config.yaml", "prompts/system.md"]
    );
}
