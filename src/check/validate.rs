//! Validation of `capture` and `check` nodes: one pass, called from
//! `validate` with the VMs and networks it resolved. Every finding points at
//! the value it is about (file:line:col); nothing here stops at the first one.

use std::collections::HashSet;

use crate::diag::{Code, Diag, Diagnostics, did_you_mean};
use crate::lab::{
    CaptureSpec, CaptureTap, CheckKind, CheckSpec, CommandSpec, DEFAULT_CHECK_TIMEOUT_MS,
    NetworkSpec, VmSpec,
};
use crate::model::{CaptureSource, Check, Command, Document, Sp};

/// The longest check name (it becomes a JUnit testcase name and a plan line).
pub const MAX_CHECK_NAME: usize = 200;
/// The most attempts `retry` may add.
pub const MAX_RETRY: i64 = 1000;

/// Why a check name is refused, if it is.
pub fn check_name_problem(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("a check name cannot be empty")
    } else if name.len() > MAX_CHECK_NAME {
        Some("a check name holds at most 200 bytes")
    } else if name.chars().any(char::is_control) {
        Some("a check name cannot hold control characters")
    } else {
        None
    }
}

/// Compile a pcap filter expression for Ethernet frames (libpcap's own
/// compiler): the error text libpcap gives when it is not one.
pub fn compile_filter(filter: &str) -> Result<pcap::BpfProgram, String> {
    let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).map_err(|e| e.to_string())?;
    dead.compile(filter, true).map_err(|e| match e {
        pcap::Error::PcapError(s) => s,
        other => other.to_string(),
    })
}

/// A ping target: an IP address or a host name, never something `ping` would
/// read as an option.
fn target_problem(t: &str) -> Option<&'static str> {
    if t.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let host_ok = !t.is_empty()
        && t.len() <= 253
        && !t.starts_with(['-', '.'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    (!host_ok).then_some("not an IP address or a host name")
}

fn command_spec(c: &Command) -> CommandSpec {
    match c {
        Command::Shell(s) => CommandSpec::Shell(s.value.clone()),
        Command::Argv(ws) => CommandSpec::Argv(ws.iter().map(|w| w.value.clone()).collect()),
    }
}

/// Resolve the document's captures and checks against the lab's VMs and
/// networks, pushing every problem into `d`.
pub fn captures_and_checks(
    doc: &Document,
    vms: &[VmSpec],
    networks: &[NetworkSpec],
    d: &mut Diagnostics,
) -> (Vec<CaptureSpec>, Vec<CheckSpec>) {
    let vm_names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    let unknown_vm = |d: &mut Diagnostics, name: &Sp<String>| {
        d.push(
            Diag::error(Code::UnknownVm, format!("there is no VM '{}'", name.value))
                .label(name.span, "unknown VM")
                .help_opt(did_you_mean(&name.value, vm_names.iter().copied())),
        );
    };

    let mut captures = Vec::new();
    let mut seen = HashSet::new();
    for c in &doc.captures {
        if let Some(why) = crate::validate::name_problem(&c.name.value) {
            d.push(
                Diag::error(
                    Code::BadName,
                    format!("bad capture name '{}'", c.name.value),
                )
                .label(c.name.span, why)
                .help("a capture name becomes a file name: letters, digits, '-', '_', '.'"),
            );
            continue;
        }
        if !seen.insert(c.name.value.as_str()) {
            d.push(
                Diag::error(
                    Code::Duplicate,
                    format!("duplicate capture '{}'", c.name.value),
                )
                .label(c.name.span, "defined again here")
                .help("each capture needs its own name"),
            );
            continue;
        }
        let taps = match &c.source {
            None => {
                d.push(
                    Diag::error(
                        Code::CaptureSource,
                        format!("capture '{}' records nothing", c.name.value),
                    )
                    .label(c.span, "no tap or network here")
                    .help("write `capture \"NAME\" { tap \"VM\" nic=0 }` or `capture \"NAME\" network=\"LAN\"`"),
                );
                continue;
            }
            Some(CaptureSource::Tap { vm, nic }) => {
                let Some(spec) = vms.iter().find(|v| v.name == vm.value) else {
                    unknown_vm(d, vm);
                    continue;
                };
                let index = nic.as_ref().map_or(0, |n| n.value);
                let Some(n) = usize::try_from(index).ok().and_then(|i| spec.nics.get(i)) else {
                    let at = nic.as_ref().map_or(vm.span, |n| n.span);
                    d.push(
                        Diag::error(
                            Code::UnknownNic,
                            format!("VM '{}' has no nic {index}", vm.value),
                        )
                        .label(at, "no such nic")
                        .help(format!(
                            "VM '{}' has {} nic(s), numbered from 0",
                            vm.value,
                            spec.nics.len()
                        )),
                    );
                    continue;
                };
                vec![CaptureTap {
                    vm: spec.name.clone(),
                    nic: n.index,
                    tap: n.tap.clone(),
                }]
            }
            Some(CaptureSource::Network(net)) => {
                if !networks.iter().any(|n| n.name == net.value) {
                    d.push(
                        Diag::error(
                            Code::UnknownNetwork,
                            format!("there is no network '{}'", net.value),
                        )
                        .label(net.span, "unknown network")
                        .help_opt(did_you_mean(
                            &net.value,
                            networks.iter().map(|n| n.name.as_str()),
                        )),
                    );
                    continue;
                }
                let taps: Vec<CaptureTap> = vms
                    .iter()
                    .flat_map(|v| {
                        v.nics
                            .iter()
                            .filter(|n| n.network == net.value)
                            .map(|n| CaptureTap {
                                vm: v.name.clone(),
                                nic: n.index,
                                tap: n.tap.clone(),
                            })
                    })
                    .collect();
                if taps.is_empty() {
                    d.push(
                        Diag::error(
                            Code::CaptureEmpty,
                            format!("network '{}' has no VM nic to capture", net.value),
                        )
                        .label(net.span, "no member taps")
                        .help("give a VM a `nic` on this network, or capture another one"),
                    );
                    continue;
                }
                taps
            }
        };
        captures.push(CaptureSpec {
            name: c.name.value.clone(),
            address: format!("capture.{}", c.name.value),
            taps,
            network: match &c.source {
                Some(CaptureSource::Network(n)) => Some(n.value.clone()),
                _ => None,
            },
        });
    }

    let capture_names: Vec<&str> = doc.captures.iter().map(|c| c.name.value.as_str()).collect();
    let mut checks = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for c in &doc.checks {
        if let Some(spec) = one_check(c, vms, &capture_names, &names, &unknown_vm, d) {
            checks.push(spec);
        }
        names.push(c.name.value.as_str());
    }
    (captures, checks)
}

fn one_check(
    c: &Check,
    vms: &[VmSpec],
    capture_names: &[&str],
    earlier: &[&str],
    unknown_vm: &dyn Fn(&mut Diagnostics, &Sp<String>),
    d: &mut Diagnostics,
) -> Option<CheckSpec> {
    let errors_before = d.errors().count();
    if let Some(why) = check_name_problem(&c.name.value) {
        d.push(
            Diag::error(Code::BadName, format!("bad check name {:?}", c.name.value))
                .label(c.name.span, why)
                .help("name the check by what must hold: \"A reaches B\""),
        );
    }
    if earlier.contains(&c.name.value.as_str()) {
        d.push(
            Diag::error(
                Code::Duplicate,
                format!("duplicate check {:?}", c.name.value),
            )
            .label(c.name.span, "defined again here")
            .help("each check needs its own name: it is a testcase in the JUnit report"),
        );
    }
    let what: Vec<(&str, miette::SourceSpan)> = [
        c.ping.as_ref().map(|p| ("ping", p.span)),
        c.exec.as_ref().map(|e| {
            (
                "exec",
                match e {
                    Command::Shell(s) => s.span,
                    Command::Argv(ws) => ws.first().map_or(c.span, |w| w.span),
                },
            )
        }),
        c.capture.as_ref().map(|p| ("capture", p.span)),
    ]
    .into_iter()
    .flatten()
    .collect();
    match what.as_slice() {
        [] => d.push(
            Diag::error(
                Code::CheckKind,
                format!("check {:?} tests nothing", c.name.value),
            )
            .label(c.name.span, "no ping, exec or capture")
            .help("add `ping \"ADDRESS\"`, `exec \"CMD\"` or `capture \"NAME\"; match \"FILTER\"`"),
        ),
        [_] => {}
        [(a, first), (b, second), ..] => d.push(
            Diag::error(
                Code::CheckKind,
                format!("check {:?} tests both `{a}` and `{b}`", c.name.value),
            )
            .label(*second, "second test")
            .label(*first, "first test")
            .help("write one check per thing that must hold"),
        ),
    }
    let kind = what.first().map(|(k, _)| *k);

    // The VM a ping or exec runs in.
    let from = match (&c.from, kind) {
        (Some(f), _) => {
            if vms.iter().any(|v| v.name == f.value) {
                Some(f.value.clone())
            } else {
                unknown_vm(d, f);
                None
            }
        }
        (None, Some(k @ ("ping" | "exec"))) => {
            d.push(
                Diag::error(
                    Code::CheckFrom,
                    format!(
                        "check {:?} does not say which VM runs its `{k}`",
                        c.name.value
                    ),
                )
                .label(c.name.span, "no `from`")
                .help("add `from \"VM\"`"),
            );
            None
        }
        (None, _) => None,
    };

    // Keys that belong to another kind of check.
    let misplaced = |d: &mut Diagnostics, key: &str, span: miette::SourceSpan, owner: &str| {
        d.push(
            Diag::error(
                Code::CheckKey,
                format!("`{key}` applies only to a check with `{owner}`"),
            )
            .label(span, format!("not a `{owner}` check"))
            .help(format!("remove `{key}`, or make this a `{owner}` check")),
        );
    };
    if kind != Some("exec") {
        if let Some(x) = &c.exit {
            misplaced(d, "exit", x.span, "exec");
        }
        if let Some(x) = &c.stdout_contains {
            misplaced(d, "stdout-contains", x.span, "exec");
        }
        if let Some(x) = &c.stdout_matches {
            misplaced(d, "stdout-matches", x.span, "exec");
        }
    }
    if kind != Some("capture") {
        if let Some(x) = &c.filter {
            misplaced(d, "match", x.span, "capture");
        }
        if let Some(x) = &c.at_least {
            misplaced(d, "at-least", x.span, "capture");
        }
        if let Some(x) = &c.at_most {
            misplaced(d, "at-most", x.span, "capture");
        }
        if let Some(x) = &c.none {
            misplaced(d, "none", x.span, "capture");
        }
    } else if let Some(f) = &c.from {
        misplaced(d, "from", f.span, "ping` or `exec");
    }

    let expect_fail = match &c.expect {
        None => false,
        Some(e) if e.value == "pass" => false,
        Some(e) if e.value == "fail" => true,
        Some(e) => {
            d.push(
                Diag::error(
                    Code::BadExpect,
                    format!("'{}' is not an expectation", e.value),
                )
                .label(e.span, "expected \"pass\" or \"fail\"")
                .help_opt(did_you_mean(&e.value, ["pass", "fail"]).or(Some(
                    "write `expect \"fail\"` for something that must not hold".into(),
                ))),
            );
            false
        }
    };
    let timeout_ms = match &c.timeout {
        None => DEFAULT_CHECK_TIMEOUT_MS,
        Some(t) => {
            match crate::validate::parse_duration_ms(&t.value).filter(|&ms| ms > 0) {
                Some(ms) => ms,
                None => {
                    d.push(
                    Diag::error(Code::BadDuration, format!("'{}' is not a duration", t.value))
                        .label(t.span, "not a duration")
                        .help("write how long one attempt may take: \"30s\", \"2m\" (default \"30s\")"),
                );
                    0
                }
            }
        }
    };
    let count = |d: &mut Diagnostics, v: &Option<Sp<i64>>, key: &str, max: i64| -> Option<u64> {
        let v = v.as_ref()?;
        if (0..=max).contains(&v.value) {
            Some(v.value as u64)
        } else {
            d.push(
                Diag::error(
                    Code::OutOfRange,
                    format!("`{key}` {} is out of range", v.value),
                )
                .label(v.span, format!("expected 0 to {max}"))
                .help(format!("write a whole number from 0 to {max}")),
            );
            None
        }
    };
    let retry = count(d, &c.retry, "retry", MAX_RETRY).unwrap_or(0) as u32;
    for a in &c.after {
        let ok = vms.iter().any(|v| v.name == a.value) || earlier.contains(&a.value.as_str());
        if !ok {
            d.push(
                Diag::error(
                    Code::UnknownAfter,
                    format!(
                        "check {:?} runs after '{}', which is neither a VM nor an earlier check",
                        c.name.value, a.value
                    ),
                )
                .label(a.span, "unknown VM or check")
                .help_opt(
                    did_you_mean(
                        &a.value,
                        vms.iter()
                            .map(|v| v.name.as_str())
                            .chain(earlier.iter().copied()),
                    )
                    .or(Some(
                        "a check runs after VMs (their steps) or checks written before it".into(),
                    )),
                ),
            );
        }
    }

    let kind = match kind {
        Some("ping") => {
            let p = c.ping.as_ref()?;
            if let Some(why) = target_problem(&p.value) {
                d.push(
                    Diag::error(Code::BadTarget, format!("cannot ping '{}'", p.value))
                        .label(p.span, why)
                        .help("write an address such as \"10.0.0.2\""),
                );
            }
            CheckKind::Ping {
                target: p.value.clone(),
            }
        }
        Some("exec") => {
            let cmd = c.exec.as_ref()?;
            if let Command::Argv(ws) = cmd
                && ws.is_empty()
            {
                d.push(
                    Diag::error(Code::EmptyCommand, "an exec check needs a command")
                        .label(c.span, "empty command")
                        .help("write `exec \"CMD\"`"),
                );
            }
            if let Some(re) = &c.stdout_matches
                && let Err(e) = regex::Regex::new(&re.value)
            {
                d.push(
                    Diag::error(Code::BadRegex, "invalid regular expression")
                        .label(
                            re.span,
                            e.to_string()
                                .lines()
                                .last()
                                .unwrap_or("invalid")
                                .to_string(),
                        )
                        .help("stdout-matches takes a regular expression (Rust regex syntax)"),
                );
            }
            CheckKind::Exec {
                command: command_spec(cmd),
                exit: c.exit.as_ref().map_or(0, |e| e.value),
                stdout_contains: c.stdout_contains.as_ref().map(|s| s.value.clone()),
                stdout_matches: c.stdout_matches.as_ref().map(|s| s.value.clone()),
            }
        }
        Some(_) => {
            let cap = c.capture.as_ref()?;
            if !capture_names.contains(&cap.value.as_str()) {
                d.push(
                    Diag::error(
                        Code::UnknownCapture,
                        format!("there is no capture '{}'", cap.value),
                    )
                    .label(cap.span, "unknown capture")
                    .help_opt(
                        did_you_mean(&cap.value, capture_names.iter().copied()).or(Some(
                            "define it: `capture \"NAME\" { tap \"VM\" nic=0 }`".into(),
                        )),
                    ),
                );
            }
            let filter = c.filter.as_ref().map_or(String::new(), |f| f.value.clone());
            if let Some(f) = &c.filter
                && let Err(why) = compile_filter(&f.value)
            {
                d.push(
                    Diag::error(Code::BadFilter, "invalid pcap filter expression")
                        .label(f.span, why)
                        .help("write a tcpdump filter such as \"icmp and src host 10.0.0.1\" (see pcap-filter(7))"),
                );
            }
            let at_least = count(d, &c.at_least, "at-least", i64::from(u32::MAX));
            let mut at_most = count(d, &c.at_most, "at-most", i64::from(u32::MAX));
            if let Some(n) = &c.none {
                if let Some(x) = c.at_least.as_ref().or(c.at_most.as_ref()) {
                    d.push(
                        Diag::error(
                            Code::CheckKey,
                            "`none` cannot go with `at-least` or `at-most`",
                        )
                        .label(x.span, "a count here")
                        .label(n.span, "`none` here")
                        .help("`none` means at-most 0: keep one of them"),
                    );
                }
                if n.value {
                    at_most = Some(0);
                }
            }
            if let (Some(l), Some(m), None) = (at_least, at_most, &c.none)
                && l > m
                && let Some(x) = &c.at_least
            {
                d.push(
                    Diag::error(
                        Code::CheckKey,
                        format!("at-least {l} is more than at-most {m}"),
                    )
                    .label(x.span, "can never hold")
                    .help("swap the bounds, or drop one"),
                );
            }
            let at_least = if at_least.is_none() && at_most.is_none() {
                Some(1)
            } else {
                at_least
            };
            CheckKind::Capture {
                capture: cap.value.clone(),
                filter,
                at_least,
                at_most,
            }
        }
        None => return None,
    };
    if d.errors().count() > errors_before {
        return None;
    }
    Some(CheckSpec {
        name: c.name.value.clone(),
        from,
        kind,
        expect_fail,
        timeout_ms,
        retry,
        after: c.after.iter().map(|a| a.value.clone()).collect(),
    })
}
