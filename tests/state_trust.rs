//! The state folder as untrusted, shared ground, through the binary: one
//! experiment name per host, a lost state rebuilt from the host, a saved
//! plan refused once the host moved on. Real bridges and disk files, each
//! test in its own network namespace with its own runtime (and owners) folder.

#[path = "common/netns.rs"]
mod netns;

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
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(env!("CARGO_BIN_EXE_megaplan"))
            .args(args)
            .env("MEGAPLAN_RUNTIME_DIR", self.dir.path().join("run"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        eprintln!(
            "$ megaplan {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "megaplan {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Fails, and says so on stderr: the stderr.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "megaplan {args:?} should fail");
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
        let err = h.refused(&cmd);
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
    h.refused(&["plan", s(&a)]);
    h.ok(&["destroy", s(&b), "--all", "--auto-approve"]);
    assert!(!h.links().contains(&h.bridge()));
}
