//! The TOML front end: experiment text in TOML to [`Document`], and back.
//!
//! The TOML shape mirrors the KDL one key for key (SPEC §1):
//! `[experiment]`, `[network.NAME]`, `[disk.NAME]`, `[vm.NAME]` (a range is a
//! quoted key, `[vm."web[1-3]"]`). A nic, disk or mirror with options is an
//! inline table naming its first KDL argument (`{ network = "LAN", mac = … }`);
//! a bare string stands for the table with only that key.
//!
//! Invariants:
//! - [`parse`] never panics and reports every structural problem it finds
//!   (syntax, unknown keys, wrong types, missing keys, cc steps without exactly
//!   one action); semantic checks (references, value formats) are `validate`'s.
//! - Every value in the document carries the span of the TOML value it came from.
//! - Order is the order of the file (entries are sorted by their key's position,
//!   whatever order the TOML map keeps).
//! - `parse(emit(d)) == d` for any valid document, and `emit` is a fixpoint.

use std::fmt::Write as _;
use std::ops::Range;

use miette::SourceSpan;
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::lang;
use super::values::{self, Item, Val as V};
use crate::diag::{Code, Diag, Diagnostics, SourceFile, did_you_mean};
use crate::model::{
    Capture, CaptureSource, CcAction, CcStep, Check, Command, Disk, Document, ExperimentNode,
    Inject, Mirror, MirrorSource, Network, Nic, ProviderNode, Sp, Tag, Vm, VmDisk,
};

type Key<'i> = Spanned<DeString<'i>>;
type Val<'i> = Spanned<DeValue<'i>>;

fn span_of(r: Range<usize>) -> SourceSpan {
    SourceSpan::from(r)
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Parse a TOML experiment file. Whatever could be read lands in the document,
/// every problem in the diagnostics.
pub fn parse(src: &SourceFile) -> (Document, Diagnostics) {
    let text: &str = src.text.as_str();
    let (root, errors) = DeTable::parse_recoverable(text);
    let mut r = Reader {
        text,
        diags: Diagnostics::default(),
        syntax_spans: Vec::new(),
    };
    for e in &errors {
        let span = e
            .span()
            .map(|s| {
                let start = floor_boundary(text, s.start);
                start..floor_boundary(text, s.end.max(start))
            })
            .unwrap_or(text.len()..text.len());
        r.syntax_spans.push(shadow(text, &span));
        let message = e.message().trim();
        let message = if message.is_empty() {
            "invalid TOML"
        } else {
            message
        };
        let mut d = Diag::error(Code::TomlSyntax, format!("TOML syntax error: {message}"))
            .label(span_of(span), "here");
        if message.starts_with("duplicate key") {
            d = d.help("a key or table can be defined only once");
        }
        r.diags.push(d);
    }
    let doc = r.document(root.get_ref());
    r.diags.sort();
    (doc, r.diags)
}

/// The nearest char boundary at or before `i`, within the text.
fn floor_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The part of the file a syntax error makes unreliable: its lines, or, for a
/// broken table header, everything up to the next header (the keys below it
/// were read into the wrong table).
fn shadow(text: &str, span: &Range<usize>) -> Range<usize> {
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = |from: usize| text[from..].find('\n').map_or(text.len(), |i| from + i);
    let end = (line_end(span.end) + 1).min(text.len());
    if !text[line_start..].trim_start().starts_with('[') {
        return line_start..end;
    }
    let mut pos = end.saturating_sub(1);
    while pos < text.len() {
        let next = pos + 1;
        if text[next..]
            .trim_start_matches([' ', '\t'])
            .starts_with('[')
        {
            return line_start..next;
        }
        pos = line_end(next);
    }
    line_start..text.len()
}

/// A table being read: its entries in file order, its span, and what it is
/// (for messages).
struct Table<'a, 'i> {
    entries: Vec<(&'a Key<'i>, &'a Val<'i>)>,
    span: SourceSpan,
    what: String,
    /// Known keys that an unknown key was taken for (`nam` -> `name`): a
    /// "missing key" error for them would only repeat the "did you mean".
    suggested: Vec<&'static str>,
}

impl<'a, 'i> Table<'a, 'i> {
    fn get(&self, key: &str) -> Option<&'a Val<'i>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| *v)
    }
    fn key(&self, key: &str) -> Option<&'a Key<'i>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(k, _)| *k)
    }
}

fn sorted_entries<'a, 'i>(t: &'a DeTable<'i>) -> Vec<(&'a Key<'i>, &'a Val<'i>)> {
    let mut entries: Vec<_> = t.iter().collect();
    entries.sort_by_key(|(k, _)| (k.span().start, k.span().end));
    entries
}

fn name_of(k: &Key<'_>) -> Sp<String> {
    Sp::new(k.get_ref().to_string(), span_of(k.span()))
}

struct Reader<'s> {
    text: &'s str,
    diags: Diagnostics,
    /// Where the TOML parser found errors (see [`shadow`]): structural
    /// diagnostics there would only repeat or confuse them.
    syntax_spans: Vec<Range<usize>>,
}

impl Reader<'_> {
    fn push(&mut self, d: Diag) {
        let primary = d.labels.first().map(|l| l.span);
        if let Some(p) = primary {
            let (start, end) = (p.offset(), p.offset() + p.len());
            let overlaps = self
                .syntax_spans
                .iter()
                .any(|s| s.start < end.max(start + 1) && start < s.end.max(s.start + 1));
            if overlaps {
                return;
            }
        }
        self.diags.push(d);
    }

    fn wrong_type(&mut self, v: &Val<'_>, key: &str, expected: &str) {
        let found = kind(v.get_ref());
        self.push(
            Diag::error(
                Code::WrongType,
                format!("expected {expected}, found {found}"),
            )
            .label(span_of(v.span()), format!("`{key}` must be {expected}")),
        );
    }

    /// Open a table value, any keys allowed.
    fn open<'a, 'i>(
        &mut self,
        v: &'a Val<'i>,
        key: &str,
        what: impl Into<String>,
    ) -> Option<Table<'a, 'i>> {
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(v, key, "a table");
            return None;
        };
        Some(Table {
            entries: sorted_entries(t),
            span: span_of(v.span()),
            what: what.into(),
            suggested: Vec::new(),
        })
    }

    /// Open a table value, reporting unknown keys.
    fn table<'a, 'i>(
        &mut self,
        v: &'a Val<'i>,
        key: &str,
        what: impl Into<String>,
        allowed: &[&'static str],
    ) -> Option<Table<'a, 'i>> {
        let mut table = self.open(v, key, what)?;
        for (k, _) in &table.entries {
            let name: &str = k.get_ref();
            if !allowed.contains(&name) {
                let suggestion = did_you_mean(name, allowed.iter().copied());
                if let Some(s) = &suggestion
                    && let Some(known) = allowed
                        .iter()
                        .find(|a| s == &format!("did you mean '{a}'?"))
                {
                    table.suggested.push(known);
                }
                let help = suggestion
                    .unwrap_or_else(|| format!("expected one of: {}", allowed.join(", ")));
                self.push(
                    Diag::error(
                        Code::UnknownKey,
                        format!("unknown key `{name}` in {}", table.what),
                    )
                    .label(span_of(k.span()), "unknown key")
                    .help(help),
                );
            }
        }
        Some(table)
    }

    fn string(&mut self, v: &Val<'_>, key: &str) -> Option<Sp<String>> {
        match v.get_ref() {
            DeValue::String(s) => Some(Sp::new(s.to_string(), span_of(v.span()))),
            _ => {
                self.wrong_type(v, key, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, v: &Val<'_>, key: &str) -> Option<Sp<bool>> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Sp::new(*b, span_of(v.span()))),
            _ => {
                self.wrong_type(v, key, "a boolean");
                None
            }
        }
    }

    fn integer(&mut self, v: &Val<'_>, key: &str) -> Option<Sp<i64>> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(Sp::new(n, span_of(v.span()))),
                Err(_) => {
                    self.push(
                        Diag::error(Code::WrongType, format!("`{key}` is out of range"))
                            .label(span_of(v.span()), "does not fit in a 64-bit integer"),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(v, key, "an integer");
                None
            }
        }
    }

    fn array<'a, 'i>(&mut self, v: &'a Val<'i>, key: &str) -> Option<&'a [Val<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => {
                self.wrong_type(v, key, "an array");
                None
            }
        }
    }

    fn strings(&mut self, v: &Val<'_>, key: &str) -> Vec<Sp<String>> {
        let Some(items) = self.array(v, key) else {
            return Vec::new();
        };
        items.iter().filter_map(|i| self.string(i, key)).collect()
    }

    fn opt_string(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Sp<String>> {
        t.get(key).and_then(|v| self.string(v, key))
    }
    fn opt_bool(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Sp<bool>> {
        t.get(key).and_then(|v| self.boolean(v, key))
    }
    fn opt_int(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Sp<i64>> {
        t.get(key).and_then(|v| self.integer(v, key))
    }

    fn missing(&mut self, t: &Table<'_, '_>, key: &str, example: &str) {
        if t.suggested.contains(&key) {
            return;
        }
        self.push(
            Diag::error(
                Code::MissingKey,
                format!("missing key `{key}` in {}", t.what),
            )
            .label(t.span, format!("this table has no `{key}`"))
            .help(format!("add `{key} = {example}`")),
        );
    }

    fn req_string(&mut self, t: &Table<'_, '_>, key: &str, example: &str) -> Option<Sp<String>> {
        match t.get(key) {
            Some(v) => self.string(v, key),
            None => {
                self.missing(t, key, example);
                None
            }
        }
    }

    /// The entries of a `[network]`, `[disk]` or `[vm]` table: NAME -> table.
    fn named<'a, 'i>(&mut self, v: &'a Val<'i>, key: &str) -> Vec<(&'a Key<'i>, &'a Val<'i>)> {
        match v.get_ref() {
            DeValue::Table(t) => sorted_entries(t),
            _ => {
                self.wrong_type(v, key, "a table");
                Vec::new()
            }
        }
    }

    fn document(&mut self, root: &DeTable<'_>) -> Document {
        let mut doc = Document::default();
        let entries = sorted_entries(root);
        for (k, v) in entries {
            let key: &str = k.get_ref();
            match key {
                "experiment" => {
                    if let Some(e) = self.experiment(v) {
                        doc.experiments.push(e);
                    }
                }
                "network" => {
                    for (name, v) in self.named(v, key) {
                        if let Some(n) = self.network(name, v) {
                            doc.networks.push(n);
                        }
                    }
                }
                "disk" => {
                    for (name, v) in self.named(v, key) {
                        if let Some(d) = self.disk(name, v) {
                            doc.disks.push(d);
                        }
                    }
                }
                "vm" => {
                    for (name, v) in self.named(v, key) {
                        if let Some(vm) = self.vm(name, v) {
                            doc.vms.push(vm);
                        }
                    }
                }
                "capture" => {
                    for (name, v) in self.named(v, key) {
                        if let Some(c) = self.capture(name, v) {
                            doc.captures.push(c);
                        }
                    }
                }
                "check" => {
                    for (name, v) in self.named(v, key) {
                        if let Some(c) = self.check(name, v) {
                            doc.checks.push(c);
                        }
                    }
                }
                _ => {
                    let help =
                        did_you_mean(key, lang::top_names().iter().copied()).unwrap_or_else(|| {
                            "expected one of: [experiment], [network.NAME], [disk.NAME], [vm.NAME], [capture.NAME], [check.NAME]"
                                .to_string()
                        });
                    self.push(
                        Diag::error(Code::UnknownKey, format!("unknown key `{key}`"))
                            .label(span_of(k.span()), "unknown key")
                            .help(help),
                    );
                }
            }
        }
        doc
    }

    fn experiment(&mut self, v: &Val<'_>) -> Option<ExperimentNode> {
        let t = self.table(
            v,
            "experiment",
            "[experiment]",
            lang::EXPERIMENT.toml_keys(),
        )?;
        let name = self.req_string(&t, "name", "\"NAME\"");
        let images = self.opt_string(&t, "images");
        let accel = self.opt_string(&t, "accel");
        let boot_timeout = self.opt_string(&t, "boot-timeout");
        let provider = t.get("provider").and_then(|v| {
            let p = self.table(
                v,
                "experiment.provider",
                "[experiment.provider]",
                lang::PROVIDER.toml_keys(),
            )?;
            Some(ProviderNode {
                kind: self.req_string(&p, "name", "\"minimega\"")?,
                base: self.opt_string(&p, "base"),
                namespace: self.opt_string(&p, "namespace"),
                span: p.span,
            })
        });
        Some(ExperimentNode {
            name: name?,
            images,
            accel,
            boot_timeout,
            provider,
            span: t.span,
        })
    }

    fn network(&mut self, name: &Key<'_>, v: &Val<'_>) -> Option<Network> {
        let n = name_of(name);
        let what = format!("network \"{}\"", n.value);
        let t = self.table(
            v,
            &format!("network.{}", n.value),
            what,
            lang::NETWORK.toml_keys(),
        )?;
        Some(Network {
            host_address: self.opt_string(&t, "host-address"),
            name: n,
            span: t.span,
        })
    }

    fn disk(&mut self, name: &Key<'_>, v: &Val<'_>) -> Option<Disk> {
        let n = name_of(name);
        let what = format!("disk \"{}\"", n.value);
        let t = self.table(
            v,
            &format!("disk.{}", n.value),
            what,
            lang::DISK.toml_keys(),
        )?;
        let mut inject = Vec::new();
        if let Some(items) = t.get("inject").and_then(|v| self.array(v, "inject")) {
            for item in items {
                if let Some(it) =
                    self.table(item, "inject", "an inject entry", lang::INJECT.toml_keys())
                {
                    let src = self.req_string(&it, "src", "\"HOST_PATH\"");
                    let dst = self.req_string(&it, "dst", "\"/GUEST_PATH\"");
                    if let (Some(src), Some(dst)) = (src, dst) {
                        inject.push(Inject {
                            src,
                            dst,
                            span: it.span,
                        });
                    }
                }
            }
        }
        Some(Disk {
            size: self.opt_string(&t, "size"),
            format: self.opt_string(&t, "format"),
            filesystem: self.opt_string(&t, "filesystem"),
            keep: self.opt_bool(&t, "keep"),
            from: self.opt_string(&t, "from"),
            inject,
            name: n,
            span: t.span,
        })
    }

    fn vm(&mut self, name: &Key<'_>, v: &Val<'_>) -> Option<Vm> {
        let n = name_of(name);
        let what = format!("vm \"{}\"", n.value);
        let t = self.table(v, &format!("vm.{}", n.value), what, lang::VM.toml_keys())?;
        let mut vm = Vm {
            name: n,
            uuid: self.opt_string(&t, "uuid"),
            kernel: self.opt_string(&t, "kernel"),
            initrd: self.opt_string(&t, "initrd"),
            append: self.opt_string(&t, "append"),
            memory: t.get("memory").and_then(|v| self.memory(v)),
            vcpus: self.opt_int(&t, "vcpus"),
            snapshot: self.opt_bool(&t, "snapshot"),
            boot_timeout: self.opt_string(&t, "boot-timeout"),
            host: self.opt_string(&t, "host"),
            disks: Vec::new(),
            nics: Vec::new(),
            mirrors: Vec::new(),
            tags: Vec::new(),
            after: Vec::new(),
            qemu_args: Vec::new(),
            cc: Vec::new(),
            span: t.span,
        };
        if let Some(items) = t.get("disk").and_then(|v| self.array(v, "disk")) {
            vm.disks = items.iter().filter_map(|i| self.vm_disk(i)).collect();
        }
        if let Some(items) = t.get("nic").and_then(|v| self.array(v, "nic")) {
            vm.nics = items.iter().filter_map(|i| self.nic(i)).collect();
        }
        if let Some(items) = t.get("mirrors").and_then(|v| self.array(v, "mirrors")) {
            vm.mirrors = items.iter().filter_map(|i| self.mirror(i)).collect();
        }
        if let Some(v) = t.get("tags")
            && let Some(tags) = self.open(v, "tags", "tags")
        {
            for (k, v) in &tags.entries {
                if let Some(value) = self.string(v, k.get_ref()) {
                    vm.tags.push(Tag {
                        key: name_of(k),
                        value,
                    });
                }
            }
        }
        if let Some(v) = t.get("after") {
            vm.after = self.strings(v, "after");
        }
        if let Some(v) = t.get("qemu-args") {
            vm.qemu_args = self.qemu_args(v);
        }
        if let Some(items) = t.get("cc").and_then(|v| self.array(v, "cc")) {
            vm.cc = items.iter().filter_map(|i| self.cc_step(i)).collect();
        }
        Some(vm)
    }

    /// A string as written, or an integer meaning MiB (kept as "NM").
    fn memory(&mut self, v: &Val<'_>) -> Option<Sp<String>> {
        match v.get_ref() {
            DeValue::String(_) => self.string(v, "memory"),
            DeValue::Integer(_) => self
                .integer(v, "memory")
                .map(|n| Sp::new(format!("{}M", n.value), n.span)),
            _ => {
                self.wrong_type(v, "memory", "a string or an integer (MiB)");
                None
            }
        }
    }

    /// An array of words, or one string split on whitespace.
    fn qemu_args(&mut self, v: &Val<'_>) -> Vec<Sp<String>> {
        match v.get_ref() {
            DeValue::String(s) => {
                let r = v.span();
                // Exact spans per word when the string was written without escapes.
                let raw = self.text.get(r.clone()).unwrap_or("");
                let inner = raw.get(1..raw.len().saturating_sub(1));
                let exact = raw.len() >= 2 && inner == Some(s.as_ref());
                s.split_whitespace()
                    .map(|w| {
                        let span = if exact {
                            let off = w.as_ptr() as usize - s.as_ptr() as usize;
                            let start = r.start + 1 + off;
                            span_of(start..start + w.len())
                        } else {
                            span_of(r.clone())
                        };
                        Sp::new(w.to_string(), span)
                    })
                    .collect()
            }
            DeValue::Array(_) => self.strings(v, "qemu-args"),
            _ => {
                self.wrong_type(v, "qemu-args", "an array of strings or a string");
                Vec::new()
            }
        }
    }

    fn vm_disk(&mut self, v: &Val<'_>) -> Option<VmDisk> {
        match v.get_ref() {
            DeValue::String(_) => Some(VmDisk {
                name: self.string(v, "disk")?,
                mount: None,
                span: span_of(v.span()),
            }),
            DeValue::Table(_) => {
                let t = self.table(v, "disk", "a vm disk", lang::VM_DISK.toml_keys())?;
                let name = self.req_string(&t, "name", "\"DISK_OR_PATH\"");
                let mount = self.opt_string(&t, "mount");
                Some(VmDisk {
                    name: name?,
                    mount,
                    span: t.span,
                })
            }
            _ => {
                self.wrong_type(v, "disk", "a string or a table");
                None
            }
        }
    }

    fn nic(&mut self, v: &Val<'_>) -> Option<Nic> {
        match v.get_ref() {
            DeValue::String(_) => Some(Nic {
                network: self.string(v, "nic")?,
                mac: None,
                driver: None,
                span: span_of(v.span()),
            }),
            DeValue::Table(_) => {
                let t = self.table(v, "nic", "a nic", lang::NIC.toml_keys())?;
                let network = self.req_string(&t, "network", "\"NETWORK\"");
                let mac = self.opt_string(&t, "mac");
                let driver = self.opt_string(&t, "driver");
                Some(Nic {
                    network: network?,
                    mac,
                    driver,
                    span: t.span,
                })
            }
            _ => {
                self.wrong_type(v, "nic", "a string or a table");
                None
            }
        }
    }

    fn mirror(&mut self, v: &Val<'_>) -> Option<Mirror> {
        match v.get_ref() {
            DeValue::String(_) => Some(Mirror {
                source: MirrorSource::Vm(self.string(v, "mirrors")?),
                nic: None,
                into: None,
                direction: None,
                span: span_of(v.span()),
            }),
            DeValue::Table(_) => {
                let t = self.table(v, "mirrors", "a mirror", lang::MIRRORS.toml_keys())?;
                let vm = self.opt_string(&t, "vm");
                let network = self.opt_string(&t, "network");
                let nic = self.opt_int(&t, "nic");
                let into = self.opt_int(&t, "into");
                let direction = self.opt_string(&t, "direction");
                if let (Some(kv), Some(kn)) = (t.key("vm"), t.key("network")) {
                    self.push(
                        Diag::error(
                            Code::ConflictingKeys,
                            "a mirror has either `vm` or `network`, not both",
                        )
                        .label(span_of(kn.span()), "second source")
                        .label(span_of(kv.span()), "first source")
                        .help("use two mirrors to mirror a VM and a network"),
                    );
                }
                let source = match (vm, network) {
                    (Some(vm), _) => MirrorSource::Vm(vm),
                    (None, Some(net)) => MirrorSource::Network(net),
                    (None, None) => {
                        if t.get("vm").is_none()
                            && t.get("network").is_none()
                            && !t.suggested.iter().any(|k| *k == "vm" || *k == "network")
                        {
                            self.push(
                                Diag::error(
                                    Code::MissingKey,
                                    "a mirror needs a source: `vm` or `network`",
                                )
                                .label(t.span, "no `vm` or `network` here")
                                .help("add `vm = \"VM\"` or `network = \"NETWORK\"`"),
                            );
                        }
                        return None;
                    }
                };
                Some(Mirror {
                    source,
                    nic,
                    into,
                    direction,
                    span: t.span,
                })
            }
            _ => {
                self.wrong_type(v, "mirrors", "a string or a table");
                None
            }
        }
    }

    fn command(&mut self, v: &Val<'_>, key: &str) -> Option<Command> {
        match v.get_ref() {
            DeValue::String(_) => self.string(v, key).map(Command::Shell),
            DeValue::Array(_) => Some(Command::Argv(self.strings(v, key))),
            _ => {
                self.wrong_type(v, key, "a string or an array of strings");
                None
            }
        }
    }

    fn cc_step(&mut self, v: &Val<'_>) -> Option<CcStep> {
        let t = self.table(v, "cc", "a cc step", lang::toml_step_keys())?;
        let actions: Vec<(&Key<'_>, &Val<'_>)> = t
            .entries
            .iter()
            .filter(|(k, _)| lang::cc_action_names().contains(&k.get_ref().as_ref()))
            .copied()
            .collect();
        let timeout = self.opt_string(&t, "timeout");
        let allow_failure = self.opt_bool(&t, "allow-failure");
        let to_key = t.key("to");
        let to = self.opt_string(&t, "to");
        let max_size_key = t.key("max-size");
        let max_size = self.opt_string(&t, "max-size");
        let (ak, av) = match actions.as_slice() {
            [] => {
                self.push(
                    Diag::error(
                        Code::CcAction,
                        "a cc step needs one of `exec`, `background`, `send`, `recv`",
                    )
                    .label(t.span, "this step does nothing")
                    .help("for instance `{ exec = \"ip link set eth0 up\" }`"),
                );
                return None;
            }
            [one] => *one,
            [first, rest @ ..] => {
                let mut d = Diag::error(
                    Code::CcAction,
                    format!(
                        "a cc step has exactly one action, this one has {}",
                        actions.len()
                    ),
                );
                for (k, _) in rest {
                    d = d.label(
                        span_of(k.span()),
                        format!("`{}` is another action", k.get_ref()),
                    );
                }
                d = d
                    .label(span_of(first.0.span()), "first action")
                    .help("split it into one step per action, in the order they should run");
                self.push(d);
                *first
            }
        };
        let akey: &str = ak.get_ref();
        let action = match akey {
            "exec" | "background" => {
                if let Some(k) = to_key {
                    self.push(
                        Diag::error(Code::UnknownKey, format!("`to` does not apply to `{akey}`"))
                            .label(span_of(k.span()), "only `send` and `recv` take `to`")
                            .help(format!("remove `to` from this `{akey}` step")),
                    );
                }
                if let Some(k) = max_size_key {
                    self.push(
                        Diag::error(
                            Code::UnknownKey,
                            format!("`max-size` does not apply to `{akey}`"),
                        )
                        .label(span_of(k.span()), "only `recv` takes `max-size`")
                        .help(format!("remove `max-size` from this `{akey}` step")),
                    );
                }
                let cmd = self.command(av, akey)?;
                if akey == "exec" {
                    CcAction::Exec(cmd)
                } else {
                    CcAction::Background(cmd)
                }
            }
            _ => {
                let src = self.string(av, akey);
                let example = if akey == "send" {
                    "\"/GUEST_PATH\""
                } else {
                    "\"HOST_DIR\""
                };
                if to_key.is_none() {
                    self.missing(&t, "to", example);
                }
                if akey == "send"
                    && let Some(k) = max_size_key
                {
                    self.push(
                        Diag::error(Code::UnknownKey, "`max-size` does not apply to `send`")
                            .label(span_of(k.span()), "only `recv` takes `max-size`")
                            .help("remove `max-size` from this `send` step"),
                    );
                }
                let (src, to) = (src?, to?);
                if akey == "send" {
                    CcAction::Send { src, to }
                } else {
                    CcAction::Recv { src, to, max_size }
                }
            }
        };
        Some(CcStep {
            action,
            timeout,
            allow_failure,
            span: t.span,
        })
    }
}

impl Reader<'_> {
    /// `[capture.NAME]` with `tap = "VM"` (and `nic = N`) or `network = "LAN"`.
    fn capture(&mut self, name: &Key<'_>, v: &Val<'_>) -> Option<Capture> {
        let n = name_of(name);
        let what = format!("capture \"{}\"", n.value);
        let t = self.table(
            v,
            &format!("capture.{}", n.value),
            what,
            lang::CAPTURE.toml_keys(),
        )?;
        let tap = self.opt_string(&t, "tap");
        let nic = self.opt_int(&t, "nic");
        let network = self.opt_string(&t, "network");
        let source = match (tap, network) {
            (Some(_), Some(_)) => {
                let (a, b) = (t.key("tap")?, t.key("network")?);
                self.push(
                    Diag::error(
                        Code::ConflictingKeys,
                        "a capture records a `tap` or a `network`, not both",
                    )
                    .label(span_of(a.span()), "tap here")
                    .label(span_of(b.span()), "network here")
                    .help("write one capture per source"),
                );
                None
            }
            (Some(vm), None) => Some(CaptureSource::Tap { vm, nic }),
            (None, Some(net)) => Some(CaptureSource::Network(net)),
            (None, None) => None,
        };
        Some(Capture {
            name: n,
            source,
            span: t.span,
        })
    }

    /// `[check.NAME]`: the keys of KDL's `check` block, one for one.
    fn check(&mut self, name: &Key<'_>, v: &Val<'_>) -> Option<Check> {
        let n = name_of(name);
        let what = format!("check \"{}\"", n.value);
        let t = self.table(
            v,
            &format!("check.{}", n.value),
            what,
            lang::CHECK.toml_keys(),
        )?;
        Some(Check {
            from: self.opt_string(&t, "from"),
            ping: self.opt_string(&t, "ping"),
            exec: t.get("exec").and_then(|v| self.command(v, "exec")),
            expect: self.opt_string(&t, "expect"),
            exit: self.opt_int(&t, "exit"),
            stdout_contains: self.opt_string(&t, "stdout-contains"),
            stdout_matches: self.opt_string(&t, "stdout-matches"),
            capture: self.opt_string(&t, "capture"),
            filter: self.opt_string(&t, "match"),
            at_least: self.opt_int(&t, "at-least"),
            at_most: self.opt_int(&t, "at-most"),
            none: self.opt_bool(&t, "none"),
            timeout: self.opt_string(&t, "timeout"),
            retry: self.opt_int(&t, "retry"),
            after: t
                .get("after")
                .map(|v| self.strings(v, "after"))
                .unwrap_or_default(),
            name: n,
            span: t.span,
        })
    }
}

// ---------------------------------------------------------------------------
// Emit

/// Write a document as canonical TOML: `[experiment]` first, then networks,
/// disks, VMs, captures and checks in model order; only keys present in the
/// model. It walks the language table (`syntax::lang`) over the document's
/// values (`syntax::values`).
pub fn emit(doc: &Document) -> String {
    let mut out = String::new();
    for item in values::document(doc) {
        let header = match item.node.table_name() {
            Some(_) => {
                let name = match item.vals.first() {
                    Some(V::Str(n)) => *n,
                    _ => unreachable!("a named table's first value is its name"),
                };
                format!("[{}.{}]", item.node.name, key(name))
            }
            None => format!("[{}]", item.node.name),
        };
        section(&mut out, header);
        emit_table(&mut out, &item, item.node.name);
    }
    out
}

/// The keys of a `[table]`: its own keys in table order, then its sections.
fn emit_table(out: &mut String, item: &Item<'_>, path: &str) {
    let mut sections = Vec::new();
    for (k, v) in item.present() {
        match k.toml {
            lang::Toml::TableName => {}
            lang::Toml::Section => sections.push((k, v)),
            _ => {
                for (name, value) in fields(k, v) {
                    kv(out, name, &value);
                }
            }
        }
    }
    for (k, v) in sections {
        if let V::Nodes(items) = v {
            for it in items {
                let path = format!("{path}.{}", k.name);
                section(out, format!("[{path}]"));
                emit_table(out, it, &path);
            }
        }
    }
}

/// The `key = value` pairs one present key of a table makes (a flattened
/// node makes several).
fn fields(k: &'static lang::Key, v: &V<'_>) -> Vec<(&'static str, String)> {
    match (k.toml, v) {
        (lang::Toml::Flatten, V::Nodes(items)) => {
            items.iter().flat_map(|it| flattened(k.name, it)).collect()
        }
        _ => vec![(k.name, value(k, v))],
    }
}

/// A node as keys of its parent's table: its first argument under `name`,
/// its other keys beside it.
fn flattened(name: &'static str, item: &Item<'_>) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (i, (k, v)) in item.node.keys.iter().zip(&item.vals).enumerate() {
        if matches!(v, V::Absent) {
            continue;
        }
        let key = if i == 0 { name } else { k.name };
        out.push((key, value(k, v)));
    }
    out
}

/// The TOML text of a present value of key `k`.
fn value(k: &'static lang::Key, v: &V<'_>) -> String {
    match v {
        V::Str(s) => string(s),
        V::Int(i) => i.to_string(),
        V::Bool(b) => b.to_string(),
        V::Words(ws) => {
            let items: Vec<String> = ws.iter().map(|w| string(w)).collect();
            array(&items, false)
        }
        V::Command(c) => command(c),
        V::Tags(tags) => {
            let body: Vec<String> = tags
                .iter()
                .map(|t| format!("{} = {}", key(&t.key), string(&t.value)))
                .collect();
            format!("{{ {} }}", body.join(", "))
        }
        V::Nodes(items) => {
            let node = match k.ty {
                lang::Ty::Node(n) => n,
                _ => unreachable!("nodes under a node key"),
            };
            if node.shape == lang::Shape::Sequence {
                // One table per child, one per line (cc steps).
                let rows: Vec<String> = items
                    .iter()
                    .flat_map(|it| &it.seq)
                    .map(|(i, c)| inline_fields(&flattened(node.keys[*i].name, c)))
                    .collect();
                return array(&rows, true);
            }
            let rows: Vec<String> = items.iter().map(inline).collect();
            if k.repeatable {
                // Tables that cannot be bare strings go one per line.
                array(&rows, node.bare.is_none() && rows.len() > 1)
            } else {
                rows.concat()
            }
        }
        V::Absent => unreachable!("absent values are not written"),
    }
}

/// A nested node as an inline table, or as the bare string of its first
/// argument when the node allows it and nothing else is set.
fn inline(item: &Item<'_>) -> String {
    let present: Vec<_> = item.present().collect();
    if item.node.bare.is_some()
        && let [(k, V::Str(s))] = present.as_slice()
        && std::ptr::eq(*k, &item.node.keys[0])
    {
        return string(s);
    }
    let fields: Vec<(&str, String)> = present.iter().map(|(k, v)| (k.name, value(k, v))).collect();
    inline_fields(&fields)
}

fn section(out: &mut String, header: String) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&header);
    out.push('\n');
}

fn command(c: &Command) -> String {
    match c {
        Command::Shell(s) => string(s),
        Command::Argv(words) => {
            let items: Vec<String> = words.iter().map(|w| string(w)).collect();
            array(&items, false)
        }
    }
}

fn kv(out: &mut String, k: &str, v: &str) {
    let _ = writeln!(out, "{k} = {v}");
}

fn inline_fields(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("{{ {} }}", body.join(", "))
}

fn array(items: &[String], multiline: bool) -> String {
    if multiline {
        let mut s = String::from("[\n");
        for i in items {
            let _ = writeln!(s, "    {i},");
        }
        s.push(']');
        s
    } else {
        format!("[{}]", items.join(", "))
    }
}

/// A TOML key: bare when it can be, quoted otherwise.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        k.to_string()
    } else {
        string(k)
    }
}

/// A TOML basic string.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/tap-mirror.toml");

    fn parse_str(text: &str) -> (Document, Diagnostics) {
        parse(&SourceFile::new("test.toml", text))
    }

    fn parse_ok(text: &str) -> Document {
        let src = SourceFile::new("test.toml", text);
        let (doc, diags) = parse(&src);
        assert!(diags.is_empty(), "{}", diags.render_plain(&src));
        doc
    }

    fn codes(d: &Diagnostics) -> Vec<Code> {
        d.items.iter().map(|d| d.code).collect()
    }

    /// The text a diagnostic's primary label points at.
    fn at<'t>(text: &'t str, d: &Diag) -> &'t str {
        let s = d.labels[0].span;
        &text[s.offset()..s.offset() + s.len()]
    }

    fn slice(text: &str, s: SourceSpan) -> &str {
        &text[s.offset()..s.offset() + s.len()]
    }

    fn assert_round_trip(doc: &Document) {
        let once = emit(doc);
        let (back, diags) = parse_str(&once);
        assert!(
            diags.is_empty(),
            "emitted TOML has errors: {diags:?}\n{once}"
        );
        assert_eq!(back, *doc, "parse(emit(d)) != d\n{once}");
        assert_eq!(emit(&back), once, "emit is not a fixpoint");
    }

    const FULL: &str = r#"
[experiment]
name = "full"
images = "/srv/images"
accel = "tcg"

[network.LAN]
host-address = "10.0.0.254/24"

[network.mon]

[disk.bro]
size = "10G"
format = "qcow2"
filesystem = "ext4"
keep = true
from = "base.qcow2"
inject = [{ src = "conf/bro", dst = "/etc/bro" }, { src = "a", dst = "/b" }]

[vm."web[1-3]"]
uuid = "11111111-1111-1111-1111-111111111111"
kernel = "k"
initrd = "i"
append = "console=ttyS0"
memory = "1G"
vcpus = 2
snapshot = false
disk = ["bro", { name = "/img/x.qcow2", mount = "/x" }]
nic = ["LAN", { network = "mon", mac = "02:00:00:00:00:01", driver = "e1000" }]
mirrors = ["A", { vm = "B", nic = 1, into = 0, direction = "ingress" }, { network = "LAN", into = 1, direction = "both" }]
tags = { role = "web", "dotted.key" = "x y" }
after = ["A", "B"]
qemu-args = ["-cpu", "host"]
cc = [
    { exec = "ip link set eth0 up", timeout = "30s", allow-failure = true },
    { exec = ["ip", "link"] },
    { background = "tcpdump -i eth0" },
    { background = ["sleep", "10"] },
    { send = "host/path", to = "/guest" },
    { recv = "/guest/path", to = "hostdir", timeout = "5m" },
]
"#;

    #[test]
    fn example_parses_in_file_order() {
        let doc = parse_ok(EXAMPLE);
        let e = doc.experiment().expect("experiment");
        assert_eq!(e.name.value, "tap-mirror");
        assert_eq!(slice(EXAMPLE, e.span), "[experiment]");
        assert_eq!(e.images.as_ref().unwrap().value, "images");
        let nets: Vec<&str> = doc.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nets, ["LAN", "mon"]);
        let vms: Vec<&str> = doc.vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(vms, ["A", "B", "monitor"]);
        let a = &doc.vms[0];
        assert_eq!(a.nics[0].network.value, "LAN");
        assert_eq!(slice(EXAMPLE, a.nics[0].span), "\"LAN\"");
        assert_eq!(a.cc.len(), 2);
        assert_eq!(
            a.cc[1].action,
            CcAction::Exec(Command::Shell(Sp::bare("ip link set eth0 up".into())))
        );
        let m = &doc.vms[2];
        assert_eq!(m.mirrors[0].source, MirrorSource::Vm(Sp::bare("A".into())));
        assert_eq!(slice(EXAMPLE, m.name.span), "monitor");
        assert_eq!(slice(EXAMPLE, m.span), "[vm.monitor]");
    }

    #[test]
    fn example_round_trips() {
        let doc = parse_ok(EXAMPLE);
        assert_round_trip(&doc);
    }

    #[test]
    fn every_key_maps() {
        let doc = parse_ok(FULL);
        let e = doc.experiment().unwrap();
        assert_eq!(e.name.value, "full");
        assert_eq!(e.images.as_deref().map(String::as_str), Some("/srv/images"));
        assert_eq!(e.accel.as_deref().map(String::as_str), Some("tcg"));

        assert_eq!(doc.networks.len(), 2);
        let lan = &doc.networks[0];
        assert_eq!(lan.host_address.as_ref().unwrap().value, "10.0.0.254/24");
        assert_eq!(
            slice(FULL, lan.host_address.as_ref().unwrap().span),
            "\"10.0.0.254/24\""
        );
        assert_eq!(doc.networks[1].host_address, None);

        let d = &doc.disks[0];
        assert_eq!(d.name.value, "bro");
        assert_eq!(d.size.as_ref().unwrap().value, "10G");
        assert_eq!(d.format.as_ref().unwrap().value, "qcow2");
        assert_eq!(d.filesystem.as_ref().unwrap().value, "ext4");
        assert!(d.keep.as_ref().unwrap().value);
        assert_eq!(d.from.as_ref().unwrap().value, "base.qcow2");
        assert_eq!(d.inject.len(), 2);
        assert_eq!(d.inject[0].src.value, "conf/bro");
        assert_eq!(d.inject[0].dst.value, "/etc/bro");
        assert_eq!(
            slice(FULL, d.inject[0].span),
            r#"{ src = "conf/bro", dst = "/etc/bro" }"#
        );

        let vm = &doc.vms[0];
        assert_eq!(vm.name.value, "web[1-3]");
        assert_eq!(slice(FULL, vm.name.span), "\"web[1-3]\"");
        assert_eq!(
            vm.uuid.as_ref().unwrap().value,
            "11111111-1111-1111-1111-111111111111"
        );
        assert_eq!(vm.kernel.as_ref().unwrap().value, "k");
        assert_eq!(vm.initrd.as_ref().unwrap().value, "i");
        assert_eq!(vm.append.as_ref().unwrap().value, "console=ttyS0");
        assert_eq!(vm.memory.as_ref().unwrap().value, "1G");
        assert_eq!(vm.vcpus.as_ref().unwrap().value, 2);
        assert_eq!(slice(FULL, vm.vcpus.as_ref().unwrap().span), "2");
        assert!(!vm.snapshot.as_ref().unwrap().value);

        assert_eq!(vm.disks.len(), 2);
        assert_eq!(vm.disks[0].name.value, "bro");
        assert_eq!(vm.disks[0].mount, None);
        assert_eq!(vm.disks[1].name.value, "/img/x.qcow2");
        assert_eq!(vm.disks[1].mount.as_ref().unwrap().value, "/x");

        assert_eq!(vm.nics.len(), 2);
        assert_eq!(vm.nics[0].network.value, "LAN");
        assert_eq!(vm.nics[1].network.value, "mon");
        assert_eq!(vm.nics[1].mac.as_ref().unwrap().value, "02:00:00:00:00:01");
        assert_eq!(vm.nics[1].driver.as_ref().unwrap().value, "e1000");

        assert_eq!(vm.mirrors.len(), 3);
        assert_eq!(vm.mirrors[0].source, MirrorSource::Vm(Sp::bare("A".into())));
        assert_eq!(vm.mirrors[0].nic, None);
        let m1 = &vm.mirrors[1];
        assert_eq!(m1.source, MirrorSource::Vm(Sp::bare("B".into())));
        assert_eq!(m1.nic.as_ref().unwrap().value, 1);
        assert_eq!(m1.into.as_ref().unwrap().value, 0);
        assert_eq!(m1.direction.as_ref().unwrap().value, "ingress");
        let m2 = &vm.mirrors[2];
        assert_eq!(m2.source, MirrorSource::Network(Sp::bare("LAN".into())));
        assert_eq!(m2.nic, None);
        assert_eq!(m2.into.as_ref().unwrap().value, 1);

        let tags: Vec<(&str, &str)> = vm
            .tags
            .iter()
            .map(|t| (t.key.as_str(), t.value.as_str()))
            .collect();
        assert_eq!(tags, [("role", "web"), ("dotted.key", "x y")]);
        let after: Vec<&str> = vm.after.iter().map(|a| a.as_str()).collect();
        assert_eq!(after, ["A", "B"]);
        let qa: Vec<&str> = vm.qemu_args.iter().map(|a| a.as_str()).collect();
        assert_eq!(qa, ["-cpu", "host"]);

        assert_eq!(vm.cc.len(), 6);
        let s0 = &vm.cc[0];
        assert_eq!(
            s0.action,
            CcAction::Exec(Command::Shell(Sp::bare("ip link set eth0 up".into())))
        );
        assert_eq!(s0.timeout.as_ref().unwrap().value, "30s");
        assert!(s0.allow_failure.as_ref().unwrap().value);
        assert_eq!(
            vm.cc[1].action,
            CcAction::Exec(Command::Argv(vec![
                Sp::bare("ip".into()),
                Sp::bare("link".into())
            ]))
        );
        assert_eq!(vm.cc[1].timeout, None);
        assert_eq!(vm.cc[1].allow_failure, None);
        assert_eq!(
            vm.cc[2].action,
            CcAction::Background(Command::Shell(Sp::bare("tcpdump -i eth0".into())))
        );
        assert!(matches!(
            &vm.cc[3].action,
            CcAction::Background(Command::Argv(w)) if w.len() == 2
        ));
        assert_eq!(
            vm.cc[4].action,
            CcAction::Send {
                src: Sp::bare("host/path".into()),
                to: Sp::bare("/guest".into())
            }
        );
        assert_eq!(
            vm.cc[5].action,
            CcAction::Recv {
                src: Sp::bare("/guest/path".into()),
                to: Sp::bare("hostdir".into()),
                max_size: None,
            }
        );
        assert_eq!(vm.cc[5].timeout.as_ref().unwrap().value, "5m");
        assert_eq!(vm.cc[5].action.keyword(), "recv");
    }

    #[test]
    fn full_document_round_trips() {
        let doc = parse_ok(FULL);
        assert_round_trip(&doc);
        // The canonical form is itself a fixpoint of parse + emit.
        let canonical = emit(&doc);
        assert_eq!(emit(&parse_ok(&canonical)), canonical);
        assert!(canonical.starts_with("[experiment]\nname = \"full\"\n"));
        assert!(canonical.contains("[vm.\"web[1-3]\"]\n"));
        assert!(canonical.contains("nic = [\"LAN\", { network = \"mon\", mac = \"02:00:00:00:00:01\", driver = \"e1000\" }]\n"));
        assert!(canonical.contains("mirrors = [\"A\", { vm = \"B\", nic = 1, into = 0, direction = \"ingress\" }, { network = \"LAN\", into = 1, direction = \"both\" }]\n"));
        assert!(canonical.contains("tags = { role = \"web\", \"dotted.key\" = \"x y\" }\n"));
        assert!(canonical.contains("{ exec = [\"ip\", \"link\"] },\n"));
    }

    #[test]
    fn bare_string_equals_table_with_only_its_key() {
        let bare = parse_ok("[vm.A]\ndisk = [\"bro\"]\nnic = [\"LAN\"]\nmirrors = [\"B\"]\n");
        let table = parse_ok(
            "[vm.A]\ndisk = [{ name = \"bro\" }]\nnic = [{ network = \"LAN\" }]\nmirrors = [{ vm = \"B\" }]\n",
        );
        assert_eq!(bare, table);
        // Emitting uses the bare form.
        let out = emit(&table);
        assert!(
            out.contains("disk = [\"bro\"]\nnic = [\"LAN\"]\nmirrors = [\"B\"]\n"),
            "{out}"
        );
        // A network mirror is always a table.
        let net = parse_ok("[vm.A]\nmirrors = [{ network = \"LAN\" }]\n");
        assert!(emit(&net).contains("mirrors = [{ network = \"LAN\" }]"));
    }

    #[test]
    fn memory_integer_means_mib_and_qemu_args_string_splits() {
        let text = "[vm.A]\nmemory = 4096\nqemu-args = \"-cpu  host -smp 2\"\n";
        let doc = parse_ok(text);
        let vm = &doc.vms[0];
        assert_eq!(vm.memory.as_ref().unwrap().value, "4096M");
        assert_eq!(slice(text, vm.memory.as_ref().unwrap().span), "4096");
        let words: Vec<&str> = vm.qemu_args.iter().map(|a| a.as_str()).collect();
        assert_eq!(words, ["-cpu", "host", "-smp", "2"]);
        for w in &vm.qemu_args {
            assert_eq!(slice(text, w.span), w.as_str());
        }
        assert_round_trip(&doc);
    }

    #[test]
    fn array_of_tables_and_dotted_keys_are_accepted() {
        let text = "[vm.A]\nnic = [\"LAN\"]\n\n[[vm.A.cc]]\nexec = \"true\"\n\n[[vm.A.cc]]\nrecv = \"/x\"\nto = \"out\"\n\n[experiment]\nname = \"x\"\n";
        let doc = parse_ok(text);
        assert_eq!(doc.vms[0].cc.len(), 2);
        assert_eq!(doc.experiment().unwrap().name.value, "x");
        assert_round_trip(&doc);
    }

    #[test]
    fn missing_experiment_gives_no_node_missing_name_an_error() {
        let doc = parse_ok("[network.LAN]\n");
        assert!(doc.experiments.is_empty());

        let text = "[experiment]\nimages = \"i\"\n";
        let (doc, diags) = parse_str(text);
        assert!(doc.experiments.is_empty());
        assert_eq!(codes(&diags), [Code::MissingKey]);
        assert_eq!(at(text, &diags.items[0]), "[experiment]");
        assert!(diags.items[0].message.contains("`name`"));
    }

    #[test]
    fn unknown_key_suggests_the_closest() {
        let text = "[experiment]\nname = \"x\"\n\n[vm.A]\nuuidd = \"1\"\nnic = [{ netwrk = \"LAN\" }]\n\n[vms.B]\n";
        let (_, diags) = parse_str(text);
        // No "missing `network`" for the nic: the typo explains it.
        assert_eq!(codes(&diags), [Code::UnknownKey; 3]);
        let d = &diags.items[0];
        assert_eq!(at(text, d), "uuidd");
        assert_eq!(d.help.as_deref(), Some("did you mean 'uuid'?"));
        assert!(d.message.contains("vm \"A\""), "{}", d.message);
        assert_eq!(at(text, &diags.items[1]), "netwrk");
        assert_eq!(
            diags.items[1].help.as_deref(),
            Some("did you mean 'network'?")
        );
        assert_eq!(at(text, &diags.items[2]), "vms");
        assert_eq!(diags.items[2].help.as_deref(), Some("did you mean 'vm'?"));
    }

    #[test]
    fn wrong_types_point_at_the_value() {
        let text = "[vm.A]\nvcpus = \"two\"\nsnapshot = 1\nnic = \"LAN\"\nkernel = 3\n";
        let (doc, diags) = parse_str(text);
        assert_eq!(codes(&diags), [Code::WrongType; 4]);
        // In file order.
        let msgs: Vec<(&str, &str)> = diags
            .items
            .iter()
            .map(|d| (d.message.as_str(), at(text, d)))
            .collect();
        assert_eq!(
            msgs,
            [
                ("expected an integer, found a string", "\"two\""),
                ("expected a boolean, found an integer", "1"),
                ("expected an array, found a string", "\"LAN\""),
                ("expected a string, found an integer", "3"),
            ]
        );
        // What could be read is still there.
        assert_eq!(doc.vms.len(), 1);
        assert_eq!(doc.vms[0].vcpus, None);
    }

    #[test]
    fn collects_every_error() {
        let text = r#"
[experiment]
nam = "x"

[network.LAN]
host-adress = "10.0.0.1/24"

[disk.d]
size = 10
inject = [{ src = "a" }]

[vm.A]
nic = [{ mac = "02:00:00:00:00:01" }]
mirrors = [{ nic = 1 }, { vm = "B", network = "LAN" }]
cc = [{ exec = "a", background = "b" }, { timeout = "3s" }, { send = "x" }, { exec = "y", to = "z" }, 7]
"#;
        let (doc, diags) = parse_str(text);
        let got: Vec<(Code, &str)> = diags.items.iter().map(|d| (d.code, at(text, d))).collect();
        assert_eq!(
            got,
            [
                // (no "missing `name`": the typo explains it)
                (Code::UnknownKey, "nam"),
                (Code::UnknownKey, "host-adress"),
                (Code::WrongType, "10"),
                (Code::MissingKey, "{ src = \"a\" }"),
                (Code::MissingKey, "{ mac = \"02:00:00:00:00:01\" }"),
                (Code::MissingKey, "{ nic = 1 }"),
                (Code::ConflictingKeys, "network"),
                (Code::CcAction, "background"),
                (Code::CcAction, "{ timeout = \"3s\" }"),
                (Code::MissingKey, "{ send = \"x\" }"),
                (Code::UnknownKey, "to"),
                (Code::WrongType, "7"),
            ],
            "{diags:#?}"
        );
        // Partial results survive.
        assert_eq!(doc.networks.len(), 1);
        assert_eq!(doc.vms[0].mirrors.len(), 1);
        assert_eq!(doc.vms[0].cc.len(), 2);
        // And render.
        let rendered = diags.render_plain(&SourceFile::new("bad.toml", text));
        assert!(
            rendered.contains("did you mean 'host-address'?"),
            "{rendered}"
        );
    }

    #[test]
    fn syntax_errors_have_spans() {
        let text = "[experiment]\nname = \"x\"\n\n[vm.A]\nvcpus = 1\nvcpus = 2\n";
        let (doc, diags) = parse_str(text);
        assert_eq!(codes(&diags), [Code::TomlSyntax]);
        assert_eq!(at(text, &diags.items[0]), "vcpus");
        assert_eq!(
            diags.items[0].labels[0].span.offset(),
            text.rfind("vcpus").unwrap()
        );
        assert!(diags.items[0].message.contains("duplicate key"));
        assert_eq!(doc.vms.len(), 1);

        // A broken header: the keys below it land in the wrong table, which
        // is not reported again.
        let text = "[experiment\nname = \"x\"\n\n[vm.A]\nvcpu = 1\n";
        let (_, diags) = parse_str(text);
        assert_eq!(
            codes(&diags),
            [Code::TomlSyntax, Code::UnknownKey],
            "{diags:#?}"
        );
        assert!(diags.items[0].message.contains("unclosed table"));
        assert_eq!(at(text, &diags.items[1]), "vcpu");

        // A missing value is one error, not also a wrong type.
        let text = "[vm.A]\nvcpus =\nnic = [\"LAN\"]\n";
        let (doc, diags) = parse_str(text);
        assert_eq!(codes(&diags), [Code::TomlSyntax], "{diags:#?}");
        assert_eq!(doc.vms[0].nics.len(), 1);
    }

    /// Every file in tests/bad/toml has a structural error this front end
    /// reports (its first line says which).
    #[test]
    fn bad_files_report_errors() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad/toml");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let src = SourceFile::read(&path).unwrap();
            assert!(
                src.text.starts_with('#'),
                "{}: first line is a comment",
                path.display()
            );
            let (_, diags) = parse(&src);
            assert!(diags.has_errors(), "{}: no error", path.display());
            if std::env::var_os("SHOW_BAD").is_some() {
                eprintln!("{}", diags.render_plain(&src));
            }
            n += 1;
        }
        assert!(n >= 12);
    }

    #[test]
    fn emit_quotes_and_escapes() {
        let mut doc = parse_ok(EXAMPLE);
        doc.vms[0].name = Sp::bare("we b\"[1-3]".into());
        doc.vms[0].append = Some(Sp::bare("a\\b\n\tc\u{7f}\u{1}é".into()));
        doc.vms[0].tags.push(Tag {
            key: Sp::bare("".into()),
            value: Sp::bare("'".into()),
        });
        doc.networks[0].name = Sp::bare("".into());
        assert_round_trip(&doc);
    }

    #[test]
    fn emit_writes_only_present_keys() {
        let doc = parse_ok("[experiment]\nname = \"x\"\n[network.LAN]\n[vm.A]\n");
        assert_eq!(
            emit(&doc),
            "[experiment]\nname = \"x\"\n\n[network.LAN]\n\n[vm.A]\n"
        );
        assert_eq!(emit(&Document::default()), "");
    }

    mod prop {
        use super::*;
        use proptest::collection::vec;
        use proptest::option::of;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => "[a-zA-Z0-9_. -]{0,8}",
                1 => any::<String>(),
            ]
        }
        fn s() -> impl Strategy<Value = Sp<String>> {
            text().prop_map(Sp::bare)
        }
        fn os() -> impl Strategy<Value = Option<Sp<String>>> {
            of(s())
        }
        fn ob() -> impl Strategy<Value = Option<Sp<bool>>> {
            of(any::<bool>().prop_map(Sp::bare))
        }
        fn oi() -> impl Strategy<Value = Option<Sp<i64>>> {
            of(any::<i64>().prop_map(Sp::bare))
        }
        fn z() -> SourceSpan {
            SourceSpan::from(0..0)
        }
        fn command() -> impl Strategy<Value = Command> {
            prop_oneof![
                s().prop_map(Command::Shell),
                vec(s(), 0..3).prop_map(Command::Argv)
            ]
        }
        fn cc_step() -> impl Strategy<Value = CcStep> {
            let action = prop_oneof![
                command().prop_map(CcAction::Exec),
                command().prop_map(CcAction::Background),
                (s(), s()).prop_map(|(src, to)| CcAction::Send { src, to }),
                (s(), s(), os()).prop_map(|(src, to, max_size)| CcAction::Recv {
                    src,
                    to,
                    max_size
                }),
            ];
            (action, os(), ob()).prop_map(|(action, timeout, allow_failure)| CcStep {
                action,
                timeout,
                allow_failure,
                span: z(),
            })
        }
        fn mirror() -> impl Strategy<Value = Mirror> {
            let source = prop_oneof![
                s().prop_map(MirrorSource::Vm),
                s().prop_map(MirrorSource::Network)
            ];
            (source, oi(), oi(), os()).prop_map(|(source, nic, into, direction)| Mirror {
                source,
                nic,
                into,
                direction,
                span: z(),
            })
        }
        fn vm(name: String) -> impl Strategy<Value = Vm> {
            let a = (os(), os(), os(), os(), os(), oi(), ob(), os(), os());
            let b = (
                vec((s(), os()), 0..3),
                vec((s(), os(), os()), 0..3),
                vec(mirror(), 0..3),
                proptest::collection::btree_map(text(), text(), 0..3),
                vec(s(), 0..3),
                vec(s(), 0..3),
                vec(cc_step(), 0..4),
            );
            (a, b).prop_map(move |(a, b)| Vm {
                name: Sp::bare(name.clone()),
                uuid: a.0,
                kernel: a.1,
                initrd: a.2,
                append: a.3,
                memory: a.4,
                vcpus: a.5,
                snapshot: a.6,
                boot_timeout: a.7,
                host: a.8,
                disks: b
                    .0
                    .into_iter()
                    .map(|(name, mount)| VmDisk {
                        name,
                        mount,
                        span: z(),
                    })
                    .collect(),
                nics: b
                    .1
                    .into_iter()
                    .map(|(network, mac, driver)| Nic {
                        network,
                        mac,
                        driver,
                        span: z(),
                    })
                    .collect(),
                mirrors: b.2,
                tags: b
                    .3
                    .into_iter()
                    .map(|(k, v)| Tag {
                        key: Sp::bare(k),
                        value: Sp::bare(v),
                    })
                    .collect(),
                after: b.4,
                qemu_args: b.5,
                cc: b.6,
                span: z(),
            })
        }
        fn capture(name: String) -> impl Strategy<Value = Capture> {
            let source = of(prop_oneof![
                (s(), oi()).prop_map(|(vm, nic)| CaptureSource::Tap { vm, nic }),
                s().prop_map(CaptureSource::Network),
            ]);
            source.prop_map(move |source| Capture {
                name: Sp::bare(name.clone()),
                source,
                span: z(),
            })
        }
        fn check(name: String) -> impl Strategy<Value = Check> {
            let a = (os(), os(), of(command()), os(), os(), os(), oi(), os());
            let b = (os(), oi(), oi(), ob(), os(), oi(), vec(s(), 0..3));
            (a, b).prop_map(move |(a, b)| Check {
                name: Sp::bare(name.clone()),
                from: a.0,
                ping: a.1,
                exec: a.2,
                capture: a.3,
                filter: a.4,
                expect: a.5,
                exit: a.6,
                stdout_contains: a.7,
                stdout_matches: b.0,
                at_least: b.1,
                at_most: b.2,
                none: b.3,
                timeout: b.4,
                retry: b.5,
                after: b.6,
                span: z(),
            })
        }
        fn document() -> impl Strategy<Value = Document> {
            let captures = proptest::collection::btree_set(text(), 0..3)
                .prop_flat_map(|names| names.into_iter().map(capture).collect::<Vec<_>>());
            let checks = proptest::collection::btree_set(text(), 0..3)
                .prop_flat_map(|names| names.into_iter().map(check).collect::<Vec<_>>());
            let provider = of(
                (s(), os(), os()).prop_map(|(kind, base, namespace)| ProviderNode {
                    kind,
                    base,
                    namespace,
                    span: z(),
                }),
            );
            let exp = of((s(), os(), os(), os(), provider).prop_map(
                |(name, images, accel, boot_timeout, provider)| ExperimentNode {
                    name,
                    images,
                    accel,
                    boot_timeout,
                    provider,
                    span: z(),
                },
            ));
            let networks = proptest::collection::btree_map(text(), os(), 0..3);
            let disks = proptest::collection::btree_map(
                text(),
                (os(), os(), os(), ob(), os(), vec((s(), s()), 0..3)),
                0..3,
            );
            let vms = proptest::collection::btree_set(text(), 0..3)
                .prop_flat_map(|names| names.into_iter().map(vm).collect::<Vec<_>>());
            let rest = (vms, captures, checks);
            (exp, networks, disks, rest).prop_map(|(exp, networks, disks, rest)| Document {
                captures: rest.1,
                checks: rest.2,
                experiments: exp.into_iter().collect(),
                networks: networks
                    .into_iter()
                    .map(|(name, host_address)| Network {
                        name: Sp::bare(name),
                        host_address,
                        span: z(),
                    })
                    .collect(),
                disks: disks
                    .into_iter()
                    .map(|(name, d)| Disk {
                        name: Sp::bare(name),
                        size: d.0,
                        format: d.1,
                        filesystem: d.2,
                        keep: d.3,
                        from: d.4,
                        inject: d
                            .5
                            .into_iter()
                            .map(|(src, dst)| Inject {
                                src,
                                dst,
                                span: z(),
                            })
                            .collect(),
                        span: z(),
                    })
                    .collect(),
                vms: rest.0,
            })
        }

        /// KDL has no one-word argv (`exec "ls"` is a shell command), no
        /// empty one, and no `none` that is false (a bare `none` is true).
        fn kdl_sayable(mut doc: Document) -> Document {
            fn cmd(c: &mut Command) -> bool {
                if let Command::Argv(ws) = c {
                    match ws.len() {
                        0 => return false,
                        1 => *c = Command::Shell(ws.remove(0)),
                        _ => {}
                    }
                }
                true
            }
            for vm in &mut doc.vms {
                vm.cc.retain_mut(|st| match &mut st.action {
                    CcAction::Exec(c) | CcAction::Background(c) => cmd(c),
                    _ => true,
                });
            }
            for c in &mut doc.checks {
                if c.exec.as_mut().is_some_and(|e| !cmd(e)) {
                    c.exec = None;
                }
                if c.none.as_ref().is_some_and(|n| !n.value) {
                    c.none = None;
                }
            }
            doc
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn parse_emit_round_trips(doc in document()) {
                assert_round_trip(&doc);
            }

            /// The KDL emitter walks the same table: random documents round
            /// trip through KDL too, once limited to what KDL can say.
            #[test]
            fn kdl_emit_parse_round_trips(doc in document()) {
                let doc = kdl_sayable(doc);
                let text = crate::syntax::kdl::emit(&doc);
                let (back, diags) =
                    crate::syntax::parse(&SourceFile::new("x.kdl", text.clone()));
                prop_assert!(diags.is_empty(), "{diags:?}\n{text}");
                prop_assert_eq!(&back, &doc, "{}", text);
                prop_assert_eq!(crate::syntax::kdl::emit(&back), text);
            }

            #[test]
            fn arbitrary_text_does_not_panic(text in any::<String>()) {
                let _ = parse_str(&text);
            }
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        let samples = [
            "",
            "=",
            "[",
            "[[",
            "]]]",
            "\"",
            "'''",
            "a = [",
            "a = {",
            "vm = 3",
            "vm = []",
            "[[vm]]\nx = 1",
            "[vm]\nA = 1",
            "[vm.A]\ncc = [[], {}, \"x\", { exec = {} }, { exec = [1, {}] }]",
            "[vm.A]\nnic = [[], 1.5, true, 1979-05-27]",
            "[vm.A]\nmirrors = [{ vm = 1, nic = \"x\", into = 99999999999999999999 }]",
            "[vm.A]\nvcpus = 0xffffffffffffffffff\nmemory = 1.5",
            "[vm.A]\ntags = { a = 1, b = [] }\nqemu-args = 1",
            "[experiment]\nname = \"x\"\n[experiment]\nname = \"y\"",
            "[experiment]\nname = [\"x\"]\n[experiment.foo]",
            "\u{0}\u{1}\u{feff}[vm.\"é\"]",
            "experiment.name = \"x\"\nvm.A.nic = [\"L\"]",
            "[network.LAN]\nhost-address = \"x\"\n[network.LAN.host-address]",
        ];
        for s in samples {
            let _ = parse_str(s);
        }
        // Every prefix of real files, and some noise.
        for text in [EXAMPLE, FULL] {
            for end in 0..=text.len() {
                if text.is_char_boundary(end) {
                    let _ = parse_str(&text[..end]);
                }
            }
        }
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet: &[u8] = b"[]{}=\",.'\n #abvmnic0123-_\\\t";
        for _ in 0..300 {
            let mut s = String::new();
            for _ in 0..60 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push(alphabet[(seed % alphabet.len() as u64) as usize] as char);
            }
            let _ = parse_str(&s);
        }
    }
}
