//! A [`Lab`] as a minimega script: the commands the minimega provider will
//! send, in an order minimega accepts (disks, then per VM `clear vm config`
//! … `vm launch kvm NAME`, mirrors, `vm start all`, cc commands).
//!
//! Invariants:
//! - Every value is written with [`quote`], so minicli reads back exactly the
//!   value the lab holds; nothing from the lab can start a new line or a
//!   comment.
//! - Identities come from the lab (UUIDs, MACs): minimega launches the VMs
//!   megaplan would.
//! - What minimega cannot express is written as a `#` comment where it
//!   would go, never silently dropped.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use super::import::shell_safe;
use super::lex::{self, quote};
use super::{MARKER_TAG, MINICCC_FILES, RECV_DIR};
use crate::lab::{Accel, CcActionSpec, CommandSpec, Direction, DiskSource, Lab, VmSpec};

fn path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// A comment line: one line whatever the text holds.
fn comment(out: &mut String, text: &str) {
    out.push_str("# ");
    out.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
    out.push('\n');
}

/// The words of a cc exec/background command.
fn command_words(c: &CommandSpec) -> Option<String> {
    match c {
        CommandSpec::Shell(s) => {
            let words: Vec<String> = s.split(' ').map(str::to_string).collect();
            if shell_safe(&words) && words.join(" ") == *s {
                Some(words.join(" "))
            } else {
                Some(format!("sh -c {}", quote(s)))
            }
        }
        CommandSpec::Argv(v) => {
            let first = v.first()?;
            if ["stdin=", "stdout=", "stderr="]
                .iter()
                .any(|p| first.starts_with(p))
            {
                // minimega would read the first word as stdio plumbing.
                return None;
            }
            Some(v.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "))
        }
    }
}

/// VMs in an order that respects `after` (a VM's steps after those of the
/// VMs it waits for), file order otherwise.
fn step_order(lab: &Lab) -> Vec<&VmSpec> {
    let mut done: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    while out.len() < lab.vms.len() {
        let before = out.len();
        for v in &lab.vms {
            if !done.contains(v.name.as_str())
                && v.after
                    .iter()
                    .all(|a| done.contains(a.as_str()) || lab.vm(a).is_none())
            {
                done.insert(&v.name);
                out.push(v);
            }
        }
        if out.len() == before {
            // A cycle (validate refuses them): the rest in file order.
            out.extend(lab.vms.iter().filter(|v| !done.contains(v.name.as_str())));
            break;
        }
    }
    out
}

/// minimega's preprocessor expands `$VAR` and fetches `file:`/`http:` URLs
/// in arguments: a command holding such a value gets `.preprocess false`,
/// so minimega sees the value the lab holds.
fn guard_preprocessor(script: String) -> String {
    let mut out = String::with_capacity(script.len());
    for line in script.split_inclusive('\n') {
        let touched = !line.starts_with('#')
            && lex::lex_line(line.trim_end_matches('\n'), 0).is_ok_and(|words| {
                words.iter().skip(1).any(|w| {
                    let (names, url) = lex::preprocessed(&w.text);
                    url || !names.is_empty()
                })
            });
        if touched {
            out.push_str(".preprocess false ");
        }
        out.push_str(line);
    }
    out
}

/// How to export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Write minimega's TCG settings on every VM (`vm config qemu QEMU`,
    /// `vm config cpu qemu64`): minimega's defaults (`kvm`, `cpu host`) need KVM.
    pub tcg: bool,
    /// The QEMU binary for `vm config qemu` under TCG. minimega takes a
    /// relative path as a file in its files folder, so this is absolute.
    pub qemu: std::path::PathBuf,
}

impl Options {
    /// The lab's own choice (`accel "tcg"`), with QEMU at its Debian path.
    pub fn of(lab: &Lab) -> Options {
        Options {
            tcg: lab.accel == Accel::Tcg,
            qemu: std::path::PathBuf::from(DEFAULT_QEMU),
        }
    }
}

/// Where Debian's qemu-system-x86 puts QEMU (export's default `vm config qemu`).
pub const DEFAULT_QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// The experiment as a minimega script, with the lab's own accelerator.
pub fn export(lab: &Lab) -> String {
    export_with(lab, &Options::of(lab))
}

/// The experiment as a minimega script.
pub fn export_with(lab: &Lab, opts: &Options) -> String {
    guard_preprocessor(script(lab, opts))
}

fn script(lab: &Lab, opts: &Options) -> String {
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "minimega script for the megaplan experiment '{}' ({}), written by `megaplan export minimega`.",
            lab.name,
            lab.file.display()
        ),
    );
    comment(
        &mut out,
        &format!(
            "Each VM carries megaplan's ownership marker as the tag `{MARKER_TAG}` = EXPERIMENT:ADDRESS."
        ),
    );
    let namespace = match &lab.provider {
        crate::lab::ProviderSpec::Minimega { namespace, .. } => namespace.as_str(),
        crate::lab::ProviderSpec::Local => lab.name.as_str(),
    };
    out.push_str(&format!("namespace {}\n", quote(namespace)));
    // A new namespace holds every node but the one reading the script: the
    // nodes VMs are placed on join it (a node already in it stays).
    let hosts: std::collections::BTreeSet<&str> =
        lab.vms.iter().filter_map(|v| v.host.as_deref()).collect();
    if !hosts.is_empty() {
        let list: Vec<&str> = hosts.into_iter().collect();
        out.push_str(&format!("ns add-hosts {}\n", quote(&list.join(","))));
    }
    for n in &lab.networks {
        if let Some(a) = &n.host_address {
            comment(
                &mut out,
                &format!(
                    "network {}: host-address {a} is not exported (minimega: `tap create` by hand)",
                    n.name
                ),
            );
        }
    }

    // Disks: minimega makes them in its files folder, named NAME.FORMAT.
    for d in &lab.disks {
        out.push('\n');
        let file = quote(&d.file_name());
        match (&d.from, d.size_bytes) {
            (Some(_), _) if d.format != crate::lab::DiskFormat::Qcow2 => comment(
                &mut out,
                &format!(
                    "disk {}: a {} disk with `from` is not exported (minimega's snapshots are qcow2)",
                    d.name,
                    d.format.as_str()
                ),
            ),
            (Some(from), _) => {
                out.push_str(&format!("disk snapshot {} {file}\n", path(from)));
                if d.size_bytes.is_some() {
                    comment(
                        &mut out,
                        &format!("disk {}: size is not exported with `from`", d.name),
                    );
                }
            }
            (None, Some(size)) => {
                out.push_str(&format!(
                    "disk create {} {file} {size}\n",
                    d.format.as_str()
                ));
            }
            (None, None) => comment(&mut out, &format!("disk {}: no size; not created", d.name)),
        }
        if d.filesystem.is_some() && d.inject.is_empty() {
            comment(
                &mut out,
                &format!(
                    "disk {}: filesystem is not exported (minimega makes blank disks)",
                    d.name
                ),
            );
        }
        if !d.inject.is_empty() {
            let files: Vec<String> = d
                .inject
                .iter()
                .map(|(s, t)| quote(&format!("{}:{t}", s.to_string_lossy())))
                .collect();
            out.push_str(&format!("disk inject {file} files {}\n", files.join(" ")));
        }
        if d.keep {
            comment(
                &mut out,
                &format!(
                    "disk {}: keep is not exported (minimega leaves every disk)",
                    d.name
                ),
            );
        }
    }

    for v in &lab.vms {
        out.push('\n');
        out.push_str("clear vm config\n");
        if let Some(k) = &v.kernel {
            out.push_str(&format!("vm config kernel {}\n", path(k)));
        }
        if let Some(i) = &v.initrd {
            out.push_str(&format!("vm config initrd {}\n", path(i)));
        }
        if let Some(a) = &v.append {
            out.push_str(&format!("vm config append {}\n", quote(a)));
        }
        out.push_str(&format!("vm config memory {}\n", v.memory_mib));
        out.push_str(&format!("vm config vcpus {}\n", v.vcpus));
        out.push_str(&format!("vm config uuid {}\n", v.uuid));
        out.push_str(&format!("vm config snapshot {}\n", v.snapshot));
        if !v.disks.is_empty() {
            let disks: Vec<String> = v
                .disks
                .iter()
                .map(|d| match &d.source {
                    DiskSource::Named(n) => {
                        quote(&lab.disk(n).map_or_else(|| n.clone(), |d| d.file_name()))
                    }
                    DiskSource::Path(p) => path(p),
                })
                .collect();
            out.push_str(&format!("vm config disk {}\n", disks.join(" ")));
            for d in &v.disks {
                if let Some(m) = &d.mount {
                    comment(
                        &mut out,
                        &format!("vm {}: mount {m} is not exported", v.name),
                    );
                }
            }
        }
        if !v.nics.is_empty() {
            let nets: Vec<String> = v
                .nics
                .iter()
                .map(|n| quote(&format!("{},{},{}", n.network, n.mac, n.driver)))
                .collect();
            out.push_str(&format!("vm config net {}\n", nets.join(" ")));
        }
        let mut tags: BTreeMap<&str, String> = BTreeMap::new();
        tags.insert(MARKER_TAG, format!("{}:{}", lab.name, v.address));
        for (k, val) in &v.tags {
            if k != MARKER_TAG {
                tags.insert(k, val.clone());
            }
        }
        for (k, val) in &tags {
            out.push_str(&format!("vm config tags {} {}\n", quote(k), quote(val)));
        }
        if !v.qemu_args.is_empty() {
            let a: Vec<String> = v.qemu_args.iter().map(|a| quote(a)).collect();
            out.push_str(&format!("vm config qemu-append {}\n", a.join(" ")));
        }
        if opts.tcg {
            out.push_str(&format!(
                "vm config qemu {}\nvm config cpu qemu64\n",
                path(&opts.qemu)
            ));
        }
        // Placement, as the provider sends it (`host`, or a mirror partner's).
        if let Some(h) = &v.host {
            out.push_str(&format!("vm config schedule {}\n", quote(h)));
        } else if let Some(c) = &v.colocate {
            out.push_str(&format!("vm config colocate {}\n", quote(c)));
        }
        out.push_str(&format!("vm launch kvm {}\n", quote(&v.name)));
    }

    if !lab.mirrors.is_empty() {
        out.push('\n');
    }
    for m in &lab.mirrors {
        if m.direction != Direction::Both {
            comment(
                &mut out,
                &format!(
                    "{}: direction {} is not exported (minimega mirrors both ways)",
                    m.address,
                    m.direction.as_str()
                ),
            );
        }
        out.push_str(&format!(
            "tap mirror {} {} {} {}\n",
            quote(&m.source_vm),
            m.source_nic,
            quote(&m.dest_vm),
            m.dest_nic
        ));
    }

    out.push_str("\nvm start all\n");

    for v in step_order(lab) {
        if v.cc.is_empty() {
            continue;
        }
        out.push('\n');
        if !v.after.is_empty() {
            comment(
                &mut out,
                &format!(
                    "vm {}: after {} (minimega runs each VM's commands on its own)",
                    v.name,
                    v.after.join(", ")
                ),
            );
        }
        out.push_str(&format!("cc filter uuid={}\n", v.uuid));
        for s in &v.cc {
            if s.timeout_ms.is_some() || s.allow_failure {
                comment(
                    &mut out,
                    &format!("{}: timeout and allow-failure are not exported", s.address),
                );
            }
            match &s.action {
                CcActionSpec::Exec(c) | CcActionSpec::Background(c) => {
                    let kw = if matches!(s.action, CcActionSpec::Exec(_)) {
                        "exec"
                    } else {
                        "background"
                    };
                    match command_words(c) {
                        Some(w) => out.push_str(&format!("cc {kw} {w}\n")),
                        None => comment(
                            &mut out,
                            &format!(
                                "{}: not exported (minimega reads a first word stdin=/stdout=/stderr= as plumbing)",
                                s.address
                            ),
                        ),
                    }
                }
                CcActionSpec::Send { src, to } => {
                    let s_str = src.to_string_lossy();
                    let lands = format!("{MINICCC_FILES}/{}", s_str.trim_start_matches('/'));
                    if *to != lands {
                        comment(
                            &mut out,
                            &format!("{}: miniccc writes it to {lands}, not {to}", s.address),
                        );
                    }
                    out.push_str(&format!("cc send {}\n", path(src)));
                }
                CcActionSpec::Recv { src, to, .. } => {
                    if to.file_name().and_then(|f| f.to_str()) != Some(RECV_DIR) {
                        comment(
                            &mut out,
                            &format!(
                                "{}: minimega keeps it in its {RECV_DIR}, not {}",
                                s.address,
                                to.display()
                            ),
                        );
                    }
                    out.push_str(&format!("cc recv {}\n", quote(src)));
                }
            }
        }
    }
    if lab.vms.iter().any(|v| !v.cc.is_empty()) {
        out.push_str("\nclear cc filter\n");
    }
    // How to take it down again, as the provider's destroy does: mirrors
    // first, or minimega leaves the monitor's tap on its node's bridge.
    out.push('\n');
    comment(&mut out, "To remove this experiment from minimega:");
    let ns = quote(namespace);
    if !lab.mirrors.is_empty() {
        // `clear tap mirror` acts on the node it runs on: on every node.
        comment(
            &mut out,
            &format!("  namespace {ns} ns run clear tap mirror"),
        );
    }
    comment(&mut out, &format!("  namespace {ns} vm kill all"));
    comment(&mut out, &format!("  namespace {ns} vm flush"));
    comment(&mut out, &format!("  clear namespace {ns}"));
    out
}

/// The first `name` in a folder of `PATH` (an absolute path), if any.
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
