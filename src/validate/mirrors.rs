//! Pass: mirrors (needs every VM's nics). A mirror copies a VM's nic, or
//! every tap of a network, into a nic of the mirroring VM: sources exist,
//! indexes are in range, no VM mirrors itself and no network mirror loops.
//! A network mirror becomes one mirror per member tap.

use std::collections::{HashMap, HashSet};

use super::Validator;
use super::names::{Known, VmInst};
use super::values::expand_range;
use crate::diag::{Code, Diag, did_you_mean};
use crate::lab::{Direction, MirrorSpec, VmSpec};
use crate::model;

impl Validator {
    pub(super) fn mirrors(
        &mut self,
        insts: &[VmInst],
        vms: &[VmSpec],
        known: &Known,
    ) -> Vec<MirrorSpec> {
        let mut mirrors = Vec::new();
        let mut mirror_seen: HashSet<String> = HashSet::new();
        let mut mirror_reported: HashSet<(usize, &'static str)> = HashSet::new();
        // By name, first wins (as a linear `find` would): lookups stay O(1) with 10,000s of VMs.
        let mut vm_by_name: HashMap<&str, &VmSpec> = HashMap::with_capacity(vms.len());
        for v in vms {
            vm_by_name.entry(v.name.as_str()).or_insert(v);
        }
        for inst in insts {
            let vm = inst.src;
            let Some(&dest) = vm_by_name.get(inst.name.as_str()) else {
                continue;
            };
            for m in &vm.mirrors {
                let mut report = |this: &mut Self, d: Diag, key: &'static str| {
                    if mirror_reported.insert((m.span.offset(), key)) {
                        this.err(d);
                    }
                };
                let direction = match m.direction.as_ref() {
                    None => Direction::Both,
                    Some(d) => match d.value.as_str() {
                        "both" => Direction::Both,
                        "ingress" => Direction::Ingress,
                        "egress" => Direction::Egress,
                        other => {
                            report(
                                self,
                                Diag::error(
                                    Code::BadDirection,
                                    format!("unknown mirror direction '{other}'"),
                                )
                                .label(d.span, "expected \"both\", \"ingress\" or \"egress\"")
                                .help_opt(did_you_mean(other, ["both", "ingress", "egress"])),
                                "dir",
                            );
                            Direction::Both
                        }
                    },
                };
                let into = match &m.into {
                    None => 0usize,
                    Some(i) if i.value < 0 || i.value as usize >= dest.nics.len() => {
                        report(
                            self,
                            Diag::error(
                                Code::MirrorIndex,
                                format!("VM '{}' has no nic {}", dest.name, i.value),
                            )
                            .label(
                                i.span,
                                format!(
                                    "'{}' has {}",
                                    dest.name,
                                    crate::diag::plural(dest.nics.len(), "nic")
                                ),
                            )
                            .help("into= counts this VM's nics from 0"),
                            "into",
                        );
                        continue;
                    }
                    Some(i) => i.value as usize,
                };
                if dest.nics.is_empty() {
                    report(
                        self,
                        Diag::error(
                            Code::MirrorWithoutNic,
                            format!(
                                "VM '{}' mirrors traffic but has no nic to receive it",
                                dest.name
                            ),
                        )
                        .label(m.span, "mirror here")
                        .help(
                            "add `nic \"mon\"` to this VM: copies arrive on its nic 0 (or into=N)",
                        ),
                        "nonic",
                    );
                    continue;
                }
                let sources: Vec<(String, usize)> = match &m.source {
                    model::MirrorSource::Vm(src_vm) => {
                        let names = match expand_range(&src_vm.value) {
                            Ok(n) => n,
                            Err(e) => {
                                report(
                                    self,
                                    Diag::error(
                                        Code::BadRange,
                                        format!("'{}' is not a VM name or range", src_vm.value),
                                    )
                                    .label(src_vm.span, e)
                                    .help("a range looks like \"web[1-3]\" or \"web[01-10]\""),
                                    "range",
                                );
                                continue;
                            }
                        };
                        let mut sources = Vec::new();
                        'names: for name in &names {
                            if *name == inst.name {
                                report(self, Diag::error(Code::MirrorSelf, format!("VM '{}' mirrors itself", inst.name))
                                    .label(src_vm.span, "this VM")
                                    .help("a VM cannot receive copies of its own traffic: mirror another VM"), "self");
                                continue 'names;
                            }
                            let Some(&src) = vm_by_name.get(name.as_str()) else {
                                if !known.vm_set.contains(name.as_str()) {
                                    report(
                                        self,
                                        Diag::error(
                                            Code::UnknownVm,
                                            format!("there is no VM '{name}'"),
                                        )
                                        .label(src_vm.span, "unknown VM")
                                        .help_opt(did_you_mean(name, known.vms.iter().copied())),
                                        "src",
                                    );
                                }
                                continue 'names;
                            };
                            let nic = match &m.nic {
                                None => 0usize,
                                Some(n) if n.value < 0 || n.value as usize >= src.nics.len() => {
                                    report(
                                        self,
                                        Diag::error(
                                            Code::MirrorIndex,
                                            format!("VM '{}' has no nic {}", src.name, n.value),
                                        )
                                        .label(
                                            n.span,
                                            format!(
                                                "'{}' has {}",
                                                src.name,
                                                crate::diag::plural(src.nics.len(), "nic")
                                            ),
                                        )
                                        .help("nic= counts the mirrored VM's nics from 0"),
                                        "nic",
                                    );
                                    continue 'names;
                                }
                                Some(n) => n.value as usize,
                            };
                            if src.nics.is_empty() {
                                report(
                                    self,
                                    Diag::error(
                                        Code::MirrorIndex,
                                        format!("VM '{}' has no nic to mirror", src.name),
                                    )
                                    .label(src_vm.span, "no nics")
                                    .help("mirror a VM that has a nic"),
                                    "nic0",
                                );
                                continue 'names;
                            }
                            sources.push((src.name.clone(), nic));
                        }
                        sources
                    }
                    model::MirrorSource::Network(net) => {
                        if let Some(n) = &m.nic {
                            report(
                                self,
                                Diag::error(
                                    Code::MirrorNicWithNetwork,
                                    "nic= applies to a VM mirror, not a network mirror",
                                )
                                .label(n.span, "not with network=")
                                .help("a network mirror copies every tap of the network"),
                                "netnic",
                            );
                        }
                        if !known.network_set.contains(net.value.as_str()) {
                            report(
                                self,
                                Diag::error(
                                    Code::UnknownNetwork,
                                    format!("there is no network '{}'", net.value),
                                )
                                .label(net.span, "unknown network")
                                .help_opt(did_you_mean(&net.value, known.networks.iter().copied())),
                                "net",
                            );
                            continue;
                        }
                        if dest.nics[into].network == net.value {
                            report(self, Diag::error(Code::MirrorLoop, format!("VM '{}' mirrors network '{}' into a nic on that same network", dest.name, net.value))
                                .label(net.span, "mirrored network")
                                .help("receive the copies on a nic of another network (into=N), or copies would be copied again"), "loop");
                            continue;
                        }
                        vms.iter()
                            .filter(|v| v.name != dest.name)
                            .flat_map(|v| {
                                v.nics
                                    .iter()
                                    .filter(|n| n.network == net.value)
                                    .map(|n| (v.name.clone(), n.index))
                            })
                            .collect()
                    }
                };
                // Every frame on a network is sent by one member: a network
                // mirror copies what each member sends (tap ingress), so each
                // frame arrives once. Both sides of every tap would copy a
                // unicast twice and a broadcast once per member.
                let direction = match (&m.source, direction) {
                    (model::MirrorSource::Network(_), Direction::Both) => Direction::Ingress,
                    (_, d) => d,
                };
                for (src_vm, nic) in sources {
                    let address = MirrorSpec::address_of(&src_vm, nic, &dest.name, into);
                    if !mirror_seen.insert(address.clone()) {
                        continue;
                    }
                    mirrors.push(MirrorSpec {
                        address,
                        source_vm: src_vm,
                        source_nic: nic,
                        dest_vm: dest.name.clone(),
                        dest_nic: into,
                        direction,
                        network: match &m.source {
                            model::MirrorSource::Network(n) => Some(n.value.clone()),
                            model::MirrorSource::Vm(_) => None,
                        },
                    });
                }
            }
        }
        mirrors
    }
}
