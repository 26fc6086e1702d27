//! Pass: VM names. Ranges (`web[1-3]`) expand into VMs, every name is safe
//! as an interface alias, a file name and a QEMU argument, and no VM is
//! defined twice. Also the names later passes resolve references against.

use std::collections::{HashMap, HashSet};

use miette::SourceSpan;

use super::Validator;
use super::values::{expand_range, name_problem};
use crate::diag::{Code, Diag};
use crate::model::{self, Document, Sp};

/// One VM of the file: a name a `vm` node (or its range) makes.
pub(super) struct VmInst<'a> {
    pub name: String,
    pub src: &'a model::Vm,
}

/// The names references resolve against, in file order (suggestions list
/// them in that order) and as sets (lookups stay O(1) with 10^5 VMs).
pub(super) struct Known<'a> {
    pub networks: Vec<&'a str>,
    pub network_set: HashSet<&'a str>,
    pub disks: Vec<&'a str>,
    pub disk_set: HashSet<&'a str>,
    pub vms: Vec<&'a str>,
    pub vm_set: HashSet<&'a str>,
}

impl<'a> Known<'a> {
    pub fn new(doc: &'a Document, insts: &'a [VmInst<'a>]) -> Self {
        let networks: Vec<&str> = doc.networks.iter().map(|n| n.name.value.as_str()).collect();
        let disks: Vec<&str> = doc.disks.iter().map(|d| d.name.value.as_str()).collect();
        let vms: Vec<&str> = insts.iter().map(|i| i.name.as_str()).collect();
        Known {
            network_set: networks.iter().copied().collect(),
            disk_set: disks.iter().copied().collect(),
            vm_set: vms.iter().copied().collect(),
            networks,
            disks,
            vms,
        }
    }
}

impl Validator {
    pub(super) fn check_name(&mut self, what: &str, name: &Sp<String>) -> bool {
        self.check_name_at(what, &name.value, name.span)
    }

    pub(super) fn check_name_at(&mut self, what: &str, name: &str, span: SourceSpan) -> bool {
        if let Some(problem) = name_problem(name) {
            self.err(
                Diag::error(Code::BadName, format!("{what} name '{}' is not allowed", name.escape_debug()))
                    .label(span, problem)
                    .help("names become interface aliases, file names and QEMU arguments: use letters, digits, '-', '_' and '.'"),
            );
            false
        } else {
            true
        }
    }

    pub(super) fn vm_names<'a>(&mut self, doc: &'a Document) -> Vec<VmInst<'a>> {
        let mut insts: Vec<VmInst> = Vec::with_capacity(doc.vms.len());
        let mut seen: HashMap<String, SourceSpan> = HashMap::with_capacity(doc.vms.len());
        for vm in &doc.vms {
            let names = match expand_range(&vm.name.value) {
                Ok(n) => n,
                Err(e) => {
                    self.err(
                        Diag::error(
                            Code::BadRange,
                            format!("VM name '{}' is not a valid range", vm.name.value),
                        )
                        .label(vm.name.span, e)
                        .help("a range looks like \"web[1-3]\" or \"web[01-10]\""),
                    );
                    continue;
                }
            };
            for name in names {
                if !self.check_name_at("VM", &name, vm.name.span) {
                    break;
                }
                if let Some(prev) = seen.insert(name.clone(), vm.name.span) {
                    self.err(
                        Diag::error(Code::DuplicateVm, format!("VM '{name}' is defined twice"))
                            .label(vm.name.span, if vm.name.value == name { "defined again here".to_string() } else { format!("this range makes '{name}' again") })
                            .label(prev, "first defined here")
                            .help("give each VM its own name; ranges like web[1-3] expand to web1, web2, web3"),
                    );
                    continue;
                }
                insts.push(VmInst { name, src: vm });
            }
        }
        insts
    }
}
