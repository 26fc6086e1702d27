//! Pass (per VM): what must fit a fixed-size slot in the protocol: each cc
//! command (one protocol frame). Bounds that depend on where an engine puts
//! things (the local engine's socket paths in its runtime folder) are the
//! engine's: `Provider::check_lab`, reported by the CLI (`validate::locate`).

use std::sync::OnceLock;

use miette::SourceSpan;

use super::Validator;
use super::vms::VmCheck;
use crate::diag::{Code, Diag};
use crate::model;

/// Room kept free in a protocol frame beside the command of an exec (fields a
/// newer agent protocol may add, such as a step id).
const FRAME_MARGIN: usize = 4096;

impl Validator {
    /// A cc command travels in one protocol frame: refuse one that cannot fit.
    pub(super) fn check_command_size(
        &mut self,
        c: &model::Command,
        span: SourceSpan,
        vc: &mut VmCheck,
    ) {
        let limit = crate::agent::protocol::MAX_FRAME - FRAME_MARGIN;
        // A command under the bound fits without being encoded (all but the
        // rare huge one: 3 x 10^5 steps are not serialised to be measured).
        if exec_len_bound(c) <= limit {
            return;
        }
        let len = exec_len(c);
        if len > limit {
            self.once(
                vc,
                Diag::error(
                    Code::CommandTooLarge,
                    format!("this command is {len} bytes when sent to the guest: at most {limit} fit in one message"),
                )
                .label(span, "too large")
                .help("put a long script in a file and `send` it to the guest, then exec it"),
                "cmdsize",
            );
        }
    }
}

/// The length of the exec message that carries `c`, as the host sends it
/// (every optional field at its largest).
fn exec_len(c: &model::Command) -> usize {
    use crate::agent::protocol::{self, Message};
    let command = match c {
        model::Command::Shell(s) => protocol::Command::Shell(s.value.clone()),
        model::Command::Argv(a) => {
            protocol::Command::Argv(a.iter().map(|s| s.value.clone()).collect())
        }
    };
    let msg = Message::Exec {
        id: u64::MAX,
        command,
        timeout_ms: Some(u64::MAX),
        background: false,
        max_output: Some(u64::MAX),
    };
    serde_json::to_vec(&msg).map_or(usize::MAX, |v| v.len())
}

/// At least [`exec_len`]: JSON at most sextuples a string (`\u0000`) and
/// adds 3 bytes per argument (quotes, comma) to the envelope.
fn exec_len_bound(c: &model::Command) -> usize {
    let (bytes, args) = match c {
        model::Command::Shell(s) => (s.value.len(), 1),
        model::Command::Argv(a) => (a.iter().map(|s| s.value.len()).sum(), a.len()),
    };
    bytes
        .saturating_mul(6)
        .saturating_add(args.saturating_mul(3))
        .saturating_add(envelope_len())
}

/// The bytes of an exec message around its command: the larger of an empty
/// shell command and an empty argv.
fn envelope_len() -> usize {
    static LEN: OnceLock<usize> = OnceLock::new();
    *LEN.get_or_init(|| {
        let shell = model::Command::Shell(model::Sp::bare(String::new()));
        let argv = model::Command::Argv(Vec::new());
        exec_len(&shell).max(exec_len(&argv))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut never skips a command that does not fit: the bound is at
    /// least the encoded length for the worst characters JSON has.
    #[test]
    fn the_bound_is_never_below_the_encoded_length() {
        let worst = ["\u{1}", "\"", "\\", "\n", "é", "\u{7f}", "x", "\u{2028}"];
        for w in worst {
            for n in [0usize, 1, 7, 300] {
                let s = w.repeat(n);
                for c in [
                    model::Command::Shell(model::Sp::bare(s.clone())),
                    model::Command::Argv(vec![
                        model::Sp::bare(s.clone()),
                        model::Sp::bare(String::new()),
                        model::Sp::bare(s.clone()),
                    ]),
                ] {
                    let bound = exec_len_bound(&c);
                    assert!(
                        bound >= exec_len(&c),
                        "{w:?} x{n}: {bound} < {}",
                        exec_len(&c)
                    );
                }
            }
        }
    }
}
