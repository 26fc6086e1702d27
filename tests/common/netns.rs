//! Test helper: run a closure on a dedicated OS thread inside a fresh, named
//! network namespace (`ip netns add mp-test-…`), with its own current-thread
//! tokio runtime; the namespace is deleted afterwards, even if the closure
//! panics (a guard with Drop). Deleting the namespace destroys every link
//! created in it.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// True when a missing prerequisite must fail a test instead of skipping
/// it: `CI` is set (to anything but empty) or `MEGAPLAN_E2E=1`.
pub fn must_run() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var_os("MEGAPLAN_E2E").is_some_and(|v| v == "1")
}

/// A test cannot run here because `why`: on a developer machine it prints
/// `SKIP test: why` and returns false (the caller returns, the test passes);
/// under CI (see [`must_run`]) the test fails with that reason.
pub fn skip(test: &str, why: &str) -> bool {
    assert!(
        !must_run(),
        "{test} cannot run: {why} (CI or MEGAPLAN_E2E=1 is set, so a missing prerequisite fails)"
    );
    eprintln!("SKIP {test}: {why}");
    false
}

/// True when the tests can do real networking (root). Prints why not; fails
/// the test instead under CI.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip(test, "needs root (network namespaces, taps, tc)");
    }
    true
}

/// A named network namespace, deleted on drop.
pub struct NetnsGuard {
    pub name: String,
}

impl NetnsGuard {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "mp-test-{}-{}-{:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run `ip netns add`");
        assert!(st.success(), "ip netns add {name} failed");
        NetnsGuard { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Run `f` in a new namespace on its own thread; `f` gets the namespace name
/// and a current-thread tokio runtime. Panics in `f` are re-raised after the
/// namespace is gone.
pub fn in_netns<R: Send + 'static>(
    f: impl FnOnce(&str, &tokio::runtime::Runtime) -> R + Send + 'static,
) -> R {
    let guard = NetnsGuard::new();
    let path = guard.path();
    let name = guard.name.clone();
    let res = std::thread::spawn(move || {
        let ns = File::open(&path).expect("open netns file");
        // SAFETY: setns on a valid namespace fd; affects this thread only.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        drop(ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let out = f(&name, &rt);
        drop(rt);
        out
    })
    .join();
    drop(guard);
    match res {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Run a command inside the namespace (for setting up foreign objects and
/// inspecting state with iproute2). Returns stdout; panics on failure.
pub fn ns_cmd(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("run ip netns exec");
    assert!(
        out.status.success(),
        "{args:?} in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
