//! One VM's `vm config` commands, built once for both the provider (which
//! sends them as [`Command`]s) and `export minimega` (which writes them as
//! script lines): what the exported script launches is what the provider
//! launches, by construction.
//!
//! Invariants:
//! - Pure: the files a VM names (kernel, initrd, disk images, QEMU) come in
//!   already resolved ([`Files`]); nothing here reads or writes anything.
//! - Each [`ConfigCommand`] holds typed values; [`ConfigCommand::command`]
//!   quotes them for the command socket ([`Command`]),
//!   [`ConfigCommand::script_line`] for a script ([`super::lex::quote`]).
//!   Both are read back by minicli as the same words.
//! - The order is fixed: `clear vm config` first, then kernel, initrd,
//!   append, memory, vcpus, uuid, snapshot, disk, net, tags, qemu-append,
//!   qemu and cpu (TCG), schedule or colocate.

use std::collections::BTreeMap;
use std::path::Path;

use super::MARKER_TAG;
use super::client::{ClientError, Command, Name};
use crate::lab::VmSpec;

/// What a `vm config` command sets (and `Clear`: `clear vm config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Clear,
    Kernel,
    Initrd,
    Append,
    Memory,
    Vcpus,
    Uuid,
    Snapshot,
    Disk,
    Net,
    Tags,
    QemuAppend,
    Qemu,
    Cpu,
    Schedule,
    Colocate,
}

impl Key {
    /// minimega's keyword after `vm config`.
    fn word(self) -> &'static str {
        match self {
            Key::Clear => "config",
            Key::Kernel => "kernel",
            Key::Initrd => "initrd",
            Key::Append => "append",
            Key::Memory => "memory",
            Key::Vcpus => "vcpus",
            Key::Uuid => "uuid",
            Key::Snapshot => "snapshot",
            Key::Disk => "disk",
            Key::Net => "net",
            Key::Tags => "tags",
            Key::QemuAppend => "qemu-append",
            Key::Qemu => "qemu",
            Key::Cpu => "cpu",
            Key::Schedule => "schedule",
            Key::Colocate => "colocate",
        }
    }
}

/// One value of a `vm config` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A keyword of the command's pattern (`true`, `false`).
    Word(&'static str),
    Num(u64),
    /// Any text (a path, a tag, a net spec).
    Text(String),
    /// A minimega name (a node for `schedule`): checked as a [`Name`] when
    /// sent.
    Name(String),
}

/// One `vm config KEY VALUE…` (or `clear vm config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigCommand {
    pub key: Key,
    pub values: Vec<Value>,
}

impl ConfigCommand {
    fn new(key: Key, values: Vec<Value>) -> ConfigCommand {
        ConfigCommand { key, values }
    }

    /// The command as the provider sends it.
    pub fn command(&self) -> Result<Command, ClientError> {
        if self.key == Key::Clear {
            return Ok(Command::new("clear").word("vm").word("config"));
        }
        let mut c = Command::new("vm").word("config").word(self.key.word());
        for v in &self.values {
            c = match v {
                Value::Word(w) => c.word(w),
                Value::Num(n) => c.num(*n),
                Value::Text(t) => c.arg(t)?,
                Value::Name(n) => c.name(&Name::new(n)?),
            };
        }
        Ok(c)
    }

    /// The command as a script line (no newline).
    pub fn script_line(&self) -> String {
        if self.key == Key::Clear {
            return "clear vm config".into();
        }
        let mut line = format!("vm config {}", self.key.word());
        for v in &self.values {
            line.push(' ');
            match v {
                Value::Word(w) => line.push_str(w),
                Value::Num(n) => line.push_str(&n.to_string()),
                Value::Text(t) | Value::Name(t) => line.push_str(&super::lex::quote(t)),
            }
        }
        line
    }
}

/// The files a VM's config names, as the caller placed (provider) or
/// named (export) them.
#[derive(Clone, Debug, Default)]
pub struct Files<'a> {
    /// The kernel and initrd, relative to minimega's file path.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    /// `vm config disk`'s values ([`super::disks::vm_disks`]); none: no
    /// `disk` command.
    pub disks: Vec<String>,
    /// QEMU's absolute path under TCG (`vm config qemu`, `cpu qemu64`);
    /// none: minimega's defaults.
    pub tcg_qemu: Option<&'a Path>,
}

/// The commands that configure `vm` of `experiment` before its `vm launch
/// kvm NAME`, starting with `clear vm config`.
pub fn vm_config(experiment: &str, vm: &VmSpec, files: &Files<'_>) -> Vec<ConfigCommand> {
    use Value::{Num, Text};
    let mut out = vec![ConfigCommand::new(Key::Clear, vec![])];
    let mut push = |key, values| out.push(ConfigCommand::new(key, values));
    if let Some(k) = &files.kernel {
        push(Key::Kernel, vec![Text(k.clone())]);
    }
    if let Some(i) = &files.initrd {
        push(Key::Initrd, vec![Text(i.clone())]);
    }
    // ext4 disks the guest's init mounts, as on megaplan's own engine.
    if let Some(a) = super::disks::vm_append(vm) {
        push(Key::Append, vec![Text(a)]);
    }
    push(Key::Memory, vec![Num(vm.memory_mib)]);
    push(Key::Vcpus, vec![Num(u64::from(vm.vcpus))]);
    push(Key::Uuid, vec![Text(vm.uuid.to_string())]);
    push(
        Key::Snapshot,
        vec![Value::Word(if vm.snapshot { "true" } else { "false" })],
    );
    if !files.disks.is_empty() {
        push(Key::Disk, files.disks.iter().cloned().map(Text).collect());
    }
    if !vm.nics.is_empty() {
        let nets = vm
            .nics
            .iter()
            .map(|n| Text(format!("{},{},{}", n.network, n.mac, n.driver)))
            .collect();
        push(Key::Net, nets);
    }
    // megaplan's ownership marker, then the VM's own tags (a `megaplan` tag
    // of the file does not replace the marker).
    let mut tags: BTreeMap<&str, String> = BTreeMap::new();
    tags.insert(MARKER_TAG, format!("{experiment}:{}", vm.address));
    for (k, v) in &vm.tags {
        if k != MARKER_TAG {
            tags.insert(k, v.clone());
        }
    }
    for (k, v) in tags {
        push(Key::Tags, vec![Text(k.to_string()), Text(v)]);
    }
    if !vm.qemu_args.is_empty() {
        push(
            Key::QemuAppend,
            vm.qemu_args.iter().cloned().map(Text).collect(),
        );
    }
    if let Some(q) = files.tcg_qemu {
        // minimega takes a relative qemu as a file in its -filepath.
        push(Key::Qemu, vec![Text(q.to_string_lossy().into_owned())]);
        push(Key::Cpu, vec![Value::Word("qemu64")]);
    }
    // Placement: `host`, or the mirror partner placement keeps it with.
    if let Some(h) = &vm.host {
        push(Key::Schedule, vec![Value::Name(h.clone())]);
    } else if let Some(c) = &vm.colocate {
        push(Key::Colocate, vec![Text(c.clone())]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(text: &str) -> crate::lab::Lab {
        let src = crate::diag::SourceFile::new("/e/e.kdl", text.to_string());
        let (lab, d) = crate::validate::check(&src);
        lab.unwrap_or_else(|| panic!("{}", d.render_plain(&src)))
    }

    const LAB: &str = r#"experiment "e"
network "LAN"
vm "A" {
    kernel "/boot/vmlinuz"
    host "mm1"
    memory "256M"
    vcpus 2
    append "console=ttyS0 x=\"y z\""
    tags {
        role "client # one"
        megaplan "forged"
    }
    nic "LAN"
    qemu-args "-nodefaults"
}
vm "M" {
    kernel "/boot/vmlinuz"
    nic "LAN"
    mirrors "A"
}
"#;

    #[test]
    fn both_renderings_read_back_as_the_same_words_in_a_fixed_order() {
        let lab = lab(LAB);
        let a = lab.vm("A").unwrap();
        let files = Files {
            kernel: Some("megaplan/e/boot/k k".into()),
            initrd: None,
            disks: vec!["megaplan/e/disks/d.qcow2,virtio".into()],
            tcg_qemu: Some(Path::new("/usr/bin/qemu-system-x86_64")),
        };
        let cfg = vm_config("e", a, &files);
        let keys: Vec<Key> = cfg.iter().map(|c| c.key).collect();
        use Key::*;
        assert_eq!(
            keys,
            [
                Clear, Kernel, Append, Memory, Vcpus, Uuid, Snapshot, Disk, Net, Tags, Tags,
                QemuAppend, Qemu, Cpu, Schedule
            ]
        );
        for c in &cfg {
            let sent = c.command().unwrap();
            let line = c.script_line();
            let words = |s: &str| -> Vec<String> {
                crate::minimega::lex::lex_line(s, 0)
                    .unwrap()
                    .into_iter()
                    .map(|w| w.text)
                    .collect()
            };
            assert_eq!(words(sent.as_str()), words(&line), "{line}");
        }
        let lines: Vec<String> = cfg.iter().map(ConfigCommand::script_line).collect();
        assert!(
            lines.contains(&"vm config memory 256".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"vm config vcpus 2".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"vm config tags megaplan e:vm.A".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"vm config tags role \"client # one\"".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"vm config schedule mm1".to_string()),
            "{lines:?}"
        );
        // The monitor has no host: placement gives it its source's, or,
        // when the source has none either, minimega colocates them.
        let m = vm_config("e", lab.vm("M").unwrap(), &Files::default());
        assert_eq!(m.last().unwrap().script_line(), "vm config schedule mm1");
        let free = self::lab(&LAB.replace("    host \"mm1\"\n", ""));
        let m = vm_config("e", free.vm("M").unwrap(), &Files::default());
        assert_eq!(m.last().unwrap().script_line(), "vm config colocate A");
        let a = vm_config("e", free.vm("A").unwrap(), &Files::default());
        assert!(!a.iter().any(|c| matches!(c.key, Schedule | Colocate)));
        assert!(!m.iter().any(|c| matches!(c.key, Disk | Qemu | Kernel)));
    }

    #[test]
    fn a_host_that_is_not_a_minimega_name_is_refused_when_sent() {
        let c = ConfigCommand::new(Key::Schedule, vec![Value::Name("a b".into())]);
        assert!(c.command().is_err());
        let c = ConfigCommand::new(Key::Tags, vec![Value::Text("k\u{7}".into())]);
        assert!(c.command().is_err());
    }
}
