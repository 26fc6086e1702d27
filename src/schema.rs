//! The JSON Schema (draft 2020-12) of an experiment file in its TOML/JSON shape,
//! committed as `schemas/experiment.schema.json` (`megaplan schema` prints it).
//!
//! The schema is generated from the language table (`syntax::lang`), the one
//! the front ends and emitters use: a node is an object of its TOML keys
//! (types from [`Ty`], checks from [`Check`], descriptions from the keys'
//! `doc`), a top-level node a map of them by name, a nested node a `$defs`
//! entry by its `title`, a node that may be a bare string an `anyOf` of the
//! string and its table (or tables: [`lang::Variant`]), a sequence node an
//! array of its children flattened into tables.
//!
//! Invariants:
//! - Every table denies unknown keys (`additionalProperties: false`), as the
//!   TOML front end does.
//! - Value checks here (enums, patterns) accept at least what `validate`
//!   accepts, so an editor never flags a file megaplan would run. References
//!   between names (a nic's network exists...) are `validate`'s alone.
//! - TOML has no null: an optional key is simply absent.

use serde_json::{Map, Value, json};

use crate::syntax::lang::{self, Check, Enum, Key, Node, Shape, Toml, Ty};

pub use crate::syntax::lang::{
    CIDR_PATTERN, DURATION_PATTERN, MAC_PATTERN, SIZE_PATTERN, UUID_PATTERN,
};

const TITLE: &str = "megaplan experiment";
const DESCRIPTION: &str =
    "A megaplan experiment file: VMs, networks, disks, tap mirrors and cc steps.";

/// The schema as a JSON value.
pub fn schema_value() -> Value {
    let mut g = Gen { defs: Map::new() };
    let mut props = Map::new();
    let mut required = Vec::new();
    for node in lang::TOP {
        let value = if node.table_name().is_some() {
            let mut o = obj([
                ("type", json!("object")),
                ("additionalProperties", g.node_ref(node)),
            ]);
            describe(&mut o, node.many_doc);
            Value::Object(o)
        } else {
            // One table, `[experiment]`, which every file has.
            required.push(json!(node.name));
            g.node_ref(node)
        };
        props.insert(node.name.into(), value);
    }
    let mut root = obj([
        (
            "$schema",
            json!("https://json-schema.org/draft/2020-12/schema"),
        ),
        ("title", json!(TITLE)),
        ("description", json!(DESCRIPTION)),
        ("type", json!("object")),
        ("additionalProperties", json!(false)),
        ("properties", Value::Object(props)),
        ("required", Value::Array(required)),
    ]);
    root.insert("$defs".into(), Value::Object(g.defs));
    Value::Object(root)
}

/// The schema, pretty-printed with a trailing newline: the exact contents of
/// `schemas/experiment.schema.json`.
pub fn schema_json() -> String {
    let mut s = serde_json::to_string_pretty(&schema_value()).expect("a JSON value serializes");
    s.push('\n');
    s
}

fn obj<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn describe(o: &mut Map<String, Value>, doc: &str) {
    if !doc.is_empty() {
        o.insert("description".into(), json!(doc));
    }
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/$defs/{name}") })
}

/// The `$defs` being built, in the order they are first referred to.
struct Gen {
    defs: Map<String, Value>,
}

impl Gen {
    /// A reference to `name`'s definition, made by `make` the first time.
    fn define(&mut self, name: &str, make: impl FnOnce(&mut Gen) -> Value) -> Value {
        if !self.defs.contains_key(name) {
            // Reserve the place first: a definition comes before the ones it
            // refers to.
            self.defs.insert(name.into(), Value::Null);
            let def = make(self);
            self.defs.insert(name.into(), def);
        }
        reference(name)
    }

    /// A reference to a nested node: its table, the anyOf of a bare string
    /// and its table(s), or (a sequence node) the anyOf of its children.
    fn node_ref(&mut self, node: &'static Node) -> Value {
        if node.shape == Shape::Sequence {
            return self.define(node.title, |g| {
                let alts: Vec<Value> = node
                    .keys
                    .iter()
                    .map(|k| match k.ty {
                        Ty::Node(child) => {
                            g.define(child.title, |g| g.table(&flat_keys(child), child.doc))
                        }
                        _ => unreachable!("a sequence node's keys are nodes"),
                    })
                    .collect();
                let mut o = obj([("anyOf", Value::Array(alts))]);
                describe(&mut o, node.doc);
                Value::Object(o)
            });
        }
        match node.bare {
            Some((name, doc)) => self.define(name, |g| {
                let mut alts = vec![json!({ "type": "string" })];
                if node.variants.is_empty() {
                    alts.push(g.define(node.title, |g| g.record(node)));
                }
                for v in node.variants {
                    alts.push(g.define(v.name, |g| {
                        let keys: Vec<(&'static str, &'static Key)> = v
                            .keys
                            .iter()
                            .map(|name| {
                                let k = node.key(name).expect("a variant's keys are the node's");
                                (k.name, k)
                            })
                            .collect();
                        // A variant is told apart by its first key.
                        g.table_with(&keys, v.doc, &v.keys[..1])
                    }));
                }
                let mut o = obj([("anyOf", Value::Array(alts))]);
                describe(&mut o, doc);
                Value::Object(o)
            }),
            None => self.define(node.title, |g| g.record(node)),
        }
    }

    fn record(&mut self, node: &'static Node) -> Value {
        // A flattened node's keys are required only if the node is.
        let mut required = Vec::new();
        for k in node.keys {
            match (k.toml, k.ty) {
                (Toml::TableName, _) => {}
                (Toml::Flatten, Ty::Node(inner)) if k.required => {
                    for (i, ik) in inner.keys.iter().enumerate() {
                        if ik.required {
                            required.push(if i == 0 { k.name } else { ik.name });
                        }
                    }
                }
                (Toml::Flatten, _) => {}
                _ if k.required => required.push(k.name),
                _ => {}
            }
        }
        self.table_with(&node.toml_table_keys(), node.doc, &required)
    }

    fn table(&mut self, keys: &[(&'static str, &'static Key)], doc: &str) -> Value {
        let required: Vec<&str> = keys
            .iter()
            .filter(|(_, k)| k.required)
            .map(|(name, _)| *name)
            .collect();
        self.table_with(keys, doc, &required)
    }

    fn table_with(
        &mut self,
        keys: &[(&'static str, &'static Key)],
        doc: &str,
        required: &[&str],
    ) -> Value {
        let mut props = Map::new();
        for (name, k) in keys {
            let p = self.key(k);
            props.insert(name.to_string(), p);
        }
        let mut o = obj([
            ("type", json!("object")),
            ("additionalProperties", json!(false)),
            ("properties", Value::Object(props)),
        ]);
        if !required.is_empty() {
            o.insert("required".into(), json!(required));
        }
        describe(&mut o, doc);
        Value::Object(o)
    }

    /// The schema of one key's value.
    fn key(&mut self, k: &'static Key) -> Value {
        // A reference carries the key's description: after it when the key is
        // required, before it otherwise.
        let with_ref = |r: Value, k: &Key| -> Value {
            let mut o = Map::new();
            if !k.required {
                describe(&mut o, k.doc);
            }
            if let Value::Object(r) = r {
                o.extend(r);
            }
            if k.required {
                describe(&mut o, k.doc);
            }
            Value::Object(o)
        };
        if let Check::OneOf(e) = k.check {
            let r = self.define(e.name, |_| enum_def(e));
            return with_ref(r, k);
        }
        let mut o = match k.ty {
            Ty::Str | Ty::Size => {
                let mut o = obj([("type", json!("string"))]);
                if let Check::Uuid = k.check {
                    o.insert("format".into(), json!("uuid"));
                }
                o
            }
            Ty::Int => obj([("type", json!("integer")), ("format", json!("int64"))]),
            Ty::Bool | Ty::Flag => obj([("type", json!("boolean"))]),
            Ty::Words => obj([
                ("type", json!("array")),
                ("items", json!({ "type": "string" })),
            ]),
            Ty::Tags => obj([
                ("type", json!("object")),
                ("additionalProperties", json!({ "type": "string" })),
            ]),
            Ty::StrOrInt => return with_ref(self.define("Memory", |_| memory_def()), k),
            Ty::Line => return with_ref(self.define("QemuArgs", |_| qemu_args_def()), k),
            Ty::Command => return with_ref(self.define("Command", |_| command_def()), k),
            Ty::Node(n) => {
                let items = self.node_ref(n);
                if k.toml == Toml::Section || (!k.repeatable && n.shape != Shape::Sequence) {
                    return with_ref(items, k);
                }
                obj([("type", json!("array")), ("items", items)])
            }
        };
        describe(&mut o, k.doc);
        constrain(&mut o, k.check);
        Value::Object(o)
    }
}

/// The keys of a node flattened into a table: its first argument under the
/// node's name (`exec = "CMD"`), its other keys beside it.
fn flat_keys(node: &'static Node) -> Vec<(&'static str, &'static Key)> {
    node.keys
        .iter()
        .enumerate()
        .map(|(i, k)| (if i == 0 { node.name } else { k.name }, k))
        .collect()
}

fn constrain(o: &mut Map<String, Value>, check: Check) {
    match check {
        Check::None | Check::OneOf(_) => {}
        Check::Pattern(p) => {
            o.insert("pattern".into(), json!(p));
        }
        Check::Uuid => {
            o.insert("pattern".into(), json!(lang::UUID_PATTERN));
        }
        Check::NonEmpty => {
            o.insert("minLength".into(), json!(1));
        }
        Check::Min(n) => {
            o.insert("minimum".into(), json!(n));
        }
        Check::Range(lo, hi) => {
            o.insert("minimum".into(), json!(lo));
            o.insert("maximum".into(), json!(hi));
        }
    }
}

fn enum_def(e: &Enum) -> Value {
    let mut o = obj([("type", json!("string")), ("enum", json!(e.values))]);
    describe(&mut o, e.doc);
    Value::Object(o)
}

/// [`Ty::StrOrInt`]: a size, or a whole number of MiB.
fn memory_def() -> Value {
    json!({
        "anyOf": [
            { "type": "string", "pattern": lang::SIZE_PATTERN },
            { "type": "integer", "format": "int64", "minimum": 1 }
        ],
        "description": "Memory: `2048M`, `1G`..., or a whole number of MiB. Default `2048M`."
    })
}

/// [`Ty::Line`].
fn qemu_args_def() -> Value {
    json!({
        "anyOf": [
            { "type": "array", "items": { "type": "string" } },
            { "type": "string" }
        ],
        "description": "Extra QEMU arguments: one word each, or one string split on whitespace."
    })
}

/// [`Ty::Command`].
fn command_def() -> Value {
    json!({
        "anyOf": [
            { "type": "string" },
            { "type": "array", "items": { "type": "string" }, "minItems": 1 }
        ],
        "description": "A command: one string runs under the guest's `sh -c`; a list runs directly."
    })
}
