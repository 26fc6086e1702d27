//! What the emitters write: each model node as an [`Item`], its values in
//! the order of its node's keys in [`lang`]. This is the only hand-written
//! part of emitting: how a value is moved out of the model. Which keys exist,
//! their order, and how each is written (argument, property, child node, TOML
//! key, table name, section, flattened table) is the table's; both emitters
//! walk it (`kdl::emit`, `toml::emit`).
//!
//! Invariants:
//! - `Item::new` gets exactly one value per key of its node, of the key's
//!   type (checked: a mismatch is a bug in this file and panics in every
//!   test that emits).
//! - A value is [`Val::Absent`] when the model does not have it (an unset
//!   option, an empty list), so emitters write only what the file said.

use crate::model::{
    Capture, CaptureSource, CcAction, CcStep, Check, Command, Disk, Document, ExperimentNode,
    Inject, Mirror, MirrorSource, Network, Nic, ProviderNode, Sp, Tag, Vm, VmDisk,
};

use super::lang::{self, Node, Shape, Ty};

/// One value of a key.
#[derive(Debug)]
pub enum Val<'a> {
    Absent,
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Words(&'a [Sp<String>]),
    Command(&'a Command),
    Tags(&'a [Tag]),
    /// The nodes of a nested-node key: one, or several when repeatable.
    Nodes(Vec<Item<'a>>),
}

/// A model node as its table node and values.
#[derive(Debug)]
pub struct Item<'a> {
    pub node: &'static Node,
    /// One per key of `node`, in table order (empty for a sequence node).
    pub vals: Vec<Val<'a>>,
    /// A sequence node's children, in the order written: the index of the
    /// key each is, and the child.
    pub seq: Vec<(usize, Item<'a>)>,
}

impl<'a> Item<'a> {
    fn new(node: &'static Node, vals: Vec<Val<'a>>) -> Self {
        assert_eq!(
            vals.len(),
            node.keys.len(),
            "values of `{}` do not match its keys",
            node.name
        );
        for (k, v) in node.keys.iter().zip(&vals) {
            assert!(
                fits(v, k.ty),
                "value {v:?} does not fit key `{}` of `{}`",
                k.name,
                node.name
            );
        }
        Item {
            node,
            vals,
            seq: Vec::new(),
        }
    }

    fn sequence(node: &'static Node, seq: Vec<(usize, Item<'a>)>) -> Self {
        assert_eq!(node.shape, Shape::Sequence);
        for (i, it) in &seq {
            match node.keys[*i].ty {
                Ty::Node(n) => assert!(std::ptr::eq(n, it.node)),
                _ => panic!("a child of `{}` is not a node", node.name),
            }
        }
        Item {
            node,
            vals: Vec::new(),
            seq,
        }
    }

    /// The keys and their present values, in table order.
    pub fn present(&self) -> impl Iterator<Item = (&'static lang::Key, &Val<'a>)> {
        self.node
            .keys
            .iter()
            .zip(&self.vals)
            .filter(|(_, v)| !matches!(v, Val::Absent))
    }
}

fn fits(v: &Val<'_>, ty: Ty) -> bool {
    match (v, ty) {
        (Val::Absent, _) => true,
        (Val::Str(_), Ty::Str | Ty::Size | Ty::StrOrInt) => true,
        (Val::Int(_), Ty::Int) => true,
        (Val::Bool(_), Ty::Bool | Ty::Flag) => true,
        (Val::Words(_), Ty::Words | Ty::Line) => true,
        (Val::Command(_), Ty::Command) => true,
        (Val::Tags(_), Ty::Tags) => true,
        (Val::Nodes(items), Ty::Node(n)) => items.iter().all(|i| std::ptr::eq(i.node, n)),
        _ => false,
    }
}

fn s(v: &Sp<String>) -> Val<'_> {
    Val::Str(v)
}
fn os(v: &Option<Sp<String>>) -> Val<'_> {
    v.as_ref().map_or(Val::Absent, |v| Val::Str(v))
}
fn oi(v: &Option<Sp<i64>>) -> Val<'_> {
    v.as_ref().map_or(Val::Absent, |v| Val::Int(v.value))
}
fn ob(v: &Option<Sp<bool>>) -> Val<'_> {
    v.as_ref().map_or(Val::Absent, |v| Val::Bool(v.value))
}
fn words(v: &[Sp<String>]) -> Val<'_> {
    if v.is_empty() {
        Val::Absent
    } else {
        Val::Words(v)
    }
}
fn nodes(items: Vec<Item<'_>>) -> Val<'_> {
    if items.is_empty() {
        Val::Absent
    } else {
        Val::Nodes(items)
    }
}
fn one(item: Option<Item<'_>>) -> Val<'_> {
    nodes(item.into_iter().collect())
}

/// The top-level items of a document, in [`lang::TOP`] order.
pub fn document(doc: &Document) -> Vec<Item<'_>> {
    let mut out: Vec<Item<'_>> = Vec::new();
    out.extend(doc.experiments.iter().map(experiment));
    out.extend(doc.networks.iter().map(network));
    out.extend(doc.disks.iter().map(disk));
    out.extend(doc.vms.iter().map(vm));
    out.extend(doc.captures.iter().map(capture));
    out.extend(doc.checks.iter().map(check));
    // The table decides the order of the kinds (a stable sort keeps each
    // kind's own order).
    out.sort_by_key(|i| lang::TOP.iter().position(|n| std::ptr::eq(*n, i.node)));
    out
}

fn experiment(e: &ExperimentNode) -> Item<'_> {
    Item::new(
        &lang::EXPERIMENT,
        vec![
            s(&e.name),
            os(&e.images),
            os(&e.accel),
            os(&e.boot_timeout),
            one(e.provider.as_ref().map(provider)),
        ],
    )
}

fn provider(p: &ProviderNode) -> Item<'_> {
    Item::new(
        &lang::PROVIDER,
        vec![s(&p.kind), os(&p.base), os(&p.namespace)],
    )
}

fn network(n: &Network) -> Item<'_> {
    Item::new(&lang::NETWORK, vec![s(&n.name), os(&n.host_address)])
}

fn disk(d: &Disk) -> Item<'_> {
    Item::new(
        &lang::DISK,
        vec![
            s(&d.name),
            os(&d.size),
            os(&d.format),
            os(&d.filesystem),
            ob(&d.keep),
            os(&d.from),
            nodes(d.inject.iter().map(inject).collect()),
        ],
    )
}

fn inject(i: &Inject) -> Item<'_> {
    Item::new(&lang::INJECT, vec![s(&i.src), s(&i.dst)])
}

fn vm(v: &Vm) -> Item<'_> {
    let cc = (!v.cc.is_empty()).then(|| Item::sequence(&lang::CC, v.cc.iter().map(step).collect()));
    Item::new(
        &lang::VM,
        vec![
            s(&v.name),
            os(&v.uuid),
            os(&v.kernel),
            os(&v.initrd),
            os(&v.append),
            os(&v.memory),
            oi(&v.vcpus),
            ob(&v.snapshot),
            os(&v.boot_timeout),
            os(&v.host),
            nodes(v.disks.iter().map(vm_disk).collect()),
            nodes(v.nics.iter().map(nic).collect()),
            nodes(v.mirrors.iter().map(mirror).collect()),
            if v.tags.is_empty() {
                Val::Absent
            } else {
                Val::Tags(&v.tags)
            },
            words(&v.after),
            words(&v.qemu_args),
            one(cc),
        ],
    )
}

fn vm_disk(d: &VmDisk) -> Item<'_> {
    Item::new(&lang::VM_DISK, vec![s(&d.name), os(&d.mount)])
}

fn nic(n: &Nic) -> Item<'_> {
    Item::new(&lang::NIC, vec![s(&n.network), os(&n.mac), os(&n.driver)])
}

fn mirror(m: &Mirror) -> Item<'_> {
    let (vm, net) = match &m.source {
        MirrorSource::Vm(v) => (s(v), Val::Absent),
        MirrorSource::Network(n) => (Val::Absent, s(n)),
    };
    Item::new(
        &lang::MIRRORS,
        vec![vm, net, oi(&m.nic), oi(&m.into), os(&m.direction)],
    )
}

/// A cc step: the index of its action among `cc`'s keys, and the action.
fn step(st: &CcStep) -> (usize, Item<'_>) {
    let (t, af) = (os(&st.timeout), ob(&st.allow_failure));
    let (node, vals) = match &st.action {
        CcAction::Exec(c) => (&lang::EXEC, vec![Val::Command(c), t, af]),
        CcAction::Background(c) => (&lang::BACKGROUND, vec![Val::Command(c), t, af]),
        CcAction::Send { src, to } => (&lang::SEND, vec![s(src), s(to), t, af]),
        CcAction::Recv { src, to, max_size } => {
            (&lang::RECV, vec![s(src), s(to), os(max_size), t, af])
        }
    };
    let index = lang::CC
        .keys
        .iter()
        .position(|k| matches!(k.ty, Ty::Node(n) if std::ptr::eq(n, node)))
        .expect("every cc action is a key of cc");
    (index, Item::new(node, vals))
}

fn capture(c: &Capture) -> Item<'_> {
    let (tap, net) = match &c.source {
        Some(CaptureSource::Tap { vm, nic }) => (
            one(Some(Item::new(&lang::CAPTURE_TAP, vec![s(vm), oi(nic)]))),
            Val::Absent,
        ),
        Some(CaptureSource::Network(n)) => (Val::Absent, s(n)),
        None => (Val::Absent, Val::Absent),
    };
    Item::new(&lang::CAPTURE, vec![s(&c.name), tap, net])
}

fn check(c: &Check) -> Item<'_> {
    Item::new(
        &lang::CHECK,
        vec![
            s(&c.name),
            os(&c.from),
            os(&c.ping),
            c.exec.as_ref().map_or(Val::Absent, Val::Command),
            os(&c.capture),
            os(&c.filter),
            os(&c.expect),
            oi(&c.exit),
            os(&c.stdout_contains),
            os(&c.stdout_matches),
            oi(&c.at_least),
            oi(&c.at_most),
            ob(&c.none),
            os(&c.timeout),
            oi(&c.retry),
            words(&c.after),
        ],
    )
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::diag::SourceFile;
    use crate::syntax::{kdl, toml};

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// Every example, every file of `tests/lang`, and every structurally
    /// sound file of the snapshot cases (`tests/bad/semantic`: they parse,
    /// only `validate` rejects them).
    fn documents() -> Vec<(String, Document)> {
        let mut out = Vec::new();
        for dir in ["examples", "tests/lang", "tests/bad/semantic"] {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
                .unwrap_or_else(|e| panic!("{dir}: {e}"))
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "kdl" || x == "toml"))
                .collect();
            paths.sort();
            for p in paths {
                let text = std::fs::read_to_string(&p).unwrap();
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                let (doc, diags) = crate::syntax::parse(&SourceFile::new(name, text));
                if diags.items.is_empty() {
                    out.push((p.strip_prefix(root()).unwrap().display().to_string(), doc));
                }
            }
        }
        assert!(out.len() >= 20, "only {} documents", out.len());
        out
    }

    fn reparse(name: &str, text: &str) -> Document {
        let (doc, diags) = crate::syntax::parse(&SourceFile::new(name, text.to_string()));
        assert!(diags.items.is_empty(), "{name}: {diags:?}\n{text}");
        doc
    }

    /// KDL -> model -> KDL and -> TOML -> model give an equal model, and both
    /// emitters are fixpoints.
    #[test]
    fn every_document_round_trips_through_both_syntaxes() {
        for (name, doc) in documents() {
            let k = kdl::emit(&doc);
            let from_kdl = reparse("x.kdl", &k);
            assert_eq!(from_kdl, doc, "{name}: KDL round trip\n{k}");
            assert_eq!(
                kdl::emit(&from_kdl),
                k,
                "{name}: KDL emit is not a fixpoint"
            );
            if has_duplicate_tables(&doc) {
                // `[network.LAN]` or `[experiment]` twice is a TOML syntax
                // error: only KDL can say it (and `validate` rejects it).
                continue;
            }
            let t = toml::emit(&doc);
            let from_toml = reparse("x.toml", &t);
            assert_eq!(from_toml, doc, "{name}: TOML round trip\n{t}");
            assert_eq!(
                toml::emit(&from_toml),
                t,
                "{name}: TOML emit is not a fixpoint"
            );
            assert_eq!(kdl::emit(&from_toml), k, "{name}: TOML -> KDL differs");
        }
    }

    fn note(seen: &mut Vec<(*const Node, &'static str)>, n: &'static Node, k: &'static str) {
        if !seen.contains(&(n as *const Node, k)) {
            seen.push((n as *const Node, k));
        }
    }

    fn has_duplicate_tables(doc: &Document) -> bool {
        let mut seen = Vec::new();
        for item in document(doc) {
            // An unnamed table (`[experiment]`) is one per file.
            let name = match (item.node.table_name(), item.vals.first()) {
                (Some(_), Some(Val::Str(name))) => *name,
                _ => "",
            };
            if seen.contains(&(item.node.name, name)) {
                return true;
            }
            seen.push((item.node.name, name));
        }
        false
    }

    fn mark(item: &Item<'_>, seen: &mut Vec<(*const Node, &'static str)>) {
        for (k, v) in item.present() {
            note(seen, item.node, k.name);
            if let Val::Nodes(items) = v {
                items.iter().for_each(|i| mark(i, seen));
            }
        }
        for (i, c) in &item.seq {
            note(seen, item.node, item.node.keys[*i].name);
            mark(c, seen);
        }
    }

    /// `tests/lang` writes every key of every node, so the round trips above
    /// exercise every accessor and every form of the table.
    #[test]
    fn the_full_fixtures_have_every_key() {
        let mut seen = Vec::new();
        for (name, doc) in documents() {
            if name.starts_with("tests/lang") {
                document(&doc).iter().for_each(|i| mark(i, &mut seen));
            }
        }
        let mut todo: Vec<&'static Node> = lang::TOP.to_vec();
        let mut done: Vec<*const Node> = Vec::new();
        let mut missing = Vec::new();
        while let Some(n) = todo.pop() {
            if done.contains(&(n as *const Node)) {
                continue;
            }
            done.push(n);
            for k in n.keys {
                if !seen.contains(&(n as *const Node, k.name)) {
                    missing.push(format!("{}.{}", n.name, k.name));
                }
                if let Ty::Node(c) = k.ty {
                    todo.push(c);
                }
            }
        }
        assert!(missing.is_empty(), "not in tests/lang: {missing:?}");
    }

    /// The string literals of a Rust source (good enough for ours: no raw
    /// strings, no `"` in char literals).
    fn literals(src: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut chars = src.chars();
        while let Some(c) = chars.next() {
            if c == '\'' {
                // Skip a char literal such as '"' (a lifetime has no closing ').
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\\\"'") || rest.starts_with("\"'") {
                    chars.nth(rest.find('\'').unwrap());
                }
            } else if c == '"' {
                let mut lit = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        c => lit.push(c),
                    }
                }
                out.push(lit);
            }
        }
        out
    }

    fn code_before_tests(path: &Path) -> String {
        let src = std::fs::read_to_string(root().join(path)).unwrap();
        src.split("#[cfg(test)]").next().unwrap().to_string()
    }

    /// Key and node names live in `lang.rs` only: the emitters and the
    /// accessors here never spell one (`schema.rs` is left out: JSON Schema's
    /// own words, `format` and `uuid`, are key names too) (a tidy test, as rust-analyzer keeps
    /// its invariants).
    #[test]
    fn emitters_spell_no_key_names() {
        let mut names: Vec<&str> = Vec::new();
        let mut todo: Vec<&'static Node> = lang::TOP.to_vec();
        while let Some(n) = todo.pop() {
            if names.contains(&n.name) && n.keys.iter().all(|k| names.contains(&k.name)) {
                continue;
            }
            names.push(n.name);
            for k in n.keys {
                names.push(k.name);
                if let Ty::Node(c) = k.ty {
                    todo.push(c);
                }
            }
        }
        let toml_src = std::fs::read_to_string(root().join("src/syntax/toml.rs")).unwrap();
        let toml_emit = toml_src
            .split("// Emit\n")
            .nth(1)
            .expect("toml.rs has an `// Emit` part")
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .to_string();
        for (file, code) in [
            (
                "src/syntax/kdl/emit.rs",
                code_before_tests(Path::new("src/syntax/kdl/emit.rs")),
            ),
            (
                "src/syntax/values.rs",
                code_before_tests(Path::new("src/syntax/values.rs")),
            ),
            ("src/syntax/toml.rs (emit)", toml_emit),
        ] {
            let lits = literals(&code);
            assert!(
                !lits.is_empty(),
                "{file}: no literals found; is the scanner broken?"
            );
            let spelled: Vec<&String> = lits
                .iter()
                .filter(|l| names.contains(&l.as_str()))
                .collect();
            assert!(spelled.is_empty(), "{file} spells key names: {spelled:?}");
        }
        // The scanner finds a planted one.
        assert_eq!(literals("f(\"memory\", '\"')"), ["memory"]);
    }
}
