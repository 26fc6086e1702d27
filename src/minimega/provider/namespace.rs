//! What keeps a minimega namespace after a destroy: anything in it that is
//! not megaplan's. `clear namespace` removes every VM, host tap and cc
//! command of the namespace, a user's own included, so it runs only when
//! [`foreign`] finds nothing (and every node answered).

use std::fmt;

use super::MinimegaError;
use super::MinimegaHost;
use crate::minimega::client::{Command, HostResponse, column};

/// One thing in the namespace that stops megaplan clearing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Foreign {
    /// A VM still in the namespace (megaplan's destroy removed its own).
    Vm { name: String, host: String },
    /// A host tap megaplan does not name for any network of the experiment.
    Tap { name: String, host: String },
    /// A cc command whose prefix is not one of megaplan's runs.
    CcCommand { id: String, prefix: String },
    /// A node that did not answer `vm info` (it may hold VMs).
    Silent(String),
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::diag::escape;
        match self {
            Foreign::Vm { name, host } => {
                write!(f, "VM {} on {}", escape(name), escape(host))
            }
            Foreign::Tap { name, host } => {
                write!(f, "host tap {} on {}", escape(name), escape(host))
            }
            Foreign::CcCommand { id, prefix } if prefix.is_empty() => {
                write!(f, "cc command {}", escape(id))
            }
            Foreign::CcCommand { id, prefix } => {
                write!(f, "cc command {} (prefix {})", escape(id), escape(prefix))
            }
            Foreign::Silent(why) => write!(f, "a node that did not answer ({why})"),
        }
    }
}

/// Whether `prefix` is one megaplan gives a run's cc commands
/// (`super::run_prefix`: `mp` and 16 hex digits).
pub fn is_run_prefix(prefix: &str) -> bool {
    prefix
        .strip_prefix("mp")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The host taps of `tap` answers that are not `ours(name)`.
pub fn foreign_taps(resps: &[HostResponse], ours: impl Fn(&str) -> bool) -> Vec<Foreign> {
    let mut out = Vec::new();
    for r in resps {
        for row in r.rows() {
            if let Some(t) = column(&row, "tap").filter(|t| !ours(t)) {
                out.push(Foreign::Tap {
                    name: t.to_string(),
                    host: r.host.clone(),
                });
            }
        }
    }
    out
}

/// The cc commands of `cc commands` answers that no megaplan run sent.
pub fn foreign_commands(resps: &[HostResponse]) -> Vec<Foreign> {
    let mut out = Vec::new();
    for r in resps {
        for row in r.rows() {
            let prefix = column(&row, "prefix").unwrap_or_default();
            if !is_run_prefix(prefix) {
                out.push(Foreign::CcCommand {
                    id: column(&row, "id").unwrap_or_default().to_string(),
                    prefix: prefix.to_string(),
                });
            }
        }
    }
    out
}

/// Everything in the namespace that is not megaplan's (nothing: it may be
/// cleared). Asked with the namespace's own commands on every node.
pub fn foreign(h: &MinimegaHost) -> Result<Vec<Foreign>, MinimegaError> {
    let (vms, asked) = h.vm_info_nodes()?;
    let mut out: Vec<Foreign> = vms
        .into_iter()
        .map(|v| Foreign::Vm {
            name: v.name,
            host: v.host,
        })
        .collect();
    // A node that did not answer may still have VMs in it.
    if let Some(why) = asked.doubt(None) {
        out.push(Foreign::Silent(why));
    }
    let networks: Vec<String> = h
        .lab
        .iter()
        .flat_map(|l| l.networks.iter())
        .map(|n| super::super::taps::host_tap_of(&h.experiment, &n.address))
        .collect();
    let taps = h.run_ok(Command::new("tap"))?;
    out.extend(foreign_taps(&taps, |t| networks.iter().any(|n| n == t)));
    out.extend(foreign_commands(
        &h.run_ok(Command::new("cc").word("commands"))?,
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(host: &str, header: &[&str], rows: &[&[&str]]) -> HostResponse {
        HostResponse {
            host: host.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            tabular: rows
                .iter()
                .map(|r| r.iter().map(|c| c.to_string()).collect())
                .collect(),
            ..HostResponse::default()
        }
    }

    #[test]
    fn only_megaplans_run_prefixes_are_ours() {
        let ours = super::super::run_prefix("some run id");
        assert!(is_run_prefix(&ours), "{ours}");
        for bad in [
            "",
            "mp",
            "mp0123",
            "xp0123456789abcdef",
            "mp0123456789abcdeg",
            "mp0123456789abcdef0",
        ] {
            assert!(!is_run_prefix(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_users_tap_and_cc_command_are_foreign_megaplans_are_not() {
        let header = ["bridge", "tap", "vlan"];
        let taps = [answer(
            "mm1",
            &header,
            &[
                &["mega_bridge", "mpbaaaaaaaaaaaa", "LAN"],
                &["mega_bridge", "mytap", "LAN"],
            ],
        )];
        let got = foreign_taps(&taps, |t| t == "mpbaaaaaaaaaaaa");
        assert_eq!(
            got,
            [Foreign::Tap {
                name: "mytap".into(),
                host: "mm1".into()
            }]
        );
        let ours = super::super::run_prefix("r");
        let header = ["id", "prefix", "command", "responses", "background", "once"];
        let cmds = [answer(
            "mm1",
            &header,
            &[
                &["1", &ours, "[sh -c true]", "0", "false", "true"],
                &["2", "", "[hostname]", "0", "false", "true"],
            ],
        )];
        let got = foreign_commands(&cmds);
        assert_eq!(
            got,
            [Foreign::CcCommand {
                id: "2".into(),
                prefix: String::new()
            }]
        );
        assert_eq!(got[0].to_string(), "cc command 2");
    }
}
