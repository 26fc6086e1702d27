//! Why a change has its action: typed, with a stable code for machines
//! (`Reason::code`, the JSON plan's `action_reason` and `reasons[].code`)
//! and prose for people (`Display`, the text plan's words).
//!
//! Invariant: codes never change meaning once published (docs/plan-json.md
//! lists them); several variants may share one code when they differ only
//! in wording (`dependency_replaced`). Nothing matches on the prose.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What refresh found missing on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    Bridge,
    Tap,
    DiskFile,
    Mirror,
    /// One direction of a mirror is wired, the other is not.
    MirrorPart,
    /// A capture's recorder is not running.
    Recorder,
}

/// A link that refresh found down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    Bridge,
    Tap,
}

/// One reason behind a change's action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Not in the state: created (a step: run for the first time).
    New { step: bool },
    /// Not in the state, but an object of ours with its address is on the
    /// host (a crash before the state was written): replaced.
    FoundOnHost,
    /// Recorded as being created when the last run stopped.
    CreationInterrupted,
    /// Its creation failed last time.
    CreationFailed,
    /// A step whose run failed last time (no exit code came back).
    StepFailed,
    /// An attribute differs from the record: `values` are (before, after) as
    /// shown, `None` for a list or a map (too long for a headline).
    AttributeChanged {
        key: String,
        values: Option<(String, String)>,
    },
    /// The content of a file it reads changed (`kernel`, `initrd`, `disks`, `from`).
    ContentChanged { what: String },
    /// A step's action changed.
    StepChanged,
    /// A step exited non-zero without `allow-failure`.
    StepExited { exit: i32 },
    /// A VM on which a step failed (`step` is the step's address).
    Tainted { step: String },
    /// `apply -replace ADDRESS`.
    ReplaceRequested,
    /// Refresh did not find it (or a part of it).
    MissingOnHost { what: Missing },
    /// Refresh found the link down.
    LinkDown { link: Link },
    /// Refresh found the tap on another bridge than its own.
    NotOnBridge { bridge: String },
    /// Refresh found its QEMU dead (`status: None`) or not running.
    VmNotRunning { status: Option<String> },
    /// The node it was placed on did not answer refresh (a minimega node
    /// gone from the mesh): it may or may not run there.
    NodeUnreachable { node: String, error: String },
    /// A running VM whose steps ran (its cc client checked in then) and
    /// whose cc client the engine no longer lists (minimega's miniccc gone
    /// from `cc clients`): its steps cannot reach it.
    CcClientLost,
    /// A VM's tap is recreated (`nic` is the tap's short name, `nic[0]`).
    TapRecreated { nic: String },
    /// A VM's disk is recreated.
    DiskRecreated { disk: String },
    /// A mirror's VM (`tap: false`) or tap (`tap: true`) is recreated.
    MirrorRewired { dependency: String, tap: bool },
    /// A step's VM is replaced.
    VmReplaced,
    /// A step's VM was restarted since the step ran.
    VmRestarted,
    /// In the state, not in the file (a step: its record is dropped).
    NotInFile { step: bool },
    /// A `keep` disk not in the file (`removed: true`) or of a destroy: kept.
    Kept { removed: bool },
    /// `megaplan destroy`.
    Destroy,
    /// Carries this experiment's marker but has no record.
    Orphan,
}

impl Reason {
    /// The stable code (docs/plan-json.md).
    pub fn code(&self) -> &'static str {
        match self {
            Reason::New { .. } => "new",
            Reason::FoundOnHost => "found_on_host",
            Reason::CreationInterrupted => "creation_interrupted",
            Reason::CreationFailed => "creation_failed",
            Reason::StepFailed => "step_failed",
            Reason::AttributeChanged { .. } => "attribute_changed",
            Reason::ContentChanged { .. } => "content_changed",
            Reason::StepChanged => "step_changed",
            Reason::StepExited { .. } => "step_exited",
            Reason::Tainted { .. } => "tainted",
            Reason::ReplaceRequested => "replace_requested",
            Reason::MissingOnHost { .. } => "missing_on_host",
            Reason::LinkDown { .. } => "link_down",
            Reason::NotOnBridge { .. } => "not_on_bridge",
            Reason::VmNotRunning { .. } => "vm_not_running",
            Reason::NodeUnreachable { .. } => "node_unreachable",
            Reason::CcClientLost => "cc_client_lost",
            Reason::TapRecreated { .. }
            | Reason::DiskRecreated { .. }
            | Reason::MirrorRewired { .. }
            | Reason::VmReplaced => "dependency_replaced",
            Reason::VmRestarted => "vm_restarted",
            Reason::NotInFile { .. } => "not_in_file",
            Reason::Kept { .. } => "kept",
            Reason::Destroy => "destroy",
            Reason::Orphan => "orphan",
        }
    }

    /// Every code, in the order docs/plan-json.md lists them.
    pub const CODES: &'static [&'static str] = &[
        "new",
        "found_on_host",
        "creation_interrupted",
        "creation_failed",
        "step_failed",
        "attribute_changed",
        "content_changed",
        "step_changed",
        "step_exited",
        "tainted",
        "replace_requested",
        "missing_on_host",
        "link_down",
        "not_on_bridge",
        "vm_not_running",
        "node_unreachable",
        "cc_client_lost",
        "dependency_replaced",
        "vm_restarted",
        "not_in_file",
        "kept",
        "destroy",
        "orphan",
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::New { step: false } => f.write_str("new"),
            Reason::New { step: true } => f.write_str("new step"),
            Reason::FoundOnHost => {
                f.write_str("found on the host but not in the state (an interrupted apply)")
            }
            Reason::CreationInterrupted => f.write_str("its creation was interrupted"),
            Reason::CreationFailed => f.write_str("its creation failed"),
            Reason::StepFailed => f.write_str("it failed last time"),
            Reason::AttributeChanged { key, values: None } => write!(f, "{key} changed"),
            Reason::AttributeChanged {
                key,
                values: Some((b, a)),
            } => write!(f, "{key} changed: {b} -> {a}"),
            Reason::ContentChanged { what } => write!(f, "{what} changed (content)"),
            Reason::StepChanged => f.write_str("step changed"),
            Reason::StepExited { exit } => write!(f, "it exited {exit} last time"),
            Reason::Tainted { step } => write!(f, "tainted: {step} failed"),
            Reason::ReplaceRequested => f.write_str("replacement requested"),
            Reason::MissingOnHost { what } => f.write_str(match what {
                Missing::Bridge => "bridge missing",
                Missing::Tap => "tap missing",
                Missing::DiskFile => "disk file missing",
                Missing::Mirror => "mirror missing",
                Missing::MirrorPart => "mirror partly missing",
                Missing::Recorder => "recorder not running",
            }),
            Reason::LinkDown { link: Link::Bridge } => f.write_str("bridge is down"),
            Reason::LinkDown { link: Link::Tap } => f.write_str("tap is down"),
            Reason::NotOnBridge { bridge } => write!(f, "tap is not on its bridge {bridge}"),
            Reason::VmNotRunning { status: None } => f.write_str("QEMU not running"),
            Reason::VmNotRunning {
                status: Some(status),
            } => write!(f, "QEMU is {status}"),
            Reason::NodeUnreachable { node, error } => write!(
                f,
                "its node {node} did not answer ({})",
                crate::diag::escape(error)
            ),
            Reason::CcClientLost => f.write_str(
                "its cc client is gone: its steps ran, but minimega's `cc clients` no longer lists it",
            ),
            Reason::TapRecreated { nic } => write!(f, "its tap {nic} is recreated"),
            Reason::DiskRecreated { disk } => write!(f, "its disk {disk} is recreated"),
            Reason::MirrorRewired {
                dependency,
                tap: false,
            } => write!(f, "{dependency} is recreated: the mirror is rewired"),
            Reason::MirrorRewired {
                dependency,
                tap: true,
            } => write!(f, "tap {dependency} is recreated: the mirror is rewired"),
            Reason::VmReplaced => f.write_str("its VM is replaced"),
            Reason::VmRestarted => f.write_str("its VM was restarted since it ran"),
            Reason::NotInFile { step: false } => f.write_str("removed from the file"),
            Reason::NotInFile { step: true } => {
                f.write_str("removed from the file (its record is dropped)")
            }
            Reason::Kept { removed: true } => f.write_str(
                "removed from the file, but keep=#true: kept (`destroy --all` removes it)",
            ),
            Reason::Kept { removed: false } => {
                f.write_str("keep=#true: kept (`destroy --all` removes it)")
            }
            Reason::Destroy => f.write_str("destroy"),
            Reason::Orphan => {
                f.write_str("orphan: carries this experiment's marker but is not in the state")
            }
        }
    }
}

/// The reasons of a change as one line (`a; b`), for headlines and tables.
pub fn joined(reasons: &[Reason], sep: &str) -> String {
    let mut out = String::new();
    for (i, r) in reasons.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        use std::fmt::Write;
        let _ = write!(out, "{r}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_listed_and_snake_case() {
        let samples = [
            Reason::New { step: true },
            Reason::FoundOnHost,
            Reason::CreationInterrupted,
            Reason::CreationFailed,
            Reason::StepFailed,
            Reason::AttributeChanged {
                key: "memory".into(),
                values: Some(("256M".into(), "512M".into())),
            },
            Reason::ContentChanged {
                what: "kernel".into(),
            },
            Reason::StepChanged,
            Reason::StepExited { exit: 3 },
            Reason::Tainted {
                step: "vm.A.cc[0]".into(),
            },
            Reason::ReplaceRequested,
            Reason::MissingOnHost { what: Missing::Tap },
            Reason::LinkDown { link: Link::Tap },
            Reason::NotOnBridge {
                bridge: "mpb1".into(),
            },
            Reason::VmNotRunning { status: None },
            Reason::NodeUnreachable {
                node: "mm2".into(),
                error: "no such client mm2".into(),
            },
            Reason::CcClientLost,
            Reason::VmReplaced,
            Reason::VmRestarted,
            Reason::NotInFile { step: false },
            Reason::Kept { removed: true },
            Reason::Destroy,
            Reason::Orphan,
        ];
        let mut seen: Vec<&str> = samples.iter().map(Reason::code).collect();
        seen.dedup();
        assert_eq!(seen, Reason::CODES, "one sample per code, in CODES order");
        for code in Reason::CODES {
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
        // A saved plan's reasons read back.
        for r in &samples {
            let v = serde_json::to_value(r).unwrap();
            assert_eq!(&serde_json::from_value::<Reason>(v).unwrap(), r);
        }
    }

    #[test]
    fn every_code_is_documented_in_order() {
        let doc = include_str!("../../docs/plan-json.md");
        let listed: Vec<&str> = doc
            .split("## Reason codes")
            .nth(1)
            .expect("docs/plan-json.md has a reason code table")
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split_once('`').map(|(c, _)| c))
            .collect();
        assert_eq!(listed, Reason::CODES);
    }

    #[test]
    fn prose_is_the_text_plans_words() {
        let r = Reason::AttributeChanged {
            key: "memory".into(),
            values: Some(("256M".into(), "512M".into())),
        };
        assert_eq!(r.to_string(), "memory changed: 256M -> 512M");
        assert_eq!(
            joined(
                &[Reason::VmNotRunning { status: None }, Reason::VmRestarted],
                "; "
            ),
            "QEMU not running; its VM was restarted since it ran"
        );
    }
}
