//! Pass (per VM): amounts. Memory in whole MiB, vcpus within what the
//! machine type takes.

use super::values::parse_size;
use super::vms::VmCheck;
use super::{MAX_VCPUS, Validator};
use crate::diag::{Code, Diag};

impl Validator {
    /// Memory in MiB (2048 unless set); 0 after an error.
    pub(super) fn memory(&mut self, vc: &mut VmCheck) -> u64 {
        let vm = vc.vm;
        match &vm.memory {
            None => 2048,
            Some(m) => match parse_size(&m.value, 1 << 20) {
                Some(0) => {
                    self.once(
                        vc,
                        Diag::error(Code::ZeroMemory, "a VM needs some memory")
                            .label(m.span, "0")
                            .help("memory defaults to \"2048M\"; tiny guests run in \"256M\""),
                        "memory",
                    );
                    0
                }
                Some(b) if b < (1 << 20) => {
                    self.once(
                        vc,
                        Diag::error(Code::BadMemory, "memory is counted in whole MiB")
                            .label(m.span, "less than 1 MiB")
                            .help("write \"256M\" or \"2G\""),
                        "memory",
                    );
                    0
                }
                Some(b) => b >> 20,
                None => {
                    self.once(
                        vc,
                        Diag::error(
                            Code::BadMemory,
                            format!("'{}' is not an amount of memory", m.value),
                        )
                        .label(m.span, "not a size")
                        .help("write \"256M\" or \"2G\" (a bare number is MiB, as in minimega)"),
                        "memory",
                    );
                    0
                }
            },
        }
    }

    /// vcpus (1 unless set, and after an error).
    pub(super) fn vcpus(&mut self, vc: &mut VmCheck) -> u32 {
        let vm = vc.vm;
        match &vm.vcpus {
            None => 1,
            Some(c) if c.value <= 0 => {
                self.once(
                    vc,
                    Diag::error(Code::ZeroVcpus, "a VM needs at least one vcpu")
                        .label(c.span, format!("{}", c.value))
                        .help("vcpus defaults to 1"),
                    "vcpus",
                );
                1
            }
            Some(c) if c.value > i64::from(MAX_VCPUS) => {
                self.once(vc,
                        Diag::error(
                            Code::BadVcpus,
                            format!("{} vcpus are more than the VM's machine takes", c.value),
                        )
                        .label(c.span, format!("at most {MAX_VCPUS}"))
                        .help(format!(
                            "megaplan runs VMs on QEMU's q35 machine, which takes at most {MAX_VCPUS} vcpus"
                        )),
                        "vcpus",
                    );
                1
            }
            Some(c) => c.value as u32,
        }
    }
}
