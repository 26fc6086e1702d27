//! What the binary says: counts in the right number, and hints that point
//! the right way.

use std::os::unix::process::CommandExt;
use std::process::Command;

fn tmpdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("megaplan-wording-{tag}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn validate_counts_in_the_right_number() {
    let dir = tmpdir("plural");
    let file = dir.path().join("x.kdl");
    std::fs::write(
        &file,
        "experiment \"x\"\nnetwork \"LAN\"\nvm \"a\" { kernel \"/k\"; nic \"LAN\"; cc { exec \"true\"; } }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("(1 network, 0 disks, 1 VM, 0 mirrors, 1 cc step)"),
        "{text}"
    );
}

#[test]
fn a_user_who_is_not_root_is_told_to_use_sudo() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: this test needs root to run a child as another user"
        );
        eprintln!("skipped: needs root to run megaplan as user nobody");
        return;
    }
    let dir = tmpdir("root");
    let file = dir.path().join("x.kdl");
    std::fs::write(&file, "experiment \"wording-root\"\nnetwork \"LAN\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .arg("apply")
        .arg(&file)
        .arg("--auto-approve")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // A missing prerequisite is a configuration error: exit 5 (docs/cli.md).
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("hint: run it as root"), "{err}");
    assert!(!err.contains("install what is listed"), "{err}");
}

#[test]
fn apply_names_a_missing_send_file_before_any_change() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI: needs root");
        eprintln!("skipped: preflight stops non-root users first");
        return;
    }
    let dir = tmpdir("send");
    let file = dir.path().join("x.kdl");
    // The kernel is missing too, so that no version of apply goes further.
    std::fs::write(
        &file,
        "experiment \"wording-send\"\nvm \"a\" { kernel \"/nonexistent/k\"; cc { send \"no-such-file\" to=\"/root/f\"; } }\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .arg("apply")
        .arg(&file)
        .arg("--auto-approve")
        .arg("--state-dir")
        .arg(&state)
        .env("MEGAPLAN_ACCEL", "tcg")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("no-such-file (vm.a.cc[0]: the file to send does not exist)"),
        "{err}"
    );
    assert!(!state.exists(), "apply touched the state folder");
}
