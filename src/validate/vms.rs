//! Pass: VMs. Each VM of the file (a range is one VM per name) is checked
//! by the per-VM passes in a fixed order and becomes a [`VmSpec`]: UUID,
//! memory and vcpus (`sizes.rs`), boot files,
//! disks (`vm_disks.rs`), nics (`nics.rs`), tags, `after` (`after.rs`),
//! QEMU arguments, boot timeout and cc steps (`steps.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use miette::SourceSpan;
use uuid::Uuid;

use super::Validator;
use super::names::{Known, VmInst};
use super::values::parse_duration_ms;
use super::vm_disks::DiskUsers;
use crate::diag::{Code, Diag};
use crate::identity;
use crate::lab::VmSpec;
use crate::model;

/// One VM being checked: what its per-VM passes share.
pub(super) struct VmCheck<'a, 'r> {
    pub name: &'a str,
    pub vm: &'a model::Vm,
    /// `vm.NAME`.
    pub address: String,
    /// The first VM of its node (every VM of a node without a range is).
    pub first_of_range: bool,
    reported: &'r mut HashSet<(usize, &'static str)>,
}

/// What the VM pass leaves for the passes after it.
pub(super) struct VmPass {
    pub vms: Vec<VmSpec>,
    pub disk_users: DiskUsers,
}

impl Validator {
    /// Report a finding on a VM node's own values once for the node, not
    /// once per VM of its range: the first VM reports all it finds; a later
    /// one only what (by `key`) was not reported yet.
    pub(super) fn once(&mut self, vc: &mut VmCheck, d: Diag, key: &'static str) {
        let new = vc.reported.insert((vc.vm.span.offset(), key));
        if vc.first_of_range || new {
            self.err(d);
        }
    }

    pub(super) fn vms(
        &mut self,
        ename: &str,
        default_boot_timeout: u64,
        insts: &[VmInst],
        known: &Known,
    ) -> VmPass {
        let mut vms = Vec::with_capacity(insts.len());
        let mut uuids: HashMap<Uuid, SourceSpan> = HashMap::with_capacity(insts.len());
        let mut macs: HashMap<String, SourceSpan> = HashMap::new();
        let mut disk_users = DiskUsers::new();
        let mut reported: HashSet<(usize, &'static str)> = HashSet::new();

        for inst in insts {
            let vm = inst.src;
            let first_of_range = reported.insert((vm.span.offset(), "vm"));
            let mut vc = VmCheck {
                name: &inst.name,
                vm,
                address: format!("vm.{}", inst.name),
                first_of_range,
                reported: &mut reported,
            };
            let uuid = self.vm_uuid(ename, &mut vc, &mut uuids);
            let memory_mib = self.memory(&mut vc);
            let vcpus = self.vcpus(&mut vc);
            let snapshot = vm.snapshot.as_ref().is_none_or(|s| s.value);
            let (kernel, initrd) = self.boot_files(&mut vc);
            let disks = self.vm_disks(&mut vc, snapshot, known, &mut disk_users);
            let nics = self.nics(ename, &mut vc, initrd.as_deref(), known, &mut macs);
            let tags = self.tags(&mut vc);
            let after = self.after_refs(&mut vc, known);
            let qemu_args = self.qemu_args(&mut vc);
            let boot_timeout_ms = match &vm.boot_timeout {
                Some(t) if first_of_range => self.boot_timeout(t),
                Some(t) => parse_duration_ms(&t.value).filter(|&ms| ms > 0),
                None => None,
            }
            .unwrap_or(default_boot_timeout);
            let cc = self.steps(&mut vc);

            vms.push(VmSpec {
                name: inst.name.clone(),
                address: vc.address,
                uuid,
                kernel,
                initrd,
                append: vm.append.as_ref().map(|a| a.value.clone()),
                memory_mib,
                vcpus,
                snapshot,
                boot_timeout_ms,
                disks,
                nics,
                tags,
                after,
                qemu_args,
                cc,
                host: vm.host.as_ref().map(|h| h.value.clone()),
                colocate: None,
            });
        }
        VmPass { vms, disk_users }
    }

    /// The VM's UUID (given or derived), unique in the experiment.
    fn vm_uuid(
        &mut self,
        ename: &str,
        vc: &mut VmCheck,
        uuids: &mut HashMap<Uuid, SourceSpan>,
    ) -> Uuid {
        let vm = vc.vm;
        let uuid = match &vm.uuid {
            None => identity::vm_uuid(ename, vc.name),
            Some(u) => match Uuid::parse_str(&u.value) {
                Ok(id) => id,
                Err(e) => {
                    self.once(
                        vc,
                        Diag::error(Code::BadUuid, format!("'{}' is not a UUID", u.value))
                            .label(u.span, e.to_string())
                            .help("write 8-4-4-4-12 hex digits, or leave uuid out: megaplan derives a stable one"),
                        "uuid",
                    );
                    identity::vm_uuid(ename, vc.name)
                }
            },
        };
        let uuid_span = vm.uuid.as_ref().map_or(vm.name.span, |u| u.span);
        if let Some(prev) = uuids.insert(uuid, uuid_span) {
            self.err(
                Diag::error(
                    Code::DuplicateUuid,
                    format!("VM '{}' has the UUID {uuid} of another VM", vc.name),
                )
                .label(uuid_span, "used again here")
                .label(prev, "first used here")
                .help(if vm.name.value.contains('[') {
                    "a VM range with a fixed uuid gives every VM the same one: leave uuid out"
                        .to_string()
                } else {
                    "each VM needs its own UUID; leave uuid out to get a stable derived one"
                        .to_string()
                }),
            );
        }
        uuid
    }

    /// The kernel and initrd, resolved; warnings for missing files; a VM
    /// needs something to boot, and an initrd needs a kernel.
    fn boot_files(&mut self, vc: &mut VmCheck) -> (Option<PathBuf>, Option<PathBuf>) {
        let vm = vc.vm;
        let first_of_range = vc.first_of_range;
        let kernel = vm.kernel.as_ref().map(|k| {
            let p = self.path(k);
            if first_of_range {
                self.warn_missing(&p, k, "kernel");
            }
            p
        });
        let initrd = vm.initrd.as_ref().map(|k| {
            let p = self.path(k);
            if first_of_range {
                self.warn_missing(&p, k, "initrd");
            }
            p
        });
        if kernel.is_none() && vm.disks.is_empty() {
            self.once(vc, Diag::error(Code::NothingToBoot, format!("VM '{}' has neither a kernel nor a disk to boot", vc.name))
                .label(vm.name.span, "nothing to boot")
                .help("add `kernel \"$images/miniccc.kernel\"` and `initrd \"$images/miniccc.initrd\"`"), "boot");
        }
        if vm.initrd.is_some()
            && vm.kernel.is_none()
            && let Some(i) = &vm.initrd
        {
            self.once(
                vc,
                Diag::error(Code::InitrdWithoutKernel, "an initrd needs a kernel")
                    .label(i.span, "initrd without kernel")
                    .help("add `kernel \"…\"` beside it"),
                "initrd",
            );
        }
        (kernel, initrd)
    }

    /// Tags: each key once.
    fn tags(&mut self, vc: &mut VmCheck) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::new();
        for t in &vc.vm.tags {
            if tags
                .insert(t.key.value.clone(), t.value.value.clone())
                .is_some()
            {
                self.once(
                    vc,
                    Diag::error(
                        Code::DuplicateTag,
                        format!("tag '{}' is set twice", t.key.value),
                    )
                    .label(t.key.span, "set again here")
                    .help("a tag has one value"),
                    "tag",
                );
            }
        }
        tags
    }

    /// QEMU arguments: one string each, no control characters.
    fn qemu_args(&mut self, vc: &mut VmCheck) -> Vec<String> {
        let vm = vc.vm;
        let qemu_args: Vec<String> = vm.qemu_args.iter().map(|a| a.value.clone()).collect();
        for a in &vm.qemu_args {
            if a.value.chars().any(|c| c.is_control()) {
                self.once(
                    vc,
                    Diag::error(
                        Code::BadQemuArg,
                        "a QEMU argument cannot contain control characters",
                    )
                    .label(a.span, "here")
                    .help("give each argument as its own string"),
                    "qemuarg",
                );
            }
        }
        qemu_args
    }
}
