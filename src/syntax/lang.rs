//! The experiment language, described once: every node, its keys, how each
//! key is written in KDL (argument, property, child node) and in TOML (key of
//! the node's table, or the table's own name), its value type, whether it is
//! required or repeatable, and the usage line shown in diagnostics.
//!
//! Both mappers (`kdl::map`, `toml`) take their known names, suggestions and
//! usage lines from here, and both emitters their key order; `schema` is
//! checked against it (`tests::schema_follows_the_table`).
//!
//! Adding a key to a node: one [`Key`] const here, listed in the node's
//! `keys`, plus the model field and the line in each mapper and emitter that
//! moves the value (the compiler points at the model's `PartialEq`).

use std::sync::OnceLock;

/// How a key is written in KDL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kdl {
    /// The node's n-th positional argument (`vm "NAME"`).
    Arg(usize),
    /// A property on the node's line (`size="10G"`).
    Prop,
    /// A child node in the node's block (`memory "2G"`).
    Child,
}

/// How a key is written in TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toml {
    /// A key of the node's table (`memory = "2G"`).
    Key,
    /// The name of the node's table (`[vm.NAME]`), not a key inside it.
    TableName,
}

/// The type of a key's value.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    Str,
    Int,
    Bool,
    /// A string, or an integer read as its digits (`memory 1024`).
    StrOrInt,
    /// One or more strings (KDL arguments, a TOML string or array).
    Words,
    /// `KEY "VALUE"` pairs (KDL children, a TOML table).
    Tags,
    /// A nested node.
    Node(&'static Node),
}

/// One key of a node.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// The name in both syntaxes.
    pub name: &'static str,
    pub kdl: Kdl,
    pub toml: Toml,
    pub ty: Ty,
    pub required: bool,
    pub repeatable: bool,
    /// The usage line of a child-node key with a plain value ("" for
    /// arguments, properties and nested nodes, which have their node's).
    pub usage: &'static str,
}

const fn key(name: &'static str, kdl: Kdl, ty: Ty, usage: &'static str) -> Key {
    Key {
        name,
        kdl,
        toml: Toml::Key,
        ty,
        required: false,
        repeatable: false,
        usage,
    }
}
const fn prop(name: &'static str, ty: Ty) -> Key {
    key(name, Kdl::Prop, ty, "")
}
const fn child(name: &'static str, ty: Ty, usage: &'static str) -> Key {
    key(name, Kdl::Child, ty, usage)
}
const fn arg(n: usize, name: &'static str, ty: Ty) -> Key {
    Key {
        required: true,
        ..key(name, Kdl::Arg(n), ty, "")
    }
}
/// A node's name: its first argument in KDL, its table's name in TOML.
const fn table_name(name: &'static str) -> Key {
    Key {
        toml: Toml::TableName,
        ..arg(0, name, Ty::Str)
    }
}
const fn many(k: Key) -> Key {
    Key {
        repeatable: true,
        ..k
    }
}
const fn optional(k: Key) -> Key {
    Key {
        required: false,
        ..k
    }
}

/// One node of the language.
#[derive(Debug)]
pub struct Node {
    /// The KDL node name (and the TOML key or table that holds it).
    pub name: &'static str,
    pub usage: &'static str,
    pub keys: &'static [Key],
    lists: OnceLock<Lists>,
}

#[derive(Debug)]
struct Lists {
    props: Vec<&'static str>,
    children: Vec<&'static str>,
    toml: Vec<&'static str>,
}

impl Node {
    const fn new(name: &'static str, usage: &'static str, keys: &'static [Key]) -> Node {
        Node {
            name,
            usage,
            keys,
            lists: OnceLock::new(),
        }
    }

    fn lists(&self) -> &Lists {
        self.lists.get_or_init(|| {
            let names = |f: &dyn Fn(&Key) -> bool| {
                self.keys.iter().filter(|k| f(k)).map(|k| k.name).collect()
            };
            Lists {
                props: names(&|k| k.kdl == Kdl::Prop),
                children: names(&|k| k.kdl == Kdl::Child),
                toml: names(&|k| k.toml == Toml::Key),
            }
        })
    }

    /// The keys written as KDL properties, in table order.
    pub fn props(&self) -> &[&'static str] {
        &self.lists().props
    }
    /// The keys written as KDL child nodes, in table order.
    pub fn children(&self) -> &[&'static str] {
        &self.lists().children
    }
    /// The keys of the node's TOML table, in table order.
    pub fn toml_keys(&self) -> &[&'static str] {
        &self.lists().toml
    }
    /// The key called `name`.
    pub fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }
}

// -- experiment ---------------------------------------------------------------

pub const IMAGES: Key = child("images", Ty::Str, "images \"DIR\"");
pub const ACCEL: Key = child("accel", Ty::Str, "accel \"auto\" (or \"kvm\", \"tcg\")");
pub const BOOT_TIMEOUT: Key = child("boot-timeout", Ty::Str, "boot-timeout \"60s\"");

pub const BASE: Key = child("base", Ty::Str, "base \"/tmp/minimega\"");
pub const NAMESPACE: Key = child("namespace", Ty::Str, "namespace \"NAME\"");

/// `provider "minimega" { ... }`: TOML's `[experiment.provider]` holds the
/// kind as `name`.
pub static PROVIDER: Node = Node::new(
    "provider",
    "provider \"minimega\" { base \"/tmp/minimega\"; namespace \"NAME\" }",
    &[arg(0, "name", Ty::Str), BASE, NAMESPACE],
);

pub static EXPERIMENT: Node = Node::new(
    "experiment",
    "experiment \"NAME\" { images \"DIR\"; accel \"auto\" }",
    // The name is a key of [experiment] in TOML (there is one experiment).
    &[
        arg(0, "name", Ty::Str),
        IMAGES,
        ACCEL,
        BOOT_TIMEOUT,
        child("provider", Ty::Node(&PROVIDER), ""),
    ],
);

// -- network ------------------------------------------------------------------

pub const HOST_ADDRESS: Key = child("host-address", Ty::Str, "host-address \"10.0.0.254/24\"");

pub static NETWORK: Node = Node::new(
    "network",
    "network \"NAME\" { host-address \"10.0.0.254/24\" }",
    &[table_name("name"), HOST_ADDRESS],
);

// -- disk ---------------------------------------------------------------------

pub static INJECT: Node = Node::new(
    "inject",
    "inject \"HOST-SRC\" \"DISK-DST\"",
    &[arg(0, "src", Ty::Str), arg(1, "dst", Ty::Str)],
);

pub const FROM: Key = child("from", Ty::Str, "from \"BASE-IMAGE\"");

pub static DISK: Node = Node::new(
    "disk",
    "disk \"NAME\" size=\"10G\" format=\"qcow2\" filesystem=\"ext4\" keep=#true { from \"BASE\"; inject \"SRC\" \"DST\" }",
    &[
        table_name("name"),
        prop("size", Ty::StrOrInt),
        prop("format", Ty::Str),
        prop("filesystem", Ty::Str),
        prop("keep", Ty::Bool),
        FROM,
        many(child("inject", Ty::Node(&INJECT), "")),
    ],
);

// -- vm -----------------------------------------------------------------------

pub static VM_DISK: Node = Node::new(
    "disk",
    "disk \"NAME\" mount=\"/PATH\"",
    &[arg(0, "name", Ty::Str), prop("mount", Ty::Str)],
);

pub static NIC: Node = Node::new(
    "nic",
    "nic \"NETWORK\" mac=\"MAC\" driver=\"virtio-net-pci\"",
    &[
        arg(0, "network", Ty::Str),
        prop("mac", Ty::Str),
        prop("driver", Ty::Str),
    ],
);

pub static MIRRORS: Node = Node::new(
    "mirrors",
    "mirrors \"VM\" nic=0 into=0 direction=\"both\"  or  mirrors network=\"NETWORK\"",
    &[
        // Either the VM argument or the network property.
        optional(arg(0, "vm", Ty::Str)),
        prop("network", Ty::Str),
        prop("nic", Ty::Int),
        prop("into", Ty::Int),
        prop("direction", Ty::Str),
    ],
);

pub const TAG_USAGE: &str = "KEY \"VALUE\" (inside tags { ... })";

pub static EXEC: Node = Node::new(
    "exec",
    "exec \"CMD\" timeout=\"30s\" allow-failure=#true",
    &[
        arg(0, "command", Ty::Words),
        prop("timeout", Ty::Str),
        prop("allow-failure", Ty::Bool),
    ],
);
pub static BACKGROUND: Node = Node::new(
    "background",
    "background \"CMD\"",
    &[
        arg(0, "command", Ty::Words),
        prop("timeout", Ty::Str),
        prop("allow-failure", Ty::Bool),
    ],
);
pub static SEND: Node = Node::new(
    "send",
    "send \"HOST-PATH\" to=\"GUEST-PATH\"",
    &[
        arg(0, "src", Ty::Str),
        Key {
            required: true,
            ..prop("to", Ty::Str)
        },
        prop("timeout", Ty::Str),
        prop("allow-failure", Ty::Bool),
    ],
);
pub static RECV: Node = Node::new(
    "recv",
    "recv \"GUEST-PATH\" to=\"HOST-DIR\" max-size=\"1G\"",
    &[
        arg(0, "src", Ty::Str),
        Key {
            required: true,
            ..prop("to", Ty::Str)
        },
        prop("max-size", Ty::Str),
        prop("timeout", Ty::Str),
        prop("allow-failure", Ty::Bool),
    ],
);

/// The actions of a cc step, in the order the language lists them.
pub static CC_ACTIONS: [&Node; 4] = [&EXEC, &BACKGROUND, &SEND, &RECV];

pub static CC: Node = Node::new(
    "cc",
    "cc { exec \"CMD\"; background \"CMD\"; send \"SRC\" to=\"DST\"; recv \"SRC\" to=\"DIR\" }",
    &[
        many(child("exec", Ty::Node(&EXEC), "")),
        many(child("background", Ty::Node(&BACKGROUND), "")),
        many(child("send", Ty::Node(&SEND), "")),
        many(child("recv", Ty::Node(&RECV), "")),
    ],
);

pub const UUID: Key = child(
    "uuid",
    Ty::Str,
    "uuid \"11111111-1111-1111-1111-111111111111\"",
);
pub const KERNEL: Key = child("kernel", Ty::Str, "kernel \"$images/miniccc.kernel\"");
pub const INITRD: Key = child("initrd", Ty::Str, "initrd \"$images/miniccc.initrd\"");
pub const APPEND: Key = child("append", Ty::Str, "append \"console=ttyS0\"");
pub const MEMORY: Key = child("memory", Ty::StrOrInt, "memory \"2048M\"");
pub const VCPUS: Key = child("vcpus", Ty::Int, "vcpus 2");
pub const SNAPSHOT: Key = child("snapshot", Ty::Bool, "snapshot #false");
pub const HOST: Key = child("host", Ty::Str, "host \"mm1\"");
pub const TAGS: Key = child("tags", Ty::Tags, "tags { KEY \"VALUE\" }");
pub const AFTER: Key = many(child("after", Ty::Words, "after \"VM\" \"VM2\" ..."));
pub const QEMU_ARGS: Key = many(child(
    "qemu-args",
    Ty::Words,
    "qemu-args \"-ARG\" \"VALUE\" ...",
));

/// The keys of a `vm`, in the order the emitters write them (both syntaxes).
pub static VM: Node = Node::new(
    "vm",
    "vm \"NAME\" { kernel \"PATH\"; nic \"NETWORK\"; ... }",
    &[
        table_name("name"),
        UUID,
        KERNEL,
        INITRD,
        APPEND,
        MEMORY,
        VCPUS,
        SNAPSHOT,
        BOOT_TIMEOUT,
        HOST,
        many(child("disk", Ty::Node(&VM_DISK), "")),
        many(child("nic", Ty::Node(&NIC), "")),
        many(child("mirrors", Ty::Node(&MIRRORS), "")),
        TAGS,
        AFTER,
        QEMU_ARGS,
        child("cc", Ty::Node(&CC), ""),
    ],
);

// -- capture and check (issue 16) ---------------------------------------------

pub static CAPTURE_TAP: Node = Node::new(
    "tap",
    "tap \"VM\" nic=0",
    &[arg(0, "vm", Ty::Str), prop("nic", Ty::Int)],
);

/// `capture "NAME" { tap "VM" nic=0 }` or `capture "NAME" network="LAN"`;
/// TOML: `[capture.NAME]` with `tap` (and `nic`) or `network`.
pub static CAPTURE: Node = Node::new(
    "capture",
    "capture \"NAME\" { tap \"VM\" nic=0 }  or  capture \"NAME\" network=\"NETWORK\"",
    &[
        table_name("name"),
        prop("network", Ty::Str),
        child("tap", Ty::Node(&CAPTURE_TAP), ""),
    ],
);

/// The flat keys of a TOML `[capture.NAME]` table (the tap's `nic` is one).
pub const CAPTURE_TOML_KEYS: &[&str] = &["tap", "nic", "network"];

const CHECK_STR: &str = "KEY \"VALUE\" (inside check { ... })";
const CHECK_INT: &str = "KEY N (inside check { ... })";

/// `check "NAME" { ... }`; TOML `[check."NAME"]` with the same keys.
pub static CHECK: Node = Node::new(
    "check",
    "check \"NAME\" { from \"VM\"; ping \"10.0.0.2\" }",
    &[
        table_name("name"),
        child("from", Ty::Str, CHECK_STR),
        child("ping", Ty::Str, CHECK_STR),
        child(
            "exec",
            Ty::Words,
            "exec \"CMD\"  or  exec \"ARG\" \"ARG\" ...",
        ),
        child("capture", Ty::Str, CHECK_STR),
        child("match", Ty::Str, "match \"PCAP-FILTER\""),
        child("expect", Ty::Str, "expect \"fail\" (or \"pass\")"),
        child("exit", Ty::Int, CHECK_INT),
        child("stdout-contains", Ty::Str, CHECK_STR),
        child("stdout-matches", Ty::Str, CHECK_STR),
        child("at-least", Ty::Int, CHECK_INT),
        child("at-most", Ty::Int, CHECK_INT),
        // KDL: a bare `none`; TOML: `none = true`.
        child("none", Ty::Bool, "none"),
        child("timeout", Ty::Str, "timeout \"30s\""),
        child("retry", Ty::Int, "retry 3"),
        many(child("after", Ty::Words, "after \"VM-OR-CHECK\" ...")),
    ],
);

/// The top-level nodes, in the order the emitters write them.
pub static TOP: [&Node; 6] = [&EXPERIMENT, &NETWORK, &DISK, &VM, &CAPTURE, &CHECK];

/// The names of the top-level nodes.
pub fn top_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| TOP.iter().map(|n| n.name).collect())
}

/// The keys of a TOML cc step table: the actions, then every action's
/// properties (`recv`'s first: it has them all, in the order shown).
pub fn toml_step_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys: Vec<&'static str> = CC_ACTIONS.iter().map(|a| a.name).collect();
        for a in CC_ACTIONS.iter().rev() {
            for p in a.props() {
                if !keys.contains(p) {
                    keys.push(p);
                }
            }
        }
        keys
    })
}

/// The names of the cc actions.
pub fn cc_action_names() -> &'static [&'static str] {
    CC.children()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node reachable from the top, once.
    fn all_nodes() -> Vec<&'static Node> {
        let mut out: Vec<&'static Node> = Vec::new();
        let mut todo: Vec<&'static Node> = TOP.to_vec();
        while let Some(n) = todo.pop() {
            if out.iter().any(|o| std::ptr::eq(*o, n)) {
                continue;
            }
            out.push(n);
            for k in n.keys {
                if let Ty::Node(c) = k.ty {
                    todo.push(c);
                }
            }
        }
        out
    }

    #[test]
    fn keys_are_unique_and_arguments_numbered_in_order() {
        for n in all_nodes() {
            let mut names: Vec<_> = n.keys.iter().map(|k| k.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n.keys.len(), "a key repeats in `{}`", n.name);
            let args: Vec<usize> = n
                .keys
                .iter()
                .filter_map(|k| match k.kdl {
                    Kdl::Arg(i) => Some(i),
                    _ => None,
                })
                .collect();
            assert_eq!(args, (0..args.len()).collect::<Vec<_>>(), "`{}`", n.name);
            assert!(n.usage.starts_with(n.name), "usage of `{}`", n.name);
        }
    }

    #[test]
    fn derived_lists() {
        assert_eq!(DISK.props(), ["size", "format", "filesystem", "keep"]);
        assert_eq!(DISK.children(), ["from", "inject"]);
        assert_eq!(
            DISK.toml_keys(),
            ["size", "format", "filesystem", "keep", "from", "inject"]
        );
        assert_eq!(
            EXPERIMENT.toml_keys(),
            ["name", "images", "accel", "boot-timeout", "provider"]
        );
        assert_eq!(
            MIRRORS.toml_keys(),
            ["vm", "network", "nic", "into", "direction"]
        );
        assert_eq!(
            toml_step_keys(),
            [
                "exec",
                "background",
                "send",
                "recv",
                "to",
                "max-size",
                "timeout",
                "allow-failure"
            ]
        );
        assert_eq!(
            top_names(),
            ["experiment", "network", "disk", "vm", "capture", "check"]
        );
    }

    /// The JSON schema (written with schemars from `schema.rs`) has exactly
    /// the TOML keys of the table, for every table it describes.
    #[test]
    fn schema_follows_the_table() {
        let schema = crate::schema::schema_value();
        let defs = &schema["$defs"];
        let props = |v: &serde_json::Value| -> Vec<String> {
            let mut keys: Vec<String> = v["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("no properties in {v}"))
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        let sorted = |keys: &[&str]| -> Vec<String> {
            let mut k: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
            k.sort();
            k
        };
        assert_eq!(props(&schema), sorted(top_names()));
        for (def, node) in [
            ("Experiment", &EXPERIMENT),
            ("Network", &NETWORK),
            ("Disk", &DISK),
            ("Inject", &INJECT),
            ("Vm", &VM),
            ("VmDiskTable", &VM_DISK),
            ("NicTable", &NIC),
            ("Check", &CHECK),
        ] {
            assert_eq!(props(&defs[def]), sorted(node.toml_keys()), "{def}");
        }
        // A mirror table is one of two shapes; together they have the keys.
        let mut mirror = props(&defs["VmMirror"]);
        mirror.extend(props(&defs["NetworkMirror"]));
        mirror.sort();
        mirror.dedup();
        assert_eq!(mirror, sorted(MIRRORS.toml_keys()));
        assert_eq!(props(&defs["Capture"]), sorted(CAPTURE_TOML_KEYS));
        let mut steps = Vec::new();
        for d in ["ExecStep", "BackgroundStep", "SendStep", "RecvStep"] {
            steps.extend(props(&defs[d]));
        }
        steps.sort();
        steps.dedup();
        assert_eq!(steps, sorted(toml_step_keys()));
    }
}
