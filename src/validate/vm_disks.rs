//! Pass (per VM): the disks a VM attaches (a disk of the file or an image
//! path) and their mount points; then, over all VMs, that a disk a VM
//! writes directly (`snapshot #false`) is used by no other.

use std::collections::HashMap;

use miette::SourceSpan;

use super::Validator;
use super::names::Known;
use super::vms::VmCheck;
use crate::diag::{Code, Diag, did_you_mean};
use crate::lab::{DiskSource, VmDiskSpec};

/// Who uses each disk of the file: (VM, where, with snapshot).
pub(super) type DiskUsers = HashMap<String, Vec<(String, SourceSpan, bool)>>;

impl Validator {
    pub(super) fn vm_disks(
        &mut self,
        vc: &mut VmCheck,
        snapshot: bool,
        known: &Known,
        disk_users: &mut DiskUsers,
    ) -> Vec<VmDiskSpec> {
        let mut vdisks = Vec::new();
        let mut mounts: HashMap<&str, SourceSpan> = HashMap::new();
        let vm = vc.vm;
        for vd in &vm.disks {
            if let Some(m) = &vd.mount {
                if !m.value.starts_with('/')
                    || m.value.contains("..")
                    || m.value
                        .chars()
                        .any(|c| c.is_control() || c.is_whitespace() || c == ',')
                {
                    self.once(
                        vc,
                        Diag::error(
                            Code::BadMount,
                            format!("'{}' is not a usable mount point", m.value),
                        )
                        .label(
                            m.span,
                            "must be an absolute path without '..', spaces or commas",
                        )
                        .help("write mount=\"/bro\""),
                        "mount",
                    );
                }
                if let Some(prev) = mounts.insert(m.value.as_str(), m.span) {
                    self.once(
                        vc,
                        Diag::error(
                            Code::DuplicateMount,
                            format!("two disks are mounted at '{}'", m.value),
                        )
                        .label(m.span, "again here")
                        .label(prev, "first here")
                        .help("give each disk its own mount point"),
                        "mount2",
                    );
                }
            }
            let source = if known.disk_set.contains(vd.name.value.as_str()) {
                disk_users.entry(vd.name.value.clone()).or_default().push((
                    vc.name.to_string(),
                    vd.name.span,
                    snapshot,
                ));
                DiskSource::Named(vd.name.value.clone())
            } else if vd.name.value.contains('/')
                || vd.name.value.contains('.')
                || vd.name.value.starts_with('$')
            {
                let p = self.path(&vd.name);
                if vc.first_of_range {
                    self.warn_missing(&p, &vd.name, "disk image");
                }
                DiskSource::Path(p)
            } else {
                self.once(vc, Diag::error(Code::UnknownDisk, format!("there is no disk '{}'", vd.name.value))
                        .label(vd.name.span, "unknown disk")
                        .help(did_you_mean(&vd.name.value, known.disks.iter().copied()).unwrap_or_else(|| {
                            "define it with `disk \"NAME\" size=\"10G\"`, or give a path to an image file".to_string()
                        })), "disk");
                continue;
            };
            vdisks.push(VmDiskSpec {
                source,
                mount: vd.mount.as_ref().map(|m| m.value.clone()),
            });
        }
        vdisks
    }

    /// A disk without snapshot may be used by one VM, once.
    pub(super) fn shared_writable_disks(&mut self, disk_users: &DiskUsers) {
        for (disk, users) in disk_users {
            if users.len() > 1
                && let Some((vm, span, _)) = users.iter().find(|u| !u.2)
            {
                let Some(other) = users.iter().find(|u| &u.0 != vm) else {
                    // One VM attaches it twice: both would write the one image.
                    let again = users
                        .iter()
                        .map(|u| u.1)
                        .find(|s| s != span)
                        .unwrap_or(*span);
                    self.err(Diag::error(Code::SharedWritableDisk, format!("disk '{disk}' is attached twice to VM '{vm}', which writes it directly"))
                        .label(*span, format!("'{vm}' has snapshot #false"))
                        .label(again, "attached again here")
                        .help("attach a disk once per VM, or give the VM a second disk"));
                    continue;
                };
                self.err(Diag::error(Code::SharedWritableDisk, format!("disk '{disk}' is written directly by VM '{vm}' but also used by VM '{}'", other.0))
                    .label(*span, format!("'{vm}' has snapshot #false"))
                    .label(other.1, format!("'{}' uses it too", other.0))
                    .help("a disk without snapshot may be used by one VM only; keep snapshot #true on the others' VMs or give them their own disk"));
            }
        }
    }
}
