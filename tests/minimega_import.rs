//! `megaplan import minimega` and `megaplan export minimega` through the real
//! binary, and the minimega corpus (its own tests and articles' scripts) when
//! `MEGAPLAN_MINIMEGA_CORPUS` names a folder of them.

#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::Output;

use run::{lossy as text, megaplan, write_file};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `megaplan import|export minimega FROM -o TO`.
fn convert_to(verb: &str, from: &Path, to: &Path) -> Output {
    megaplan(&[
        verb,
        "minimega",
        from.to_str().unwrap(),
        "-o",
        to.to_str().unwrap(),
    ])
}

/// The command's stderr says `want`.
fn assert_stderr(o: &Output, want: &str) {
    let err = text(&o.stderr);
    assert!(err.contains(want), "{err}");
}

#[test]
fn the_articles_script_imports_to_a_file_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    let script = root().join("examples/minimega/tap-mirror.mm");
    for ext in ["kdl", "toml"] {
        let out = dir.path().join(format!("tap-mirror.{ext}"));
        let o = convert_to("import", &script, &out);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let written = std::fs::read_to_string(&out).unwrap();
        let lead = if ext == "kdl" { "//" } else { "#" };
        assert!(
            written.starts_with(&format!(
                "{lead} Imported from the minimega script {}",
                script.display()
            )),
            "{written}"
        );
        assert!(written.contains("assumes a fresh minimega"), "{written}");
        let v = megaplan(&["validate", out.to_str().unwrap()]);
        assert!(v.status.success(), "{}", text(&v.stderr));
        assert!(
            text(&v.stdout).contains("experiment 'tap-mirror' is valid (2 networks, 0 disks, 3 VMs, 1 mirror, 4 cc steps)"),
            "{}",
            text(&v.stdout)
        );
    }
}

#[test]
fn unmapped_commands_are_located_warnings_and_strict_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_file(
        dir.path(),
        "t.mm",
        "vm config kernel /k\nvm launch kvm a\n  qos add a 0 loss 0.5\n",
    );
    let s = script.to_str().unwrap();
    let o = megaplan(&["import", "minimega", s]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "{s}:3:3: `qos add` has no megaplan equivalent; skipped"
        )),
        "{err}"
    );
    assert!(text(&o.stdout).contains("vm \"a\""));

    let out = dir.path().join("out.kdl");
    let o = megaplan(&[
        "import",
        "minimega",
        s,
        "--strict",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_stderr(&o, "1 error found");
    assert!(!out.exists(), "nothing is written when the import fails");
}

#[test]
fn a_syntax_error_points_at_its_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_file(dir.path(), "bad.mm", "vm launch kvm a\ncc exec 'echo hi\n");
    let out = dir.path().join("bad.kdl");
    let o = convert_to("import", &script, &out);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("bad.mm:2:9: minimega cannot read this line: missing closing '"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn an_import_that_does_not_validate_fails_with_the_generated_files_errors() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("noboot.mm");
    // minimega would launch it; megaplan needs something to boot.
    std::fs::write(&script, "vm launch kvm a\n").unwrap();
    let o = megaplan(&["import", "minimega", script.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("neither a kernel nor a disk"), "{err}");
    let (before, after) = err
        .split_once("does not validate (nothing written)")
        .expect(&err);
    assert!(
        !before.contains("neither a kernel"),
        "the reason comes after the heading: {err}"
    );
    // Located in the script, at the launch.
    let at = format!(
        "{}:1:15: VM 'a' has neither a kernel nor a disk",
        script.display()
    );
    assert!(after.contains(&at), "{err}");
    assert!(o.stdout.is_empty());

    // A value megaplan refuses points at the script's word.
    std::fs::write(
        &script,
        "vm config kernel /k\nvm config net LAN,13:37:13:37:00:00\nvm launch kvm a\n",
    )
    .unwrap();
    let o = megaplan(&["import", "minimega", script.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    let at = format!(
        "{}:2:15: '13:37:13:37:00:00' is not a valid MAC address",
        script.display()
    );
    assert!(err.contains(&at), "{err}");
}

#[test]
fn bad_names_and_the_script_as_output_are_refused() {
    let script = root().join("examples/minimega/tap-mirror.mm");
    let s = script.to_str().unwrap();
    let o = megaplan(&["import", "minimega", s, "--name", "../x"]);
    assert_eq!(o.status.code(), Some(1));
    assert_stderr(&o, "--name");
    let dir = tempfile::tempdir().unwrap();
    let kdl = dir.path().join("x.kdl");
    let o = megaplan(&[
        "import",
        "minimega",
        s,
        "--to",
        "toml",
        "-o",
        kdl.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_stderr(&o, "reads a file by its extension");
    assert!(!kdl.exists());
    let o = megaplan(&["import", "minimega", s, "-o", s]);
    assert_eq!(o.status.code(), Some(1));
    assert_stderr(&o, "is the script itself");
}

#[test]
fn export_then_import_keeps_every_resource() {
    let dir = tempfile::tempdir().unwrap();
    for ex in ["tap-mirror.kdl", "bro-capture.kdl", "lab.kdl"] {
        let file = root().join("examples").join(ex);
        let mm = dir.path().join(format!("{ex}.mm"));
        let o = convert_to("export", &file, &mm);
        assert!(o.status.success(), "{ex}: {}", text(&o.stderr));
        let script = std::fs::read_to_string(&mm).unwrap();
        assert!(script.contains("\nvm start all\n"), "{script}");
        let back = dir.path().join(format!("{ex}.back.kdl"));
        let o = convert_to("import", &mm, &back);
        assert!(o.status.success(), "{ex}: {}\n{script}", text(&o.stderr));
        // The same numbers of resources (the unit round trip in
        // src/minimega/tests.rs compares whole labs).
        let strip = |o: Output| {
            assert!(o.status.success(), "{}", text(&o.stderr));
            text(&o.stdout)
        };
        let want = strip(megaplan(&["validate", file.to_str().unwrap()]));
        let got = strip(megaplan(&["validate", back.to_str().unwrap()]));
        let counts = |s: &str| {
            s.split_once("is valid")
                .map(|(_, c)| c.to_string())
                .unwrap()
        };
        // An ext4 disk with injected files is made by megaplan, not by a
        // minimega command (`export --stage`): the script, and so its import,
        // names it as a VM's image by path. Every other resource comes back.
        let made: Vec<&str> = script
            .lines()
            .filter_map(|l| l.strip_prefix("# disk "))
            .filter_map(|l| l.split_once(": ")?.1.split_once(" is made by megaplan"))
            .map(|(path, _)| path)
            .collect();
        let imported = std::fs::read_to_string(&back).unwrap();
        for path in &made {
            assert!(
                imported.contains(&format!("disk \"{path}\"")),
                "{ex}: {path} is not the VM's image\n{imported}"
            );
        }
        let disks = |s: &str, n: usize| {
            s.replace(&format!("{n} disks"), "N disks")
                .replace(&format!("{n} disk,"), "N disks,")
        };
        let want_disks = |s: &str| {
            (0..64)
                .find(|n| s.contains(&format!(" {n} disk")))
                .unwrap_or(0)
        };
        let w = counts(&want);
        let n = want_disks(&w);
        assert_eq!(disks(&counts(&got), n - made.len()), disks(&w, n), "{ex}");
    }
}

fn corpus_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            corpus_files(&p, out);
        } else if meta.is_file() {
            match p.extension().and_then(|e| e.to_str()) {
                None | Some("mm") => out.push(p),
                _ => {}
            }
        }
    }
}

/// Every script of a corpus either imports to a file that validates or fails
/// with messages that name their line; none crashes the importer. The corpus
/// (minimega's `tests/` and its articles' scripts) is not shipped with
/// megaplan, so without the variable this test has nothing to read.
#[test]
fn the_minimega_corpus_imports_or_fails_with_located_messages() {
    // Not shipped, so not a prerequisite CI can have: without the variable
    // this skips even under CI; with it, anything wrong is a failure.
    let Some(dir) = std::env::var_os("MEGAPLAN_MINIMEGA_CORPUS") else {
        eprintln!(
            "SKIP minimega corpus: set MEGAPLAN_MINIMEGA_CORPUS to a folder of minimega scripts (not shipped)"
        );
        return;
    };
    assert!(
        Path::new(&dir).is_dir(),
        "MEGAPLAN_MINIMEGA_CORPUS={} is not a folder",
        Path::new(&dir).display()
    );
    let mut files = Vec::new();
    corpus_files(Path::new(&dir), &mut files);
    assert!(
        !files.is_empty(),
        "no scripts under {}",
        Path::new(&dir).display()
    );
    let out_dir = tempfile::tempdir().unwrap();
    let (mut ok, mut failed, mut warned) = (0, 0, 0);
    // Per first-level folder: (scripts, imported, with skipped commands, refused).
    let mut by_folder: std::collections::BTreeMap<String, [usize; 4]> = Default::default();
    for (i, f) in files.iter().enumerate() {
        let folder = f
            .strip_prefix(&dir)
            .ok()
            .and_then(|r| r.components().next())
            .filter(|_| f.parent() != Some(Path::new(&dir)))
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_else(|| ".".into());
        let counts = by_folder.entry(folder).or_default();
        counts[0] += 1;
        let out = out_dir.path().join(format!("{i}.kdl"));
        let o = convert_to("import", f, &out);
        let err = text(&o.stderr);
        assert!(!err.contains("panicked"), "{}: {err}", f.display());
        match o.status.code() {
            Some(0) => {
                let v = megaplan(&["validate", out.to_str().unwrap()]);
                assert!(v.status.success(), "{}: {}", f.display(), text(&v.stderr));
                ok += 1;
                counts[1] += 1;
                if err.contains("no megaplan equivalent") {
                    warned += 1;
                    counts[2] += 1;
                }
            }
            Some(1) => {
                assert!(!out.exists(), "{}: written although it failed", f.display());
                // Every diagnostic names a file:line:col.
                let located = err.lines().any(|l| {
                    l.split(": ").next().is_some_and(|loc| {
                        let parts: Vec<&str> = loc
                            .trim_start_matches(['×', '⚠', ' '])
                            .rsplitn(3, ':')
                            .collect();
                        parts.len() == 3
                            && parts[0].parse::<usize>().is_ok()
                            && parts[1].parse::<usize>().is_ok()
                    })
                });
                assert!(located, "{}: no located message in:\n{err}", f.display());
                failed += 1;
                counts[3] += 1;
            }
            c => panic!("{}: exit {c:?}: {err}", f.display()),
        }
    }
    for (folder, [n, i, w, r]) in &by_folder {
        eprintln!(
            "minimega corpus {folder}: {n} scripts, {i} imported ({w} with skipped commands), {r} refused"
        );
    }
    eprintln!(
        "minimega corpus: {} scripts, {ok} imported ({warned} with skipped commands), {failed} refused with located messages",
        files.len()
    );
}

#[test]
fn export_refuses_an_invalid_experiment_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "bad.kdl",
        "experiment \"e\"\nvm \"a\" { kernel \"/k\"; nic \"nowhere\"; }\n",
    );
    let out = dir.path().join("bad.mm");
    let o = convert_to("export", &file, &out);
    assert_eq!(o.status.code(), Some(1));
    assert_stderr(&o, "1 error found");
    assert!(!out.exists());
    // To stdout when there is no -o.
    let good = root().join("examples/tap-mirror.kdl");
    let o = megaplan(&["export", "minimega", good.to_str().unwrap()]);
    assert!(o.status.success());
    let s = text(&o.stdout);
    assert!(
        s.contains("namespace tap-mirror\n")
            && s.contains(&format!(
                "vm config kernel {}/examples/images/miniccc.kernel\n",
                root().display()
            )),
        "{s}"
    );
}
