//! The commands that need no root, through the real binary: convert round
//! trips, graph, diff in three formats, schema.

#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::Command;

use run::{megaplan, megaplan_env, stdout, write_file};

fn ex_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("kdl" | "toml")))
            .collect();
    v.sort();
    v
}

#[test]
fn convert_round_trips_reach_a_fixpoint() {
    // Beside the examples, so relative paths ($images, inject, send) resolve the same.
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let mut made = Cleanup(Vec::new());
    let tmp = |name: &str, ext: &str| {
        ex_dir().join(format!(".convert-{}-{name}.{ext}", std::process::id()))
    };
    for ex in examples() {
        let name = ex.file_stem().unwrap().to_str().unwrap();
        let (a, b) = if ex.extension().unwrap() == "kdl" {
            ("toml", "kdl")
        } else {
            ("kdl", "toml")
        };
        let first = stdout(&megaplan(&["convert", ex.to_str().unwrap(), "--to", a]));
        let p1 = tmp(name, a);
        made.0.push(p1.clone());
        std::fs::write(&p1, &first).unwrap();
        let back = stdout(&megaplan(&["convert", p1.to_str().unwrap(), "--to", b]));
        let p2 = tmp(name, b);
        made.0.push(p2.clone());
        std::fs::write(&p2, &back).unwrap();
        let again = stdout(&megaplan(&["convert", p2.to_str().unwrap(), "--to", a]));
        assert_eq!(
            first,
            again,
            "{}: {a} -> {b} -> {a} is not a fixpoint",
            ex.display()
        );
        let back2 = stdout(&megaplan(&["convert", p1.to_str().unwrap(), "--to", b]));
        assert_eq!(back, back2);
        // The converted file describes the same experiment: same resources in a diff.
        let diff = stdout(&megaplan(&[
            "diff",
            ex.to_str().unwrap(),
            p2.to_str().unwrap(),
        ]));
        assert!(diff.starts_with("No changes."), "{}: {diff}", ex.display());
    }
}

#[test]
fn tap_mirror_kdl_and_toml_are_the_same_experiment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let out = stdout(&megaplan(&[
        "diff",
        root.join("tap-mirror.kdl").to_str().unwrap(),
        root.join("tap-mirror.toml").to_str().unwrap(),
    ]));
    assert!(out.starts_with("No changes."), "{out}");
}

#[test]
fn graph_is_stable_dot() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tap-mirror.kdl");
    let dot = stdout(&megaplan(&["graph", f.to_str().unwrap()]));
    assert_eq!(dot, stdout(&megaplan(&["graph", f.to_str().unwrap()])));
    assert!(dot.contains("\"vm.A.nic[0]\" -> \"mirror.A[0]->monitor[0]\";"));
    assert!(dot.contains("\"network.LAN\" -> \"vm.A.nic[0]\";"));
    assert!(dot.contains("\"vm.A.cc[0]\" -> \"vm.A.cc[1]\";"));
    insta::assert_snapshot!(dot);
}

#[test]
fn diff_for_review_in_three_formats() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tap-mirror.kdl");
    let text = std::fs::read_to_string(&src).unwrap();
    let old = dir.path().join("old.kdl");
    let new = dir.path().join("new.kdl");
    std::fs::write(&old, &text).unwrap();
    let changed = text
        .replace("nic \"mon\"\n    mirrors \"A\"", "memory \"4G\"\n    nic \"mon\"\n    mirrors \"A\"\n    mirrors \"B\" direction=\"ingress\"")
        .replace("exec \"ip link set eth0 up\"\n    }\n}\n\nvm \"B\"", "exec \"ip link set eth0 up\"\n        exec \"ping -c 1 10.0.0.2\"\n    }\n}\n\nvm \"B\"");
    assert_ne!(changed, text, "the test's edits must apply");
    std::fs::write(&new, changed).unwrap();
    let (o, n) = (old.to_str().unwrap(), new.to_str().unwrap());
    let txt = stdout(&megaplan(&["diff", o, n]));
    let md = stdout(&megaplan(&["diff", o, n, "--format", "markdown"]));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&megaplan(&["diff", o, n, "--format", "json"]))).unwrap();
    assert_eq!(json["format_version"], "2.0");
    // Reasons are stable codes with their prose beside them.
    let monitor = json["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "vm.monitor")
        .expect("vm.monitor in the plan");
    assert_eq!(monitor["action_reason"], "attribute_changed");
    assert_eq!(monitor["reasons"][0]["code"], "attribute_changed");
    assert_eq!(monitor["reasons"][0]["message"], "memory changed: 2G -> 4G");
    assert_eq!(json["summary"]["add"], 1);
    assert_eq!(json["summary"]["replace"], 2);
    insta::assert_snapshot!("diff_text", txt);
    insta::assert_snapshot!("diff_markdown", md);
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/experiment.schema.json"),
    )
    .unwrap();
    assert_eq!(stdout(&megaplan(&["schema"])), committed);
}

#[test]
fn validate_of_a_missing_file_says_so() {
    let out = megaplan(&["validate", "/nonexistent/x.kdl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/x.kdl"));
}

/// `show` of a lab that was never applied: reads the (empty) state and the
/// machine, changes nothing. The table has the addresses by default and
/// `--json` has every field.
#[test]
fn show_defaults_have_the_address_and_json_has_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "show.kdl",
        "experiment \"show-defaults\"\nnetwork \"LAN\"\nvm \"A\" { kernel \"k\"; nic \"LAN\"; cc { exec \"true\"; }; }\n",
    );
    let file = file.to_str().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["show", file, "--state-dir", state];
        args.extend_from_slice(extra);
        let run_dir = dir.path().join("run");
        let out = megaplan_env(
            &args,
            &[("MEGAPLAN_RUNTIME_DIR", run_dir.to_str().unwrap())],
        );
        stdout(&out)
    };
    let table = run(&[]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap()
        .split(" | ")
        .map(str::trim)
        .collect();
    assert!(header.contains(&"ip"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    let row = json[0].as_object().expect("one row per VM");
    let keys: Vec<&str> = row.keys().map(String::as_str).collect();
    for field in [
        "name", "state", "uuid", "pid", "tap", "bridge", "mac", "ip", "disks", "memory", "vcpus",
        "tags", "cc",
    ] {
        assert!(keys.contains(&field), "{field} missing from {json}");
    }
    assert_eq!(row["state"], "absent");
    assert_eq!(row["cc"], "0/1");
}

/// `boot-timeout` on a VM and experiment-wide, in both syntaxes, resolved
/// into the lab; a bad one is an error at its value.
#[test]
fn boot_timeout_in_both_syntaxes() {
    use megaplan::diag::SourceFile;
    let kdl = "experiment \"bt\" { boot-timeout \"90s\"; }\n\
               vm \"A\" { kernel \"k\"; boot-timeout \"5s\"; }\nvm \"B\" { kernel \"k\"; }\n";
    let toml = "[experiment]\nname = \"bt\"\nboot-timeout = \"90s\"\n\n\
                [vm.A]\nkernel = \"k\"\nboot-timeout = \"5s\"\n\n[vm.B]\nkernel = \"k\"\n";
    for (name, text) in [("/nonexistent/bt.kdl", kdl), ("/nonexistent/bt.toml", toml)] {
        let (lab, diags) = megaplan::validate::check(&SourceFile::new(name, text));
        let lab = lab.unwrap_or_else(|| panic!("{name}: {diags:?}"));
        let waits: Vec<u64> = lab.vms.iter().map(|v| v.boot_timeout_ms).collect();
        assert_eq!(waits, [5_000, 90_000], "{name}");
    }
    let (lab, _) = megaplan::validate::check(&SourceFile::new(
        "/nonexistent/d.kdl",
        "experiment \"d\"\nvm \"A\" { kernel \"k\"; }\n",
    ));
    assert_eq!(lab.unwrap().vms[0].boot_timeout_ms, 120_000);
    let text = "experiment \"bad\"\nvm \"A\" { kernel \"k\"; boot-timeout \"soon\"; }\n";
    let (lab, diags) = megaplan::validate::check(&SourceFile::new("/nonexistent/bad.kdl", text));
    assert!(lab.is_none());
    let e = diags.errors().next().expect("an error");
    assert_eq!(e.code, "megaplan::bad_duration");
    assert!(e.message.contains("'soon'"), "{}", e.message);
}

/// Completions come from the CLI definition: bash's complete a partial
/// subcommand; zsh's and fish's name the commands too.
#[test]
fn completions_for_bash_zsh_and_fish() {
    let script = stdout(&megaplan(&["completions", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("megaplan.bash");
    std::fs::write(&file, &script).unwrap();
    // The completion function, run as bash runs it for `megaplan con<TAB>`.
    let out = Command::new("bash")
        .arg("-c")
        .arg("source \"$1\"; COMP_WORDS=(megaplan con); COMP_CWORD=1; _megaplan megaplan con megaplan; echo \"${COMPREPLY[@]}\"")
        .arg("bash")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(stdout(&out).trim(), "convert console");
    for shell in ["zsh", "fish"] {
        let s = stdout(&megaplan(&["completions", shell]));
        assert!(s.contains("console") && s.contains("apply"), "{shell}: {s}");
    }
    let bad = megaplan(&["completions", "tcsh"]);
    assert!(!bad.status.success());
}

/// The man pages come from the CLI definition: one on stdout, or every
/// page into a folder; `man -l` reads them.
#[test]
fn man_pages_from_the_cli() {
    let page = stdout(&megaplan(&["man"]));
    assert!(page.contains(".TH megaplan 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    stdout(&megaplan(&[
        "man",
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]));
    for p in [
        "megaplan.1",
        "megaplan-apply.1",
        "megaplan-console.1",
        "megaplan-cc-exec.1",
    ] {
        assert!(dir.path().join(p).is_file(), "{p} missing");
    }
    assert!(!dir.path().join("megaplan-man.1").exists(), "man is hidden");
    if let Ok(out) = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("megaplan-console.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
    {
        let text = stdout(&out);
        assert!(text.contains("Ctrl-]"), "{text}");
    }
}

#[test]
fn replacing_an_unknown_address_is_refused_before_anything() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "r.kdl",
        "experiment \"r\"\nnetwork \"LAN\"\nvm \"A\" { kernel \"k\"; nic \"LAN\"; }\n",
    );
    let f = file.to_str().unwrap();
    for args in [
        vec!["plan", f, "-replace", "vm.B"],
        vec!["apply", f, "--replace=vm.A.nic[7]", "--auto-approve"],
    ] {
        let out = megaplan(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        // plan refuses the address (a user error, 1); apply stops even
        // earlier here, at preflight (the kernel is missing: 5).
        let want = if args[0] == "plan" { 1 } else { 5 };
        assert_eq!(out.status.code(), Some(want), "{args:?}: {err}");
        if args[0] == "plan" {
            assert!(
                err.contains("cannot replace vm.B: no such resource"),
                "{err}"
            );
            assert!(err.contains("megaplan graph"), "{err}");
        }
        // Nothing was written but the lock: no state.
        assert!(!dir.path().join(".megaplan/r/state.json").exists());
    }
}

/// The exit code comes from the error's kind (docs/cli.md, "Exit codes"):
/// a held lock is a conflict (3), a bad `MEGAPLAN_ACCEL` a configuration
/// problem (5), an unknown address a user error (1); each with its hint.
#[test]
fn exit_codes_follow_the_kind_of_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "l.kdl", "experiment \"l\"\nnetwork \"LAN\"\n");
    let f = file.to_str().unwrap();
    let st = dir.path().join("state");
    let sd = megaplan::state::StateDir {
        root: st.clone(),
        experiment: "l".into(),
    };
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = megaplan_env(args, env);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let st_arg = st.to_str().unwrap();
    {
        let _held = sd.lock("test holder").unwrap();
        let (code, err) = run(&["plan", f, "--state-dir", st_arg], &[]);
        assert_eq!(code, Some(3), "{err}");
        assert!(
            err.contains("locked by pid") && err.contains("test holder"),
            "{err}"
        );
        assert!(err.contains("hint: wait for it to finish"), "{err}");
    }
    let (code, err) = run(
        &["apply", f, "--auto-approve", "--state-dir", st_arg],
        &[("MEGAPLAN_ACCEL", "warp9")],
    );
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains("error: MEGAPLAN_ACCEL=\"warp9\" is not an accelerator")
            && err.contains("hint: set MEGAPLAN_ACCEL to auto, kvm or tcg"),
        "{err}"
    );
    let (code, err) = run(
        &["plan", f, "--state-dir", st_arg, "-replace", "vm.nope"],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("hint: the addresses are listed by"), "{err}");
}

/// The local engine's sockets must fit `sun_path` in its runtime folder:
/// a bound of the engine (not of validation), reported by `validate` at
/// the VM's name; a shorter runtime folder fits, and a minimega lab (whose
/// sockets are minimega's) is not held to it.
#[test]
fn a_socket_path_over_sun_path_is_the_local_engines_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (e, v) = ("e".repeat(45), "v".repeat(45));
    let file = dir.path().join("s.kdl");
    std::fs::write(
        &file,
        format!("experiment \"{e}\"\nvm \"{v}\" {{ kernel \"/k\"; }}\n"),
    )
    .unwrap();
    let run = |runtime: &str, file: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_megaplan"))
            .args(["validate", file.to_str().unwrap()])
            .env("NO_COLOR", "1")
            .env("MEGAPLAN_RUNTIME_DIR", runtime)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // /run/megaplan/E/V/qmp.sock: 13 + 1 + 45 + 1 + 45 + 1 + 8 = 114 bytes.
    let (code, err) = run("/run/megaplan", &file);
    assert_eq!(code, Some(1), "{err}");
    // The report wraps long lines: compare words.
    let err = err.replace('│', " ");
    let err = err.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        err.contains("socket_path_too_long")
            && err.contains(&format!("VM '{v}' would have a socket path of 114 bytes"))
            && err.contains("s.kdl:2:4")
            && err.contains("set MEGAPLAN_RUNTIME_DIR to a shorter folder")
            && err.contains("1 error found"),
        "{err}"
    );
    let (code, err) = run("/r", &file);
    assert_eq!(code, Some(0), "{err}");
    let mm = dir.path().join("m.kdl");
    std::fs::write(
        &mm,
        format!(
            "experiment \"{e}\" {{ provider \"minimega\" {{ base \"/tmp/mm\"; }}; }}\nvm \"{v}\" {{ kernel \"/k\"; }}\n"
        ),
    )
    .unwrap();
    let (code, err) = run("/run/megaplan", &mm);
    assert_eq!(code, Some(0), "{err}");
}
