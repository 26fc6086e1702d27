//! The state folder as untrusted, shared ground, through the binary: one
//! experiment name per host, a lost state rebuilt from the host, a saved
//! plan refused once the host moved on. Real bridges and disk files, each
//! test in its own network namespace with its own runtime (and owners) folder.

#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use netns::NetnsGuard;

/// Root is needed (network namespaces, bridges): skip on a developer
/// machine, fail under CI.
fn can_run(test: &str) -> bool {
    if netns::can_run(test) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test} must run under CI");
    false
}

const LAB: &str = r#"experiment "trust"
network "LAN"
disk "data" size="4M" format="raw" keep=#true
"#;

struct Host {
    ns: NetnsGuard,
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host {
            ns: NetnsGuard::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A folder holding a copy of the experiment file: its path.
    fn folder(&self, name: &str, text: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("lab.kdl");
        std::fs::write(&f, text).unwrap();
        f
    }

    fn run(&self, args: &[&str]) -> Output {
        run::logged(
            &mut run::in_netns(&self.ns.name, &self.dir.path().join("run"), args),
            args,
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        run::succeeded(&self.run(args), args)
    }

    /// Fails with this exit code (docs/cli.md), and says so on stderr: the stderr.
    fn refused(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "megaplan {args:?} should fail"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn links(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns.name, "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn bridge(&self) -> String {
        megaplan::identity::bridge_name("trust", "network.LAN")
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn state_dir(file: &Path) -> PathBuf {
    std::fs::canonicalize(file.parent().unwrap().join(".megaplan/trust")).unwrap()
}

#[test]
fn two_folders_cannot_share_an_experiment_name() {
    if !can_run("two_folders_cannot_share_an_experiment_name") {
        return;
    }
    let h = Host::new();
    let a = h.folder("alice", LAB);
    let b = h.folder("bob", LAB);
    h.ok(&["apply", s(&a), "--auto-approve"]);
    let first = state_dir(&a);
    assert!(h.links().contains(&h.bridge()));

    for cmd in [
        vec!["plan", s(&b)],
        vec!["apply", s(&b), "--auto-approve"],
        vec!["destroy", s(&b), "--auto-approve"],
        vec!["show", s(&b)],
    ] {
        let err = h.refused(3, &cmd);
        assert!(
            err.contains(&format!(
                "belongs to another state folder on this host: {}",
                first.display()
            )),
            "{cmd:?}: {err}"
        );
        assert!(
            err.contains(&format!("--state-dir {}", first.display())),
            "{err}"
        );
        assert!(err.contains("rename the experiment"), "{err}");
    }
    // Bob changed nothing: Alice's bridge and disk are there, her plan is empty.
    assert!(h.links().contains(&h.bridge()));
    assert!(first.join("disks/data.raw").exists());
    assert_eq!(
        h.run(&["plan", s(&a), "--detailed-exitcode"]).status.code(),
        Some(0)
    );
    // Bob may work on Alice's folder when he names it.
    h.ok(&["plan", s(&b), "--state-dir", s(&first)]);

    // Destroy with --all leaves nothing: the name is free again.
    h.ok(&["destroy", s(&a), "--all", "--auto-approve"]);
    assert!(!h.dir.path().join("run/.owners/trust").exists());
    h.ok(&["apply", s(&b), "--auto-approve"]);
    assert!(h.links().contains(&h.bridge()));
    h.refused(3, &["plan", s(&a)]);
    h.ok(&["destroy", s(&b), "--all", "--auto-approve"]);
    assert!(!h.links().contains(&h.bridge()));
}

/// Overwrite the start of the keep disk with something to recognise.
fn mark_disk(path: &Path) {
    use std::io::{Seek, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.rewind().unwrap();
    f.write_all(b"the user's data").unwrap();
}

fn disk_is_marked(path: &Path) -> bool {
    std::fs::read(path).unwrap().starts_with(b"the user's data")
}

#[test]
fn a_lost_state_is_rebuilt_from_the_host() {
    if !can_run("a_lost_state_is_rebuilt_from_the_host") {
        return;
    }
    let h = Host::new();
    let f = h.folder("lab", LAB);
    h.ok(&["apply", s(&f), "--auto-approve"]);
    let sd = state_dir(&f);
    let disk = sd.join("disks/data.raw");
    mark_disk(&disk);
    std::fs::remove_file(sd.join("state.json")).unwrap();
    let _ = std::fs::remove_file(sd.join("state.json.backup"));

    // plan adopts (and writes nothing): no changes.
    let out = h.run(&["plan", s(&f), "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("adopted 2 objects"), "{err}");
    assert!(!sd.join("state.json").exists(), "plan changes nothing");
    // apply adopts and records them; the bridge stays, the disk keeps its data.
    h.ok(&["apply", s(&f), "--auto-approve"]);
    assert!(sd.join("state.json").exists());
    assert!(disk_is_marked(&disk));
    assert!(h.links().contains(&h.bridge()));
    assert_eq!(
        h.run(&["plan", s(&f), "--detailed-exitcode"]).status.code(),
        Some(0)
    );
    h.ok(&["destroy", s(&f), "--all", "--auto-approve"]);
    assert!(!h.links().contains(&h.bridge()));
}

#[test]
fn a_corrupt_state_names_the_way_out() {
    if !can_run("a_corrupt_state_names_the_way_out") {
        return;
    }
    let h = Host::new();
    let f = h.folder("lab", LAB);
    h.ok(&["apply", s(&f), "--auto-approve"]);
    // A second apply (one more write), so the backup is the complete state
    // before it: LAN and the disk, not "mon".
    std::fs::write(&f, format!("{LAB}network \"mon\"\n")).unwrap();
    h.ok(&["apply", s(&f), "--auto-approve"]);
    let sd = state_dir(&f);
    let text = std::fs::read_to_string(sd.join("state.json")).unwrap();
    std::fs::write(sd.join("state.json"), &text[..text.len() / 3]).unwrap();
    let err = h.refused(1, &["apply", s(&f), "--auto-approve"]);
    assert!(err.contains("state.json is not a megaplan state"), "{err}");
    assert!(err.contains("state.json.backup"), "{err}");
    assert!(err.contains("megaplan state restore-backup"), "{err}");
    // Crafted paths are refused on load, naming the address.
    std::fs::write(
        sd.join("state.json"),
        text.replace("\"data.raw\"", "\"../../victim\""),
    )
    .unwrap();
    let err = h.refused(1, &["destroy", s(&f), "--all", "--auto-approve"]);
    assert!(err.contains("disk.data: file '../../victim'"), "{err}");
    h.ok(&["state", "restore-backup", s(&f)]);
    let restored = std::fs::read_to_string(sd.join("state.json")).unwrap();
    assert!(!restored.contains("network.mon"), "{restored}");
    // "mon", made since, is on the host but not in the restored state: adopted
    // (it used to be replaced through a delete of interface "").
    let out = h.run(&["apply", s(&f), "--auto-approve"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("adopted 1 object") && err.contains("network.mon"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("No changes"));
    assert_eq!(
        h.run(&["plan", s(&f), "--detailed-exitcode"]).status.code(),
        Some(0)
    );
    h.ok(&["destroy", s(&f), "--all", "--auto-approve"]);
}

#[test]
fn a_saved_plan_is_refused_once_the_host_changed() {
    if !can_run("a_saved_plan_is_refused_once_the_host_changed") {
        return;
    }
    let h = Host::new();
    let f = h.folder("lab", LAB);
    h.ok(&["apply", s(&f), "--auto-approve"]);
    let saved = h.dir.path().join("lab.plan");
    h.ok(&["plan", s(&f), "--out", s(&saved)]);
    // Drift: the bridge is deleted behind megaplan's back.
    let st = Command::new("ip")
        .args(["-n", &h.ns.name, "link", "del", &h.bridge()])
        .status()
        .unwrap();
    assert!(st.success());
    let err = h.refused(4, &["apply", s(&saved)]);
    assert!(err.contains("the host changed since the plan"), "{err}");
    assert!(err.contains("network.LAN bridge missing"), "{err}");
    assert!(err.contains("make a new one"), "{err}");
    assert!(!h.links().contains(&h.bridge()), "nothing was done");
    // A new plan applies and repairs it.
    h.ok(&["plan", s(&f), "--out", s(&saved)]);
    h.ok(&["apply", s(&saved)]);
    assert!(h.links().contains(&h.bridge()));
    h.ok(&["destroy", s(&f), "--all", "--auto-approve"]);
}
