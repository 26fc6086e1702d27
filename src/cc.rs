//! `megaplan cc`: run commands in guests now (`cc exec`) and read the recorded
//! results of cc steps (`cc responses`), like minimega's `cc exec` and
//! `cc responses`.
//!
//! Invariant: reaches guests and recorded step outputs only through the
//! provider (`Provider::guest`, `Provider::step_output`); reads the lab and
//! the state, never changes the state.

use std::time::Duration;

use serde::Serialize;

use crate::agent::protocol::{MAX_OUTPUT_LIMIT, OUTPUT_CAP, human_duration, human_size};
use crate::agent::{Command, ExecResult, Exit, Transfer};
use crate::lab::{Lab, VmSpec};
use crate::provider::{Guest, GuestWait, Provider};
use crate::state::StateDir;

/// `name=A`, `uuid=…` or `tag:KEY=VALUE`.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Name(String),
    Uuid(String),
    Tag(String, String),
}

impl std::str::FromStr for Filter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("tag:") {
            let (k, v) = rest
                .split_once('=')
                .ok_or("a tag filter looks like tag:KEY=VALUE")?;
            return Ok(Filter::Tag(k.to_string(), v.to_string()));
        }
        match s.split_once('=') {
            Some(("name", v)) => Ok(Filter::Name(v.to_string())),
            Some(("uuid", v)) => Ok(Filter::Uuid(v.to_ascii_lowercase())),
            _ => Err(format!(
                "unknown filter '{s}': use name=VM, uuid=UUID or tag:KEY=VALUE"
            )),
        }
    }
}

impl Filter {
    pub fn matches(&self, vm: &VmSpec) -> bool {
        match self {
            Filter::Name(n) => &vm.name == n,
            Filter::Uuid(u) => vm.uuid.to_string() == *u,
            Filter::Tag(k, v) => vm.tags.get(k) == Some(v),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Response {
    pub vm: String,
    pub uuid: String,
    /// The exit code; 124 when the command timed out; 128+N for signal N.
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
    /// The guest killed the command when `--timeout` elapsed.
    pub timed_out: bool,
    /// The command wrote more than `--max-output`; the rest was discarded.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

impl Response {
    /// `exit 3`, or `timed out after 30s`.
    pub fn status(&self, timeout: Option<Duration>) -> String {
        match (self.timed_out, timeout) {
            (true, Some(t)) => timed_out_after(t),
            (true, None) => "timed out".to_string(),
            (false, _) => format!("exit {}", self.exit),
        }
    }

    /// One line per truncated stream, saying how to get more.
    pub fn notes(&self, max_output: Option<u64>) -> Vec<String> {
        truncation_notes(
            self.stdout_truncated,
            self.stderr_truncated,
            max_output,
            "--max-output raises it",
        )
    }
}

/// `timed out after 30s`: the one wording for steps and `cc exec`.
pub fn timed_out_after(t: Duration) -> String {
    format!("timed out after {}", human_duration(t))
}

/// The exit code recorded for a command: its code, 128+signal, 124 when it
/// timed out (as `timeout(1)` does).
pub fn exit_code(r: &ExecResult) -> i32 {
    if r.timed_out {
        return 124;
    }
    match r.exit {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
    }
}

fn truncation_notes(stdout: bool, stderr: bool, max_output: Option<u64>, how: &str) -> Vec<String> {
    let cap = max_output
        .unwrap_or(OUTPUT_CAP as u64)
        .min(MAX_OUTPUT_LIMIT as u64);
    let how = if cap >= MAX_OUTPUT_LIMIT as u64 {
        "the most one reply carries".to_string()
    } else {
        how.to_string()
    };
    [("stdout", stdout), ("stderr", stderr)]
        .into_iter()
        .filter(|(_, t)| *t)
        .map(|(s, _)| format!("({s} truncated at {}; {how})", human_size(cap)))
        .collect()
}

/// What a cc step records for an exec: the streams, with a last stderr line
/// saying that it timed out or that output was cut.
pub fn step_outcome(r: ExecResult, timeout: Option<Duration>) -> (i32, String, String) {
    let exit = exit_code(&r);
    let mut stderr = r.stderr;
    let mut notes = truncation_notes(
        r.stdout_truncated,
        r.stderr_truncated,
        None,
        "64 KiB per stream is kept",
    );
    if r.timed_out {
        notes.push(format!(
            "({})",
            timeout
                .map(timed_out_after)
                .unwrap_or_else(|| "timed out".into())
        ));
    }
    for n in notes {
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        stderr.push_str(&format!("megaplan: {n}\n"));
    }
    (exit, r.stdout, stderr)
}

/// How a recorded step ended, for `cc responses`: `exit 3`, or `timed out
/// after 30s` when the record says it timed out (a record written before
/// megaplan kept that reads as its exit code).
pub fn recorded_status(exit: &str, timed_out: Option<Duration>) -> String {
    match timed_out {
        Some(t) => timed_out_after(t),
        None => format!("exit {exit}"),
    }
}

/// One step's recorded outcome: address, exit (None: not run), stdout,
/// stderr, and the timeout it ran past.
pub type Recorded = (String, Option<String>, String, String, Option<Duration>);

/// The recorded stdout of a `send` step.
pub fn sent(t: &Transfer) -> String {
    format!(
        "sent {} to {} (sha256 {})\n",
        bytes(t.size),
        t.path.display(),
        t.sha256
    )
}

/// The recorded stdout of a `recv` step.
pub fn received(src: &str, t: &Transfer) -> String {
    format!(
        "received {} from {src} into {} (sha256 {})\n",
        bytes(t.size),
        t.path.display(),
        t.sha256
    )
}

fn bytes(n: u64) -> String {
    if n == 1 {
        "1 byte".into()
    } else {
        format!("{n} bytes")
    }
}

/// Reach a VM's guest through the provider and wait for its hello.
pub async fn connect<P: Provider>(
    provider: &P,
    lab: &Lab,
    vm: &str,
    wait: Duration,
) -> Result<P::Guest, String> {
    let wait = GuestWait {
        connect: Duration::from_secs(2),
        hello: wait,
    };
    provider
        .guest(&lab.name, vm, wait)
        .await
        .map_err(|e| match e {
            crate::provider::ProviderError::Agent { source, .. } => {
                format!("{vm}: no answer from its agent ({source}); is the VM running?")
            }
            e => format!("{vm}: no answer from its agent ({e}); is the VM running?"),
        })
}

/// Run `argv` in every VM matching all `filters`, at once, keeping up to
/// `max_output` bytes of each stream (64 KiB when `None`).
pub async fn exec<P: Provider>(
    provider: &P,
    lab: &Lab,
    filters: &[Filter],
    argv: &[String],
    timeout: Option<Duration>,
    max_output: Option<u64>,
) -> Vec<Response> {
    let vms: Vec<&VmSpec> = lab
        .vms
        .iter()
        .filter(|v| filters.iter().all(|f| f.matches(v)))
        .collect();
    let cmd = if argv.len() == 1 {
        Command::Shell(argv[0].clone())
    } else {
        Command::Argv(argv.to_vec())
    };
    let runs = vms.iter().map(|vm| {
        let cmd = cmd.clone();
        async move {
            let base = Response {
                vm: vm.name.clone(),
                uuid: vm.uuid.to_string(),
                exit: -1,
                stdout: String::new(),
                stderr: String::new(),
                timed_out: false,
                stdout_truncated: false,
                stderr_truncated: false,
            };
            match connect(provider, lab, &vm.name, Duration::from_secs(30)).await {
                Err(e) => Response { stderr: e, ..base },
                Ok(guest) => match guest.exec(cmd, timeout, max_output).await {
                    Ok(r) => Response {
                        exit: exit_code(&r),
                        timed_out: r.timed_out,
                        stdout_truncated: r.stdout_truncated,
                        stderr_truncated: r.stderr_truncated,
                        stdout: r.stdout,
                        stderr: r.stderr,
                        ..base
                    },
                    Err(e) => Response {
                        stderr: e.to_string(),
                        ..base
                    },
                },
            }
        }
    });
    futures::future::join_all(runs).await
}

/// The guest addresses of each running VM, from its agent (for `show`'s ip column).
pub async fn addresses<P: Provider>(
    provider: &P,
    lab: &Lab,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let runs = lab.vms.iter().map(|vm| async move {
        let addrs = match connect(provider, lab, &vm.name, Duration::from_millis(500)).await {
            Ok(guest) => match guest.info(Duration::from_secs(2)).await {
                Ok(h) => h
                    .interfaces
                    .iter()
                    .filter(|i| i.name != "lo")
                    .flat_map(|i| i.addrs.iter().filter(|a| !a.starts_with("fe80")).cloned())
                    .collect(),
                Err(_) => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        (vm.name.clone(), addrs)
    });
    futures::future::join_all(runs).await.into_iter().collect()
}

/// Recorded step results, as the provider stored them: (step address,
/// exit, stdout, stderr) for one VM or all.
pub fn responses<P: Provider>(
    provider: &P,
    lab: &Lab,
    sd: &StateDir,
    vm: Option<&str>,
) -> Vec<Recorded> {
    let mut out = Vec::new();
    for v in lab.vms.iter().filter(|v| vm.is_none_or(|n| n == v.name)) {
        for step in &v.cc {
            let s = provider.step_output(sd, &v.name, step.index).unwrap_or(
                crate::provider::StoredStep {
                    exit: None,
                    stdout: String::new(),
                    stderr: String::new(),
                    timed_out: None,
                },
            );
            out.push((
                step.address.clone(),
                s.exit,
                s.stdout,
                s.stderr,
                s.timed_out,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(timed_out: bool, out_t: bool) -> ExecResult {
        ExecResult {
            id: 1,
            exit: Exit::Signal(9),
            timed_out,
            stdout: "o".into(),
            stderr: "partial".into(),
            stdout_truncated: out_t,
            stderr_truncated: false,
            duration_ms: 1000,
        }
    }

    #[test]
    fn a_timed_out_step_says_so_and_exits_124() {
        let (exit, out, err) = step_outcome(result(true, false), Some(Duration::from_secs(30)));
        assert_eq!(exit, 124);
        assert_eq!(out, "o");
        assert_eq!(err, "partial\nmegaplan: (timed out after 30s)\n");
    }

    #[test]
    fn truncated_output_is_reported() {
        let (exit, _, err) = step_outcome(result(false, true), None);
        assert_eq!(exit, 137);
        assert!(
            err.ends_with("megaplan: (stdout truncated at 64 KiB; 64 KiB per stream is kept)\n"),
            "{err}"
        );
        let r = Response {
            vm: "a".into(),
            uuid: String::new(),
            exit: 124,
            stdout: String::new(),
            stderr: String::new(),
            timed_out: true,
            stdout_truncated: true,
            stderr_truncated: true,
        };
        assert_eq!(
            r.status(Some(Duration::from_secs(30))),
            "timed out after 30s"
        );
        assert_eq!(
            r.notes(None),
            [
                "(stdout truncated at 64 KiB; --max-output raises it)",
                "(stderr truncated at 64 KiB; --max-output raises it)"
            ]
        );
        assert_eq!(
            r.notes(Some(1 << 40))[0],
            "(stdout truncated at 448 KiB; the most one reply carries)"
        );
    }

    #[test]
    fn step_failures_name_the_timeout() {
        let mut o = crate::host::StepOutcome {
            exit: 124,
            stdout: String::new(),
            stderr: "x\n".into(),
            timed_out: Some(Duration::from_secs(30)),
            replayed: false,
        };
        assert_eq!(o.failure("vm.a.cc[1]"), "vm.a.cc[1] timed out after 30s");
        o.timed_out = None;
        o.exit = 3;
        assert_eq!(o.failure("vm.a.cc[1]"), "vm.a.cc[1] exited 3: x");
    }

    #[test]
    fn recorded_timeouts_read_as_such() {
        // From the record's timeout, not its stderr: a step that printed the
        // note itself did not time out.
        assert_eq!(
            recorded_status("124", Some(Duration::from_secs(1))),
            "timed out after 1s"
        );
        assert_eq!(recorded_status("124", None), "exit 124");
        assert_eq!(recorded_status("0", None), "exit 0");
    }

    #[test]
    fn transfers_read_as_sentences() {
        let t = Transfer {
            path: "/root/x".into(),
            size: 1234,
            sha256: "ab12".into(),
        };
        assert_eq!(sent(&t), "sent 1234 bytes to /root/x (sha256 ab12)\n");
        let t = Transfer {
            path: "got/hostname".into(),
            ..t
        };
        assert_eq!(
            received("/etc/hostname", &t),
            "received 1234 bytes from /etc/hostname into got/hostname (sha256 ab12)\n"
        );
    }
}
