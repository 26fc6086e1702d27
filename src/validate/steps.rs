//! Pass (per VM): cc steps. Durations, commands that are not empty and fit
//! one protocol frame (`bounds.rs`), absolute guest paths, sizes; each step
//! gets the hash that decides whether it runs again.

use sha2::{Digest, Sha256};

use super::Validator;
use super::values::{parse_duration_ms, parse_size};
use super::vms::VmCheck;
use crate::diag::{Code, Diag};
use crate::lab::{CcActionSpec, CcSpec, CommandSpec};
use crate::model;

impl Validator {
    pub(super) fn steps(&mut self, vc: &mut VmCheck) -> Vec<CcSpec> {
        let vm = vc.vm;
        let mut cc = Vec::new();
        for (i, step) in vm.cc.iter().enumerate() {
            let timeout_ms =
                step.timeout
                    .as_ref()
                    .and_then(|t| match parse_duration_ms(&t.value) {
                        Some(0) | None => {
                            self.once(
                                vc,
                                Diag::error(
                                    Code::BadDuration,
                                    format!("'{}' is not a duration", t.value),
                                )
                                .label(t.span, "not a duration")
                                .help("write \"30s\", \"5m\", \"1h30m\" or \"500ms\""),
                                "timeout",
                            );
                            None
                        }
                        Some(ms) => Some(ms),
                    });
            let cmd = |c: &model::Command| match c {
                model::Command::Shell(s) => CommandSpec::Shell(s.value.clone()),
                model::Command::Argv(a) => {
                    CommandSpec::Argv(a.iter().map(|s| s.value.clone()).collect())
                }
            };
            let empty_cmd = |c: &model::Command| match c {
                model::Command::Shell(s) => s.value.trim().is_empty().then_some(s.span),
                model::Command::Argv(a) => a.is_empty().then_some(step.span),
            };
            let action = match &step.action {
                model::CcAction::Exec(c) | model::CcAction::Background(c) => {
                    let span = match c {
                        model::Command::Shell(s) => s.span,
                        model::Command::Argv(_) => step.span,
                    };
                    self.check_command_size(c, span, vc);
                    if let Some(span) = empty_cmd(c) {
                        self.once(
                            vc,
                            Diag::error(Code::EmptyCommand, "a cc step needs a command")
                                .label(span, "empty")
                                .help("for example: exec \"ip link set eth0 up\""),
                            "cmd",
                        );
                    }
                    if matches!(step.action, model::CcAction::Exec(_)) {
                        CcActionSpec::Exec(cmd(c))
                    } else {
                        if let Some(t) = &step.timeout {
                            self.once(
                                vc,
                                Diag::warning(
                                    Code::TimeoutIgnored,
                                    "a background step runs on: its timeout is ignored",
                                )
                                .label(t.span, "ignored")
                                .help("use exec for a command that must finish"),
                                "bgtimeout",
                            );
                        }
                        CcActionSpec::Background(cmd(c))
                    }
                }
                model::CcAction::Send { src: s, to } => {
                    let p = self.path(s);
                    if vc.first_of_range {
                        self.warn_missing(&p, s, "file to send");
                    }
                    if !to.value.starts_with('/') {
                        self.once(
                            vc,
                            Diag::error(
                                Code::RelativeGuestPath,
                                format!("'{}' is not an absolute guest path", to.value),
                            )
                            .label(to.span, "must start with '/'")
                            .help("write to=\"/root/file\""),
                            "sendto",
                        );
                    }
                    CcActionSpec::Send {
                        src: p,
                        to: to.value.clone(),
                    }
                }
                model::CcAction::Recv {
                    src: s,
                    to,
                    max_size,
                } => {
                    if !s.value.starts_with('/') {
                        self.once(
                            vc,
                            Diag::error(
                                Code::RelativeGuestPath,
                                format!("'{}' is not an absolute guest path", s.value),
                            )
                            .label(s.span, "must start with '/'")
                            .help("write recv \"/bro/capture.pcap\" to=\"captures\""),
                            "recvsrc",
                        );
                    }
                    let p = self.path(to);
                    let max_size = match max_size {
                        None => crate::agent::client::DEFAULT_MAX_RECV,
                        Some(m) => match parse_size(&m.value, 1) {
                            Some(n) if n > 0 => n,
                            _ => {
                                self.once(
                                    vc,
                                    Diag::error(
                                        Code::BadSize,
                                        format!("'{}' is not a size", m.value),
                                    )
                                    .label(m.span, "max-size expected")
                                    .help("write max-size=\"10M\" (default 1G)"),
                                    "recvmax",
                                );
                                0
                            }
                        },
                    };
                    CcActionSpec::Recv {
                        src: s.value.clone(),
                        to: p,
                        max_size,
                    }
                }
            };
            let allow_failure = step.allow_failure.as_ref().is_some_and(|a| a.value);
            let hash = hash_hex(&(&action, timeout_ms, allow_failure));
            cc.push(CcSpec {
                index: i,
                address: format!("{}.cc[{i}]", vc.address),
                action,
                timeout_ms,
                allow_failure,
                hash,
            });
        }
        cc
    }
}

fn hash_hex(v: &impl serde::Serialize) -> String {
    use std::fmt::Write;
    let json = serde_json::to_vec(v).expect("serialising plain data cannot fail");
    let h = Sha256::digest(&json);
    let mut hex = String::with_capacity(16);
    for b in h.iter().take(8) {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}
