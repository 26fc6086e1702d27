//! Every bad experiment under tests/bad/ is refused: the diagnostic is
//! snapshotted (deterministic, no colour), names the right line, and
//! `megaplan validate` exits 1 on it. Good examples validate.

use std::path::{Path, PathBuf};
use std::process::Command;

use megaplan::diag::SourceFile;

fn files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("kdl" | "toml")))
        .collect();
    v.sort();
    v
}

fn relative(p: &Path) -> String {
    p.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn bad_files_are_refused_with_their_line() {
    let mut all = Vec::new();
    for dir in ["tests/bad/kdl", "tests/bad/toml", "tests/bad/semantic"] {
        all.extend(files(dir));
    }
    assert!(all.len() >= 40, "only {} bad files", all.len());
    for path in all {
        let name = relative(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        let src = SourceFile::new(&name, text.clone());
        let (lab, diags) = megaplan::validate::check(&src);
        assert!(lab.is_none() && diags.has_errors(), "{name} was accepted");
        let rendered = diags.render_plain(&src);
        // The marked line, if any, is where the first error points.
        if let Some(idx) = text.lines().position(|l| l.contains("<-- error")) {
            let first = diags.errors().next().unwrap();
            let label = first
                .labels
                .first()
                .unwrap_or_else(|| panic!("{name}: no label"));
            let (line, _) = src.line_col(label.span.offset());
            assert_eq!(
                line,
                idx + 1,
                "{name}: error on line {line}, expected {}\n{rendered}",
                idx + 1
            );
            assert!(
                rendered.contains(&format!("{name}:{line}:")),
                "{name}: no file:line:col in\n{rendered}"
            );
        }
        let snap = name.replace(['/', '.'], "_");
        insta::assert_snapshot!(snap, rendered);
    }
}

#[test]
fn validate_exits_1_on_bad_files_and_0_on_examples() {
    let bin = env!("CARGO_BIN_EXE_megaplan");
    for dir in ["tests/bad/kdl", "tests/bad/toml", "tests/bad/semantic"] {
        for path in files(dir) {
            let out = Command::new(bin)
                .arg("validate")
                .arg(&path)
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(1),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.stderr.is_empty());
        }
    }
    for path in files("examples") {
        let out = Command::new(bin)
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad/semantic/many-errors.kdl");
    let src = SourceFile::read(&path).unwrap();
    let (_, diags) = megaplan::validate::check(&src);
    let codes: Vec<&str> = diags.errors().map(|d| d.code.as_str()).collect();
    for want in [
        "megaplan::zero_vcpus",
        "megaplan::bad_memory",
        "megaplan::unknown_network",
        "megaplan::unknown_vm",
    ] {
        assert!(codes.contains(&want), "{want} missing from {codes:?}");
    }
}

#[test]
fn misspelled_network_gets_a_suggestion() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad/semantic/unknown-network.kdl");
    let src = SourceFile::read(&path).unwrap();
    let (_, diags) = megaplan::validate::check(&src);
    assert_eq!(
        diags.errors().next().unwrap().help.as_deref(),
        Some("did you mean 'LAN'?")
    );
}

#[test]
fn after_cycle_names_the_whole_cycle() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad/semantic/after-cycle.kdl");
    let src = SourceFile::read(&path).unwrap();
    let (_, diags) = megaplan::validate::check(&src);
    let msg = &diags.errors().next().unwrap().message;
    assert!(msg.contains("a -> b -> c -> a"), "{msg}");
}

#[test]
fn examples_validate_and_expand() {
    for path in files("examples") {
        let src = SourceFile::read(&path).unwrap();
        let (lab, diags) = megaplan::validate::check(&src);
        assert!(
            lab.is_some(),
            "{}:\n{}",
            path.display(),
            diags.render_plain(&src)
        );
    }
    let src =
        SourceFile::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tap-mirror.kdl"))
            .unwrap();
    let lab = megaplan::validate::check(&src).0.unwrap();
    assert_eq!(lab.vms.len(), 3);
    assert_eq!(lab.mirrors.len(), 1);
    assert!(
        lab.vms[0]
            .kernel
            .as_ref()
            .unwrap()
            .ends_with("examples/images/miniccc.kernel")
    );
}
