//! Running checks: ping and exec through the guest agent, capture checks on
//! the capture file with libpcap's filter compiler. Read-only towards the
//! host: the only thing written is the report (`checks.json`, by the caller).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::lab::{CheckKind, CheckSpec, CommandSpec, Lab};
use crate::provider::{Guest as _, Provider};
use crate::state::StateDir;

/// How many matching frames a failed capture check quotes.
pub const EXCERPT_FRAMES: usize = 10;
/// How long to wait between two attempts of a check with `retry`.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long a capture check short of its `at-least` waits for the recorder
/// to write what it has already seen, and how often it looks again.
const CAPTURE_SETTLE: Duration = Duration::from_secs(2);
const CAPTURE_POLL: Duration = Duration::from_millis(100);
/// The longest one ping waits for its echo reply.
pub const PING_WAIT_SECS: u64 = 3;
/// How much of a command's output a result keeps.
const OUTPUT_KEEP: usize = 8192;

/// One check's outcome, as `checks.json` holds it (docs/checks.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    /// "ping", "exec" or "capture".
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// "pass" or "fail": what the check expected of the test.
    pub expect: String,
    pub passed: bool,
    /// One line: what was seen, and so why it passed or failed.
    pub message: String,
    /// What was run or evaluated, as a user would type it.
    pub command: String,
    pub attempts: u32,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Capture checks: frames that matched the filter, and of how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u64>,
    /// Capture checks: the first matching frames, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excerpt: Vec<String>,
}

/// `checks.json`: the results of one run of the checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Format version of this file.
    pub version: u32,
    pub experiment: String,
    /// When the run began (seconds since the Unix epoch).
    pub started: u64,
    pub duration_ms: u64,
    pub passed: usize,
    pub failed: usize,
    pub results: Vec<CheckResult>,
}

pub const REPORT_VERSION: u32 = 1;
pub const REPORT_FILE: &str = "checks.json";

impl Report {
    pub fn all_passed(&self) -> bool {
        self.failed == 0
    }
}

fn keep(s: String) -> String {
    if s.len() <= OUTPUT_KEEP {
        return s;
    }
    let mut end = OUTPUT_KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n(cut at {OUTPUT_KEEP} bytes)", &s[..end])
}

fn command_text(c: &CommandSpec) -> String {
    match c {
        CommandSpec::Shell(s) => s.clone(),
        CommandSpec::Argv(a) => a
            .iter()
            .map(|w| {
                if !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
                {
                    w.clone()
                } else {
                    format!("'{}'", w.replace('\'', "'\\''"))
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// What one attempt saw: whether the tested thing held, and the evidence.
struct Attempt {
    held: bool,
    message: String,
    exit: Option<i32>,
    stdout: String,
    stderr: String,
    matched: Option<u64>,
    frames: Option<u64>,
    excerpt: Vec<String>,
}

impl Attempt {
    fn error(message: String) -> Self {
        Attempt {
            held: false,
            message,
            exit: None,
            stdout: String::new(),
            stderr: String::new(),
            matched: None,
            frames: None,
            excerpt: Vec::new(),
        }
    }
}

/// The argv of a ping check: one echo, waiting at most the check's timeout.
pub fn ping_argv(target: &str, timeout_ms: u64) -> Vec<String> {
    // A reply comes in milliseconds; `retry` is for waiting longer.
    let wait = (timeout_ms / 1000).clamp(1, PING_WAIT_SECS);
    vec![
        "ping".into(),
        "-c".into(),
        "1".into(),
        "-W".into(),
        wait.to_string(),
        target.into(),
    ]
}

async fn in_guest<P: Provider>(
    provider: &P,
    lab: &Lab,
    vm: &str,
    cmd: CommandSpec,
    timeout: Duration,
) -> Result<crate::agent::protocol::ExecResult, String> {
    let client = crate::cc::connect(provider, lab, vm, Duration::from_secs(30)).await?;
    let cmd = match cmd {
        CommandSpec::Shell(s) => crate::agent::protocol::Command::Shell(s),
        CommandSpec::Argv(a) => crate::agent::protocol::Command::Argv(a),
    };
    client
        .exec(cmd, Some(timeout), None)
        .await
        .map_err(|e| format!("{vm}: {e}"))
}

async fn attempt<P: Provider>(provider: &P, lab: &Lab, sd: &StateDir, c: &CheckSpec) -> Attempt {
    let timeout = Duration::from_millis(c.timeout_ms);
    let from = c.from.as_deref().unwrap_or_default();
    match &c.kind {
        CheckKind::Ping { target } => {
            let argv = ping_argv(target, c.timeout_ms);
            match in_guest(provider, lab, from, CommandSpec::Argv(argv), timeout).await {
                Err(e) => Attempt::error(e),
                Ok(r) => {
                    let exit = crate::cc::exit_code(&r);
                    let held = exit == 0;
                    Attempt {
                        held,
                        message: if held {
                            format!("{from} got a reply from {target}")
                        } else if r.timed_out {
                            format!(
                                "no reply from {target} within {}",
                                crate::cc::timed_out_after(timeout)
                            )
                        } else {
                            format!("no reply from {target} (ping exit {exit})")
                        },
                        exit: Some(exit),
                        stdout: keep(r.stdout),
                        stderr: keep(r.stderr),
                        matched: None,
                        frames: None,
                        excerpt: Vec::new(),
                    }
                }
            }
        }
        CheckKind::Exec {
            command,
            exit: want,
            stdout_contains,
            stdout_matches,
        } => match in_guest(provider, lab, from, command.clone(), timeout).await {
            Err(e) => Attempt::error(e),
            Ok(r) => {
                let exit = crate::cc::exit_code(&r);
                let mut why = Vec::new();
                if i64::from(exit) != *want {
                    why.push(if r.timed_out {
                        crate::cc::timed_out_after(timeout)
                    } else {
                        format!("exit {exit}, expected {want}")
                    });
                }
                if let Some(s) = stdout_contains
                    && !r.stdout.contains(s.as_str())
                {
                    why.push(format!("stdout does not contain {s:?}"));
                }
                if let Some(re) = stdout_matches {
                    // Validated at load; a failure to compile here is a failed check.
                    match regex::Regex::new(re) {
                        Ok(rx) if rx.is_match(&r.stdout) => {}
                        Ok(_) => why.push(format!("stdout does not match /{re}/")),
                        Err(e) => why.push(format!("bad regex: {e}")),
                    }
                }
                let held = why.is_empty();
                Attempt {
                    held,
                    message: if held {
                        format!(
                            "exit {exit}{}",
                            if stdout_contains.is_some() || stdout_matches.is_some() {
                                ", stdout as expected"
                            } else {
                                ""
                            }
                        )
                    } else {
                        why.join("; ")
                    },
                    exit: Some(exit),
                    stdout: keep(r.stdout),
                    stderr: keep(r.stderr),
                    matched: None,
                    frames: None,
                    excerpt: Vec::new(),
                }
            }
        },
        CheckKind::Capture {
            capture,
            filter,
            at_least,
            at_most,
        } => match settled_count(provider, lab, sd, capture, filter, *at_least).await {
            Err(e) => Attempt::error(e),
            Ok((matched, total, excerpt)) => {
                let low = at_least.is_none_or(|l| matched >= l);
                let high = at_most.is_none_or(|m| matched <= m);
                let bounds = bounds_text(*at_least, *at_most);
                Attempt {
                    held: low && high,
                    message: format!(
                        "{matched} of {total} frame{} matched, {bounds}",
                        if total == 1 { "" } else { "s" }
                    ),
                    exit: None,
                    stdout: String::new(),
                    stderr: String::new(),
                    matched: Some(matched),
                    frames: Some(total),
                    excerpt,
                }
            }
        },
    }
}

fn bounds_text(at_least: Option<u64>, at_most: Option<u64>) -> String {
    match (at_least, at_most) {
        (_, Some(0)) => "expected none".to_string(),
        (Some(l), Some(m)) => format!("expected {l} to {m}"),
        (Some(l), None) => format!("expected at least {l}"),
        (None, Some(m)) => format!("expected at most {m}"),
        (None, None) => "any number expected".to_string(),
    }
}

/// [`capture_count`], read again while it is short of `at_least`, for up to
/// [`CAPTURE_SETTLE`]: the recorder is another process, and the frame a
/// guest's reply has just proven sent may still be in its socket, not yet
/// in the file (seen under load with three TCG guests on two cores).
/// The file is the provider's (`Provider::capture_file`: minimega fetches
/// it from the VM's node), asked again before every read.
async fn settled_count<P: Provider>(
    provider: &P,
    lab: &Lab,
    sd: &StateDir,
    name: &str,
    filter: &str,
    at_least: Option<u64>,
) -> Result<(u64, u64, Vec<String>), String> {
    let Some(spec) = lab.captures.iter().find(|c| c.name == name) else {
        return Err(format!(
            "capture '{name}': the file defines no such capture"
        ));
    };
    let end = std::time::Instant::now() + CAPTURE_SETTLE;
    loop {
        provider
            .capture_file(sd, spec)
            .await
            .map_err(|e| format!("capture '{name}': {e}"))?;
        let r = capture_count(sd, name, filter)?;
        if at_least.is_none_or(|l| r.0 >= l) || std::time::Instant::now() >= end {
            return Ok(r);
        }
        tokio::time::sleep(CAPTURE_POLL).await;
    }
}

/// Frames of capture `name` matching `filter`, all frames, and an excerpt.
pub fn capture_count(
    sd: &StateDir,
    name: &str,
    filter: &str,
) -> Result<(u64, u64, Vec<String>), String> {
    let prog = super::validate::compile_filter(filter)
        .map_err(|e| format!("pcap filter {filter:?}: {e}"))?;
    let frames =
        crate::capture::read_frames(sd, name).map_err(|e| format!("capture '{name}': {e}"))?;
    let mut matched = 0u64;
    let mut excerpt = Vec::new();
    for f in &frames {
        if prog.filter(&f.data) {
            matched += 1;
            if excerpt.len() < EXCERPT_FRAMES {
                excerpt.push(super::frame::summary(f));
            }
        }
    }
    Ok((matched, frames.len() as u64, excerpt))
}

/// What a check runs, for reports.
pub fn describe(c: &CheckSpec) -> String {
    match &c.kind {
        CheckKind::Ping { target } => format!(
            "in {}: {}",
            c.from.as_deref().unwrap_or("?"),
            command_text(&CommandSpec::Argv(ping_argv(target, c.timeout_ms)))
        ),
        CheckKind::Exec { command, .. } => {
            format!(
                "in {}: {}",
                c.from.as_deref().unwrap_or("?"),
                command_text(command)
            )
        }
        CheckKind::Capture {
            capture,
            filter,
            at_least,
            at_most,
        } => format!(
            "capture {capture}: frames matching {filter:?}, {}",
            bounds_text(*at_least, *at_most)
        ),
    }
}

/// Run one check: attempts until its expectation holds or retries run out.
pub async fn run_one<P: Provider>(
    provider: &P,
    lab: &Lab,
    sd: &StateDir,
    c: &CheckSpec,
) -> CheckResult {
    let start = Instant::now();
    let mut attempts = 0;
    let a = loop {
        attempts += 1;
        let a = attempt(provider, lab, sd, c).await;
        let passed = a.held != c.expect_fail;
        if passed || attempts > c.retry {
            break a;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    };
    let passed = a.held != c.expect_fail;
    let message = if c.expect_fail {
        if a.held {
            format!("expected to fail, but it held: {}", a.message)
        } else {
            format!("fails as expected: {}", a.message)
        }
    } else {
        a.message
    };
    CheckResult {
        name: c.name.clone(),
        kind: match c.kind {
            CheckKind::Ping { .. } => "ping",
            CheckKind::Exec { .. } => "exec",
            CheckKind::Capture { .. } => "capture",
        }
        .into(),
        from: c.from.clone(),
        expect: if c.expect_fail { "fail" } else { "pass" }.into(),
        passed,
        message,
        command: describe(c),
        attempts,
        duration_ms: start.elapsed().as_millis() as u64,
        exit: a.exit,
        stdout: a.stdout,
        stderr: a.stderr,
        matched: a.matched,
        frames: a.frames,
        excerpt: a.excerpt,
    }
}

/// Run every check of the lab, in file order (`after` names only VMs and
/// earlier checks, so file order respects it).
pub async fn run_all<P: Provider>(
    provider: &P,
    lab: &Lab,
    sd: &StateDir,
    progress: &dyn Fn(&CheckResult),
) -> Report {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let t = Instant::now();
    let mut results = Vec::new();
    for c in &lab.checks {
        let r = run_one(provider, lab, sd, c).await;
        progress(&r);
        results.push(r);
    }
    report(lab, started, t.elapsed(), results)
}

/// A report of these results.
pub fn report(lab: &Lab, started: u64, took: Duration, results: Vec<CheckResult>) -> Report {
    let passed = results.iter().filter(|r| r.passed).count();
    Report {
        version: REPORT_VERSION,
        experiment: lab.name.clone(),
        started,
        duration_ms: took.as_millis() as u64,
        failed: results.len() - passed,
        passed,
        results,
    }
}

/// Every check failed without running (apply failed): the report says why.
pub fn not_run(lab: &Lab, why: &str) -> Report {
    let results = lab
        .checks
        .iter()
        .map(|c| CheckResult {
            name: c.name.clone(),
            kind: match c.kind {
                CheckKind::Ping { .. } => "ping",
                CheckKind::Exec { .. } => "exec",
                CheckKind::Capture { .. } => "capture",
            }
            .into(),
            from: c.from.clone(),
            expect: if c.expect_fail { "fail" } else { "pass" }.into(),
            passed: false,
            message: format!("not run: {why}"),
            command: describe(c),
            attempts: 0,
            duration_ms: 0,
            exit: None,
            stdout: String::new(),
            stderr: String::new(),
            matched: None,
            frames: None,
            excerpt: Vec::new(),
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    report(lab, now, Duration::ZERO, results)
}
