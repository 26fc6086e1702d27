//! Hostile experiment files through the real binary: deep nesting, floods
//! of errors, huge lines, invalid UTF-8, FIFOs and devices all end in a clear
//! error and exit 1, quickly, with bounded output; a closed stdout is quiet.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Every run must end within this (debug build, two busy cores).
const BOUND: Duration = Duration::from_secs(120);

/// A private temporary folder, removed on drop.
struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("megaplan-bounds-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        Tmp(p)
    }
    fn file(&self, name: &str, body: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run megaplan with `args`; fail the test (killing the child) past [`BOUND`].
fn run(args: &[&Path]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BOUND) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("megaplan {args:?} did not finish within {BOUND:?}");
        }
    }
}

fn validate(file: &Path) -> (Option<i32>, String) {
    let out = run(&[Path::new("validate"), file]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn deep_kdl_nesting_is_an_error_not_a_stack_overflow() {
    let t = Tmp::new("deepkdl");
    let n = 2000;
    let text = format!(
        "experiment \"x\"\nvm \"a\" {}{}\n",
        "{ x ".repeat(n),
        "}".repeat(n)
    );
    let (code, err) = validate(&t.file("deep.kdl", text.as_bytes()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nested more than 64 levels"), "{err}");
    assert!(err.contains("deep.kdl:2:"), "no line:col in {err}");
}

#[test]
fn deep_toml_nesting_is_an_error_not_a_stack_overflow() {
    let t = Tmp::new("deeptoml");
    let n = 2000;
    for (name, value) in [
        ("arrays.toml", format!("{}{}", "[".repeat(n), "]".repeat(n))),
        (
            "tables.toml",
            format!("{}1{}", "{a=".repeat(n), "}".repeat(n)),
        ),
    ] {
        let text = format!("[experiment]\nname = \"x\"\n[vm.a]\ntags = {value}\n");
        let (code, err) = validate(&t.file(name, text.as_bytes()));
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(&format!("{name}:4:")), "{name}: {err}");
    }
}

#[test]
fn a_flood_of_errors_is_cut_after_100() {
    let t = Tmp::new("flood");
    let mut text = String::from("experiment \"x\"\n");
    for i in 0..200_000 {
        text.push_str(&format!("bogus{i} 1\n"));
    }
    let (code, err) = validate(&t.file("many.kdl", text.as_bytes()));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("... and 199900 more errors"),
        "{}",
        &err[err.len().saturating_sub(500)..]
    );
    assert!(err.contains("200000 errors found"));
    assert_eq!(err.matches("megaplan::unknown_key").count(), 100);
}

#[test]
fn a_huge_line_prints_a_bounded_excerpt() {
    let t = Tmp::new("line");
    let long = "x".repeat(10 << 20);
    let text = format!("experiment \"x\"\nnetwork \"a\" {{ host-address \"{long}\"; }}\n");
    let (code, err) = validate(&t.file("long.kdl", text.as_bytes()));
    assert_eq!(code, Some(1));
    assert!(err.len() < 8 << 10, "{} bytes of stderr", err.len());
    assert!(err.contains("long.kdl:2:28"), "{err}");
    assert!(err.contains("megaplan::bad_cidr"), "{err}");
    assert!(
        err.contains("(10485760 bytes)") || err.contains("bytes)…"),
        "{err}"
    );
}

#[test]
fn invalid_utf8_names_its_line_and_column() {
    let t = Tmp::new("utf8");
    let (code, err) = validate(&t.file("bad.kdl", b"experiment \"x\"\nnetwork \"ab\xff\"\n"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("bad.kdl:2:12: the file is not valid UTF-8 (byte 0xff)"),
        "{err}"
    );
}

#[test]
fn fifos_devices_folders_and_huge_files_are_refused_without_reading() {
    let t = Tmp::new("special");
    let fifo = t.0.join("exp.kdl");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (code, err) = validate(&fifo);
    assert_eq!(code, Some(1));
    assert!(err.contains("is a FIFO, not an experiment file"), "{err}");

    let (code, err) = validate(Path::new("/dev/zero"));
    assert_eq!(code, Some(1));
    assert!(err.contains("/dev/zero is a character device"), "{err}");

    let (code, err) = validate(&t.0);
    assert_eq!(code, Some(1));
    assert!(err.contains("is a folder"), "{err}");

    let big = t.0.join("big.kdl");
    let mut f = std::fs::File::create(&big).unwrap();
    f.write_all(b"experiment \"x\"\n").unwrap();
    f.write_all(&vec![b' '; megaplan::diag::MAX_FILE_SIZE as usize])
        .unwrap();
    drop(f);
    let (code, err) = validate(&big);
    assert_eq!(code, Some(1));
    assert!(err.contains("is larger than 64 MiB"), "{err}");
}

#[test]
fn a_symlink_to_a_regular_file_is_read() {
    let t = Tmp::new("link");
    let real = t.file("real.kdl", b"experiment \"x\"\nnetwork \"LAN\"\n");
    let link = t.0.join("link.kdl");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = run(&[Path::new("validate"), &link]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    // The read end is closed before the child starts: its first write gets EPIPE.
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) fills two fds we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] is ours and closed once.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is an open fd we own; Stdio takes it over.
    let write_end =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let out = Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .arg("schema")
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn apply_refuses_a_bad_megaplan_accel_before_any_change() {
    let t = Tmp::new("accel");
    // Were the variable not checked, preflight would stop on the missing kernel.
    let file = t.file(
        "x.kdl",
        b"experiment \"bounds-accel\"\nvm \"a\" { kernel \"/nonexistent/k\"; }\n",
    );
    let state = t.0.join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .arg("apply")
        .arg(&file)
        .arg("--auto-approve")
        .arg("--state-dir")
        .arg(&state)
        .env("MEGAPLAN_ACCEL", "warp9")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}"); // config: docs/cli.md
    assert!(
        err.contains("MEGAPLAN_ACCEL=\"warp9\" is not an accelerator"),
        "{err}"
    );
    assert!(!state.exists(), "apply touched the state folder");
    // The flag exists and takes only auto, kvm or tcg.
    let out = Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .args(["apply", "--accel", "warp9"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values: auto, kvm, tcg"), "{err}");
}
