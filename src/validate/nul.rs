//! Pass: no value of the file holds a NUL byte (names are checked by
//! [`super::name_problem`]): every string reaches an argv, a path, the kernel
//! command line or a protocol frame, where a NUL ends it or is refused.

use super::Validator;
use crate::diag::{Code, Diag};
use crate::model::{self, Document, Sp};

impl Validator {
    pub(super) fn check_nul(&mut self, doc: &Document) {
        let mut vals: Vec<(&'static str, &Sp<String>)> = Vec::new();
        for e in &doc.experiments {
            vals.extend(e.images.iter().map(|v| ("images", v)));
            vals.extend(e.accel.iter().map(|v| ("accel", v)));
        }
        for n in &doc.networks {
            vals.extend(n.host_address.iter().map(|v| ("host-address", v)));
        }
        for d in &doc.disks {
            for (what, v) in [
                ("size", &d.size),
                ("format", &d.format),
                ("filesystem", &d.filesystem),
                ("from", &d.from),
            ] {
                vals.extend(v.iter().map(|v| (what, v)));
            }
            for i in &d.inject {
                vals.push(("inject source", &i.src));
                vals.push(("inject destination", &i.dst));
            }
        }
        for vm in &doc.vms {
            for (what, v) in [
                ("uuid", &vm.uuid),
                ("kernel", &vm.kernel),
                ("initrd", &vm.initrd),
                ("append", &vm.append),
                ("memory", &vm.memory),
            ] {
                vals.extend(v.iter().map(|v| (what, v)));
            }
            for d in &vm.disks {
                vals.push(("disk", &d.name));
                vals.extend(d.mount.iter().map(|v| ("mount", v)));
            }
            for n in &vm.nics {
                vals.push(("nic network", &n.network));
                vals.extend(n.mac.iter().map(|v| ("mac", v)));
                vals.extend(n.driver.iter().map(|v| ("driver", v)));
            }
            for m in &vm.mirrors {
                match &m.source {
                    model::MirrorSource::Vm(v) => vals.push(("mirrors", v)),
                    model::MirrorSource::Network(v) => vals.push(("mirrors network", v)),
                }
                vals.extend(m.direction.iter().map(|v| ("direction", v)));
            }
            for t in &vm.tags {
                vals.push(("tag name", &t.key));
                vals.push(("tag value", &t.value));
            }
            vals.extend(vm.after.iter().map(|v| ("after", v)));
            vals.extend(vm.qemu_args.iter().map(|v| ("qemu-args", v)));
            for step in &vm.cc {
                vals.extend(step.timeout.iter().map(|v| ("timeout", v)));
                match &step.action {
                    model::CcAction::Exec(c) | model::CcAction::Background(c) => match c {
                        model::Command::Shell(v) => vals.push(("command", v)),
                        model::Command::Argv(a) => vals.extend(a.iter().map(|v| ("command", v))),
                    },
                    model::CcAction::Send { src, to } => {
                        vals.push(("send source", src));
                        vals.push(("send destination", to));
                    }
                    model::CcAction::Recv { src, to, max_size } => {
                        vals.push(("recv source", src));
                        vals.push(("recv destination", to));
                        vals.extend(max_size.iter().map(|v| ("max-size", v)));
                    }
                }
            }
        }
        for (what, v) in vals {
            if let Some(at) = v.value.find('\0') {
                self.err(
                    Diag::error(Code::NulByte, format!("the {what} contains a NUL byte"))
                        .label(v.span, format!("NUL at byte {at} of this value"))
                        .help("a NUL would cut this value short in a QEMU argument, a path or a guest command: remove it"),
                );
            }
        }
    }
}
