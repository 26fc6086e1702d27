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

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
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
}
