//! The KDL front end: experiment text in KDL 2.0 (KDL 1.0 accepted) to a
//! [`Document`], and a [`Document`] back to canonical KDL 2.0.
//!
//! Invariants:
//! - `parse` never panics and never stops at the first problem. It reports
//!   structural errors only (syntax, unknown nodes and properties, wrong value
//!   types, missing or extra arguments, misplaced child blocks, duplicates);
//!   references and value formats are checked by `validate`.
//! - Every value in the document carries the span of the value as written
//!   (for a property, the part after `=`).
//! - `emit` writes exactly what the document holds (no defaults added), and
//!   `parse(emit(d)) == d` for any document parsed from a valid file.
//! - KDL 2.0 is tried first; if it fails and KDL 1.0 succeeds, the file is
//!   read as KDL 1.0. If both fail, the KDL 2.0 errors are reported.
//! - Before the kdl crate, the fast reader (`kdl_fast`) tries the file; it
//!   reads only a strict subset of KDL 2.0 and yields the same tree, spans
//!   included, so the result does not depend on which reader read the file.

use kdl::{KdlDiagnostic, KdlDocument, KdlError};
use miette::SourceSpan;

use crate::diag::{Diag, Diagnostics, SourceFile, did_you_mean};
use crate::model::{
    Capture, CaptureSource, CcAction, CcStep, Check, Command, Disk, Document, ExperimentNode,
    Inject, Mirror, MirrorSource, Network, Nic, Sp, Tag, Vm, VmDisk,
};

const TOP: &[&str] = &["experiment", "network", "disk", "vm", "capture", "check"];
const CAPTURE_PROPS: &[&str] = &["network"];
const CAPTURE_CHILDREN: &[&str] = &["tap"];
const CAPTURE_TAP_PROPS: &[&str] = &["nic"];
const CHECK_CHILDREN: &[&str] = super::CHECK_KEYS;
const EXPERIMENT_CHILDREN: &[&str] = &["images", "accel", "boot-timeout"];
const NETWORK_CHILDREN: &[&str] = &["host-address"];
const DISK_PROPS: &[&str] = &["size", "format", "filesystem", "keep"];
const DISK_CHILDREN: &[&str] = &["from", "inject"];
const VM_CHILDREN: &[&str] = super::VM_KEYS;
const VM_DISK_PROPS: &[&str] = &["mount"];
const NIC_PROPS: &[&str] = &["mac", "driver"];
const MIRROR_PROPS: &[&str] = &["network", "nic", "into", "direction"];
const CC_CHILDREN: &[&str] = &["exec", "background", "send", "recv"];
const CMD_PROPS: &[&str] = &["timeout", "allow-failure"];
const COPY_PROPS: &[&str] = &["to", "timeout", "allow-failure"];
const RECV_PROPS: &[&str] = &["to", "max-size", "timeout", "allow-failure"];

mod usage {
    pub const EXPERIMENT: &str = "experiment \"NAME\" { images \"DIR\"; accel \"auto\" }";
    pub const IMAGES: &str = "images \"DIR\"";
    pub const ACCEL: &str = "accel \"auto\" (or \"kvm\", \"tcg\")";
    pub const NETWORK: &str = "network \"NAME\" { host-address \"10.0.0.254/24\" }";
    pub const HOST_ADDRESS: &str = "host-address \"10.0.0.254/24\"";
    pub const DISK: &str = "disk \"NAME\" size=\"10G\" format=\"qcow2\" filesystem=\"ext4\" keep=#true { from \"BASE\"; inject \"SRC\" \"DST\" }";
    pub const FROM: &str = "from \"BASE-IMAGE\"";
    pub const INJECT: &str = "inject \"HOST-SRC\" \"DISK-DST\"";
    pub const VM: &str = "vm \"NAME\" { kernel \"PATH\"; nic \"NETWORK\"; ... }";
    pub const UUID: &str = "uuid \"11111111-1111-1111-1111-111111111111\"";
    pub const KERNEL: &str = "kernel \"$images/miniccc.kernel\"";
    pub const INITRD: &str = "initrd \"$images/miniccc.initrd\"";
    pub const APPEND: &str = "append \"console=ttyS0\"";
    pub const MEMORY: &str = "memory \"2048M\"";
    pub const VCPUS: &str = "vcpus 2";
    pub const SNAPSHOT: &str = "snapshot #false";
    pub const BOOT_TIMEOUT: &str = "boot-timeout \"60s\"";
    pub const VM_DISK: &str = "disk \"NAME\" mount=\"/PATH\"";
    pub const NIC: &str = "nic \"NETWORK\" mac=\"MAC\" driver=\"virtio-net-pci\"";
    pub const MIRRORS: &str =
        "mirrors \"VM\" nic=0 into=0 direction=\"both\"  or  mirrors network=\"NETWORK\"";
    pub const TAGS: &str = "tags { KEY \"VALUE\" }";
    pub const TAG: &str = "KEY \"VALUE\" (inside tags { ... })";
    pub const AFTER: &str = "after \"VM\" \"VM2\" ...";
    pub const QEMU_ARGS: &str = "qemu-args \"-ARG\" \"VALUE\" ...";
    pub const CC: &str =
        "cc { exec \"CMD\"; background \"CMD\"; send \"SRC\" to=\"DST\"; recv \"SRC\" to=\"DIR\" }";
    pub const EXEC: &str = "exec \"CMD\" timeout=\"30s\" allow-failure=#true";
    pub const BACKGROUND: &str = "background \"CMD\"";
    pub const SEND: &str = "send \"HOST-PATH\" to=\"GUEST-PATH\"";
    pub const RECV: &str = "recv \"GUEST-PATH\" to=\"HOST-DIR\" max-size=\"1G\"";
    pub const CAPTURE: &str =
        "capture \"NAME\" { tap \"VM\" nic=0 }  or  capture \"NAME\" network=\"NETWORK\"";
    pub const CAPTURE_TAP: &str = "tap \"VM\" nic=0";
    pub const CHECK: &str = "check \"NAME\" { from \"VM\"; ping \"10.0.0.2\" }";
    pub const CHECK_STRING: &str = "KEY \"VALUE\" (inside check { ... })";
    pub const CHECK_INT: &str = "KEY N (inside check { ... })";
    pub const CHECK_EXEC: &str = "exec \"CMD\"  or  exec \"ARG\" \"ARG\" ...";
    pub const CHECK_NONE: &str = "none";
    pub const CHECK_AFTER: &str = "after \"VM-OR-CHECK\" ...";
}

/// Parse a KDL experiment file. Structural problems go into the diagnostics;
/// whatever could be read lands in the document.
pub fn parse(src: &SourceFile) -> (Document, Diagnostics) {
    parse_with(src, true)
}

/// [`parse`], with or without trying the fast reader first; the result is the
/// same either way (the differential tests below check it).
fn parse_with(src: &SourceFile, fast: bool) -> (Document, Diagnostics) {
    let text = src.text.as_str();
    let mut p = Parser {
        text,
        diags: Diagnostics::default(),
    };
    let mut doc = Document::default();
    let nodes = fast.then(|| super::kdl_fast::parse(text)).flatten();
    // The kdl crate recurses per block: refuse deep nesting before it sees it.
    if nodes.is_none()
        && let Some(at) = too_deep(text)
    {
        p.diags.push(
            Diag::error(
                "megaplan::too_deep",
                format!("child blocks are nested more than {MAX_DEPTH} levels deep"),
            )
            .label((at..at + 1).into(), format!("level {}", MAX_DEPTH + 1))
            .help("an experiment nests at most a few levels (vm { cc { ... } }): close the blocks"),
        );
        return (doc, p.diags);
    }
    let nodes = nodes.or_else(|| p.read_kdl().map(|d| RawNode::list(&d)));
    if let Some(nodes) = nodes {
        p.document(&nodes, &mut doc);
    }
    (doc, p.diags)
}

/// The deepest nesting of child blocks read (the kdl crate recurses per level).
pub(crate) const MAX_DEPTH: usize = 64;

/// The offset of the first `{` nested deeper than [`MAX_DEPTH`], skipping
/// strings (quoted, multi-line, raw in both KDL versions) and comments.
fn too_deep(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let (mut i, mut depth) = (0usize, 0usize);
    // The end of a raw string opened at `i` (`#`s, or `r` then `#`s, then `"`).
    let raw_end = |i: usize| -> Option<usize> {
        let mut j = i;
        if b[j] == b'r' {
            j += 1;
        }
        let h = b[j..].iter().take_while(|&&c| c == b'#').count();
        j += h;
        if b.get(j) != Some(&b'"') || (b[i] == b'#' && h == 0) {
            return None;
        }
        let mut close = vec![b'"'];
        close.extend(std::iter::repeat_n(b'#', h));
        let body = j + 1;
        let found = b[body..]
            .windows(close.len())
            .position(|w| w == close.as_slice());
        Some(found.map_or(b.len(), |p| body + p + close.len()))
    };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut nest = 1;
                i += 2;
                while i < b.len() && nest > 0 {
                    if b[i..].starts_with(b"/*") {
                        nest += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        nest -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                let triple = b[i..].starts_with(b"\"\"\"");
                i += if triple { 3 } else { 1 };
                while i < b.len() {
                    if b[i] == b'\\' {
                        i += 2;
                    } else if triple && b[i..].starts_with(b"\"\"\"") {
                        i += 3;
                        break;
                    } else if !triple && b[i] == b'"' {
                        i += 1;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            b'#' | b'r'
                if (i == 0 || !b[i - 1].is_ascii_alphanumeric()) && raw_end(i).is_some() =>
            {
                i = raw_end(i).unwrap_or(b.len());
            }
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Write a document as canonical KDL 2.0: experiment, networks, disks, VMs,
/// each in document order, four-space indentation.
pub fn emit(doc: &Document) -> String {
    let mut blocks: Vec<(&'static str, Node)> = Vec::new();
    for e in &doc.experiments {
        blocks.push(("experiment", emit_experiment(e)));
    }
    for n in &doc.networks {
        blocks.push(("network", emit_network(n)));
    }
    for d in &doc.disks {
        blocks.push(("disk", emit_disk(d)));
    }
    for v in &doc.vms {
        blocks.push(("vm", emit_vm(v)));
    }
    for c in &doc.captures {
        blocks.push(("capture", emit_capture(c)));
    }
    for c in &doc.checks {
        blocks.push(("check", emit_check(c)));
    }
    let mut out = String::new();
    let mut prev: Option<(&str, bool)> = None;
    for (kind, node) in &blocks {
        let one_line = node.kids.is_empty();
        if let Some((pk, p_one_line)) = prev
            && !(pk == *kind && p_one_line && one_line)
        {
            out.push('\n');
        }
        node.render(0, &mut out);
        prev = Some((kind, one_line));
    }
    out
}

// ---------------------------------------------------------------------------
// The parsed tree the mapper reads

/// A KDL node as the mapper reads it: names and values, with the *raw* spans
/// the kdl crate reports (the mapper trims and widens them itself). Both
/// readers produce it: the kdl crate's tree is converted ([`RawNode::list`]),
/// and [`super::kdl_fast`] builds it directly with the same spans, so the
/// mapping and its diagnostics are shared.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawNode {
    pub name: RawName,
    /// From the name (or type annotation) to after the space that follows
    /// the node's last part; the terminator is not included.
    pub span: SourceSpan,
    /// The span of the node's type annotation `(...)`, if any.
    pub ty: Option<SourceSpan>,
    pub entries: Vec<RawEntry>,
    pub children: Option<RawChildren>,
}

/// A node name or property key, with the span of the name as written.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawName {
    pub value: String,
    pub span: SourceSpan,
}

/// A `{ ... }` block: its nodes, and a span from the first thing in the
/// block that is not space or a comment to the end of the last node.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawChildren {
    pub nodes: Vec<RawNode>,
    pub span: SourceSpan,
}

/// An argument (no name) or a property; `span` runs from the key (or the
/// value) to the end of the value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawEntry {
    pub name: Option<RawName>,
    pub value: RawValue,
    pub span: SourceSpan,
    pub ty: Option<SourceSpan>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawValue {
    String(String),
    Integer(i128),
    Float(f64),
    Bool(bool),
    Null,
}

impl RawName {
    fn of(id: &kdl::KdlIdentifier) -> Self {
        RawName {
            value: id.value().to_string(),
            span: id.span(),
        }
    }
    fn value(&self) -> &str {
        &self.value
    }
    fn span(&self) -> SourceSpan {
        self.span
    }
}

impl RawNode {
    /// The nodes of a document read by the kdl crate.
    fn list(doc: &KdlDocument) -> Vec<RawNode> {
        doc.nodes().iter().map(RawNode::of).collect()
    }

    fn of(n: &kdl::KdlNode) -> Self {
        RawNode {
            name: RawName::of(n.name()),
            span: n.span(),
            ty: n.ty().map(|t| t.span()),
            entries: n.entries().iter().map(RawEntry::of).collect(),
            children: n.children().map(|c| RawChildren {
                nodes: RawNode::list(c),
                span: c.span(),
            }),
        }
    }

    fn name(&self) -> &RawName {
        &self.name
    }
    fn span(&self) -> SourceSpan {
        self.span
    }
    fn ty(&self) -> Option<SourceSpan> {
        self.ty
    }
    fn entries(&self) -> &[RawEntry] {
        &self.entries
    }
    fn children(&self) -> Option<&RawChildren> {
        self.children.as_ref()
    }
}

impl RawChildren {
    fn nodes(&self) -> &[RawNode] {
        &self.nodes
    }
    fn span(&self) -> SourceSpan {
        self.span
    }
}

impl RawEntry {
    fn of(e: &kdl::KdlEntry) -> Self {
        let value = match e.value() {
            kdl::KdlValue::String(s) => RawValue::String(s.clone()),
            kdl::KdlValue::Integer(i) => RawValue::Integer(*i),
            kdl::KdlValue::Float(f) => RawValue::Float(*f),
            kdl::KdlValue::Bool(b) => RawValue::Bool(*b),
            kdl::KdlValue::Null => RawValue::Null,
        };
        RawEntry {
            name: e.name().map(RawName::of),
            value,
            span: e.span(),
            ty: e.ty().map(|t| t.span()),
        }
    }

    fn name(&self) -> Option<&RawName> {
        self.name.as_ref()
    }
    fn value(&self) -> &RawValue {
        &self.value
    }
    fn span(&self) -> SourceSpan {
        self.span
    }
    fn ty(&self) -> Option<SourceSpan> {
        self.ty
    }
}

// ---------------------------------------------------------------------------
// Parsing

struct Parser<'t> {
    text: &'t str,
    diags: Diagnostics,
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

/// A token that starts like a number but carries a unit: `10G`, `30s`.
fn looks_like_unit(tok: &str) -> bool {
    let body = tok.trim_start_matches(['+', '-']);
    if !body.starts_with(|c: char| c.is_ascii_digit()) {
        return false;
    }
    if ["0x", "0o", "0b"].iter().any(|p| body.starts_with(p)) {
        return false;
    }
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '_' || c == '.'))
        .unwrap_or(body.len());
    let suffix = &body[digits_end..];
    let exponent = suffix.len() > 1
        && suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .trim_start_matches(['+', '-'])
            .chars()
            .all(|c| c.is_ascii_digit() || c == '_');
    suffix.chars().any(char::is_alphabetic) && !exponent
}

impl<'t> Parser<'t> {
    // -- spans ------------------------------------------------------------

    /// A span clamped to the text and widened to char boundaries, so it is
    /// always safe to slice and render.
    fn fix(&self, span: SourceSpan) -> SourceSpan {
        let len = self.text.len();
        let mut start = span.offset().min(len);
        let mut end = start.saturating_add(span.len()).min(len);
        while start > 0 && !self.text.is_char_boundary(start) {
            start -= 1;
        }
        while end < len && !self.text.is_char_boundary(end) {
            end += 1;
        }
        (start..end).into()
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

    // -- KDL syntax ---------------------------------------------------------

    fn read_kdl(&mut self) -> Option<KdlDocument> {
        let text = self.text;
        let v2 = std::panic::catch_unwind(|| KdlDocument::parse_v2(text));
        match v2 {
            Ok(Ok(doc)) => return Some(doc),
            Ok(Err(err)) => {
                if let Ok(Ok(doc)) = std::panic::catch_unwind(|| KdlDocument::parse_v1(text)) {
                    return Some(doc);
                }
                self.syntax_errors(&err);
            }
            Err(_) => {
                if let Ok(Ok(doc)) = std::panic::catch_unwind(|| KdlDocument::parse_v1(text)) {
                    return Some(doc);
                }
                self.diags.push(
                    Diag::error(
                        "megaplan::kdl::syntax",
                        "the KDL parser failed on this file",
                    )
                    .at((0..0).into()),
                );
            }
        }
        None
    }

    fn syntax_errors(&mut self, err: &KdlError) {
        let mut seen: std::collections::HashSet<(usize, usize, Option<String>)> =
            std::collections::HashSet::new();
        let mut unclosed = false;
        for d in &err.diagnostics {
            let key = (d.span.offset(), d.span.len(), d.message.clone());
            if !seen.insert(key) {
                continue;
            }
            // kdl reports one missing '}' twice: at the '{' and over the nodes.
            let closing = d
                .message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("closing '}'"));
            if closing && std::mem::replace(&mut unclosed, true) {
                continue;
            }
            let diag = self.syntax_error(d);
            self.diags.push(diag);
        }
        if err.diagnostics.is_empty() {
            self.diags.push(
                Diag::error("megaplan::kdl::syntax", "invalid KDL document").at((0..0).into()),
            );
        }
    }

    /// Rebuild one of kdl's diagnostics as ours, sharpening the two most
    /// common KDL 1.0 habits: bare `true`/`false`/`null` and unquoted sizes.
    fn syntax_error(&self, d: &KdlDiagnostic) -> Diag {
        let span = self.fix(d.span);
        let message = d
            .message
            .clone()
            .unwrap_or_else(|| "invalid KDL syntax".to_string());
        let label = match d.label.as_deref() {
            None => "here".to_string(),
            Some("not EOF") => "unexpected here".to_string(),
            Some(l) => l.to_string(),
        };
        let snippet = self
            .text
            .get(span.offset()..span.offset() + span.len())
            .unwrap_or("");
        let base = Diag::error(
            "megaplan::kdl::syntax",
            format!("KDL syntax error: {message}"),
        );

        if matches!(snippet.trim(), "true" | "false" | "null") {
            let word = snippet.trim();
            return base
                .label(span, format!("bare `{word}` is not a KDL 2.0 value"))
                .help(format!(
                    "KDL 2.0 writes booleans and null with a '#': #{word}"
                ));
        }
        if let Some((tok, tspan)) = self.unquoted_unit(span) {
            return base
                .label(
                    tspan,
                    format!("`{tok}` starts like a number but is not one"),
                )
                .help(format!(
                    "quote it: \"{tok}\" (sizes and durations are strings in KDL 2.0)"
                ));
        }
        base.label(span, label).help_opt(d.help.clone())
    }

    /// The last token in `span` that starts with a digit but is not a number,
    /// such as `10G` or `30s`.
    fn unquoted_unit(&self, span: SourceSpan) -> Option<(String, SourceSpan)> {
        let start = span.offset();
        // kdl's span may stop inside the token (`size=10` of `size=10G`).
        let mut end = start + span.len();
        if let Some(rest) = self.text.get(end..) {
            end += rest
                .find(|c: char| c.is_whitespace() || "=;{}()\"".contains(c))
                .unwrap_or(rest.len());
        }
        let text = self.text.get(start..end)?;
        let mut found = None;
        let mut tok_start: Option<usize> = None;
        let ends = text
            .char_indices()
            .chain(std::iter::once((text.len(), ' ')));
        for (i, c) in ends {
            let sep = c.is_whitespace() || "=;{}()".contains(c);
            match (sep, tok_start) {
                (false, None) => tok_start = Some(i),
                (true, Some(s)) => {
                    tok_start = None;
                    let tok = &text[s..i];
                    if looks_like_unit(tok) {
                        found = Some((tok.to_string(), self.fix((start + s..start + i).into())));
                    }
                }
                _ => {}
            }
        }
        found
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
                        "megaplan::unknown_property",
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
                        "megaplan::duplicate",
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
                "megaplan::kdl::type_annotation",
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
                    "megaplan::missing_argument",
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
                "megaplan::too_many_arguments",
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
                    "megaplan::unexpected_children",
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
                Diag::error("megaplan::duplicate", format!("duplicate `{name}`"))
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
        } else if parent.is_none() && VM_CHILDREN.contains(&name) {
            Some(format!("`{name}` belongs inside a `vm` block"))
        } else {
            did_you_mean(name, known.iter().copied())
                .or_else(|| Some(format!("expected one of: {}", known.join(", "))))
        };
        self.diags.push(
            Diag::error("megaplan::unknown_node", message)
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
                "megaplan::wrong_type",
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
                        Diag::error("megaplan::wrong_type", format!("`{what}` is out of range"))
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

    fn document(&mut self, nodes: &[RawNode], doc: &mut Document) {
        for node in nodes {
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
                _ => self.unknown_node(node, None, TOP, &[]),
            }
        }
    }

    /// Always returns a node (with an empty name if none was given), so a
    /// nameless experiment is not also reported as a missing one.
    fn experiment(&mut self, node: &RawNode) -> ExperimentNode {
        let v = self.view(node, &[], EXPERIMENT_CHILDREN, usage::EXPERIMENT);
        let name = self
            .name_arg(&v, "a name")
            .unwrap_or_else(|| Sp::new(String::new(), self.name_span(node)));
        let mut e = ExperimentNode {
            name,
            images: None,
            accel: None,
            boot_timeout: None,
            span: self.node_span(node),
        };
        let mut seen = Seen::new();
        for child in Self::children(node) {
            match child.name().value() {
                "images" => {
                    e.images = self.scalar_string(&mut seen, child, "a directory", usage::IMAGES)
                }
                "accel" => {
                    e.accel = self.scalar_string(&mut seen, child, "an accelerator", usage::ACCEL)
                }
                "boot-timeout" => {
                    e.boot_timeout =
                        self.scalar_string(&mut seen, child, "a duration", usage::BOOT_TIMEOUT)
                }
                _ => self.unknown_node(child, Some("experiment"), EXPERIMENT_CHILDREN, &[]),
            }
        }
        e
    }

    fn network(&mut self, node: &RawNode) -> Option<Network> {
        let v = self.view(node, &[], NETWORK_CHILDREN, usage::NETWORK);
        let name = self.name_arg(&v, "a name");
        let mut host_address = None;
        let mut seen = Seen::new();
        for child in Self::children(node) {
            match child.name().value() {
                "host-address" => {
                    host_address =
                        self.scalar_string(&mut seen, child, "a CIDR address", usage::HOST_ADDRESS)
                }
                _ => self.unknown_node(child, Some("network"), NETWORK_CHILDREN, &[]),
            }
        }
        Some(Network {
            name: name?,
            host_address,
            span: self.node_span(node),
        })
    }

    fn disk(&mut self, node: &RawNode) -> Option<Disk> {
        let v = self.view(node, DISK_PROPS, DISK_CHILDREN, usage::DISK);
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
                    from = self.scalar_string(&mut seen, child, "a base image path", usage::FROM)
                }
                "inject" => {
                    let cv = self.view(child, &[], &[], usage::INJECT);
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
                _ => self.unknown_node(child, Some("disk"), DISK_CHILDREN, DISK_PROPS),
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
        let v = self.view(node, &[], VM_CHILDREN, usage::VM);
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
                "uuid" => vm.uuid = self.scalar_string(s, child, "a UUID", usage::UUID),
                "kernel" => vm.kernel = self.scalar_string(s, child, "a path", usage::KERNEL),
                "initrd" => vm.initrd = self.scalar_string(s, child, "a path", usage::INITRD),
                "append" => {
                    vm.append = self.scalar_string(s, child, "a command line", usage::APPEND)
                }
                "memory" => {
                    vm.memory = self
                        .scalar(s, child, "a size", usage::MEMORY)
                        .and_then(|e| self.string_or_int(child, e))
                }
                "vcpus" => {
                    vm.vcpus = self
                        .scalar(s, child, "a count", usage::VCPUS)
                        .and_then(|e| self.int(child, e))
                }
                "snapshot" => {
                    vm.snapshot = self
                        .scalar(s, child, "#true or #false", usage::SNAPSHOT)
                        .and_then(|e| self.boolean(child, e))
                }
                "boot-timeout" => {
                    vm.boot_timeout =
                        self.scalar_string(s, child, "a duration", usage::BOOT_TIMEOUT)
                }
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
                "after" => self.words(child, "a VM name", usage::AFTER, &mut vm.after),
                "qemu-args" => {
                    self.words(child, "an argument", usage::QEMU_ARGS, &mut vm.qemu_args)
                }
                "cc" => self.cc(child, &mut vm.cc),
                _ => self.unknown_node(child, Some("vm"), VM_CHILDREN, &[]),
            }
        }
        vm.name = name?;
        Some(vm)
    }

    fn vm_disk(&mut self, node: &RawNode) -> Option<VmDisk> {
        let v = self.view(node, VM_DISK_PROPS, &[], usage::VM_DISK);
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
        let v = self.view(node, NIC_PROPS, &[], usage::NIC);
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
        let v = self.view(node, MIRROR_PROPS, &[], usage::MIRRORS);
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
                        "megaplan::conflicting_arguments",
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
        let v = self.view(node, &[], &[], usage::TAGS);
        self.want_args(&v, 0, Some(0), "");
        for child in Self::children(node) {
            let cv = self.view(child, &[], &[], usage::TAG);
            self.no_children(&cv);
            let key_span = self.name_span(child);
            let key = child.name().value();
            let dup = out.iter().find(|t| t.key.value == key).map(|t| t.key.span);
            if let Some(first) = dup {
                self.diags.push(
                    Diag::error("megaplan::duplicate", format!("duplicate tag `{key}`"))
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
        let v = self.view(node, &[], CC_CHILDREN, usage::CC);
        self.want_args(&v, 0, Some(0), "");
        for child in Self::children(node) {
            let kind = child.name().value();
            let step = match kind {
                "exec" | "background" => self.command_step(child),
                "send" | "recv" => self.copy_step(child),
                _ => {
                    self.unknown_node(child, Some("cc"), CC_CHILDREN, &[]);
                    None
                }
            };
            out.extend(step);
        }
    }

    fn command_step(&mut self, node: &RawNode) -> Option<CcStep> {
        let exec = node.name().value() == "exec";
        let usage = if exec { usage::EXEC } else { usage::BACKGROUND };
        let v = self.view(node, CMD_PROPS, &[], usage);
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
        let usage = if send { usage::SEND } else { usage::RECV };
        let props = if send { COPY_PROPS } else { RECV_PROPS };
        let v = self.view(node, props, &[], usage);
        self.no_children(&v);
        let src = self.name_arg(&v, "a source path");
        let to = self.prop_string(&v, "to");
        if v.prop("to").is_none() {
            let name = v.name();
            self.diags.push(
                Diag::error(
                    "megaplan::missing_argument",
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
        let v = self.view(node, CAPTURE_PROPS, CAPTURE_CHILDREN, usage::CAPTURE);
        let name = self.name_arg(&v, "a name");
        let mut source = self.prop_string(&v, "network").map(CaptureSource::Network);
        let mut seen = Seen::new();
        for child in Self::children(node) {
            match child.name().value() {
                "tap" => {
                    let first = self.once(&mut seen, child);
                    let cv = self.view(child, CAPTURE_TAP_PROPS, &[], usage::CAPTURE_TAP);
                    self.no_children(&cv);
                    let vm = self.name_arg(&cv, "a VM name");
                    let nic = self.prop_int(&cv, "nic");
                    if source.is_some() && first {
                        self.diags.push(
                            Diag::error(
                                "megaplan::conflicting_arguments",
                                "`capture` records a tap or a network=, not both",
                            )
                            .label(self.node_span(child), "tap here")
                            .help("write one `capture` per source"),
                        );
                    } else if let (Some(vm), true) = (vm, first) {
                        source = Some(CaptureSource::Tap { vm, nic });
                    }
                }
                _ => self.unknown_node(child, Some("capture"), CAPTURE_CHILDREN, CAPTURE_PROPS),
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
        let v = self.view(node, &[], CHECK_CHILDREN, usage::CHECK);
        let name = self.name_arg(&v, "a name");
        let mut c = Check::named(Sp::bare(String::new()), self.node_span(node));
        let mut seen = Seen::new();
        for child in Self::children(node) {
            let s = &mut seen;
            let key = child.name().value();
            macro_rules! text {
                ($p:expr, $s:expr) => {
                    $p.scalar_string($s, child, "a string", usage::CHECK_STRING)
                };
            }
            macro_rules! int {
                ($p:expr, $s:expr) => {
                    $p.scalar($s, child, "an integer", usage::CHECK_INT)
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
                    let cv = self.view(child, &[], &[], usage::CHECK_NONE);
                    self.no_children(&cv);
                    self.want_args(&cv, 0, Some(0), "");
                    if first {
                        c.none = Some(Sp::new(true, self.node_span(child)));
                    }
                }
                "exec" => {
                    let first = self.once(s, child);
                    let cv = self.view(child, &[], &[], usage::CHECK_EXEC);
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
                    usage::CHECK_AFTER,
                    &mut c.after,
                ),
                _ => self.unknown_node(child, Some("check"), CHECK_CHILDREN, &[]),
            }
        }
        c.name = name?;
        Some(c)
    }
}

// ---------------------------------------------------------------------------
// Emitting

/// One output node: its line and its children.
struct Node {
    head: String,
    kids: Vec<Node>,
}

impl Node {
    fn new(head: impl Into<String>) -> Self {
        Node {
            head: head.into(),
            kids: Vec::new(),
        }
    }

    fn render(&self, depth: usize, out: &mut String) {
        for _ in 0..depth {
            out.push_str("    ");
        }
        out.push_str(&self.head);
        if self.kids.is_empty() {
            out.push('\n');
            return;
        }
        out.push_str(" {\n");
        for k in &self.kids {
            k.render(depth + 1, out);
        }
        for _ in 0..depth {
            out.push_str("    ");
        }
        out.push_str("}\n");
    }
}

/// A KDL 2.0 quoted string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Code points KDL 2.0 forbids literally or treats as newlines.
fn needs_escape(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x1F | 0x7F | 0x85 | 0x2028 | 0x2029 | 0x200E | 0x200F
        | 0x202A..=0x202E | 0x2066..=0x2069 | 0xFEFF)
}

/// A node name: bare when it is a plain identifier, quoted otherwise.
fn ident(s: &str) -> String {
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !matches!(s, "true" | "false" | "null" | "inf" | "nan");
    if plain { s.to_string() } else { quote(s) }
}

fn prop_str(head: &mut String, key: &str, v: &Option<Sp<String>>) {
    if let Some(v) = v {
        head.push_str(&format!(" {key}={}", quote(v)));
    }
}

fn prop_int(head: &mut String, key: &str, v: &Option<Sp<i64>>) {
    if let Some(v) = v {
        head.push_str(&format!(" {key}={}", v.value));
    }
}

fn prop_bool(head: &mut String, key: &str, v: &Option<Sp<bool>>) {
    if let Some(v) = v {
        head.push_str(&format!(" {key}=#{}", v.value));
    }
}

fn kid_str(kids: &mut Vec<Node>, key: &str, v: &Option<Sp<String>>) {
    if let Some(v) = v {
        kids.push(Node::new(format!("{key} {}", quote(v))));
    }
}

fn emit_experiment(e: &ExperimentNode) -> Node {
    let mut n = Node::new(format!("experiment {}", quote(&e.name)));
    kid_str(&mut n.kids, "images", &e.images);
    kid_str(&mut n.kids, "accel", &e.accel);
    kid_str(&mut n.kids, "boot-timeout", &e.boot_timeout);
    n
}

fn emit_network(net: &Network) -> Node {
    let mut n = Node::new(format!("network {}", quote(&net.name)));
    kid_str(&mut n.kids, "host-address", &net.host_address);
    n
}

fn emit_disk(d: &Disk) -> Node {
    let mut head = format!("disk {}", quote(&d.name));
    prop_str(&mut head, "size", &d.size);
    prop_str(&mut head, "format", &d.format);
    prop_str(&mut head, "filesystem", &d.filesystem);
    prop_bool(&mut head, "keep", &d.keep);
    let mut n = Node::new(head);
    kid_str(&mut n.kids, "from", &d.from);
    for i in &d.inject {
        n.kids.push(Node::new(format!(
            "inject {} {}",
            quote(&i.src),
            quote(&i.dst)
        )));
    }
    n
}

fn words(ws: &[Sp<String>]) -> String {
    ws.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

fn emit_vm(vm: &Vm) -> Node {
    let mut n = Node::new(format!("vm {}", quote(&vm.name)));
    let k = &mut n.kids;
    kid_str(k, "uuid", &vm.uuid);
    kid_str(k, "kernel", &vm.kernel);
    kid_str(k, "initrd", &vm.initrd);
    kid_str(k, "append", &vm.append);
    kid_str(k, "memory", &vm.memory);
    if let Some(v) = &vm.vcpus {
        k.push(Node::new(format!("vcpus {}", v.value)));
    }
    if let Some(v) = &vm.snapshot {
        k.push(Node::new(format!("snapshot #{}", v.value)));
    }
    kid_str(k, "boot-timeout", &vm.boot_timeout);
    for d in &vm.disks {
        let mut head = format!("disk {}", quote(&d.name));
        prop_str(&mut head, "mount", &d.mount);
        k.push(Node::new(head));
    }
    for nic in &vm.nics {
        let mut head = format!("nic {}", quote(&nic.network));
        prop_str(&mut head, "mac", &nic.mac);
        prop_str(&mut head, "driver", &nic.driver);
        k.push(Node::new(head));
    }
    for m in &vm.mirrors {
        let mut head = match &m.source {
            MirrorSource::Vm(v) => format!("mirrors {}", quote(v)),
            MirrorSource::Network(net) => format!("mirrors network={}", quote(net)),
        };
        prop_int(&mut head, "nic", &m.nic);
        prop_int(&mut head, "into", &m.into);
        prop_str(&mut head, "direction", &m.direction);
        k.push(Node::new(head));
    }
    if !vm.tags.is_empty() {
        let mut tags = Node::new("tags");
        for t in &vm.tags {
            tags.kids
                .push(Node::new(format!("{} {}", ident(&t.key), quote(&t.value))));
        }
        k.push(tags);
    }
    if !vm.after.is_empty() {
        k.push(Node::new(format!("after {}", words(&vm.after))));
    }
    if !vm.qemu_args.is_empty() {
        k.push(Node::new(format!("qemu-args {}", words(&vm.qemu_args))));
    }
    if !vm.cc.is_empty() {
        let mut cc = Node::new("cc");
        for step in &vm.cc {
            cc.kids.push(emit_step(step));
        }
        k.push(cc);
    }
    n
}

fn emit_command(c: &Command) -> String {
    match c {
        Command::Shell(s) => quote(s),
        Command::Argv(ws) => words(ws),
    }
}

fn emit_step(step: &CcStep) -> Node {
    let mut head = match &step.action {
        CcAction::Exec(c) => format!("exec {}", emit_command(c)),
        CcAction::Background(c) => format!("background {}", emit_command(c)),
        CcAction::Send { src, to } => format!("send {} to={}", quote(src), quote(to)),
        CcAction::Recv { src, to, max_size } => {
            let mut h = format!("recv {} to={}", quote(src), quote(to));
            prop_str(&mut h, "max-size", max_size);
            h
        }
    };
    prop_str(&mut head, "timeout", &step.timeout);
    prop_bool(&mut head, "allow-failure", &step.allow_failure);
    Node::new(head)
}

fn emit_capture(c: &Capture) -> Node {
    let mut head = format!("capture {}", quote(&c.name));
    match &c.source {
        Some(CaptureSource::Network(net)) => {
            head.push_str(&format!(" network={}", quote(net)));
            Node::new(head)
        }
        Some(CaptureSource::Tap { vm, nic }) => {
            let mut n = Node::new(head);
            let mut tap = format!("tap {}", quote(vm));
            prop_int(&mut tap, "nic", nic);
            n.kids.push(Node::new(tap));
            n
        }
        None => Node::new(head),
    }
}

fn emit_check(c: &Check) -> Node {
    let mut n = Node::new(format!("check {}", quote(&c.name)));
    let k = &mut n.kids;
    let int = |k: &mut Vec<Node>, key: &str, v: &Option<Sp<i64>>| {
        if let Some(v) = v {
            k.push(Node::new(format!("{key} {}", v.value)));
        }
    };
    kid_str(k, "from", &c.from);
    kid_str(k, "ping", &c.ping);
    if let Some(cmd) = &c.exec {
        k.push(Node::new(format!("exec {}", emit_command(cmd))));
    }
    kid_str(k, "capture", &c.capture);
    kid_str(k, "match", &c.filter);
    kid_str(k, "expect", &c.expect);
    int(k, "exit", &c.exit);
    kid_str(k, "stdout-contains", &c.stdout_contains);
    kid_str(k, "stdout-matches", &c.stdout_matches);
    int(k, "at-least", &c.at_least);
    int(k, "at-most", &c.at_most);
    if c.none.as_ref().is_some_and(|b| b.value) {
        k.push(Node::new("none"));
    }
    kid_str(k, "timeout", &c.timeout);
    int(k, "retry", &c.retry);
    if !c.after.is_empty() {
        k.push(Node::new(format!("after {}", words(&c.after))));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> (Document, Diagnostics) {
        parse(&SourceFile::new("test.kdl", text))
    }

    /// Parse text that must be free of diagnostics.
    fn ok(text: &str) -> Document {
        let src = SourceFile::new("test.kdl", text);
        let (doc, diags) = parse(&src);
        assert!(diags.is_empty(), "{}", diags.render_plain(&src));
        doc
    }

    /// Parse text that must fail; return the diagnostic codes.
    fn codes(text: &str) -> Vec<&'static str> {
        let (_, diags) = parse_str(text);
        assert!(diags.has_errors(), "expected errors in {text:?}");
        diags.items.iter().map(|d| d.code).collect()
    }

    fn slice(text: &str, span: SourceSpan) -> &str {
        &text[span.offset()..span.offset() + span.len()]
    }

    /// The document with every node-level `span` field zeroed: the model's
    /// derived `PartialEq` compares those (only `Sp` ignores its span).
    fn strip(doc: &Document) -> Document {
        let z = || SourceSpan::from(0..0);
        let mut d = doc.clone();
        d.experiments.iter_mut().for_each(|e| e.span = z());
        d.networks.iter_mut().for_each(|n| n.span = z());
        for disk in &mut d.disks {
            disk.span = z();
            disk.inject.iter_mut().for_each(|i| i.span = z());
        }
        for vm in &mut d.vms {
            vm.span = z();
            vm.disks.iter_mut().for_each(|x| x.span = z());
            vm.nics.iter_mut().for_each(|x| x.span = z());
            vm.mirrors.iter_mut().for_each(|x| x.span = z());
            vm.cc.iter_mut().for_each(|x| x.span = z());
        }
        d.captures.iter_mut().for_each(|c| c.span = z());
        d.checks.iter_mut().for_each(|c| c.span = z());
        d
    }

    fn assert_round_trip(doc: &Document) {
        let text = emit(doc);
        let again = ok(&text);
        assert_eq!(
            strip(&again),
            strip(doc),
            "parse(emit(d)) != d; emitted:\n{text}"
        );
        assert_eq!(emit(&again), text, "emit is not a fixpoint");
    }

    const FULL: &str = r#"
experiment "full" {
    images "imgs"
    accel "tcg"
}
network "LAN" {
    host-address "10.0.0.254/24"
}
network "mon"
disk "bro" size="10G" format="qcow2" filesystem="ext4" keep=#true {
    from "base.qcow2"
    inject "a/b" "/b"
    inject "c" "/d"
}
vm "web[1-3]" {
    uuid "11111111-1111-1111-1111-111111111111"
    kernel "$images/k"
    initrd "$images/i"
    append "console=ttyS0"
    memory 512
    vcpus 4
    snapshot #false
    disk "bro" mount="/bro"
    disk "/abs/x.img"
    nic "LAN" mac="02:00:00:00:00:01" driver="e1000"
    nic "mon"
    mirrors "A" "B" nic=1 into=2 direction="ingress"
    mirrors network="LAN"
    tags {
        role "web"
        "odd key" "v"
    }
    after "A" "B"
    after "C"
    qemu-args "-device" "virtio-rng-pci"
    cc {
        exec "ip link set eth0 up" timeout="30s" allow-failure=#true
        exec "sysctl" "-w" "x=1"
        background "tcpdump -i eth0"
        send "host/f" to="/guest/f"
        recv "/guest/out" to="results/"
    }
}
"#;

    #[test]
    fn maps_every_node_and_property() {
        let doc = ok(FULL);
        let e = &doc.experiments[0];
        assert_eq!(e.name.value, "full");
        assert_eq!(e.images.as_ref().unwrap().value, "imgs");
        assert_eq!(e.accel.as_ref().unwrap().value, "tcg");
        assert_eq!(slice(FULL, e.name.span), "\"full\"");

        assert_eq!(doc.networks.len(), 2);
        assert_eq!(doc.networks[0].name.value, "LAN");
        let ha = doc.networks[0].host_address.as_ref().unwrap();
        assert_eq!(ha.value, "10.0.0.254/24");
        assert_eq!(slice(FULL, ha.span), "\"10.0.0.254/24\"");
        assert!(doc.networks[1].host_address.is_none());

        let d = &doc.disks[0];
        assert_eq!(d.name.value, "bro");
        assert_eq!(d.size.as_ref().unwrap().value, "10G");
        assert_eq!(slice(FULL, d.size.as_ref().unwrap().span), "\"10G\"");
        assert_eq!(d.format.as_ref().unwrap().value, "qcow2");
        assert_eq!(d.filesystem.as_ref().unwrap().value, "ext4");
        assert!(d.keep.as_ref().unwrap().value);
        assert_eq!(slice(FULL, d.keep.as_ref().unwrap().span), "#true");
        assert_eq!(d.from.as_ref().unwrap().value, "base.qcow2");
        assert_eq!(d.inject.len(), 2);
        assert_eq!(d.inject[0].src.value, "a/b");
        assert_eq!(d.inject[0].dst.value, "/b");
        assert_eq!(slice(FULL, d.inject[1].span), "inject \"c\" \"/d\"");

        let vm = &doc.vms[0];
        assert_eq!(vm.name.value, "web[1-3]");
        assert_eq!(
            vm.uuid.as_ref().unwrap().value,
            "11111111-1111-1111-1111-111111111111"
        );
        assert_eq!(vm.kernel.as_ref().unwrap().value, "$images/k");
        assert_eq!(vm.initrd.as_ref().unwrap().value, "$images/i");
        assert_eq!(vm.append.as_ref().unwrap().value, "console=ttyS0");
        assert_eq!(vm.memory.as_ref().unwrap().value, "512");
        assert_eq!(slice(FULL, vm.memory.as_ref().unwrap().span), "512");
        assert_eq!(vm.vcpus.as_ref().unwrap().value, 4);
        assert!(!vm.snapshot.as_ref().unwrap().value);

        assert_eq!(vm.disks.len(), 2);
        assert_eq!(vm.disks[0].name.value, "bro");
        assert_eq!(vm.disks[0].mount.as_ref().unwrap().value, "/bro");
        assert!(vm.disks[1].mount.is_none());

        assert_eq!(vm.nics.len(), 2);
        assert_eq!(vm.nics[0].network.value, "LAN");
        assert_eq!(vm.nics[0].mac.as_ref().unwrap().value, "02:00:00:00:00:01");
        assert_eq!(vm.nics[0].driver.as_ref().unwrap().value, "e1000");

        assert_eq!(vm.mirrors.len(), 3);
        for (m, want) in vm.mirrors[..2].iter().zip(["A", "B"]) {
            assert_eq!(m.source, MirrorSource::Vm(Sp::bare(want.to_string())));
            assert_eq!(m.nic.as_ref().unwrap().value, 1);
            assert_eq!(m.into.as_ref().unwrap().value, 2);
            assert_eq!(m.direction.as_ref().unwrap().value, "ingress");
        }
        assert_eq!(
            vm.mirrors[2].source,
            MirrorSource::Network(Sp::bare("LAN".into()))
        );
        assert!(vm.mirrors[2].nic.is_none());

        assert_eq!(vm.tags.len(), 2);
        assert_eq!(vm.tags[0].key.value, "role");
        assert_eq!(slice(FULL, vm.tags[0].key.span), "role");
        assert_eq!(vm.tags[0].value.value, "web");
        assert_eq!(vm.tags[1].key.value, "odd key");

        let after: Vec<_> = vm.after.iter().map(|a| a.value.as_str()).collect();
        assert_eq!(after, ["A", "B", "C"]);
        let qa: Vec<_> = vm.qemu_args.iter().map(|a| a.value.as_str()).collect();
        assert_eq!(qa, ["-device", "virtio-rng-pci"]);

        assert_eq!(vm.cc.len(), 5);
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
                Sp::bare("sysctl".into()),
                Sp::bare("-w".into()),
                Sp::bare("x=1".into())
            ]))
        );
        assert_eq!(vm.cc[2].action.keyword(), "background");
        assert_eq!(
            vm.cc[3].action,
            CcAction::Send {
                src: Sp::bare("host/f".into()),
                to: Sp::bare("/guest/f".into())
            }
        );
        assert_eq!(
            vm.cc[4].action,
            CcAction::Recv {
                src: Sp::bare("/guest/out".into()),
                to: Sp::bare("results/".into()),
                max_size: None,
            }
        );
        assert_round_trip(&doc);
    }

    #[test]
    fn keeps_every_experiment_node() {
        let doc = ok("experiment \"a\"\nexperiment \"b\"\n");
        assert_eq!(doc.experiments.len(), 2);
    }

    #[test]
    fn memory_as_string_and_number() {
        let doc = ok("vm \"a\" { memory \"2048M\"; }\nvm \"b\" { memory 1024; }");
        assert_eq!(doc.vms[0].memory.as_ref().unwrap().value, "2048M");
        assert_eq!(doc.vms[1].memory.as_ref().unwrap().value, "1024");
    }

    #[test]
    fn kdl_v1_is_accepted() {
        let v1 = r##"
experiment "old" {
    images "images"
}
disk "bro" size="10G" format="qcow2" keep=true
vm "monitor" {
    snapshot false
    disk "bro" mount="/bro"
    exec_raw r#"a "quoted" \ path"#
}
"##;
        // The unknown node is deliberate: v1 parsing must still map and check.
        let (doc, diags) = parse_str(v1);
        assert_eq!(diags.items.len(), 1, "{diags:?}");
        assert_eq!(diags.items[0].code, "megaplan::unknown_node");
        assert_eq!(slice(v1, diags.items[0].labels[0].span), "exec_raw");
        assert!(doc.disks[0].keep.as_ref().unwrap().value);
        assert!(!doc.vms[0].snapshot.as_ref().unwrap().value);
        assert_eq!(slice(v1, doc.disks[0].keep.as_ref().unwrap().span), "true");

        let clean = ok(&v1.replace("    exec_raw r#\"a \"quoted\" \\ path\"#\n", ""));
        assert_eq!(clean.vms[0].disks[0].name.value, "bro");
        assert_round_trip(&clean);
    }

    fn example(name: &str) -> String {
        let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn examples_round_trip() {
        for name in ["tap-mirror.kdl", "bro-capture.kdl", "lab.kdl"] {
            let doc = ok(&example(name));
            assert_eq!(doc.experiments.len(), 1, "{name}");
            assert!(!doc.vms.is_empty(), "{name}");
            assert_round_trip(&doc);
        }
    }

    #[test]
    fn tap_mirror_example_maps() {
        let doc = ok(&example("tap-mirror.kdl"));
        assert_eq!(doc.experiments[0].name.value, "tap-mirror");
        let nets: Vec<_> = doc.networks.iter().map(|n| n.name.value.as_str()).collect();
        assert_eq!(nets, ["LAN", "mon"]);
        let vms: Vec<_> = doc.vms.iter().map(|v| v.name.value.as_str()).collect();
        assert_eq!(vms, ["A", "B", "monitor"]);
        assert_eq!(doc.vms[0].cc.len(), 2);
        assert_eq!(
            doc.vms[2].mirrors[0].source,
            MirrorSource::Vm(Sp::bare("A".into()))
        );
    }

    #[test]
    fn emit_is_canonical() {
        let doc = ok(r#"network "b"; experiment "x" { images "i"; }; network "a"
            vm "v" { cc { exec "echo \"hi\" \\ there"; }; snapshot #true; }"#);
        assert_eq!(
            emit(&doc),
            r#"experiment "x" {
    images "i"
}

network "b"
network "a"

vm "v" {
    snapshot #true
    cc {
        exec "echo \"hi\" \\ there"
    }
}
"#
        );
    }

    #[test]
    fn awkward_strings_round_trip() {
        let mut doc = ok("experiment \"x\"\nvm \"a\" { tags { k \"v\"; }; }");
        let weird =
            "quote\" back\\ nl\n tab\t cr\r nul\u{0} del\u{7f} ls\u{2028} bom\u{feff} é 日本 #true";
        doc.experiments[0].name = Sp::bare(weird.to_string());
        doc.vms[0].name = Sp::bare(String::new());
        doc.vms[0].tags[0].key = Sp::bare(weird.to_string());
        doc.vms[0].tags.push(Tag {
            key: Sp::bare("true".into()),
            value: Sp::bare("".into()),
        });
        doc.vms[0].tags.push(Tag {
            key: Sp::bare("1abc".into()),
            value: Sp::bare("x".into()),
        });
        doc.vms[0].tags.push(Tag {
            key: Sp::bare("-1".into()),
            value: Sp::bare("x".into()),
        });
        assert_round_trip(&doc);
    }

    #[test]
    fn unknown_property_suggests() {
        let text = "vm \"m\" {\n    mirrors \"A\" dirction=\"ingress\"\n}\n";
        let (doc, diags) = parse_str(text);
        assert_eq!(diags.items.len(), 1);
        let d = &diags.items[0];
        assert_eq!(d.code, "megaplan::unknown_property");
        assert_eq!(d.help.as_deref(), Some("did you mean 'direction'?"));
        assert_eq!(slice(text, d.labels[0].span), "dirction=\"ingress\"");
        // The rest of the node is still read.
        assert_eq!(doc.vms[0].mirrors.len(), 1);
    }

    #[test]
    fn unknown_node_suggests() {
        let text = "experiment \"x\"\nvm \"m\" {\n    mirror \"A\"\n}\nnetwrok \"LAN\"\n";
        let (_, diags) = parse_str(text);
        let helps: Vec<_> = diags.items.iter().map(|d| d.help.as_deref()).collect();
        assert_eq!(
            helps,
            [
                Some("did you mean 'mirrors'?"),
                Some("did you mean 'network'?")
            ]
        );
        assert_eq!(slice(text, diags.items[0].labels[0].span), "mirror");
        assert_eq!(slice(text, diags.items[1].labels[0].span), "netwrok");
    }

    #[test]
    fn collects_every_error() {
        let text = r#"experiment "bad" {
    imagse "images"
}
network "LAN" host-address="10.0.0.254/24"
disk "data" size="1G" format="qcow2" keep="no"
vm "A" {
    kernel 42
    vcpus "four"
    nic
    mirors "B"
    kernel "x" "y"
    cc {
        exec
        send "x"
    }
}
"#;
        let (doc, diags) = parse_str(text);
        let got: Vec<_> = diags.items.iter().map(|d| d.code).collect();
        assert_eq!(
            got,
            [
                "megaplan::unknown_node",
                "megaplan::unknown_property",
                "megaplan::wrong_type",
                "megaplan::wrong_type",
                "megaplan::wrong_type",
                "megaplan::missing_argument",
                "megaplan::unknown_node",
                "megaplan::duplicate",
                "megaplan::too_many_arguments",
                "megaplan::missing_argument",
                "megaplan::missing_argument",
            ],
            "{}",
            diags.render_plain(&SourceFile::new("t.kdl", text))
        );
        // What could be read is still there.
        assert_eq!(doc.networks.len(), 1);
        assert_eq!(doc.disks[0].size.as_ref().unwrap().value, "1G");
        assert!(doc.disks[0].keep.is_none());
        assert_eq!(doc.vms.len(), 1);
        let wrong_keep = &diags.items[2];
        assert_eq!(slice(text, wrong_keep.labels[0].span), "\"no\"");
        let help = diags.items[1].help.as_deref().unwrap();
        assert!(help.contains("child node"), "{help}");
    }

    #[test]
    fn structural_error_codes() {
        assert_eq!(codes("vm \"a\" { vcpus \"2\"; }"), ["megaplan::wrong_type"]);
        assert_eq!(codes("vm \"a\" { kernel 1.5; }"), ["megaplan::wrong_type"]);
        assert_eq!(
            codes("vm \"a\" { snapshot \"true\"; }"),
            ["megaplan::wrong_type"]
        );
        assert_eq!(
            codes("vm \"a\" { kernel #null; }"),
            ["megaplan::wrong_type"]
        );
        assert_eq!(
            codes("vm { kernel \"k\"; }"),
            ["megaplan::missing_argument"]
        );
        assert_eq!(
            codes("network \"a\" \"b\""),
            ["megaplan::too_many_arguments"]
        );
        assert_eq!(
            codes("vm \"a\" { nic \"LAN\" { mac \"x\"; }; }"),
            ["megaplan::unexpected_children"]
        );
        assert_eq!(
            codes("disk \"d\" size=\"1G\" size=\"2G\""),
            ["megaplan::duplicate"]
        );
        assert_eq!(
            codes("vm \"a\" { kernel \"a\"; kernel \"b\"; }"),
            ["megaplan::duplicate"]
        );
        assert_eq!(
            codes("vm \"a\" { tags { k \"1\"; k \"2\"; }; }"),
            ["megaplan::duplicate"]
        );
        assert_eq!(
            codes("vm \"a\" { mirrors \"b\" network=\"LAN\"; }"),
            ["megaplan::conflicting_arguments"]
        );
        assert_eq!(
            codes("vm \"a\" { mirrors; }"),
            ["megaplan::missing_argument"]
        );
        assert_eq!(
            codes("vm \"a\" { cc { recv \"x\"; }; }"),
            ["megaplan::missing_argument"]
        );
        assert_eq!(
            codes("vm \"a\" { vcpus (u8)2; }"),
            ["megaplan::kdl::type_annotation"]
        );
        assert_eq!(
            codes("vm \"a\" { vcpus 99999999999999999999; }"),
            ["megaplan::wrong_type"]
        );
        assert_eq!(
            codes("vm \"a\" { tags 1; }"),
            ["megaplan::too_many_arguments"]
        );
    }

    #[test]
    fn labels_point_at_the_offender() {
        let text = "vm \"a\" {\n    nic \"LAN\" {\n        mac \"x\"\n    }\n    vcpus \"2\"\n}\n";
        let (_, diags) = parse_str(text);
        assert_eq!(
            slice(text, diags.items[0].labels[0].span),
            "{\n        mac \"x\"\n    }"
        );
        assert_eq!(slice(text, diags.items[1].labels[0].span), "\"2\"");
        assert_eq!(
            diags.items[1].help.as_deref(),
            Some("write 2 without quotes")
        );
    }

    #[test]
    fn syntax_errors_are_rebuilt() {
        let text = "experiment \"x\"\ndisk \"bro\" size=10G format=\"qcow2\"\n";
        let (doc, diags) = parse_str(text);
        assert_eq!(doc, Document::default());
        let d = &diags.items[0];
        assert_eq!(d.code, "megaplan::kdl::syntax");
        assert_eq!(slice(text, d.labels[0].span), "10G");
        assert!(d.help.as_deref().unwrap().contains("\"10G\""));

        let text = "vm \"a\" {\n    kernel \"x\n}\n";
        let (_, diags) = parse_str(text);
        assert!(!diags.is_empty());
        assert!(
            diags
                .items
                .iter()
                .all(|d| d.code == "megaplan::kdl::syntax")
        );
        let rendered = diags.render_plain(&SourceFile::new("t.kdl", text));
        assert!(rendered.contains("t.kdl:2:"), "{rendered}");

        // Both versions fail: the KDL 2.0 errors are reported.
        let text = "disk \"d\" keep=#true\nvm \"a\" { snapshot false; }\n";
        let (_, diags) = parse_str(text);
        assert_eq!(diags.items.len(), 1, "{diags:?}");
        assert_eq!(slice(text, diags.items[0].labels[0].span), "false");
        assert!(diags.items[0].help.as_deref().unwrap().contains("#false"));
    }

    #[test]
    fn empty_and_comment_only_files() {
        assert_eq!(ok(""), Document::default());
        assert_eq!(ok("// nothing\n/* here */\n"), Document::default());
        assert_eq!(emit(&Document::default()), "");
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut inputs: Vec<String> = vec![
            "\u{0}".into(),
            "{".into(),
            "}".into(),
            "\"".into(),
            "vm \"é".into(),
            "vm \"日本\" {{{{".into(),
            "vm \"a\" { mirrors \"é\" nic=\"é\" into=1e400 direction=#nan }".into(),
            "vm=1".into(),
            "r#\"".into(),
            "#\"\"\"\n".into(),
            "vm \"a\" size=10Gé".into(),
            "(\u{feff})vm".into(),
            "\u{feff}vm \"a\"".into(),
            "vm \"a\" { tags { (t)\"é\" (t)1; }; cc { exec; send; recv to=1; }; }".into(),
            "- - - = = = ;;; {} {} /-".into(),
        ];
        let base = format!("{FULL}{}", example("lab.kdl"));
        let cut: Vec<usize> = (0..=base.len())
            .filter(|i| base.is_char_boundary(*i))
            .step_by(41)
            .collect();
        for &i in &cut {
            inputs.push(base[..i].to_string());
        }
        for (n, i) in cut.iter().enumerate().step_by(3) {
            let mut s = base.clone();
            let junk = ["\"", "{", "}", "=", "é", ";", "#", "1", "\n", "/*"][n % 10];
            s.insert_str(*i, junk);
            inputs.push(s);
        }
        for (n, text) in inputs.iter().enumerate() {
            let src = SourceFile::new("fuzz.kdl", text.clone());
            let (doc, diags) = parse(&src);
            if n % 5 == 0 {
                let _ = diags.render_plain(&src);
            }
            let _ = emit(&doc);
        }
    }

    // -- the fast reader against the kdl crate ----------------------------------

    /// When the fast reader accepts `text`: the kdl crate reads it as KDL 2.0
    /// into the same tree, raw spans included, and `parse` gives the same
    /// document and diagnostics, spans included, as the kdl-crate path.
    /// Returns whether the fast reader accepted the text.
    fn same_as_kdl_crate(text: &str) -> bool {
        let Some(fast) = crate::syntax::kdl_fast::parse(text) else {
            return false;
        };
        let slow = KdlDocument::parse_v2(text).map(|d| RawNode::list(&d));
        assert_eq!(Ok(&fast), slow.as_ref(), "tree differs for {text:?}");
        let src = SourceFile::new("t.kdl", text);
        let (fast_doc, fast_diags) = parse(&src);
        let (slow_doc, slow_diags) = parse_with(&src, false);
        // Debug output shows every span; the model's PartialEq ignores `Sp`'s.
        assert_eq!(
            format!("{fast_doc:#?}"),
            format!("{slow_doc:#?}"),
            "{text:?}"
        );
        assert_eq!(
            format!("{fast_diags:#?}"),
            format!("{slow_diags:#?}"),
            "{text:?}"
        );
        true
    }

    fn kdl_files(dir: &str) -> Vec<(String, String)> {
        let dir = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "kdl"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p.display().to_string(), text)
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn fast_reader_matches_kdl_crate_on_files() {
        let mut accepted = Vec::new();
        for dir in ["examples", "tests/bad/kdl", "tests/bad/semantic"] {
            for (path, text) in kdl_files(dir) {
                if same_as_kdl_crate(&text) {
                    accepted.push(path);
                } else {
                    assert!(dir != "examples", "fast reader rejected {path}");
                }
            }
        }
        assert!(accepted.len() > 30, "{accepted:?}");
        assert!(same_as_kdl_crate(&super::gen_lab::generate(50)));
        // Also every document used in the tests above.
        assert!(same_as_kdl_crate(FULL));
    }

    #[test]
    fn fast_reader_on_tricky_inputs() {
        let accepted = [
            "",
            "// only a comment",
            "vm \"a\"",
            "vm \"a\";",
            "vm \"a\"; vm \"b\";\n",
            "\n\n  vm \"a\"  \n\n",
            "vm \"a\" {}",
            "vm \"a\" { }",
            "vm \"a\" {\n}\n",
            "vm \"a\" { kernel \"k\"}",
            "vm \"a\" { kernel \"k\"; }; network \"n\"",
            "vm \"a\" {\r\n    kernel \"k\"\r\n}\r\n",
            "vm \"a\" { tags { \"odd key\" \"v\"; k \"é 日本\"; }; }",
            "\"quoted name\" \"x\"",
            "disk \"d\" size=\"1G\" keep=#true format=#null",
            "disk \"d\" \"size\"=\"1G\"",
            "disk \"d\" size=10 size=-5 size=+7 size=1.5 size=-0.25 size=007",
            "vm \"a\" { vcpus 123456789012345678; }",
            "vm \"a\" { kernel \"\\n\\t\\r\\b\\f\\s\\\\\\\"\\u{41}\\u{1F600}\\u{0}\"; }",
            "vm \"a\" { kernel \"tab\there\"; }",
            "vm \"a\" /* c */ { /* { */ kernel /* x */ \"k\" /* y */ }",
            "vm \"a\" /* a /* nested */ comment */ {\n}",
            "vm \"a\" { kernel \"k\" // comment\n}",
            "vm \"a\" // comment\nvm \"b\"",
            "vm \"a\" {\n    kernel \"k\" \\\n        \"more\"\n}",
            "vm \"a\" \\ // continued\n    \"b\"",
            "vm \"a\"\t{\tkernel\t\"k\"\t}",
            "vm \"a\" { cc { exec \"x\" timeout=\"1s\" allow-failure=#false; }; }",
            "vm \"a\" {\n    kernel \"k\";  \n}\n",
            "a.b-c_d:e \"x\"",
            "vm \"a\" { kernel 1.5; }",
            "vm \"a\" { memory 512 ; }",
            "vm \"a\" { tags { k \"1\"; k \"2\"; }; }",
            "vm \"a\" { nic \"LAN\" { mac \"x\"; }; }",
            "vm \"a\" { snapshot \"true\"; }",
            "vm \"a\" {\n    kernel \"x\" \"y\"\n    nic\n    unknown \"z\" w=1\n}\n",
            "vm \"a\"/* c */\"b\"",
            "vm \"a\"\\\n\"b\"",
        ];
        for text in accepted {
            assert!(same_as_kdl_crate(text), "fast reader rejected {text:?}");
        }
        let rejected = [
            "\u{feff}vm \"a\"",
            "vm \"a\" size=1_000",
            "vm \"a\" size=0x10",
            "vm \"a\" size=0o7",
            "vm \"a\" size=0b1",
            "vm \"a\" size=1.5e3",
            "vm \"a\" size=1e3",
            "vm \"a\" size=1.",
            "vm \"a\" size=.5",
            "vm \"a\" size=10G",
            "vm \"a\" size=1234567890123456789",
            "vm \"a\" x=#inf",
            "vm \"a\" x=#nan",
            "vm \"a\" x=#-inf",
            "vm \"a\" x=#truex",
            "vm \"a\" x=true",
            "vm \"a\" x=bare",
            "vm bare",
            "vm \"a\" x = \"y\"",
            "vm \"a\" x= \"y\"",
            "vm \"a\" x =\"y\"",
            "vm r#\"a\"#",
            "vm #\"a\"#",
            "vm \"\"\"\nmulti\n\"\"\"",
            "(t)vm \"a\"",
            "vm (t)\"a\"",
            "vm \"a\" /- \"b\"",
            "/- vm \"a\"",
            "vm \"a\" /- { }",
            "vm \"a\"{}",
            "vm \"a\" {",
            "vm \"a\" }",
            "}",
            ";",
            "vm \"a\" { ; }",
            "vm \"a\";;",
            "vm \"a\" { } \"b\"",
            "vm \"a\" { } b",
            "vm \"a\" \"b\"\"c\"",
            "vm \"a\" \"b\\q\"",
            "vm \"a\" \"b\\/\"",
            "vm \"a\" \"b\\\n  c\"",
            "vm \"a\" \"b\\u{}\"",
            "vm \"a\" \"b\\u{D800}\"",
            "vm \"a\" \"b\\u{1234567}\"",
            "vm \"a\" \"b\\u41\"",
            "vm \"a\" \"new\nline\"",
            "vm \"a\" \"nul\u{0}\"",
            "vm \"a\" \"bidi\u{202e}\"",
            "vm \"a\" \"unterminated",
            "vm \"a\" /* unterminated",
            "vm \"a\"\rvm \"b\"",
            "vm \"a\"\u{85}vm \"b\"",
            "vm\u{a0}\"a\"",
            "vm \"a\" // \u{2028} x",
            "vm \"a\" \\ x\n\"b\"",
            "true \"a\"",
            "null",
            "日本 \"a\"",
            "-x \"a\"",
            "1 \"a\"",
            "vm=1",
            "vm \"a\" { vcpus (u8)2; }",
            "disk \"d\" keep=true",
            "vm \"a\" { snapshot false; }",
        ];
        for text in rejected {
            assert!(
                !same_as_kdl_crate(text),
                "fast reader accepted {text:?}, which it should leave to the kdl crate"
            );
        }
        let deep = format!("{}{}", "a {\n".repeat(100), "}\n".repeat(100));
        assert!(!same_as_kdl_crate(&deep));
        let shallow = format!("{}{}", "a {\n".repeat(20), "}\n".repeat(20));
        assert!(same_as_kdl_crate(&shallow));
    }

    /// Damaged files: every prefix and single insertions, as in
    /// `garbage_does_not_panic`, but with the fast reader checked.
    #[test]
    fn fast_reader_on_damaged_files() {
        let base = format!("{FULL}{}{}", example("lab.kdl"), example("bro-capture.kdl"));
        let cuts: Vec<usize> = (0..=base.len())
            .filter(|i| base.is_char_boundary(*i))
            .step_by(7)
            .collect();
        let junk = [
            "\"", "{", "}", "=", "é", ";", "#", "1", "\n", "/*", "*/", "\\", " ", "/-", "x",
        ];
        for (n, &i) in cuts.iter().enumerate() {
            same_as_kdl_crate(&base[..i]);
            let mut s = base.clone();
            s.insert_str(i, junk[n % junk.len()]);
            same_as_kdl_crate(&s);
        }
    }

    mod soup {
        use super::same_as_kdl_crate;
        use proptest::prelude::*;

        const TOKENS: &[&str] = &[
            "vm",
            "kernel",
            "tags",
            "x",
            "size",
            "\"a\"",
            "\"é\\n\"",
            "\"\\u{41}\"",
            "\"\\q\"",
            " ",
            "  ",
            "\t",
            "\n",
            "\r\n",
            "\r",
            ";",
            "{",
            "}",
            "=",
            "#true",
            "#null",
            "#nan",
            "#",
            "1",
            "-5",
            "+2",
            "1.5",
            "1_000",
            "0x10",
            "1e3",
            ".",
            "-",
            "//c",
            "/*",
            "*/",
            "/-",
            "\\",
            "\"",
            "(t)",
            "\"\"\"",
            "#\"",
            "é",
            "\u{a0}",
            "\u{feff}",
            "true",
            "x=",
            "\"k\"=",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            /// Whatever the fast reader accepts, the kdl crate reads the same.
            #[test]
            fn token_soup(tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..30)) {
                same_as_kdl_crate(&tokens.concat());
            }

            /// Mostly well-formed nodes, so that the fast reader accepts often.
            #[test]
            fn node_soup(nodes in prop::collection::vec(
                (
                    prop::sample::select(&["vm", "\"n m\"", "kernel", "a-b"][..]),
                    prop::collection::vec(
                        prop::sample::select(&[
                            " \"v\"", " 1", " -2", " 3.25", " #false", " #null", " k=\"v\"",
                            " k=1", " \"q k\"=#true", " /* c */ \"w\"", " \\\n \"c\"",
                        ][..]),
                        0..4,
                    ),
                    prop::sample::select(&["", " { }", " {\n  x \"1\"\n}", " { y; z 2 }"][..]),
                    prop::sample::select(&["\n", ";", " // c\n", "\r\n", ";\n\n", " "][..]),
                ),
                0..6,
            )) {
                let text: String = nodes
                    .iter()
                    .map(|(n, es, kids, end)| format!("{n}{}{kids}{end}", es.concat()))
                    .collect();
                same_as_kdl_crate(&text);
            }
        }
    }
}

#[cfg(test)]
#[allow(dead_code)]
#[path = "../../examples/gen_lab.rs"]
mod gen_lab;
