//! The KDL emitter: a [`Document`] as canonical KDL 2.0.
//!
//! It walks the language table (`syntax::lang`) over the document's values
//! (`syntax::values`): a node's line is its name, its arguments, then its
//! properties; its block holds its child keys, each in table order.

use crate::model::{Command, Document};
use crate::syntax::lang::{Kdl, Shape, Ty};
use crate::syntax::values::{self, Item, Val};

/// Write a document as canonical KDL 2.0: experiment, networks, disks, VMs,
/// captures, checks, each in document order, four-space indentation. Nodes of
/// one kind on one line each are not separated by a blank line.
pub fn emit(doc: &Document) -> String {
    let mut out = String::new();
    let mut prev: Option<(&str, bool)> = None;
    for item in values::document(doc) {
        let node = emit_item(&item);
        let (kind, one_line) = (item.node.name, node.kids.is_empty());
        if let Some((pk, p_one_line)) = prev
            && !(pk == kind && p_one_line && one_line)
        {
            out.push('\n');
        }
        node.render(0, &mut out);
        prev = Some((kind, one_line));
    }
    out
}

/// One node: its name, its arguments and properties on its line, its child
/// keys (a sequence node: its children as written) in its block.
fn emit_item(item: &Item<'_>) -> Node {
    let mut n = Node::new(item.node.name);
    if item.node.shape == Shape::Sequence {
        n.kids = item.seq.iter().map(|(_, c)| emit_item(c)).collect();
        return n;
    }
    let present: Vec<_> = item.present().collect();
    for (k, v) in &present {
        if let Kdl::Arg(_) = k.kdl {
            n.head.push(' ');
            n.head.push_str(&scalar(v));
        }
    }
    for (k, v) in &present {
        if k.kdl == Kdl::Prop {
            n.head.push_str(&format!(" {}={}", k.name, scalar(v)));
        }
    }
    for (k, v) in &present {
        if k.kdl != Kdl::Child {
            continue;
        }
        match (k.ty, v) {
            (Ty::Flag, Val::Bool(b)) => {
                // A bare flag node means true; false is its absence.
                if *b {
                    n.kids.push(Node::new(k.name));
                }
            }
            (_, Val::Nodes(items)) => n.kids.extend(items.iter().map(emit_item)),
            (_, Val::Tags(tags)) => {
                let mut t = Node::new(k.name);
                for tag in *tags {
                    t.kids.push(Node::new(format!(
                        "{} {}",
                        ident(&tag.key),
                        quote(&tag.value)
                    )));
                }
                n.kids.push(t);
            }
            _ => n.kids.push(Node::new(format!("{} {}", k.name, scalar(v)))),
        }
    }
    n
}

/// A plain value as KDL: a quoted string, a number, `#true`, words.
fn scalar(v: &Val<'_>) -> String {
    match v {
        Val::Str(s) => quote(s),
        Val::Int(i) => i.to_string(),
        Val::Bool(b) => format!("#{b}"),
        Val::Words(ws) => words(ws),
        Val::Command(Command::Shell(s)) => quote(s),
        Val::Command(Command::Argv(ws)) => words(ws),
        Val::Absent | Val::Tags(_) | Val::Nodes(_) => {
            unreachable!("not a plain value: {v:?}")
        }
    }
}

fn words(ws: &[crate::model::Sp<String>]) -> String {
    ws.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

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
