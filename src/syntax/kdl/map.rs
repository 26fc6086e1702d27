//! The mapper: the raw KDL tree to the model, with every structural
//! diagnostic (unknown names, wrong types, missing or extra arguments,
//! misplaced blocks, duplicates).

use miette::SourceSpan;

use super::raw::{RawEntry, RawNode, RawValue, fix};
use crate::diag::{Code, Diag, Diagnostics, did_you_mean};
use crate::model::{
    Capture, CaptureSource, CcAction, CcStep, Check, Command, Disk, Document, ExperimentNode,
    Inject, Mirror, MirrorSource, Network, Nic, ProviderNode, Sp, Tag, Vm, VmDisk,
};
use crate::syntax::lang;

pub(super) struct Parser<'t> {
    pub(super) text: &'t str,
    pub(super) diags: Diagnostics,
}

/// A node's entries, split into positional arguments and (known, first)
/// properties.
struct View<'n> {
    node: &'n RawNode,
    usage: &'static str,
    args: Vec<&'n RawEntry>,
    props: Vec<(&'n str, &'n RawEntry)>,
}

impl<'n> View<'n> {
    fn name(&self) -> &'n str {
        self.node.name().value()
    }
    fn prop(&self, key: &str) -> Option<&'n RawEntry> {
        self.props.iter().find(|(k, _)| *k == key).map(|(_, e)| *e)
    }
}

/// Single-valued child nodes seen so far in one block: name and name span.
type Seen<'n> = Vec<(&'n str, SourceSpan)>;

fn value_kind(v: &RawValue) -> &'static str {
    match v {
        RawValue::String(_) => "a string",
        RawValue::Integer(_) => "an integer",
        RawValue::Float(_) => "a decimal number",
        RawValue::Bool(_) => "a boolean",
        RawValue::Null => "#null",
    }
}

impl<'t> Parser<'t> {
    // -- spans ------------------------------------------------------------

    fn fix(&self, span: SourceSpan) -> SourceSpan {
        fix(self.text, span)
    }

    /// A span without trailing whitespace and `;` (node spans include them).
    fn trim(&self, span: SourceSpan) -> SourceSpan {
        let span = self.fix(span);
        let start = span.offset();
        let end = start + span.len();
        match self.text.get(start..end) {
            Some(s) => {
                let t = s.trim_end_matches(|c: char| c.is_whitespace() || c == ';');
                (start..start + t.len()).into()
            }
            None => span,
        }
    }

    fn node_span(&self, node: &RawNode) -> SourceSpan {
        self.trim(node.span())
    }

    fn name_span(&self, node: &RawNode) -> SourceSpan {
        let s = self.fix(node.name().span());
        if s.is_empty() {
            self.node_span(node)
        } else {
            s
        }
    }

    fn entry_span(&self, e: &RawEntry) -> SourceSpan {
        self.trim(e.span())
    }

    /// The span of an entry's value: for a property, the part after `=`.
    fn value_span(&self, e: &RawEntry) -> SourceSpan {
        let es = self.entry_span(e);
        let Some(name) = e.name() else {
            return es;
        };
        let ns = self.fix(name.span());
        let (e_start, e_end) = (es.offset(), es.offset() + es.len());
        let name_end = ns.offset() + ns.len();
        if ns.is_empty() || ns.offset() < e_start || name_end > e_end {
            return es;
        }
        let Some(rest) = self.text.get(name_end..e_end) else {
            return es;
        };
        match rest.find('=') {
            Some(eq) => {
                let after = rest[eq + 1..].trim_start();
                (e_end - after.len()..e_end).into()
            }
            None => es,
        }
    }

    /// The child block of a node, from `{` to `}` when they can be found.
    fn children_span(&self, node: &RawNode) -> SourceSpan {
        let ns = self.node_span(node);
        let (start, end) = (ns.offset(), ns.offset() + ns.len());
        let inner = node.children().map(|c| self.fix(c.span()));
        let open = inner
            .and_then(|c| {
                let upto = c.offset().clamp(start, end);
                self.text.get(start..upto)?.rfind('{').map(|i| start + i)
            })
            .or_else(|| self.text.get(start..end)?.find('{').map(|i| start + i));
        match open {
            Some(o) => (o..end).into(),
            None => ns,
        }
    }

    // -- generic node checks --------------------------------------------------

    fn view<'n>(
        &mut self,
        node: &'n RawNode,
        props: &[&str],
        children: &[&str],
        usage: &'static str,
    ) -> View<'n> {
        let name = node.name().value();
        if let Some(ty) = node.ty() {
            self.type_annotation(ty, node.span());
        }
        let mut view = View {
            node,
            usage,
            args: Vec::new(),
            props: Vec::new(),
        };
        for e in node.entries() {
            if let Some(ty) = e.ty() {
                self.type_annotation(ty, e.span());
            }
            let Some(key) = e.name() else {
                view.args.push(e);
                continue;
            };
            let key = key.value();
            if !props.contains(&key) {
                let help = if children.contains(&key) {
                    Some(format!(
                        "`{key}` is written as a child node: {name} ... {{ {key} VALUE }}"
                    ))
                } else if props.is_empty() {
                    Some(format!("`{name}` takes no properties; usage: {usage}"))
                } else {
                    did_you_mean(key, props.iter().copied()).or_else(|| {
                        Some(format!(
                            "`{name}` takes {}",
                            props
                                .iter()
                                .map(|p| format!("{p}="))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })
                };
                self.diags.push(
                    Diag::error(
                        Code::UnknownKey,
                        format!("unknown property `{key}` on `{name}`"),
                    )
                    .label(self.entry_span(e), "unknown property")
                    .help_opt(help),
                );
                continue;
            }
            if let Some(first) = view.prop(key) {
                self.diags.push(
                    Diag::error(
                        Code::Duplicate,
                        format!("duplicate property `{key}` on `{name}`"),
                    )
                    .label(self.entry_span(e), "set again here")
                    .label(self.entry_span(first), "first set here")
                    .help(format!("keep one `{key}=`")),
                );
                continue;
            }
            view.props.push((key, e));
        }
        view
    }

    fn type_annotation(&mut self, ty: SourceSpan, whole: SourceSpan) {
        let span = if ty.is_empty() { whole } else { ty };
        self.diags.push(
            Diag::error(
                Code::KdlTypeAnnotation,
                "type annotations are not used in experiment files",
            )
            .label(self.fix(span), "type annotation")
            .help("remove the `(...)` annotation"),
        );
    }

    /// Check the number of positional arguments; true when at least `min`.
    fn want_args(&mut self, v: &View<'_>, min: usize, max: Option<usize>, what: &str) -> bool {
        let name = v.name();
        if v.args.len() < min {
            self.diags.push(
                Diag::error(
                    Code::MissingKey,
                    format!("missing argument: `{name}` needs {what}"),
                )
                .label(self.name_span(v.node), format!("{what} expected"))
                .help(format!("usage: {}", v.usage)),
            );
            return false;
        }
        if let Some(max) = max
            && v.args.len() > max
        {
            let extra = &v.args[max..];
            let mut d = Diag::error(
                Code::TooManyArguments,
                format!(
                    "too many arguments: `{name}` takes {}",
                    match max {
                        0 => "no arguments".to_string(),
                        1 => "one argument".to_string(),
                        n => format!("{n} arguments"),
                    }
                ),
            );
            for e in extra {
                d = d.label(self.entry_span(e), "unexpected argument");
            }
            self.diags.push(d.help(format!("usage: {}", v.usage)));
        }
        true
    }

    fn no_children(&mut self, v: &View<'_>) {
        if v.node.children().is_some() {
            let name = v.name();
            self.diags.push(
                Diag::error(
                    Code::UnexpectedChildren,
                    format!("`{name}` takes no child block"),
                )
                .label(self.children_span(v.node), "child block not allowed here")
                .help(format!("usage: {}", v.usage)),
            );
        }
    }

    /// Record a single-valued child; false (and an error) if seen before.
    fn once<'n>(&mut self, seen: &mut Seen<'n>, node: &'n RawNode) -> bool {
        let name = node.name().value();
        let span = self.name_span(node);
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
            self.diags.push(
                Diag::error(Code::Duplicate, format!("duplicate `{name}`"))
                    .label(span, "set again here")
                    .label(*first, "first set here")
                    .help(format!("`{name}` may appear once; keep one")),
            );
            return false;
        }
        seen.push((name, span));
        true
    }

    fn unknown_node(
        &mut self,
        node: &RawNode,
        parent: Option<&str>,
        known: &[&str],
        props: &[&str],
    ) {
        let name = node.name().value();
        let (message, label) = match parent {
            Some(p) => (
                format!("unknown node `{name}` in `{p}`"),
                format!("not valid in `{p}`"),
            ),
            None => (
                format!("unknown node `{name}` at the top level"),
                "unknown node".to_string(),
            ),
        };
        let help = if props.contains(&name) {
            let p = parent.unwrap_or("");
            Some(format!(
                "`{name}` is a property: write {name}=VALUE on the `{p}` line"
            ))
        } else if parent.is_none() && lang::VM.children().contains(&name) {
            Some(format!("`{name}` belongs inside a `vm` block"))
        } else {
            did_you_mean(name, known.iter().copied())
                .or_else(|| Some(format!("expected one of: {}", known.join(", "))))
        };
        self.diags.push(
            Diag::error(Code::UnknownKey, message)
                .label(self.name_span(node), label)
                .help_opt(help),
        );
    }

    // -- values ---------------------------------------------------------------

    /// How an entry is named in messages: `kernel` or `mount=`.
    fn entry_name(node: &RawNode, e: &RawEntry) -> String {
        match e.name() {
            Some(k) => format!("{}=", k.value()),
            None => node.name().value().to_string(),
        }
    }

    fn wrong_type(&mut self, node: &RawNode, e: &RawEntry, expected: &str, help: String) {
        let what = Self::entry_name(node, e);
        let got = value_kind(e.value());
        self.diags.push(
            Diag::error(
                Code::WrongType,
                format!("wrong type for `{what}`: expected {expected}, got {got}"),
            )
            .label(self.value_span(e), format!("expected {expected}"))
            .help(help),
        );
    }

    fn source_of(&self, e: &RawEntry) -> String {
        let s = self.value_span(e);
        self.text
            .get(s.offset()..s.offset() + s.len())
            .unwrap_or("")
            .to_string()
    }

    fn string(&mut self, node: &RawNode, e: &RawEntry) -> Option<Sp<String>> {
        match e.value() {
            RawValue::String(s) => Some(Sp::new(s.clone(), self.value_span(e))),
            RawValue::Null => {
                self.wrong_type(node, e, "a string", "write a quoted string".to_string());
                None
            }
            _ => {
                let src = self.source_of(e);
                let help = format!("quote it: \"{}\"", src.replace('"', "\\\""));
                self.wrong_type(node, e, "a string", help);
                None
            }
        }
    }

    /// A string, or an integer kept as its decimal text (`memory 512`).
    fn string_or_int(&mut self, node: &RawNode, e: &RawEntry) -> Option<Sp<String>> {
        match e.value() {
            RawValue::Integer(i) => Some(Sp::new(i.to_string(), self.value_span(e))),
            _ => self.string(node, e),
        }
    }

    fn int(&mut self, node: &RawNode, e: &RawEntry) -> Option<Sp<i64>> {
        match e.value() {
            RawValue::Integer(i) => match i64::try_from(*i) {
                Ok(i) => Some(Sp::new(i, self.value_span(e))),
                Err(_) => {
                    let what = Self::entry_name(node, e);
                    self.diags.push(
                        Diag::error(Code::WrongType, format!("`{what}` is out of range"))
                            .label(self.value_span(e), "too large"),
                    );
                    None
                }
            },
            RawValue::String(s) if s.trim().parse::<i64>().is_ok() => {
                let help = format!("write {} without quotes", s.trim());
                self.wrong_type(node, e, "an integer", help);
                None
            }
            _ => {
                self.wrong_type(
                    node,
                    e,
                    "an integer",
                    "write a whole number such as 0".into(),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &RawNode, e: &RawEntry) -> Option<Sp<bool>> {
        match e.value() {
            RawValue::Bool(b) => Some(Sp::new(*b, self.value_span(e))),
            RawValue::String(s) if matches!(s.as_str(), "true" | "false") => {
                let help = format!("write #{s} without quotes");
                self.wrong_type(node, e, "a boolean", help);
                None
            }
            _ => {
                self.wrong_type(node, e, "a boolean", "write #true or #false".into());
                None
            }
        }
    }

    fn prop_string(&mut self, v: &View<'_>, key: &str) -> Option<Sp<String>> {
        let e = v.prop(key)?;
        self.string(v.node, e)
    }

    fn prop_int(&mut self, v: &View<'_>, key: &str) -> Option<Sp<i64>> {
        let e = v.prop(key)?;
        self.int(v.node, e)
    }

    fn prop_bool(&mut self, v: &View<'_>, key: &str) -> Option<Sp<bool>> {
        let e = v.prop(key)?;
        self.boolean(v.node, e)
    }

    /// The first argument as a string, after checking there is exactly one.
    fn name_arg(&mut self, v: &View<'_>, what: &str) -> Option<Sp<String>> {
        if !self.want_args(v, 1, Some(1), what) {
            return None;
        }
        let e = *v.args.first()?;
        self.string(v.node, e)
    }

    /// A single-valued child such as `kernel "PATH"`: its one argument, unless
    /// it is a duplicate or has none.
    fn scalar<'n>(
        &mut self,
        seen: &mut Seen<'n>,
        node: &'n RawNode,
        what: &str,
        usage: &'static str,
    ) -> Option<&'n RawEntry> {
        let first = self.once(seen, node);
        let v = self.view(node, &[], &[], usage);
        self.no_children(&v);
        let ok = self.want_args(&v, 1, Some(1), what);
        if first && ok {
            v.args.first().copied()
        } else {
            None
        }
    }

    fn scalar_string<'n>(
        &mut self,
        seen: &mut Seen<'n>,
        node: &'n RawNode,
        what: &str,
        usage: &'static str,
    ) -> Option<Sp<String>> {
        let e = self.scalar(seen, node, what, usage)?;
        self.string(node, e)
    }

    fn children(node: &RawNode) -> &[RawNode] {
        node.children().map(|c| c.nodes()).unwrap_or(&[])
    }

    // -- the experiment language ----------------------------------------------

    /// Maps one top-level node into `doc`. By value: the caller hands nodes
    /// over one at a time and each raw tree is freed once mapped.
    pub(super) fn node(&mut self, node: RawNode, doc: &mut Document) {
        let node = &node;
        match node.name().value() {
            "experiment" => doc.experiments.push(self.experiment(node)),
            "network" => {
                if let Some(n) = self.network(node) {
                    doc.networks.push(n);
                }
            }
            "disk" => {
                if let Some(d) = self.disk(node) {
                    doc.disks.push(d);
                }
            }
            "vm" => {
                if let Some(v) = self.vm(node) {
                    doc.vms.push(v);
                }
            }
            "capture" => {
                if let Some(c) = self.capture(node) {
                    doc.captures.push(c);
                }
            }
            "check" => {
                if let Some(c) = self.check(node) {
                    doc.checks.push(c);
                }
            }
            _ => self.unknown_node(node, None, lang::top_names(), &[]),
        }
    }

    /// Always returns a node (with an empty name if none was given), so a
    /// nameless experiment is not also reported as a missing one.
    fn experiment(&mut self, node: &RawNode) -> ExperimentNode {
        let v = self.view(
            node,
            &[],
            lang::EXPERIMENT.children(),
            lang::EXPERIMENT.usage,
        );
        let name = self
            .name_arg(&v, "a name")
            .unwrap_or_else(|| Sp::new(String::new(), self.name_span(node)));
        let mut e = ExperimentNode {
            name,
            images: None,
            accel: None,
            boot_timeout: None,
            provider: None,
            span: self.node_span(node),
        };
        let mut seen = Seen::new();
        for child in Self::children(node) {
            match child.name().value() {
                "provider" => {
                    if self.once(&mut seen, child) {
                        e.provider = self.provider(child);
                    }
                }
                "images" => {
                    e.images =
                        self.scalar_string(&mut seen, child, "a directory", lang::IMAGES.usage)
                }
                "accel" => {
                    e.accel =
                        self.scalar_string(&mut seen, child, "an accelerator", lang::ACCEL.usage)
                }
                "boot-timeout" => {
                    e.boot_timeout =
                        self.scalar_string(&mut seen, child, "a duration", lang::BOOT_TIMEOUT.usage)
                }
                _ => self.unknown_node(child, Some("experiment"), lang::EXPERIMENT.children(), &[]),
            }
        }
        e
    }

    fn provider(&mut self, node: &RawNode) -> Option<ProviderNode> {
        let v = self.view(node, &[], lang::PROVIDER.children(), lang::PROVIDER.usage);
        let kind = self.name_arg(&v, "a provider (\"local\" or \"minimega\")");
        let (mut base, mut namespace) = (None, None);
        let mut seen = Seen::new();
        for child in Self::children(node) {
            match child.name().value() {
                "base" => base = self.scalar_string(&mut seen, child, "a folder", lang::BASE.usage),
                "namespace" => {
                    namespace =
                        self.scalar_string(&mut seen, child, "a namespace", lang::NAMESPACE.usage)
                }
                _ => self.unknown_node(child, Some("provider"), lang::PROVIDER.children(), &[]),
            }
        }
        Some(ProviderNode {
            kind: kind?,
            base,
            namespace,
            span: self.node_span(node),
        })
    }

    fn network(&mut self, node: &RawNode) -> Option<Network> {
        let v = self.view(node, &[], lang::NETWORK.children(), lang::NETWORK.usage);
        let name = self.name_arg(&v, "a name");
        let mut host_address = None;
        let mut seen = Seen::new();
        for child in Self::children(node) {
            match child.name().value() {
                "host-address" => {
                    host_address = self.scalar_string(
                        &mut seen,
                        child,
                        "a CIDR address",
                        lang::HOST_ADDRESS.usage,
                    )
                }
                _ => self.unknown_node(child, Some("network"), lang::NETWORK.children(), &[]),
            }
        }
        Some(Network {
            name: name?,
            host_address,
            span: self.node_span(node),
        })
    }

    fn disk(&mut self, node: &RawNode) -> Option<Disk> {
        let v = self.view(
            node,
            lang::DISK.props(),
            lang::DISK.children(),
            lang::DISK.usage,
        );
        let name = self.name_arg(&v, "a name");
        let size = v.prop("size").and_then(|e| self.string_or_int(node, e));
        let format = self.prop_string(&v, "format");
        let filesystem = self.prop_string(&v, "filesystem");
        let keep = self.prop_bool(&v, "keep");
        let mut from = None;
        let mut inject = Vec::new();
        let mut seen = Seen::new();
        for child in Self::children(node) {
            match child.name().value() {
                "from" => {
                    from =
                        self.scalar_string(&mut seen, child, "a base image path", lang::FROM.usage)
                }
                "inject" => {
                    let cv = self.view(child, &[], &[], lang::INJECT.usage);
                    self.no_children(&cv);
                    if self.want_args(&cv, 2, Some(2), "a source and a destination path") {
                        let src = self.string(child, cv.args[0]);
                        let dst = self.string(child, cv.args[1]);
                        if let (Some(src), Some(dst)) = (src, dst) {
                            inject.push(Inject {
                                src,
                                dst,
                                span: self.node_span(child),
                            });
                        }
                    }
                }
                _ => self.unknown_node(
                    child,
                    Some("disk"),
                    lang::DISK.children(),
                    lang::DISK.props(),
                ),
            }
        }
        Some(Disk {
            name: name?,
            size,
            format,
            filesystem,
            keep,
            from,
            inject,
            span: self.node_span(node),
        })
    }

    fn vm(&mut self, node: &RawNode) -> Option<Vm> {
        let v = self.view(node, &[], lang::VM.children(), lang::VM.usage);
        let name = self.name_arg(&v, "a name");
        let mut vm = Vm {
            name: Sp::bare(String::new()),
            uuid: None,
            kernel: None,
            initrd: None,
            append: None,
            memory: None,
            vcpus: None,
            snapshot: None,
            boot_timeout: None,
            host: None,
            disks: Vec::new(),
            nics: Vec::new(),
            mirrors: Vec::new(),
            tags: Vec::new(),
            after: Vec::new(),
            qemu_args: Vec::new(),
            cc: Vec::new(),
            span: self.node_span(node),
        };
        let mut seen = Seen::new();
        for child in Self::children(node) {
            let s = &mut seen;
            match child.name().value() {
                "uuid" => vm.uuid = self.scalar_string(s, child, "a UUID", lang::UUID.usage),
                "kernel" => vm.kernel = self.scalar_string(s, child, "a path", lang::KERNEL.usage),
                "initrd" => vm.initrd = self.scalar_string(s, child, "a path", lang::INITRD.usage),
                "append" => {
                    vm.append = self.scalar_string(s, child, "a command line", lang::APPEND.usage)
                }
                "memory" => {
                    vm.memory = self
                        .scalar(s, child, "a size", lang::MEMORY.usage)
                        .and_then(|e| self.string_or_int(child, e))
                }
                "vcpus" => {
                    vm.vcpus = self
                        .scalar(s, child, "a count", lang::VCPUS.usage)
                        .and_then(|e| self.int(child, e))
                }
                "snapshot" => {
                    vm.snapshot = self
                        .scalar(s, child, "#true or #false", lang::SNAPSHOT.usage)
                        .and_then(|e| self.boolean(child, e))
                }
                "boot-timeout" => {
                    vm.boot_timeout =
                        self.scalar_string(s, child, "a duration", lang::BOOT_TIMEOUT.usage)
                }
                "host" => vm.host = self.scalar_string(s, child, "a node name", lang::HOST.usage),
                "disk" => {
                    if let Some(d) = self.vm_disk(child) {
                        vm.disks.push(d);
                    }
                }
                "nic" => {
                    if let Some(n) = self.nic(child) {
                        vm.nics.push(n);
                    }
                }
                "mirrors" => self.mirrors(child, &mut vm.mirrors),
                "tags" => self.tags(child, &mut vm.tags),
                "after" => self.words(child, "a VM name", lang::AFTER.usage, &mut vm.after),
                "qemu-args" => self.words(
                    child,
                    "an argument",
                    lang::QEMU_ARGS.usage,
                    &mut vm.qemu_args,
                ),
                "cc" => self.cc(child, &mut vm.cc),
                _ => self.unknown_node(child, Some("vm"), lang::VM.children(), &[]),
            }
        }
        vm.name = name?;
        Some(vm)
    }

    fn vm_disk(&mut self, node: &RawNode) -> Option<VmDisk> {
        let v = self.view(node, lang::VM_DISK.props(), &[], lang::VM_DISK.usage);
        self.no_children(&v);
        let name = self.name_arg(&v, "a disk name or path");
        let mount = self.prop_string(&v, "mount");
        Some(VmDisk {
            name: name?,
            mount,
            span: self.node_span(node),
        })
    }

    fn nic(&mut self, node: &RawNode) -> Option<Nic> {
        let v = self.view(node, lang::NIC.props(), &[], lang::NIC.usage);
        self.no_children(&v);
        let network = self.name_arg(&v, "a network name");
        let mac = self.prop_string(&v, "mac");
        let driver = self.prop_string(&v, "driver");
        Some(Nic {
            network: network?,
            mac,
            driver,
            span: self.node_span(node),
        })
    }

    /// `mirrors "A" "B" nic=0 into=0 direction="both"` (one mirror per VM) or
    /// `mirrors network="LAN"`.
    fn mirrors(&mut self, node: &RawNode, out: &mut Vec<Mirror>) {
        let v = self.view(node, lang::MIRRORS.props(), &[], lang::MIRRORS.usage);
        self.no_children(&v);
        let network = v.prop("network");
        let nic = self.prop_int(&v, "nic");
        let into = self.prop_int(&v, "into");
        let direction = self.prop_string(&v, "direction");
        let span = self.node_span(node);
        let mirror = |source| Mirror {
            source,
            nic: nic.clone(),
            into: into.clone(),
            direction: direction.clone(),
            span,
        };
        match network {
            Some(net) if !v.args.is_empty() => {
                self.diags.push(
                    Diag::error(
                        Code::ConflictingKeys,
                        "`mirrors` takes VM names or network=, not both",
                    )
                    .label(self.entry_span(net), "network= here")
                    .label(self.entry_span(v.args[0]), "VM name here")
                    .help("write one `mirrors` line per source"),
                );
            }
            Some(net) => {
                if let Some(n) = self.string(node, net) {
                    out.push(mirror(MirrorSource::Network(n)));
                }
                return;
            }
            None => {
                self.want_args(&v, 1, None, "a VM name or network=NAME");
            }
        }
        for e in &v.args {
            if let Some(name) = self.string(node, e) {
                out.push(mirror(MirrorSource::Vm(name)));
            }
        }
    }

    fn tags(&mut self, node: &RawNode, out: &mut Vec<Tag>) {
        let v = self.view(node, &[], &[], lang::TAGS.usage);
        self.want_args(&v, 0, Some(0), "");
        for child in Self::children(node) {
            let cv = self.view(child, &[], &[], lang::TAG_USAGE);
            self.no_children(&cv);
            let key_span = self.name_span(child);
            let key = child.name().value();
            let dup = out.iter().find(|t| t.key.value == key).map(|t| t.key.span);
            if let Some(first) = dup {
                self.diags.push(
                    Diag::error(Code::Duplicate, format!("duplicate tag `{key}`"))
                        .label(key_span, "set again here")
                        .label(first, "first set here")
                        .help("each tag key may appear once"),
                );
            }
            if !self.want_args(&cv, 1, Some(1), "a value") {
                continue;
            }
            let Some(value) = self.string(child, cv.args[0]) else {
                continue;
            };
            if dup.is_none() {
                out.push(Tag {
                    key: Sp::new(key.to_string(), key_span),
                    value,
                });
            }
        }
    }

    /// `after` and `qemu-args`: one or more strings, appended.
    fn words(
        &mut self,
        node: &RawNode,
        what: &str,
        usage: &'static str,
        out: &mut Vec<Sp<String>>,
    ) {
        let v = self.view(node, &[], &[], usage);
        self.no_children(&v);
        self.want_args(&v, 1, None, &format!("at least {what}"));
        for e in &v.args {
            if let Some(s) = self.string(node, e) {
                out.push(s);
            }
        }
    }

    fn cc(&mut self, node: &RawNode, out: &mut Vec<CcStep>) {
        let v = self.view(node, &[], lang::CC.children(), lang::CC.usage);
        self.want_args(&v, 0, Some(0), "");
        for child in Self::children(node) {
            let kind = child.name().value();
            let step = match kind {
                "exec" | "background" => self.command_step(child),
                "send" | "recv" => self.copy_step(child),
                _ => {
                    self.unknown_node(child, Some("cc"), lang::CC.children(), &[]);
                    None
                }
            };
            out.extend(step);
        }
    }

    fn command_step(&mut self, node: &RawNode) -> Option<CcStep> {
        let exec = node.name().value() == "exec";
        let usage = if exec {
            lang::EXEC.usage
        } else {
            lang::BACKGROUND.usage
        };
        let v = self.view(node, lang::EXEC.props(), &[], usage);
        self.no_children(&v);
        let timeout = self.prop_string(&v, "timeout");
        let allow_failure = self.prop_bool(&v, "allow-failure");
        if !self.want_args(&v, 1, None, "a command") {
            return None;
        }
        let mut words = Vec::new();
        let mut ok = true;
        for e in &v.args {
            match self.string(node, e) {
                Some(s) => words.push(s),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let command = if words.len() == 1 {
            Command::Shell(words.remove(0))
        } else {
            Command::Argv(words)
        };
        Some(CcStep {
            action: if exec {
                CcAction::Exec(command)
            } else {
                CcAction::Background(command)
            },
            timeout,
            allow_failure,
            span: self.node_span(node),
        })
    }

    fn copy_step(&mut self, node: &RawNode) -> Option<CcStep> {
        let send = node.name().value() == "send";
        let usage = if send {
            lang::SEND.usage
        } else {
            lang::RECV.usage
        };
        let props = if send {
            lang::SEND.props()
        } else {
            lang::RECV.props()
        };
        let v = self.view(node, props, &[], usage);
        self.no_children(&v);
        let src = self.name_arg(&v, "a source path");
        let to = self.prop_string(&v, "to");
        if v.prop("to").is_none() {
            let name = v.name();
            self.diags.push(
                Diag::error(
                    Code::MissingKey,
                    format!("missing argument: `{name}` needs to=DESTINATION"),
                )
                .label(self.name_span(node), "to= expected")
                .help(format!("usage: {usage}")),
            );
        }
        let max_size = if send {
            None
        } else {
            self.prop_string(&v, "max-size")
        };
        let timeout = self.prop_string(&v, "timeout");
        let allow_failure = self.prop_bool(&v, "allow-failure");
        let (src, to) = (src?, to?);
        Some(CcStep {
            action: if send {
                CcAction::Send { src, to }
            } else {
                CcAction::Recv { src, to, max_size }
            },
            timeout,
            allow_failure,
            span: self.node_span(node),
        })
    }
}

impl Parser<'_> {
    // -- captures and checks --------------------------------------------------

    /// `capture "NAME" { tap "VM" nic=0 }` or `capture "NAME" network="LAN"`.
    fn capture(&mut self, node: &RawNode) -> Option<Capture> {
        let v = self.view(
            node,
            lang::CAPTURE.props(),
            lang::CAPTURE.children(),
            lang::CAPTURE.usage,
        );
        let name = self.name_arg(&v, "a name");
        let mut source = self.prop_string(&v, "network").map(CaptureSource::Network);
        let mut seen = Seen::new();
        for child in Self::children(node) {
            match child.name().value() {
                "tap" => {
                    let first = self.once(&mut seen, child);
                    let cv = self.view(
                        child,
                        lang::CAPTURE_TAP.props(),
                        &[],
                        lang::CAPTURE_TAP.usage,
                    );
                    self.no_children(&cv);
                    let vm = self.name_arg(&cv, "a VM name");
                    let nic = self.prop_int(&cv, "nic");
                    if source.is_some() && first {
                        self.diags.push(
                            Diag::error(
                                Code::ConflictingKeys,
                                "`capture` records a tap or a network=, not both",
                            )
                            .label(self.node_span(child), "tap here")
                            .help("write one `capture` per source"),
                        );
                    } else if let (Some(vm), true) = (vm, first) {
                        source = Some(CaptureSource::Tap { vm, nic });
                    }
                }
                _ => self.unknown_node(
                    child,
                    Some("capture"),
                    lang::CAPTURE.children(),
                    lang::CAPTURE.props(),
                ),
            }
        }
        Some(Capture {
            name: name?,
            source,
            span: self.node_span(node),
        })
    }

    /// `check "NAME" { from "A"; ping "10.0.0.2"; expect "fail"; ... }`.
    fn check(&mut self, node: &RawNode) -> Option<Check> {
        let v = self.view(node, &[], lang::CHECK.children(), lang::CHECK.usage);
        let name = self.name_arg(&v, "a name");
        let mut c = Check::named(Sp::bare(String::new()), self.node_span(node));
        let mut seen = Seen::new();
        for child in Self::children(node) {
            let s = &mut seen;
            let key = child.name().value();
            macro_rules! text {
                ($p:expr, $s:expr) => {
                    $p.scalar_string(
                        $s,
                        child,
                        "a string",
                        "KEY \"VALUE\" (inside check { ... })",
                    )
                };
            }
            macro_rules! int {
                ($p:expr, $s:expr) => {
                    $p.scalar($s, child, "an integer", "KEY N (inside check { ... })")
                        .and_then(|e| $p.int(child, e))
                };
            }
            match key {
                "from" => c.from = text!(self, s),
                "ping" => c.ping = text!(self, s),
                "expect" => c.expect = text!(self, s),
                "stdout-contains" => c.stdout_contains = text!(self, s),
                "stdout-matches" => c.stdout_matches = text!(self, s),
                "capture" => c.capture = text!(self, s),
                "match" => c.filter = text!(self, s),
                "timeout" => c.timeout = text!(self, s),
                "exit" => c.exit = int!(self, s),
                "at-least" => c.at_least = int!(self, s),
                "at-most" => c.at_most = int!(self, s),
                "retry" => c.retry = int!(self, s),
                "none" => {
                    let first = self.once(s, child);
                    let cv = self.view(child, &[], &[], "none");
                    self.no_children(&cv);
                    self.want_args(&cv, 0, Some(0), "");
                    if first {
                        c.none = Some(Sp::new(true, self.node_span(child)));
                    }
                }
                "exec" => {
                    let first = self.once(s, child);
                    let cv = self.view(
                        child,
                        &[],
                        &[],
                        lang::CHECK.key("exec").map_or("", |k| k.usage),
                    );
                    self.no_children(&cv);
                    if !self.want_args(&cv, 1, None, "a command") || !first {
                        continue;
                    }
                    let mut words = Vec::new();
                    for e in &cv.args {
                        words.extend(self.string(child, e));
                    }
                    if words.len() == cv.args.len() {
                        c.exec = Some(if words.len() == 1 {
                            Command::Shell(words.remove(0))
                        } else {
                            Command::Argv(words)
                        });
                    }
                }
                "after" => self.words(
                    child,
                    "a VM or check name",
                    lang::CHECK.key("after").map_or("", |k| k.usage),
                    &mut c.after,
                ),
                _ => self.unknown_node(child, Some("check"), lang::CHECK.children(), &[]),
            }
        }
        c.name = name?;
        Some(c)
    }
}
