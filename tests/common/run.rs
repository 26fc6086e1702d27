//! Running the `megaplan` binary from a test, one way for every test file:
//! the command and its output echoed to the test's log, and the usual reads
//! of the result (stdout, stdout and stderr, success asserted).
//!
//! - [`megaplan`]: `megaplan ARGS…` with no state of its own (commands that
//!   read a file and print);
//! - [`logged`]: any prepared megaplan `Command` (in a namespace, with its
//!   own environment), echoed;
//! - [`Run`]: an experiment file with a work folder: `megaplan ARGS… FILE
//!   --state-dir WORK/state`, its runtime folder `WORK/run`, TCG.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `megaplan ARGS…`, no colour, not echoed (its output is the test's subject).
pub fn megaplan(args: &[&str]) -> Output {
    megaplan_env(args, &[])
}

/// [`megaplan`] with `env` added to its environment.
pub fn megaplan_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// `ip netns exec NS megaplan ARGS…` with `runtime` as its runtime (and
/// owners) folder and no colour; the caller adds to it and runs it.
pub fn in_netns(ns: &str, runtime: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_megaplan"))
        .args(args)
        .env("MEGAPLAN_RUNTIME_DIR", runtime)
        .env("NO_COLOR", "1");
    cmd
}

/// Run `cmd` (a megaplan invocation whose arguments are `args`) to
/// completion, and echo `$ megaplan ARGS…` with its output to the log.
pub fn logged(cmd: &mut Command, args: &[&str]) -> Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "$ megaplan {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Bytes as text (lossy).
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// stdout then stderr, as text.
pub fn text(out: &Output) -> String {
    format!("{}{}", lossy(&out.stdout), lossy(&out.stderr))
}

/// Assert that the command succeeded (failing with its stderr): its stdout.
pub fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Assert that `megaplan ARGS…` succeeded: its stdout.
pub fn succeeded(out: &Output, args: &[&str]) -> String {
    assert!(out.status.success(), "megaplan {} failed", args.join(" "));
    lossy(&out.stdout)
}

/// `name` holding `text` in `dir`: its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    f
}

/// An experiment file and the folder its state and runtime files go in.
pub struct Run {
    pub file: PathBuf,
    pub work: PathBuf,
}

impl Run {
    pub fn new(file: &Path, work: &Path) -> Run {
        Run {
            file: file.to_owned(),
            work: work.to_owned(),
        }
    }

    /// `megaplan ARGS… FILE --state-dir WORK/state`, echoed.
    pub fn megaplan(&self, args: &[&str]) -> Output {
        self.megaplan_env(args, &[])
    }

    /// [`Run::megaplan`] with `env` added to its environment.
    pub fn megaplan_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        logged(
            Command::new(env!("CARGO_BIN_EXE_megaplan"))
                .args(args)
                .envs(env.iter().copied())
                .arg(&self.file)
                .arg("--state-dir")
                .arg(self.work.join("state"))
                .env("MEGAPLAN_RUNTIME_DIR", self.work.join("run"))
                .env("MEGAPLAN_ACCEL", "tcg")
                .env("NO_COLOR", "1"),
            args,
        )
    }

    /// `megaplan ARGS…` must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(&self.megaplan(args), args)
    }

    /// `plan --detailed-exitcode`: its exit code and text.
    pub fn plan(&self) -> (Option<i32>, String) {
        let out = self.megaplan(&["plan", "--detailed-exitcode"]);
        (out.status.code(), lossy(&out.stdout))
    }
}
