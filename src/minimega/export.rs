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

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::config::{self, Key};
use super::disks;
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
    exported(lab, opts).script
}

/// A script and the files it names in minimega's file path.
#[derive(Clone, Debug)]
pub struct Exported {
    pub script: String,
    /// What megaplan places there before the script runs, and the script
    /// cannot: boot files and base images by digest, disks made by mkfs
    /// ([`disks::stage`] writes them, `export --stage DIR`).
    pub files: Vec<disks::Needed>,
}

/// The experiment as a minimega script, and the files it needs.
pub fn exported(lab: &Lab, opts: &Options) -> Exported {
    let (body, files) = script(lab, opts);
    let mut head = String::new();
    intro(&mut head, lab);
    if !files.is_empty() {
        comment(
            &mut head,
            "Files this script names in minimega's file path (-filepath, default BASE/files) on the node",
        );
        comment(
            &mut head,
            "reading it; minimega's iomeshage serves them to the other nodes, which need the same -filepath.",
        );
        comment(
            &mut head,
            "Place them there first (`megaplan export minimega FILE --stage FILEPATH` writes them):",
        );
        for f in &files {
            match f {
                disks::Needed::Copy { rel, src } => comment(
                    &mut head,
                    &format!("  {rel}  <- a copy of {}", src.display()),
                ),
                disks::Needed::Folder { rel } => comment(
                    &mut head,
                    &format!("  {rel}  <- a folder (minimega's `disk create` makes none)"),
                ),
                disks::Needed::Mkfs { rel, spec } => comment(
                    &mut head,
                    &format!(
                        "  {rel}  <- disk {}: mkfs.{} of {} bytes with its injected files",
                        spec.name,
                        spec.filesystem.as_deref().unwrap_or("ext4"),
                        spec.size_bytes.unwrap_or(1 << 30)
                    ),
                ),
            }
        }
    }
    Exported {
        script: guard_preprocessor(head + &body),
        files,
    }
}

/// Where a kernel, initrd or image goes in the file path (`SUB/SHA256`, as
/// the provider places it), recorded in `files`; a file that cannot be read
/// here keeps its absolute path, with a comment saying so.
fn boot_or_base(
    out: &mut String,
    files: &mut Vec<disks::Needed>,
    experiment: &str,
    sub: &str,
    src: &Path,
    owner: &str,
) -> String {
    match disks::digest_rel(experiment, sub, src) {
        Ok(rel) => {
            let n = disks::Needed::Copy {
                rel: rel.clone(),
                src: src.to_path_buf(),
            };
            if !files.contains(&n) {
                files.push(n);
            }
            rel
        }
        Err(e) => {
            comment(
                out,
                &format!(
                    "{owner}: {} by absolute path (every node needs it there): cannot name it in the file path: {e}",
                    src.display()
                ),
            );
            src.to_string_lossy().into_owned()
        }
    }
}

fn intro(out: &mut String, lab: &Lab) {
    comment(
        out,
        &format!(
            "minimega script for the megaplan experiment '{}' ({}), written by `megaplan export minimega`.",
            lab.name,
            lab.file.display()
        ),
    );
    comment(
        out,
        &format!(
            "Each VM carries megaplan's ownership marker as the tag `{MARKER_TAG}` = EXPERIMENT:ADDRESS."
        ),
    );
}

fn script(lab: &Lab, opts: &Options) -> (String, Vec<disks::Needed>) {
    let mut out = String::new();
    let mut files = Vec::new();
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

    // Disks: in megaplan's folder of minimega's file path, made by the
    // commands the provider sends (disks.rs), or by megaplan's mkfs.
    for d in &lab.disks {
        out.push('\n');
        if d.from.is_some() && d.format != crate::lab::DiskFormat::Qcow2 {
            comment(
                &mut out,
                &format!(
                    "disk {}: a {} disk with `from` is not exported (minimega's snapshots are qcow2)",
                    d.name,
                    d.format.as_str()
                ),
            );
            continue;
        }
        let rel = match disks::disk_rel(&lab.name, &d.file_name()) {
            Ok(r) => r,
            Err(e) => {
                comment(&mut out, &format!("disk {}: not exported: {e}", d.name));
                continue;
            }
        };
        if d.filesystem.is_some() {
            comment(
                &mut out,
                &format!(
                    "disk {}: {rel} is made by megaplan (mkfs.{} with its files), not by a minimega command: see the files above",
                    d.name,
                    d.filesystem.as_deref().unwrap_or("ext4")
                ),
            );
            files.push(disks::Needed::Mkfs {
                rel,
                spec: d.clone(),
            });
        } else {
            let base = d
                .from
                .as_deref()
                .map(|f| boot_or_base(&mut out, &mut files, &lab.name, "bases", f, &d.name));
            match disks::disk_commands(&lab.name, d, base.as_deref()) {
                Ok(cmds) => {
                    if let Ok(exp) = disks::experiment_rel(&lab.name) {
                        let n = disks::Needed::Folder {
                            rel: format!("{exp}/disks/"),
                        };
                        if !files.contains(&n) {
                            files.push(n);
                        }
                    }
                    for c in cmds {
                        out.push_str(c.as_str());
                        out.push('\n');
                    }
                }
                Err(e) => comment(&mut out, &format!("disk {}: not exported: {e}", d.name)),
            }
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
        // The provider's own commands (config.rs), with export's notes
        // where they belong: before a command (`before`) or after it.
        let mut before: HashMap<Key, String> = HashMap::new();
        let mut after: HashMap<Key, String> = HashMap::new();
        let mut boot = |kw: Key, p: &Option<std::path::PathBuf>| {
            p.as_ref().map(|p| {
                let mut notes = String::new();
                let rel = boot_or_base(&mut notes, &mut files, &lab.name, "boot", p, &v.name);
                before.insert(kw, notes);
                rel
            })
        };
        let kernel = boot(Key::Kernel, &v.kernel);
        let initrd = boot(Key::Initrd, &v.initrd);
        let mut disk_values = Vec::new();
        if !v.disks.is_empty() {
            let mut placed = String::new();
            let values = disks::vm_disks(&lab.name, v, &lab.disks, |p| {
                Ok(boot_or_base(
                    &mut placed,
                    &mut files,
                    &lab.name,
                    "bases",
                    p,
                    &v.name,
                ))
            });
            let mut notes = String::new();
            if !v.snapshot
                && v.disks
                    .iter()
                    .any(|d| matches!(d.source, DiskSource::Path(_)))
            {
                comment(
                    &mut notes,
                    &format!(
                        "vm {}: snapshot false: its disk image by absolute path, on every node it may run on",
                        v.name
                    ),
                );
            }
            match values {
                Ok(values) => {
                    disk_values = values;
                    before.insert(Key::Disk, placed);
                    after.insert(Key::Disk, notes);
                }
                Err(e) => {
                    comment(
                        &mut placed,
                        &format!("vm {}: disks not exported: {e}", v.name),
                    );
                    after.insert(Key::Snapshot, placed + &notes);
                }
            }
        }
        let cfg = config::vm_config(
            &lab.name,
            v,
            &config::Files {
                kernel,
                initrd,
                disks: disk_values,
                tcg_qemu: opts.tcg.then_some(opts.qemu.as_path()),
            },
        );
        for c in &cfg {
            if let Some(n) = before.remove(&c.key) {
                out.push_str(&n);
            }
            out.push_str(&c.script_line());
            out.push('\n');
            if let Some(n) = after.remove(&c.key) {
                out.push_str(&n);
            }
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
    (out, files)
}

/// The first `name` in a folder of `PATH` (an absolute path), if any.
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn lab_at(dir: &Path, text: &str) -> Lab {
        let src = crate::diag::SourceFile::new(dir.join("e.kdl"), text.to_string());
        let (lab, d) = crate::validate::check(&src);
        lab.unwrap_or_else(|| panic!("{}", d.render_plain(&src)))
    }

    /// A lab whose boot files and images exist, as export reads them.
    fn fixture() -> (tempfile::TempDir, Lab) {
        let t = tempfile::tempdir().unwrap();
        for (f, bytes) in [
            ("vmlinuz", &b"kernel"[..]),
            ("initrd", b"initrd"),
            ("base.qcow2", b"base"),
            ("own.img", b"own"),
            ("motd", b"hello"),
        ] {
            std::fs::write(t.path().join(f), bytes).unwrap();
        }
        let lab = lab_at(
            t.path(),
            r#"experiment "e"
disk "b" size="2G" { from "base.qcow2"; }
disk "fs" size="16M" filesystem="ext4" { inject "motd" "/etc/motd"; }
vm "A" {
    kernel "vmlinuz"
    initrd "initrd"
    disk "b"
    disk "own.img"
    disk "fs" mount="/data"
}
vm "B" {
    kernel "vmlinuz"
    snapshot #false
    disk "own.img"
}
"#,
        );
        (t, lab)
    }

    #[test]
    fn boot_files_and_images_are_named_by_digest_in_the_file_path_as_the_provider_places_them() {
        let (t, lab) = fixture();
        let ex = exported(&lab, &Options::of(&lab));
        let s = &ex.script;
        let (k, i, b, own) = (sha(b"kernel"), sha(b"initrd"), sha(b"base"), sha(b"own"));
        for want in [
            format!(
                "vm config kernel megaplan/e/boot/{k}\nvm config initrd megaplan/e/boot/{i}\nvm config append megaplan.mounts=vdc:/data\n"
            ),
            format!(
                "disk snapshot \"megaplan/e/bases/{b}\" \"megaplan/e/disks/b.qcow2\"\ndisk resize \"megaplan/e/disks/b.qcow2\" 2147483648\n"
            ),
            format!(
                "vm config disk megaplan/e/disks/b.qcow2,virtio megaplan/e/bases/{own},virtio megaplan/e/disks/fs.qcow2,virtio\n"
            ),
            // snapshot #false: the VM writes the user's own file.
            format!(
                "vm config disk {},virtio\n# vm B: snapshot false",
                t.path().join("own.img").display()
            ),
            "# disk fs: megaplan/e/disks/fs.qcow2 is made by megaplan".into(),
            format!(
                "#   megaplan/e/boot/{k}  <- a copy of {}\n",
                t.path().join("vmlinuz").display()
            ),
            "#   megaplan/e/disks/fs.qcow2  <- disk fs: mkfs.ext4 of 16777216 bytes".into(),
        ] {
            assert!(s.contains(&want), "missing:\n{want}\nin:\n{s}");
        }
        // No command makes the mkfs disk; no absolute kernel path.
        assert!(!s.contains("\ndisk create"), "{s}");
        assert!(!s.contains("\ndisk inject"), "{s}");
        assert!(
            !s.contains(&format!("kernel {}", t.path().display())),
            "{s}"
        );
        // The files, once each, in the order the script names them.
        let rels: Vec<&str> = ex.files.iter().map(disks::Needed::rel).collect();
        assert_eq!(
            rels,
            [
                format!("megaplan/e/bases/{b}"),
                "megaplan/e/disks/".into(),
                "megaplan/e/disks/fs.qcow2".into(),
                format!("megaplan/e/boot/{k}"),
                format!("megaplan/e/boot/{i}"),
                format!("megaplan/e/bases/{own}"),
            ],
            "{s}"
        );
        // The header lists every file before the first command.
        let first = s.find("\nnamespace ").unwrap();
        for r in &rels {
            assert!(s[..first].contains(&format!("#   {r}  <- ")), "{r}:\n{s}");
        }
    }

    #[test]
    fn stage_writes_the_copies_where_the_script_names_them() {
        let (t, lab) = fixture();
        let ex = exported(&lab, &Options::of(&lab));
        let root = t.path().join("files");
        std::fs::create_dir(&root).unwrap();
        // The copies (mkfs is exercised end to end in tests/minimega_e2e.rs).
        let copies: Vec<disks::Needed> = ex
            .files
            .iter()
            .filter(|f| !matches!(f, disks::Needed::Mkfs { .. }))
            .cloned()
            .collect();
        assert_eq!(copies.len(), 5);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(disks::stage(&root, &lab.name, &copies))
            .unwrap();
        assert!(root.join("megaplan/e/disks").is_dir());
        for f in &copies {
            let disks::Needed::Copy { rel, src } = f else {
                continue;
            };
            assert_eq!(
                std::fs::read(root.join(rel)).unwrap(),
                std::fs::read(src).unwrap(),
                "{rel}"
            );
        }
        // A file changed since the script was written is refused, not
        // staged under a name the script does not use.
        std::fs::write(t.path().join("vmlinuz"), b"other kernel").unwrap();
        assert!(
            rt.block_on(disks::stage(&root, &lab.name, &copies))
                .is_err()
        );
    }
}
