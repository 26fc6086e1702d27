//! Content digests of the files a lab boots from or builds on: kernels,
//! initrds, disk `from` images and VM disk paths. A file rebuilt at the same
//! path is a different file; its digest says so, and the planner replaces
//! what uses it ("kernel changed (content)").
//!
//! Invariants:
//! - Computed before planning (planning stays pure: `plan` reads no file),
//!   once per distinct file per run, streaming (constant memory).
//! - A file that cannot be read has no digest; the planner compares digests
//!   only where both the state and the file have one.
//! - [`of_lab_cached`] reuses a digest only for the same device, inode,
//!   size, mtime and ctime; anything else is read again.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lab::{DiskSource, Lab};

/// `path -> "sha256:HEX"` for every file a lab reads.
pub type Digests = BTreeMap<PathBuf, String>;

/// The files of `lab` whose content matters, each once.
pub fn files_of(lab: &Lab) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for vm in &lab.vms {
        out.extend(vm.kernel.iter().cloned());
        out.extend(vm.initrd.iter().cloned());
        for d in &vm.disks {
            if let DiskSource::Path(p) = &d.source {
                out.push(p.clone());
            }
        }
    }
    for d in &lab.disks {
        out.extend(d.from.iter().cloned());
    }
    out.sort();
    out.dedup();
    out
}

/// The digest of one file, read in 1 MiB pieces.
pub fn of_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// The digests of every readable file of `lab`.
pub fn of_lab(lab: &Lab) -> Digests {
    files_of(lab)
        .into_iter()
        .filter_map(|p| of_file(&p).ok().map(|d| (p, d)))
        .collect()
}

/// What identifies one version of a file without reading it: device,
/// inode, size, mtime and ctime (which no user can set back), all in ns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        m.is_file().then(|| Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    entries: BTreeMap<PathBuf, (Stamp, String)>,
}

/// The largest cache file read (a cache is small: one line per file).
const MAX_CACHE: u64 = 1 << 20;

/// [`of_lab`], reusing the digest recorded in `cache` (a file in the state
/// folder) for a file whose [`Stamp`] is unchanged, so a big backing image
/// is read once, not at every plan. The cache holds only the lab's files;
/// a cache that cannot be read or parsed is ignored (and rewritten).
pub fn of_lab_cached(lab: &Lab, cache: &Path) -> Digests {
    of_lab_cached_with(lab, cache, RACY)
}

/// A file changed this recently may change again within the same
/// timestamp tick (the kernel's clock for file times is coarse), so its
/// stamp could match a different content: it is not cached (as git treats
/// "racily clean" entries).
const RACY: std::time::Duration = std::time::Duration::from_secs(3);

fn of_lab_cached_with(lab: &Lab, cache: &Path, racy: std::time::Duration) -> Digests {
    let old: Cache = std::fs::File::open(cache)
        .ok()
        .filter(|f| {
            f.metadata()
                .is_ok_and(|m| m.is_file() && m.len() <= MAX_CACHE)
        })
        .and_then(|f| serde_json::from_reader(std::io::BufReader::new(f)).ok())
        .unwrap_or_default();
    let mut new = Cache::default();
    let mut out = Digests::new();
    for p in files_of(lab) {
        let Some(stamp) = Stamp::of(&p) else {
            continue;
        };
        let digest = match old.entries.get(&p) {
            Some((s, d)) if *s == stamp && d.starts_with("sha256:") => d.clone(),
            _ => match of_file(&p) {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        // Changed while it was read, or so recently that it may change again
        // unseen: not cached, computed again next time.
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let settled = now_ns - stamp.ctime_ns.max(stamp.mtime_ns) >= racy.as_nanos() as i128;
        if settled && Stamp::of(&p).as_ref() == Some(&stamp) {
            new.entries.insert(p.clone(), (stamp, digest.clone()));
        }
        out.insert(p, digest);
    }
    if new.entries != old.entries {
        let _ = write_atomically(cache, &serde_json::to_vec(&new).expect("cache serialises"));
    }
    out
}

/// Temp file beside `path` (created new, never through a link), then rename.
fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn same_path_new_content_new_digest() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, b"kernel one").unwrap();
        let a = of_file(&k).unwrap();
        assert_eq!(a, of_file(&k).unwrap());
        std::fs::write(&k, b"kernel two").unwrap();
        let b = of_file(&k).unwrap();
        assert_ne!(a, b);
        // sha256("abc"), streamed.
        std::fs::write(&k, b"abc").unwrap();
        assert_eq!(
            of_file(&k).unwrap(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn lab_with_kernel(k: &Path) -> Lab {
        let text = format!(
            "experiment \"d\"\nnetwork \"LAN\"\nvm \"A\" {{ kernel \"{}\"; nic \"LAN\"; }}\n",
            k.display()
        );
        crate::plan::tests::lab(&text)
    }

    #[test]
    fn a_file_changed_just_now_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        let cache = dir.path().join("digests.json");
        std::fs::write(&k, b"kernel one").unwrap();
        let lab = lab_with_kernel(&k);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            of_lab_cached_with(&lab, &cache, hour)[&k],
            of_file(&k).unwrap()
        );
        let text = std::fs::read_to_string(&cache).unwrap_or_default();
        assert!(!text.contains("sha256:"), "{text}");
    }

    #[test]
    fn the_cache_is_used_only_for_the_same_file_version() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        let cache = dir.path().join("digests.json");
        std::fs::write(&k, b"kernel one").unwrap();
        let lab = lab_with_kernel(&k);
        let first = of_lab_cached_with(&lab, &cache, Duration::ZERO);
        assert_eq!(first[&k], of_file(&k).unwrap());
        assert!(cache.exists());
        // A forged cache entry for the same stamp is what a stamp-only
        // check would believe: proof the cache is read…
        let text = std::fs::read_to_string(&cache).unwrap();
        let forged = text.replace(&first[&k], "sha256:forged");
        std::fs::write(&cache, forged).unwrap();
        assert_eq!(
            of_lab_cached_with(&lab, &cache, Duration::ZERO)[&k],
            "sha256:forged"
        );
        // …and that a rebuilt file (new ctime, maybe new inode) is read again.
        std::fs::write(&k, b"kernel two").unwrap();
        assert_eq!(
            of_lab_cached_with(&lab, &cache, Duration::ZERO)[&k],
            of_file(&k).unwrap()
        );
        // A damaged cache is ignored.
        std::fs::write(&cache, b"{not json").unwrap();
        assert_eq!(of_lab_cached(&lab, &cache)[&k], of_file(&k).unwrap());
    }
}
