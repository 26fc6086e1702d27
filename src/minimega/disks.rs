//! The minimega provider's files: experiment disks and boot files, kept in
//! minimega's file path (its `-filepath`, default `BASE/files`) so that
//! minimega's iomeshage serves them to every node.
//!
//! Layout, under the head node's file path (every component a validated
//! name, never a raw user string):
//! - `megaplan/EXP/boot/SHA256`: a kernel or initrd, named by its digest
//!   (copied once; an identical file already there is not copied again);
//! - `megaplan/EXP/bases/SHA256`: a disk's `from` image, the same way;
//! - `megaplan/EXP/disks/NAME.FORMAT`: the experiment's disks.
//!
//! Disks are made on the head node (`disk create`, `disk snapshot` of the
//! placed base, or megaplan's own `mkfs.ext4 -d` for a filesystem with
//! injected files), and `vm config disk` / `kernel` / `initrd` name them by
//! their path relative to the file path: minimega resolves that against
//! its file path, and `vm launch` on the node the VM lands on fetches each
//! such file, and a disk's backing image, through iomeshage
//! (`QueuedVMs.GetFiles` → `iomHelper`, cmd/minimega/vms.go and
//! iomeshage.go in 3.0.1). That needs every node to run with the same
//! `-filepath`, as minimega's own deployments do. Placement is known only
//! once the scheduler ran, so the launch, not megaplan, decides which node
//! gets a copy.
//!
//! Invariants:
//! - Folders megaplan writes in are opened without following a link
//!   ([`crate::safefs::Dir`]); files are written under a temporary name and
//!   renamed into place.
//! - A removal names one validated file (or megaplan's own folder of the
//!   experiment) and runs on every node of the mesh (`file delete`, then
//!   `mesh send all file delete`): a copy iomeshage made is removed too.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::client::{Client, ClientError, Command, Name};
use crate::lab::{DiskFormat, DiskSource, DiskSpec, VmSpec};
use crate::safefs::{Dir, Open};

/// megaplan's folder in minimega's file path.
pub const TOP: &str = "megaplan";

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no disk '{0}' in the experiment")]
    UnknownDisk(String),
    #[error("'{name}' cannot name a file in minimega's file path: {why}")]
    BadName { name: String, why: &'static str },
    #[error("minimega's file path, as minimega reports it ({0:?}), is not an absolute path")]
    FilePath(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "disk '{disk}' is keep=#true and {rel} is already in minimega's file path: refusing to overwrite it (delete it there to start empty, or restore the state that records it)"
    )]
    KeepDiskExists { disk: String, rel: String },
    #[error("disk '{disk}': {source}")]
    Image {
        disk: String,
        source: crate::drivers::qemu_img::QemuImgError,
    },
    #[error("removing {rel} from node {node}: {error}")]
    Remove {
        rel: String,
        node: String,
        error: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A validated path component.
fn component(name: &str) -> Result<&str, FilesError> {
    match crate::validate::name_problem(name) {
        None => Ok(name),
        Some(why) => Err(FilesError::BadName {
            name: name.to_string(),
            why,
        }),
    }
}

/// `megaplan/EXP`, relative to the file path.
pub fn experiment_rel(experiment: &str) -> Result<String, FilesError> {
    Ok(format!("{TOP}/{}", component(experiment)?))
}

/// `megaplan/EXP/disks/FILE` for a disk's file name (`NAME.FORMAT`).
pub fn disk_rel(experiment: &str, file: &str) -> Result<String, FilesError> {
    Ok(format!(
        "{}/disks/{}",
        experiment_rel(experiment)?,
        component(file)?
    ))
}

/// The diskspec of a VM's disk: always virtio, as megaplan's own engine
/// attaches disks (the guest sees `vda`, `vdb`… in order).
pub fn diskspec(path: &str) -> String {
    format!("{path},virtio")
}

/// The head node's file path, as minimega resolves a relative path: set a
/// relative kernel, read it back, clear it (`vm config` is the namespace's,
/// so call this holding the connection, before the VM's own `clear vm
/// config`).
pub fn head_filepath(c: &mut Client, ns: &Name) -> Result<PathBuf, FilesError> {
    // Asked once per run and namespace: minimega's -filepath is fixed.
    static SEEN: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    if let Some(p) = SEEN.lock().expect("the file path cache").get(ns.as_str()) {
        return Ok(p.clone());
    }
    let p = ask_filepath(c, ns)?;
    SEEN.lock()
        .expect("the file path cache")
        .insert(ns.as_str().to_string(), p.clone());
    Ok(p)
}

fn ask_filepath(c: &mut Client, ns: &Name) -> Result<PathBuf, FilesError> {
    let kernel = || Command::new("vm").word("config").word("kernel");
    c.run_ok(&kernel().arg(TOP)?.in_namespace(ns))?;
    let r = c.run_ok(&kernel().in_namespace(ns));
    c.run_ok(
        &Command::new("clear")
            .word("vm")
            .word("config")
            .word("kernel")
            .in_namespace(ns),
    )?;
    let text = r?
        .into_iter()
        .next()
        .map(|r| r.response)
        .unwrap_or_default();
    let p = PathBuf::from(text.trim());
    match (
        p.is_absolute(),
        p.file_name().and_then(|n| n.to_str()),
        p.parent(),
    ) {
        (true, Some(TOP), Some(parent)) => Ok(parent.to_path_buf()),
        _ => Err(FilesError::FilePath(text)),
    }
}

/// `megaplan/EXP/SUB` under the file path, made if missing, never through a link.
fn folder(root: &Path, experiment: &str, sub: &str) -> Result<Dir, FilesError> {
    let top = Dir::open(root, false)
        .map_err(io(root))?
        .ok_or_else(|| FilesError::Io {
            path: root.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    let mut d = top;
    for name in [TOP, component(experiment)?, component(sub)?] {
        let p = d.path.join(name);
        d = d
            .subdir(name, true)
            .map_err(io(&p))?
            .ok_or_else(|| FilesError::Io {
                path: p.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
    }
    Ok(d)
}

/// The SHA-256 of a reader's bytes, in hex.
fn digest_of(mut r: impl Read, path: &Path) -> Result<String, FilesError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Copy `src` into `megaplan/EXP/SUB/SHA256` (skipped when a file of that
/// digest is there with that content); its path relative to the file path.
pub fn place(root: &Path, experiment: &str, sub: &str, src: &Path) -> Result<String, FilesError> {
    // Placed earlier in this run, and neither file changed since (same
    // inode, size and modification time): not hashed again (one kernel
    // for many VMs).
    type Key = (PathBuf, String, &'static str, PathBuf);
    static PLACED: Mutex<BTreeMap<Key, (Ident, Ident, String)>> = Mutex::new(BTreeMap::new());
    let key: Key = (
        root.to_path_buf(),
        experiment.to_string(),
        sub_name(sub)?,
        src.to_path_buf(),
    );
    if let Some((s, d, rel)) = PLACED.lock().expect("the placed cache").get(&key)
        && ident(src) == Some(*s)
        && ident_nofollow(&root.join(rel)) == Some(*d)
    {
        return Ok(rel.clone());
    }
    let before = ident(src);
    let rel = place_now(root, experiment, sub, src)?;
    if let (Some(s), Some(d)) = (before, ident_nofollow(&root.join(&rel)))
        && ident(src) == Some(s)
    {
        PLACED
            .lock()
            .expect("the placed cache")
            .insert(key, (s, d, rel.clone()));
    }
    Ok(rel)
}

/// A file's identity for the cache: device, inode, size, modification time.
type Ident = (u64, u64, u64, i64, i64);

fn ident_of(m: std::fs::Metadata) -> Ident {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec())
}

fn ident(p: &Path) -> Option<Ident> {
    std::fs::metadata(p).ok().map(ident_of)
}

fn ident_nofollow(p: &Path) -> Option<Ident> {
    std::fs::symlink_metadata(p)
        .ok()
        .filter(|m| m.is_file())
        .map(ident_of)
}

fn sub_name(sub: &str) -> Result<&'static str, FilesError> {
    ["boot", "bases", "disks"]
        .into_iter()
        .find(|s| *s == sub)
        .ok_or_else(|| FilesError::BadName {
            name: sub.to_string(),
            why: "not one of megaplan's folders",
        })
}

fn place_now(root: &Path, experiment: &str, sub: &str, src: &Path) -> Result<String, FilesError> {
    let dir = folder(root, experiment, sub)?;
    let want = digest_file(src)?;
    let rel = format!("{}/{sub}/{want}", experiment_rel(experiment)?);
    let dst = dir.path.join(&want);
    // Not there, or not that content (or not a plain file): replaced.
    if let Ok(f) = dir.open_file(&want, Open::Read)
        && f.metadata().is_ok_and(|m| m.is_file())
        && digest_of(&f, &dst)? == want
    {
        return Ok(rel);
    }
    let tmp = format!(".part-{want}-{}", std::process::id());
    let _ = dir.unlink(&tmp);
    let copied = (|| {
        let mut from = std::fs::File::open(src).map_err(io(src))?;
        let mut to = dir
            .open_file(&tmp, Open::CreateNew)
            .map_err(io(&dir.path.join(&tmp)))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = from.read(&mut buf).map_err(io(src))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            to.write_all(&buf[..n]).map_err(io(&dst))?;
        }
        to.sync_all().map_err(io(&dst))?;
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if got != want {
            return Err(FilesError::Io {
                path: src.to_path_buf(),
                source: std::io::Error::other("it changed while it was copied"),
            });
        }
        Ok(())
    })();
    if let Err(e) = copied.and_then(|()| dir.rename(&tmp, &want).map_err(io(&dst))) {
        let _ = dir.unlink(&tmp);
        return Err(e);
    }
    Ok(rel)
}

/// A kernel or initrd in `megaplan/EXP/boot/`: its relative path.
pub fn place_boot(root: &Path, experiment: &str, src: &Path) -> Result<String, FilesError> {
    place(root, experiment, "boot", src)
}

/// Once per run and experiment: the boot files in `megaplan/EXP/boot/` that
/// no VM of the experiment names any more (a kernel changed, a VM left the
/// file) go from every node. `sources` are every kernel and initrd of the
/// lab; when one cannot be read, nothing is pruned (only a file proven
/// unneeded is removed).
pub fn prune_boot(
    client: &Mutex<Client>,
    experiment: &str,
    sources: &[&Path],
) -> Result<(), FilesError> {
    static DONE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    if !DONE
        .lock()
        .expect("the pruned set")
        .insert(experiment.to_string())
    {
        return Ok(());
    }
    let mut needed = BTreeSet::new();
    for p in sources {
        match digest_file(p) {
            Ok(d) => needed.insert(d),
            Err(_) => return Ok(()),
        };
    }
    let dir = format!("{}/boot", experiment_rel(experiment)?);
    let prefix = format!("{dir}/");
    let mut c = client.lock().expect("the client lock");
    for name in listed(&mut c, &dir)? {
        let Some(d) = name.strip_prefix(&prefix) else {
            continue;
        };
        let digest_named = d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit());
        if digest_named && !needed.contains(d) {
            delete_everywhere(&mut c, &format!("{prefix}{d}"))?;
        }
    }
    Ok(())
}

/// A file's SHA-256, remembered for the run while the file is unchanged.
fn digest_file(p: &Path) -> Result<String, FilesError> {
    static SEEN: Mutex<BTreeMap<PathBuf, (Ident, String)>> = Mutex::new(BTreeMap::new());
    let now = ident(p);
    if let Some((i, d)) = SEEN.lock().expect("the digest cache").get(p)
        && now == Some(*i)
    {
        return Ok(d.clone());
    }
    let d = digest_of(std::fs::File::open(p).map_err(io(p))?, p)?;
    if let Some(i) = now
        && ident(p) == Some(i)
    {
        SEEN.lock()
            .expect("the digest cache")
            .insert(p.to_path_buf(), (i, d.clone()));
    }
    Ok(d)
}

/// Whether the head node's file path has `rel` (a validated relative path).
fn head_has(c: &mut Client, rel: &str) -> Result<bool, FilesError> {
    Ok(!listed(c, rel)?.is_empty())
}

/// `file list REL` on the head node: the names (relative to the file path).
fn listed(c: &mut Client, rel: &str) -> Result<BTreeSet<String>, FilesError> {
    let mut out = BTreeSet::new();
    for r in c.run_ok(&Command::new("file").word("list").arg(rel)?)? {
        for row in r.rows() {
            if let Some((_, n)) = row.iter().find(|(k, _)| *k == "name") {
                out.insert((*n).to_string());
            }
        }
    }
    Ok(out)
}

/// `file delete REL` on the head node and on every other node of the mesh.
pub fn delete_everywhere(c: &mut Client, rel: &str) -> Result<(), FilesError> {
    let del = Command::new("file").word("delete").arg(rel)?;
    c.run_ok(&del)?;
    let peers = c.run_ok(&Command::new("mesh").word("list").word("peers"))?;
    let any = peers
        .iter()
        .any(|r| r.data.as_array().is_some_and(|a| !a.is_empty()));
    if any {
        let sent = Command::new("mesh").word("send").word("all").then(&del);
        for r in c.run(&sent)? {
            if !r.error.is_empty() {
                return Err(FilesError::Remove {
                    rel: rel.to_string(),
                    node: r.host,
                    error: r.error,
                });
            }
        }
    }
    Ok(())
}

/// Make a disk of the experiment in `megaplan/EXP/disks/` on the head node.
pub async fn create(
    client: &std::sync::Mutex<Client>,
    ns: &Name,
    experiment: &str,
    spec: &DiskSpec,
) -> Result<(), FilesError> {
    let file = spec.file_name();
    let rel = disk_rel(experiment, &file)?;
    let root = {
        let mut c = client.lock().expect("the client lock");
        let root = head_filepath(&mut c, ns)?;
        if spec.keep && head_has(&mut c, &rel)? {
            return Err(FilesError::KeepDiskExists {
                disk: spec.name.clone(),
                rel,
            });
        }
        // A copy iomeshage made of an earlier disk of that name would be
        // used instead of the new one (a node fetches only what it lacks).
        delete_everywhere(&mut c, &rel)?;
        root
    };
    let dir = folder(&root, experiment, "disks")?;
    if spec.filesystem.is_some() {
        return make_filesystem(&dir, spec).await;
    }
    let mut c = client.lock().expect("the client lock");
    let base_rel = match &spec.from {
        Some(base) => Some(place(&root, experiment, "bases", base)?),
        None => None,
    };
    for cmd in disk_commands(experiment, spec, base_rel.as_deref())? {
        c.run_ok(&cmd)?;
    }
    Ok(())
}

/// The commands that make a disk in `megaplan/EXP/disks/` on the head node,
/// as the provider sends them and `export minimega` writes them: `disk
/// create`, or `disk snapshot` of its base (placed at `base_rel`) and `disk
/// resize`. None for a disk with a filesystem: megaplan's own mkfs makes
/// that one ([`make_filesystem`]).
pub fn disk_commands(
    experiment: &str,
    spec: &DiskSpec,
    base_rel: Option<&str>,
) -> Result<Vec<Command>, FilesError> {
    if spec.filesystem.is_some() {
        return Ok(Vec::new());
    }
    let rel = disk_rel(experiment, &spec.file_name())?;
    let mut out = Vec::new();
    match base_rel {
        Some(base_rel) => {
            // minimega writes the backing path relative to the new disk, and a
            // node fetching the disk fetches its backing image with it.
            out.push(
                Command::new("disk")
                    .word("snapshot")
                    .arg(base_rel)?
                    .arg(&rel)?,
            );
            if let Some(size) = spec.size_bytes {
                out.push(Command::new("disk").word("resize").arg(&rel)?.num(size));
            }
        }
        None => out.push(
            Command::new("disk")
                .word("create")
                .word(match spec.format {
                    DiskFormat::Qcow2 => "qcow2",
                    DiskFormat::Raw => "raw",
                })
                .arg(&rel)?
                .num(spec.size_bytes.unwrap_or(1 << 30)),
        ),
    }
    Ok(out)
}

/// A disk with a filesystem, made by megaplan's own `mkfs.ext4 -d` with its
/// injected files, as `dir/NAME.FORMAT` (`dir` is `megaplan/EXP/disks/`).
/// minimega's `disk inject` needs a partition with a filesystem already
/// (and nbd), and `disk create` makes neither.
pub async fn make_filesystem(dir: &Dir, spec: &DiskSpec) -> Result<(), FilesError> {
    let file = spec.file_name();
    component(&file)?;
    // The files to inject, staged in a fresh folder of ours beside it.
    let stage_name = format!(".stage-{file}");
    let stage_path = dir.path.join(&stage_name);
    let _ = std::fs::remove_dir_all(&stage_path);
    let stage = dir
        .subdir(&stage_name, true)
        .map_err(io(&stage_path))?
        .ok_or_else(|| FilesError::Io {
            path: stage_path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    let tmp = format!(".part-{file}");
    let _ = dir.unlink(&tmp);
    let made = async {
        for (src, dst) in &spec.inject {
            let target = stage.path.join(dst.trim_start_matches('/'));
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p).map_err(io(p))?;
            }
            crate::host::local::copy_tree(src, &target).map_err(io(src))?;
        }
        // The guest's folders: 0755, whatever megaplan's umask.
        crate::host::local::dirs_0755(&stage.path).map_err(io(&stage.path))?;
        crate::drivers::qemu_img::make_ext4(
            &dir.path.join(&tmp),
            crate::host::local::fmt_of(spec.format),
            spec.size_bytes.unwrap_or(1 << 30),
            Some(&stage.path),
        )
        .await
        .map_err(|source| FilesError::Image {
            disk: spec.name.clone(),
            source,
        })?;
        dir.rename(&tmp, &file).map_err(io(&dir.path))
    }
    .await;
    let _ = std::fs::remove_dir_all(&stage_path);
    if made.is_err() {
        let _ = dir.unlink(&tmp);
    }
    made
}

/// `megaplan/EXP/SUB/SHA256` for a file (read to hash it, not copied):
/// where [`place`] puts it.
pub fn digest_rel(experiment: &str, sub: &str, src: &Path) -> Result<String, FilesError> {
    let sub = sub_name(sub)?;
    Ok(format!(
        "{}/{sub}/{}",
        experiment_rel(experiment)?,
        digest_file(src)?
    ))
}

/// The `vm config disk` values of a VM, as the provider sends them and
/// export writes them: an experiment disk by its path in `disks/`; a
/// `disk "PATH"` of a VM with `snapshot` (the default) by digest in
/// `bases/`, where `base` puts it (minimega writes an overlay and only
/// reads the image, so the copy iomeshage serves to the VM's node is the
/// same disk). Without `snapshot` the VM writes to the user's own file,
/// which a copy would silently divert: that one stays by absolute path
/// (every node the VM may land on needs it there).
pub fn vm_disks(
    experiment: &str,
    vm: &VmSpec,
    disks: &[DiskSpec],
    mut base: impl FnMut(&Path) -> Result<String, FilesError>,
) -> Result<Vec<String>, FilesError> {
    let mut out = Vec::new();
    for d in &vm.disks {
        let path = match &d.source {
            DiskSource::Named(n) => {
                let spec = disks
                    .iter()
                    .find(|s| &s.name == n)
                    .ok_or_else(|| FilesError::UnknownDisk(n.clone()))?;
                disk_rel(experiment, &spec.file_name())?
            }
            DiskSource::Path(p) if vm.snapshot => base(p)?,
            DiskSource::Path(p) => p.to_string_lossy().into_owned(),
        };
        out.push(diskspec(&path));
    }
    Ok(out)
}

/// A VM's `vm config append`: megaplan's `megaplan.mounts=vdX:/PATH` for
/// the disks its init mounts (as on megaplan's own engine), then the VM's
/// own `append`.
pub fn vm_append(vm: &VmSpec) -> Option<String> {
    let mounts: Vec<String> = vm
        .disks
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            Some(format!(
                "vd{}:{}",
                (b'a' + i as u8) as char,
                d.mount.as_ref()?
            ))
        })
        .collect();
    let append: Vec<String> = (!mounts.is_empty())
        .then(|| format!("megaplan.mounts={}", mounts.join(",")))
        .into_iter()
        .chain(vm.append.clone())
        .collect();
    (!append.is_empty()).then(|| append.join(" "))
}

/// A file megaplan puts into minimega's file path for an experiment.
#[derive(Clone, Debug, PartialEq)]
pub enum Needed {
    /// A copy of this file at `rel` (a boot file or base image, by digest).
    Copy { rel: String, src: PathBuf },
    /// This disk, made by megaplan's mkfs with its injected files.
    Mkfs { rel: String, spec: DiskSpec },
    /// The folder `megaplan/EXP/disks/`: minimega's `disk create` and
    /// `disk snapshot` make no folder.
    Folder { rel: String },
}

impl Needed {
    /// Its path relative to the file path.
    pub fn rel(&self) -> &str {
        match self {
            Needed::Copy { rel, .. } | Needed::Mkfs { rel, .. } | Needed::Folder { rel } => rel,
        }
    }
}

/// Write `files` under `root` (a minimega file path, or a folder to copy
/// into one) as the provider places them: the same names, the same
/// no-link and rename-into-place rules. A `keep` disk already there is
/// refused, not overwritten.
pub async fn stage(root: &Path, experiment: &str, files: &[Needed]) -> Result<(), FilesError> {
    for f in files {
        match f {
            Needed::Copy { rel, src } => {
                let sub = rel
                    .strip_prefix(&format!("{}/", experiment_rel(experiment)?))
                    .and_then(|r| r.split('/').next())
                    .unwrap_or_default();
                let placed = place(root, experiment, sub, src)?;
                if placed != *rel {
                    return Err(FilesError::Io {
                        path: src.clone(),
                        source: std::io::Error::other("it changed while the script was written"),
                    });
                }
            }
            Needed::Folder { .. } => {
                folder(root, experiment, "disks")?;
            }
            Needed::Mkfs { rel, spec } => {
                let dir = folder(root, experiment, "disks")?;
                if spec.keep && dir.open_file(&spec.file_name(), Open::Read).is_ok() {
                    return Err(FilesError::KeepDiskExists {
                        disk: spec.name.clone(),
                        rel: rel.clone(),
                    });
                }
                make_filesystem(&dir, spec).await?;
            }
        }
    }
    Ok(())
}

/// Remove a disk's file (a name from the state, validated here) from every node.
pub fn remove(c: &mut Client, experiment: &str, file: &str) -> Result<(), FilesError> {
    delete_everywhere(c, &disk_rel(experiment, file)?)
}

/// The disk files the head node has in `megaplan/EXP/disks/`.
pub fn observe(c: &mut Client, experiment: &str) -> Result<BTreeSet<String>, FilesError> {
    let dir = format!("{}/disks", experiment_rel(experiment)?);
    let prefix = format!("{dir}/");
    Ok(listed(c, &dir)?
        .into_iter()
        .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
        .collect())
}

/// After the experiment's last VM is gone (a destroy that left nothing, or
/// only `keep` disks, recorded): its boot files go from every node, and its
/// whole folder when no disk (a `keep` one) is left in it. With a keep
/// disk, `disks/` and `bases/` stay: a keep disk made from a base image is
/// a qcow2 overlay whose backing file is in `bases/`.
pub fn forget(c: &mut Client, experiment: &str) -> Result<(), FilesError> {
    let exp = experiment_rel(experiment)?;
    if observe(c, experiment)?.is_empty() {
        delete_everywhere(c, &exp)
    } else {
        delete_everywhere(c, &format!("{exp}/boot"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(text: &str) -> crate::lab::Lab {
        let src = crate::diag::SourceFile::new(Path::new("/x/t.kdl"), text.to_string());
        let (lab, d) = crate::validate::check(&src);
        lab.unwrap_or_else(|| panic!("{}", d.render_plain(&src)))
    }

    #[test]
    fn disks_map_except_a_raw_disk_from_a_base() {
        let head = "experiment \"e\" {\n provider \"minimega\" { base \"/tmp/mm\" }\n}\n";
        let ok = lab(&format!(
            "{head}disk \"a\" size=\"1G\"\ndisk \"b\" {{ from \"/x/base.qcow2\" }}\ndisk \"c\" size=\"8M\" filesystem=\"ext4\" {{ inject \"/x/f\" \"/f\" }}\n"
        ));
        assert_eq!(super::super::provider::unmapped(&ok), Vec::<String>::new());
        let raw = lab(&format!(
            "{head}disk \"r\" format=\"raw\" {{ from \"/x/base.img\" }}\n"
        ));
        let problems = super::super::provider::unmapped(&raw);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("disk.r: a raw disk from a base image"),
            "{problems:?}"
        );
    }

    #[test]
    fn paths_are_made_of_validated_names_only() {
        assert_eq!(
            disk_rel("lab", "data.qcow2").unwrap(),
            "megaplan/lab/disks/data.qcow2"
        );
        for bad in ["..", "a/b", "", ".hidden", "-x", "a*b", "a b"] {
            assert!(disk_rel("lab", bad).is_err(), "{bad:?}");
            assert!(experiment_rel(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_boot_file_is_copied_once_by_digest_and_a_planted_link_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("files");
        std::fs::create_dir(&root).unwrap();
        let src = t.path().join("kernel");
        std::fs::write(&src, b"kernel bytes").unwrap();
        let rel = place_boot(&root, "lab", &src).unwrap();
        let digest = digest_of(&b"kernel bytes"[..], &src).unwrap();
        assert_eq!(rel, format!("megaplan/lab/boot/{digest}"));
        let placed = root.join(&rel);
        assert_eq!(std::fs::read(&placed).unwrap(), b"kernel bytes");
        // Identical: not copied again (the inode stays).
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&placed).unwrap().ino();
        place_boot(&root, "lab", &src).unwrap();
        assert_eq!(std::fs::metadata(&placed).unwrap().ino(), ino);
        // Changed content under the digest's name: replaced.
        std::fs::write(&placed, b"tampered").unwrap();
        place_boot(&root, "lab", &src).unwrap();
        assert_eq!(std::fs::read(&placed).unwrap(), b"kernel bytes");
        // A link planted as the digest's name is replaced, its target untouched.
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"victim").unwrap();
        std::fs::remove_file(&placed).unwrap();
        std::os::unix::fs::symlink(&victim, &placed).unwrap();
        place_boot(&root, "lab", &src).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
        assert!(!std::fs::symlink_metadata(&placed).unwrap().is_symlink());
        // A link in place of megaplan's folder is refused.
        let other = t.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::remove_dir_all(root.join("megaplan/lab")).unwrap();
        std::os::unix::fs::symlink(&other, root.join("megaplan/lab")).unwrap();
        assert!(place_boot(&root, "lab", &src).is_err());
        assert!(std::fs::read_dir(&other).unwrap().next().is_none());
    }
}
