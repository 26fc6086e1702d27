//! `megaplan cc`: run commands in guests now (`cc exec`) and read the recorded
//! results of cc steps (`cc responses`), like minimega's `cc exec` and
//! `cc responses`.
//!
//! Invariant: talks to guests only through their agent's cc socket; reads the
//! lab and the state, never changes the state.

use std::time::Duration;

use serde::Serialize;

use crate::agent::{AgentClient, Command, Exit};
use crate::lab::{Lab, VmSpec};
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
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Connect to a VM's agent and wait for its hello.
pub async fn connect(lab: &Lab, vm: &str, wait: Duration) -> Result<AgentClient, String> {
    crate::host::connect_agent(&lab.name, vm, Duration::from_secs(2), wait)
        .await
        .map_err(|e| format!("{vm}: no answer from its agent ({e}); is the VM running?"))
}

/// Run `argv` in every VM matching all `filters`, at once.
pub async fn exec(
    lab: &Lab,
    filters: &[Filter],
    argv: &[String],
    timeout: Option<Duration>,
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
            };
            match connect(lab, &vm.name, Duration::from_secs(30)).await {
                Err(e) => Response { stderr: e, ..base },
                Ok(client) => match client.exec(cmd, timeout).await {
                    Ok(r) => Response {
                        exit: match r.exit {
                            Exit::Code(c) => c,
                            Exit::Signal(s) => 128 + s,
                        },
                        stdout: r.stdout,
                        stderr: r.stderr,
                        ..base
                    },
                    Err(e) => Response {
                        stderr: format!("{}: {e}", vm.name),
                        ..base
                    },
                },
            }
        }
    });
    futures::future::join_all(runs).await
}

/// The guest addresses of each running VM, from its agent (for `show`'s ip column).
pub async fn addresses(lab: &Lab) -> std::collections::BTreeMap<String, Vec<String>> {
    let runs = lab.vms.iter().map(|vm| async move {
        let addrs = match connect(lab, &vm.name, Duration::from_millis(500)).await {
            Ok(client) => match client.refresh(Duration::from_secs(2)).await {
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

/// Recorded step results: (step address, exit, stdout, stderr) for one VM or all.
pub fn responses(
    lab: &Lab,
    sd: &StateDir,
    vm: Option<&str>,
) -> Vec<(String, Option<String>, String, String)> {
    let mut out = Vec::new();
    for v in lab.vms.iter().filter(|v| vm.is_none_or(|n| n == v.name)) {
        for step in &v.cc {
            let dir = sd.cc().join(&v.name).join(step.index.to_string());
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
            out.push((
                step.address.clone(),
                read("exit").map(|e| e.trim().to_string()),
                read("stdout").unwrap_or_default(),
                read("stderr").unwrap_or_default(),
            ));
        }
    }
    out
}
