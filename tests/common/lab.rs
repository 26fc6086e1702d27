//! Test helper for end-to-end runs of the `megaplan` binary: a private network
//! namespace, a private state and runtime folder, a cc-enabled guest image
//! (built once per test process), and a guard that destroys everything.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use super::netns::NetnsGuard;
use super::run;

/// True when this machine can run guests: root, QEMU, the guest kernel.
pub fn can_boot(test: &str) -> bool {
    if !super::netns::can_run(test) {
        return false;
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return super::netns::skip(
            test,
            "qemu-system-x86_64 missing (bash scripts/setup-host.sh)",
        );
    }
    true
}

/// The guest kernel folder from scripts/guest-kernel.sh (fetched once).
pub fn guest_kernel_dir() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-kernel.sh");
    let out = Command::new(&script)
        .output()
        .expect("run scripts/guest-kernel.sh");
    assert!(
        out.status.success(),
        "guest-kernel.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

static IMAGE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Removes the image folder when the test process exits (the harness ends
/// with `process::exit`, which runs atexit handlers); statics are never dropped.
extern "C" fn remove_image_dir() {
    if let Some(dir) = IMAGE_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A cc-enabled image (`miniccc.kernel`, `miniccc.initrd`) with tcpdump, built
/// once per test process and removed when it exits.
pub fn image_dir() -> &'static Path {
    IMAGE_DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("megaplan-test-images-{}", std::process::id()));
        // SAFETY: registers a plain extern "C" function without arguments.
        unsafe { libc::atexit(remove_image_dir) };
        let mut opts = megaplan::image::ImageOptions::new(&dir);
        opts.kernel = megaplan::image::KernelSource::Dir(guest_kernel_dir());
        opts.agent = Some(PathBuf::from(env!("CARGO_BIN_EXE_megaplan-agent")));
        opts.include = vec![PathBuf::from("/usr/bin/tcpdump")];
        megaplan::image::build(&opts).expect("image build");
        dir
    })
}

pub struct Lab {
    pub ns: NetnsGuard,
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub experiment: String,
}

impl Lab {
    /// Write `text` (with `@IMAGES@` replaced by the test image folder) as FILE_NAME.
    pub fn new(file_name: &str, experiment: &str, text: &str) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(file_name);
        std::fs::write(
            &file,
            text.replace("@IMAGES@", image_dir().to_str().unwrap()),
        )
        .unwrap();
        Lab {
            ns: NetnsGuard::new(),
            dir,
            file,
            experiment: experiment.to_string(),
        }
    }

    pub fn megaplan(&self, args: &[&str]) -> Output {
        self.megaplan_env(args, &[])
    }

    pub fn megaplan_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        run::logged(
            self.command(args)
                .env("MEGAPLAN_ACCEL", "tcg")
                .envs(env.iter().copied()),
            args,
        )
    }

    /// `megaplan ARGS…` in the lab's namespace with its runtime folder.
    fn command(&self, args: &[&str]) -> Command {
        run::in_netns(&self.ns.name, &self.dir.path().join("run"), args)
    }

    /// Start `megaplan SUB FILE ARGS…` with the lab's environment and piped
    /// stdin, stdout and stderr; the caller waits for (or kills) it.
    pub fn spawn(&self, sub: &str, args: &[&str]) -> std::process::Child {
        use std::process::Stdio;
        let mut all = vec![sub, self.f()];
        all.extend_from_slice(args);
        self.command(&all)
            .env("MEGAPLAN_ACCEL", "tcg")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Run `megaplan SUB FILE ARGS…`.
    pub fn run(&self, sub: &str, args: &[&str]) -> Output {
        let mut all = vec![sub, self.f()];
        all.extend_from_slice(args);
        self.megaplan(&all)
    }

    pub fn ok(&self, sub: &str, args: &[&str]) -> String {
        run::succeeded(&self.run(sub, args), &[sub])
    }

    /// Wait (bounded, in the guest) until `vm`'s capture file `path` is not
    /// empty: its tcpdump is capturing.
    pub fn wait_capture(&self, vm: &str, path: &str) {
        let script = format!(
            "i=0; while [ ! -s {path} ] && [ $i -lt 200 ]; do i=$((i+1)); sleep 0.05; done; test -s {path}"
        );
        self.cc_exec(vm, &script);
    }

    /// `megaplan cc exec FILE --filter name=VM -- CMD` must succeed: its stdout.
    pub fn cc_exec(&self, vm: &str, cmd: &str) -> String {
        let filter = format!("name={vm}");
        let out = self.megaplan(&["cc", "exec", self.f(), "--filter", &filter, "--", cmd]);
        assert!(out.status.success(), "cc exec on {vm} failed: {cmd}");
        run::lossy(&out.stdout)
    }

    /// `plan --detailed-exitcode` must find changes (exit 2); its text.
    pub fn plan_changes(&self) -> String {
        let out = self.run("plan", &["--detailed-exitcode"]);
        assert_eq!(out.status.code(), Some(2), "plan should find changes");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `plan --detailed-exitcode` must find nothing to do (exit 0).
    pub fn assert_converged(&self, context: &str) {
        assert_eq!(
            self.run("plan", &["--detailed-exitcode"]).status.code(),
            Some(0),
            "{context}"
        );
    }

    pub fn f(&self) -> &str {
        self.file.to_str().unwrap()
    }

    pub fn state(&self) -> serde_json::Value {
        let p = self
            .dir
            .path()
            .join(".megaplan")
            .join(&self.experiment)
            .join("state.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    pub fn attr(&self, address: &str, key: &str) -> String {
        self.state()["resources"][address]["attrs"][key]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn pid(&self, vm: &str) -> i32 {
        self.state()["resources"][format!("vm.{vm}")]["pid"]
            .as_u64()
            .unwrap() as i32
    }

    pub fn ns_cmd(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// SIGKILL a QEMU and wait (bounded) until it is gone.
    pub fn kill_vm(&self, vm: &str) -> i32 {
        let pid = self.pid(vm);
        // SAFETY: a signal to a QEMU this test launched.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!alive(pid), "QEMU {pid} survived SIGKILL");
        pid
    }

    /// Nothing of the experiment is left: no marked link, no tc filter on
    /// a marked link, no QEMU of this lab, no runtime files.
    pub fn assert_clean(&self) {
        let links = self.ns_cmd(&["ip", "-d", "-o", "link", "show"]);
        assert!(!links.contains("megaplan:"), "marked links left:\n{links}");
        let qdiscs = self.ns_cmd(&["tc", "qdisc", "show"]);
        assert!(!qdiscs.contains("clsact"), "clsact left:\n{qdiscs}");
        let run = self.dir.path().join("run").join(&self.experiment);
        assert!(
            !run.exists() || std::fs::read_dir(&run).unwrap().next().is_none(),
            "runtime files left in {}",
            run.display()
        );
        let ps = Command::new("pgrep")
            .args(["-f", &format!("{}/run/", self.dir.path().display())])
            .output()
            .unwrap();
        assert!(
            ps.stdout.is_empty(),
            "QEMU left: {}",
            String::from_utf8_lossy(&ps.stdout)
        );
        let overlays = self
            .dir
            .path()
            .join(".megaplan")
            .join(&self.experiment)
            .join("overlays");
        assert!(
            !overlays.exists() || std::fs::read_dir(&overlays).unwrap().next().is_none(),
            "overlays left"
        );
    }
}

/// tcpdump's text `seen` has an ICMP echo request from `a` to `b` and `b`'s
/// reply.
pub fn assert_ping_seen(seen: &str, a: &str, b: &str) {
    assert!(
        seen.contains(&format!("{a} > {b}: ICMP echo request")),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("{b} > {a}: ICMP echo reply")),
        "{seen}"
    );
}

pub fn alive(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.megaplan(&["destroy", self.f(), "--all", "--auto-approve"]);
        let _ = Command::new("pkill")
            .args(["-9", "-f", &format!("{}/run/", self.dir.path().display())])
            .status();
    }
}

/// Reads a child's output on a thread; `wait_for` collects it until a text
/// shows up (or a deadline passes).
pub struct OutputWatch {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    pub seen: String,
}

impl OutputWatch {
    pub fn new(mut from: impl std::io::Read + Send + 'static) -> OutputWatch {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        OutputWatch {
            rx,
            seen: String::new(),
        }
    }

    /// Whether `text` appeared within `within`.
    pub fn wait_for(&mut self, text: &str, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while !self.seen.contains(text) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => return false,
            }
        }
        true
    }
}
