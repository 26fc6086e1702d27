//! What the planner hands an engine about a lab besides ops: the host files
//! a change will read ([`Requirements`], for `Provider::preflight`), and the
//! problems an engine's own layout finds in a lab validation accepted
//! ([`LabProblem`], from `Provider::check_lab`). Both are plain values; no
//! `Lab` crosses the seam.

use std::path::PathBuf;

use crate::diag::Code;
use crate::lab::{CcActionSpec, Lab};

/// What changing things will read on this machine, derived from the lab by
/// [`Requirements::of`] (pure: it reads nothing). Empty for a destroy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Each VM's kernel and initrd, in file order.
    pub boot_files: Vec<BootFile>,
    /// Host files the steps `send`: (the step's address, the file).
    pub sends: Vec<(String, PathBuf)>,
    /// Files disks are made from: base images, then the files to inject.
    pub disk_sources: Vec<DiskInput>,
}

/// A VM's kernel or initrd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFile {
    /// The VM's name and address (`vm.NAME`).
    pub vm: String,
    pub address: String,
    pub path: PathBuf,
}

/// A file a disk is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInput {
    /// The disk's address (`disk.NAME`).
    pub address: String,
    pub what: DiskInputKind,
    pub path: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskInputKind {
    BaseImage,
    Inject,
}

impl DiskInputKind {
    /// As preflight names it ("the base image does not exist").
    pub fn as_str(self) -> &'static str {
        match self {
            DiskInputKind::BaseImage => "base image",
            DiskInputKind::Inject => "file to inject",
        }
    }
}

impl Requirements {
    /// What an apply of `lab` reads here; nothing for a destroy (`None`).
    pub fn of(lab: Option<&Lab>) -> Requirements {
        let Some(lab) = lab else {
            return Requirements::default();
        };
        let boot_files = lab
            .vms
            .iter()
            .flat_map(|vm| {
                vm.kernel.iter().chain(vm.initrd.iter()).map(|p| BootFile {
                    vm: vm.name.clone(),
                    address: vm.address.clone(),
                    path: p.clone(),
                })
            })
            .collect();
        let sends = lab
            .vms
            .iter()
            .flat_map(|vm| &vm.cc)
            .filter_map(|step| match &step.action {
                CcActionSpec::Send { src, .. } => Some((step.address.clone(), src.clone())),
                _ => None,
            })
            .collect();
        let disk_sources = lab
            .disks
            .iter()
            .flat_map(|d| {
                let from = d.from.iter().map(|p| (DiskInputKind::BaseImage, p));
                let inject = d.inject.iter().map(|(p, _)| (DiskInputKind::Inject, p));
                from.chain(inject).map(|(what, p)| DiskInput {
                    address: d.address.clone(),
                    what,
                    path: p.clone(),
                })
            })
            .collect();
        Requirements {
            boot_files,
            sends,
            disk_sources,
        }
    }

    /// Whether changing things reads no file of the lab (a destroy).
    pub fn is_empty(&self) -> bool {
        self.boot_files.is_empty() && self.sends.is_empty() && self.disk_sources.is_empty()
    }
}

/// A problem an engine's layout finds in a lab that validation accepted,
/// located by the address of what is at fault: the CLI reports it as a
/// diagnostic at that object's name in the file (`validate::locate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabProblem {
    /// The object at fault (`vm.NAME`).
    pub address: String,
    pub code: Code,
    pub message: String,
    /// The text of the label at the object's name.
    pub label: String,
    pub help: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;

    #[test]
    fn requirements_name_every_file_an_apply_reads() {
        let src = SourceFile::new(
            "/lab/r.kdl",
            r#"experiment "r"
disk "d" {
    from "/img/base.raw"
}
disk "e" size="8M" filesystem="ext4" {
    inject "/img/a" "/etc/a"
}
vm "A" {
    kernel "/img/k"
    initrd "/img/i"
    disk "d"
    disk "e"
    cc { send "/img/payload" to="/tmp"; exec "true"; }
}
vm "B" { kernel "/img/k"; }
"#,
        );
        let (lab, d) = crate::validate::check(&src);
        let lab = lab.unwrap_or_else(|| panic!("{}", d.render_plain(&src)));
        let r = Requirements::of(Some(&lab));
        let boot: Vec<(&str, &str, &str)> = r
            .boot_files
            .iter()
            .map(|b| (b.vm.as_str(), b.address.as_str(), b.path.to_str().unwrap()))
            .collect();
        assert_eq!(
            boot,
            [
                ("A", "vm.A", "/img/k"),
                ("A", "vm.A", "/img/i"),
                ("B", "vm.B", "/img/k")
            ]
        );
        assert_eq!(
            r.sends,
            [("vm.A.cc[0]".to_string(), PathBuf::from("/img/payload"))]
        );
        let disk: Vec<(&str, DiskInputKind, &str)> = r
            .disk_sources
            .iter()
            .map(|s| (s.address.as_str(), s.what, s.path.to_str().unwrap()))
            .collect();
        assert_eq!(
            disk,
            [
                ("disk.d", DiskInputKind::BaseImage, "/img/base.raw"),
                ("disk.e", DiskInputKind::Inject, "/img/a")
            ]
        );
        assert!(!r.is_empty());
        assert!(Requirements::of(None).is_empty());
    }
}
