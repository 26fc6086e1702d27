//! Captures on minimega: a capture of one VM nic is minimega's `capture pcap
//! vm VM NIC FILE`, written by the VM's node into its files folder at
//! `megaplan/EXP/captures/NAME.pcap`; `megaplan capture path` brings it back
//! into the state folder (`captures/NAME.pcap`, where the local engine's
//! recorder writes). Refresh lists minimega's captures (`capture`).
//!
//! Not mapped (refused before planning, [`unmapped`]): a capture of a
//! network (minimega's bridge capture takes every VLAN of the bridge, not
//! one network's), of more than one tap (minimega writes a file per nic), or
//! two captures of one VM (`capture pcap delete vm VM` stops them all).
//!
//! Invariants:
//! - Every path is megaplan's folder plus validated names.
//! - The folder on a VM's node is made by minimega itself (`file get` of a
//!   marker file from the head), never by a path megaplan guesses there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::cc::{self, CcError, FOLDER};
use super::client::{Command, Name, column};
use super::provider::{MinimegaError, MinimegaHost};
use crate::lab::{CaptureSpec, Lab};
use crate::safefs::Open;
use crate::state::StateDir;

/// The folder of captures under megaplan's folder, per namespace.
pub const CAPTURES: &str = "captures";
/// The marker that makes minimega create the folder on a node.
const MARKER: &str = ".folder";
/// The most a fetched capture may hold.
const MAX_FETCH: u64 = 4 << 30;
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// What of the lab's captures minimega cannot record.
pub fn unmapped(lab: &Lab) -> Vec<String> {
    let mut out = Vec::new();
    let mut vms = BTreeSet::new();
    for c in &lab.captures {
        if let Some(n) = &c.network {
            out.push(format!(
                "{}: a capture of network {n} (minimega's bridge capture records every VLAN of its bridge); capture a VM's nic instead",
                c.address
            ));
        } else if c.taps.len() != 1 {
            out.push(format!(
                "{}: a capture of {} taps (minimega's `capture pcap vm` writes one file per nic); one capture per nic",
                c.address,
                c.taps.len()
            ));
        } else if !vms.insert(c.taps[0].vm.clone()) {
            out.push(format!(
                "{}: a second capture of VM {} (minimega stops every capture of a VM at once)",
                c.address, c.taps[0].vm
            ));
        }
    }
    out
}

fn rel(h: &MinimegaHost, name: &Name) -> Result<String, MinimegaError> {
    Ok(format!(
        "{FOLDER}/{}/{CAPTURES}/{name}.pcap",
        h.experiment_name()?
    ))
}

/// The node minimega runs `vm` on.
fn node_of(h: &MinimegaHost, vm: &str) -> Result<String, MinimegaError> {
    h.vm_info()?
        .into_iter()
        .find(|v| v.name == vm)
        .map(|v| v.host)
        .ok_or_else(|| MinimegaError::NoVm(vm.to_string()))
}

/// Start capture `spec` (one VM nic).
pub(super) async fn start(h: &MinimegaHost, spec: &CaptureSpec) -> Result<(), MinimegaError> {
    let [tap] = spec.taps.as_slice() else {
        return Err(MinimegaError::Unsupported {
            what: format!("capture {}", spec.name),
            why: "minimega captures one nic per file",
        });
    };
    let name = Name::new(&spec.name)?;
    let vm = Name::new(&tap.vm)?;
    // A capture waits on the VM's tap, which minimega makes with the VM:
    // the VM may still be launching.
    let end = Instant::now() + WAIT;
    let node = loop {
        match node_of(h, &tap.vm) {
            Ok(n) => break n,
            Err(MinimegaError::NoVm(_)) if Instant::now() < end => {
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(e),
        }
    };
    // megaplan/EXP/captures on the head, and through minimega on the node.
    let files = cc::files_dir(h)?;
    let ours = cc::ours(&files)?;
    let exp = h.experiment_name()?;
    let dir = cc::sub(&cc::sub(&ours, exp.as_str(), true)?, CAPTURES, true)?;
    if !dir.exists(MARKER).map_err(cc::io("read", &dir.path))? {
        dir.open_file(MARKER, Open::CreateNew)
            .map_err(cc::io("create", &dir.path.join(MARKER)))?;
    }
    if node != h.head()? {
        let marker = format!("{FOLDER}/{exp}/{CAPTURES}/{MARKER}");
        let n = Name::new(&node)?;
        let on_node = |c: Command| Command::new("mesh").word("send").name(&n).then(&c);
        let get = on_node(Command::new("file").word("get").arg(&marker)?);
        let list = on_node(
            Command::new("file")
                .word("list")
                .arg(&format!("{FOLDER}/{exp}/{CAPTURES}"))?,
        );
        h.client.lock().expect("the client lock").run_ok(&get)?;
        let end = Instant::now() + WAIT;
        loop {
            let r = h.client.lock().expect("the client lock").run(&list)?;
            if r.iter().any(|r| {
                r.rows()
                    .iter()
                    .any(|row| row.contains(&("name", marker.as_str())))
            }) {
                break;
            }
            if Instant::now() >= end {
                return Err(CcError::NoFolder {
                    folder: format!("{FOLDER}/{exp}/{CAPTURES}"),
                    node,
                    after: WAIT,
                }
                .into());
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let cmd = Command::new("capture")
        .word("pcap")
        .word("vm")
        .name(&vm)
        .num(tap.nic as u64)
        .arg(&rel(h, &name)?)?;
    let text = cmd.as_str().to_string();
    let r = h.run(cmd)?;
    if !r.iter().any(|r| r.error.is_empty()) {
        return Err(super::client::ClientError::Host {
            command: text,
            errors: r.into_iter().map(|r| (r.host, r.error)).collect(),
        }
        .into());
    }
    Ok(())
}

/// Stop capture `name`, found in minimega's list by its file; the VM is
/// the one whose `VM:NIC` the row names (compared, not parsed).
pub(super) fn stop_named(h: &MinimegaHost, name: &str) -> Result<(), MinimegaError> {
    let Ok(name) = Name::new(name) else {
        return Ok(());
    };
    let want = format!("/{}", rel(h, &name)?);
    let mut rows = Vec::new();
    for r in h.run(Command::new("capture"))? {
        for row in r.rows() {
            if column(&row, "path").is_some_and(|p| p.ends_with(&want)) {
                rows.push(column(&row, "interface").unwrap_or_default().to_string());
            }
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    for v in h.vm_info()? {
        if (0..v.networks.len()).any(|i| rows.contains(&format!("{}:{i}", v.name))) {
            stop(h, &v.name)?;
        }
    }
    Ok(())
}

/// Stop the capture of `vm` (minimega stops every capture of the VM).
fn stop(h: &MinimegaHost, vm: &str) -> Result<(), MinimegaError> {
    let vm = Name::new(vm)?;
    // Every node answers; the VM's node stops it, the others do not know it.
    h.run(
        Command::new("capture")
            .word("pcap")
            .word("delete")
            .word("vm")
            .name(&vm),
    )?;
    Ok(())
}

/// The lab's captures minimega records now, by address.
pub(super) fn observe(h: &MinimegaHost, lab: &Lab) -> Result<BTreeMap<String, u32>, MinimegaError> {
    let mut out = BTreeMap::new();
    if lab.captures.is_empty() {
        return Ok(out);
    }
    let mut paths = BTreeSet::new();
    for r in h.run(Command::new("capture"))? {
        for row in r.rows() {
            if let Some(p) = column(&row, "path") {
                paths.insert(p.to_string());
            }
        }
    }
    for c in &lab.captures {
        let Ok(name) = Name::new(&c.name) else {
            continue;
        };
        let want = rel(h, &name)?;
        // minimega lists the path it writes: its files folder joined.
        if paths.iter().any(|p| p.ends_with(&format!("/{want}"))) {
            // No recorder process of megaplan's: minimega's own.
            out.insert(c.address.clone(), 0);
        }
    }
    Ok(out)
}

/// Bring capture `spec`'s file from the VM's node into the state folder
/// (`captures/NAME.pcap`): the path `megaplan capture path` prints.
pub async fn fetch(
    h: &MinimegaHost,
    spec: &CaptureSpec,
    sd: &StateDir,
) -> Result<PathBuf, MinimegaError> {
    let [tap] = spec.taps.as_slice() else {
        return Err(MinimegaError::Unsupported {
            what: format!("capture {}", spec.name),
            why: "minimega captures one nic per file",
        });
    };
    let name = Name::new(&spec.name)?;
    let node = node_of(h, &tap.vm)?;
    let files = cc::files_dir(h)?;
    let rel_text = rel(h, &name)?;
    let exp = h.experiment_name()?;
    let file = format!("{name}.pcap");
    let parts = [FOLDER, exp.as_str(), CAPTURES, file.as_str()];
    if node != h.head()? {
        // A fresh copy: iomeshage keeps a file it already has.
        let _ = h
            .client
            .lock()
            .expect("the client lock")
            .run(&Command::new("file").word("delete").arg(&rel_text)?);
        cc::fetch(h, &files, &parts, &rel_text, WAIT).await?;
    }
    let Some(mut input) = cc::open_under(&files, &parts)? else {
        return Err(CcError::NoFile {
            vm: tap.vm.clone(),
            src: rel_text,
        }
        .into());
    };
    let dest = crate::capture::file_path(sd, &spec.name).map_err(|_| CcError::BadPath {
        src: spec.name.clone(),
        why: "not a capture name",
    })?;
    let root = sd.open(true).map_err(CcError::State)?.expect("created");
    let dir = cc::sub(&root, crate::capture::CAPTURES_DIR, true)?;
    let part = format!(".{file}.fetch");
    let _ = dir.unlink(&part);
    let mut out = dir
        .open_file(&part, Open::CreateNew)
        .map_err(cc::io("create", &dest))?;
    let (n, _) =
        cc::copy_limited(&mut input, &mut out, MAX_FETCH).map_err(cc::io("copy", &dest))?;
    if n > MAX_FETCH {
        let _ = dir.unlink(&part);
        return Err(CcError::TooLarge {
            vm: tap.vm.clone(),
            src: rel_text,
            max: MAX_FETCH,
        }
        .into());
    }
    dir.rename(&part, &file).map_err(cc::io("rename", &dest))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_nic_captures_map() {
        let src = crate::diag::SourceFile::new(
            "/nonexistent/x.kdl",
            "experiment \"x\"\nnetwork \"LAN\"\nvm \"A\" { kernel \"/k\"; nic \"LAN\"; nic \"LAN\" }\ncapture \"one\" { tap \"A\" nic=0 }\ncapture \"two\" { tap \"A\" nic=1 }\ncapture \"net\" network=\"LAN\"\n",
        );
        let (lab, d) = crate::validate::check(&src);
        let Some(lab) = lab else {
            panic!("{}", d.render_plain(&src));
        };
        let u = unmapped(&lab);
        assert!(
            u.iter()
                .any(|l| l.starts_with("capture.two: a second capture of VM A")),
            "{u:?}"
        );
        assert!(
            u.iter()
                .any(|l| l.starts_with("capture.net: a capture of network LAN")),
            "{u:?}"
        );
        assert!(!u.iter().any(|l| l.starts_with("capture.one")), "{u:?}");
    }
}
