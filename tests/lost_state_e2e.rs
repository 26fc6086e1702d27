//! Real guests: a lost state.json is rebuilt from the host without killing
//! the VM, re-running its step or re-creating its keep disk; and everything
//! megaplan and QEMU leave in the state and runtime folders is private even
//! when megaplan runs with umask 0 (the only test of this process, so the
//! umask set here is inherited by the binary and nothing else).

#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use lab::Lab;

const TEXT: &str = r#"
experiment "lost" { images "@IMAGES@"; accel "tcg"; }
network "LAN"
disk "d" size="16M" format="raw" keep=#true
vm "A" {
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "128M"
    disk "d"
    nic "LAN"
    cc {
        exec "echo ran >> /tmp/runs; cat /tmp/runs | wc -l"
    }
}
"#;

/// Every entry under `dir` (not following links) has no group/other bits.
fn assert_private(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.file_type().is_symlink() {
            continue;
        }
        assert_eq!(
            m.mode() & 0o077,
            0,
            "{} has mode {:o}",
            e.path().display(),
            m.permissions().mode() & 0o7777
        );
        if m.is_dir() {
            assert_private(&e.path());
        }
    }
}

#[test]
fn a_lost_state_keeps_the_running_guest() {
    if !lab::can_boot("a_lost_state_keeps_the_running_guest") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to boot guests"
        );
        return;
    }
    // SAFETY: umask has no preconditions; this is the only test in the process.
    unsafe { libc::umask(0) };
    let lab = Lab::new("lost.kdl", "lost", TEXT);
    lab.ok("apply", &["--auto-approve"]);
    let sd = lab.dir.path().join(".megaplan/lost");
    let rt = lab.dir.path().join("run/lost/A");
    assert!(rt.join("qmp.sock").exists() || std::fs::read_dir(&rt).unwrap().count() > 1);
    assert_private(&sd);
    assert_private(&lab.dir.path().join("run"));
    let mode = std::fs::metadata(&rt).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    let pid = lab.pid("A");
    std::fs::remove_file(sd.join("state.json")).unwrap();
    let _ = std::fs::remove_file(sd.join("state.json.backup"));
    let out = lab.run("apply", &["--auto-approve"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("adopted 5 objects"), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No changes"), "{text}");
    assert!(lab::alive(pid), "the guest was killed");
    assert_eq!(lab.pid("A"), pid);
    lab.assert_converged("after adopting a lost state");
    // The step did not run again: the guest counted one run.
    let out = lab.megaplan(&["cc", "exec", lab.f(), "--", "wc -l < /tmp/runs"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\n1\n"),
        "{out:?}"
    );
    lab.ok("destroy", &["--all", "--auto-approve"]);
    lab.assert_clean();
}
