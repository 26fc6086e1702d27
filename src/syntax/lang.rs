//! The experiment language, described once: every node, its keys, how each
//! key is written in KDL (argument, property, child node) and in TOML (key of
//! the node's table, the table's own name, a `[parent.key]` section, or a node
//! flattened into its parent's table), its value type, whether it is required
//! or repeatable, its check and description, and the usage line shown in
//! diagnostics.
//!
//! Both mappers (`kdl::map`, `toml`) take their known names, suggestions and
//! usage lines from here; both emitters walk it (over `syntax::values`), and
//! `schema` generates the JSON schema from it.
//!
//! Adding a key to a node: a [`Key`] in the node's `keys` here (shape, type,
//! check, doc), the model field, the line in each mapper that reads it, and
//! its value in the node's accessor in `syntax::values` (the emitters and the
//! schema need nothing more), then a use in `tests/lang/full.kdl`.

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
    /// A key of the node's table (`memory = "2G"`). A nested node is an
    /// inline table (an array of them when repeatable), or a bare string when
    /// the node allows it and only its first argument is set.
    Key,
    /// The name of the node's table (`[vm.NAME]`), not a key inside it.
    TableName,
    /// A nested node as a table of its own, `[PARENT.KEY]`, after the
    /// parent's keys (`[experiment.provider]`).
    Section,
    /// A nested node flattened into this table: its first argument under the
    /// key's name, its other keys beside it (`tap = "VM"`, `nic = 0`).
    Flatten,
}

/// The type of a key's value.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    Str,
    Int,
    Bool,
    /// KDL: a bare child node, present means true; TOML: a boolean.
    Flag,
    /// A size string; KDL also takes an integer, read as its digits
    /// (`size=1024`).
    Size,
    /// A string, or an integer meaning MiB (`memory 1024`, `memory = 1024`).
    StrOrInt,
    /// One or more strings (KDL arguments, a TOML array).
    Words,
    /// Words, or in TOML one string split on whitespace (`qemu-args`).
    Line,
    /// A command: one string (run by `sh -c`) or several words (an argv):
    /// KDL arguments, a TOML string or array.
    Command,
    /// `KEY "VALUE"` pairs (KDL children, a TOML table).
    Tags,
    /// A nested node.
    Node(&'static Node),
}

/// A check on a value beyond its type, for the schema: `validate` makes the
/// same check with a located diagnostic.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    None,
    /// A string matching this regular expression.
    Pattern(&'static str),
    /// A UUID (`8-4-4-4-12` hex digits).
    Uuid,
    /// One of these strings.
    OneOf(&'static Enum),
    /// A non-empty string.
    NonEmpty,
    /// An integer at least this.
    Min(i64),
    /// An integer in this range.
    Range(i64, i64),
}

/// A closed set of words (`accel "kvm"`): its name in the schema, and why.
#[derive(Debug)]
pub struct Enum {
    pub name: &'static str,
    pub doc: &'static str,
    pub values: &'static [&'static str],
}

/// `8-4-4-4-12` hexadecimal digits.
pub const UUID_PATTERN: &str =
    "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";
/// Six hex pairs separated by `:`.
pub const MAC_PATTERN: &str = "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$";
/// `10G`, `512M`, `64K`, `1T`, `1024` (a bare number), optionally `B`/`iB`.
pub const SIZE_PATTERN: &str = "^\\s*[0-9]+\\s*([KkMmGgTt]|[KMGT]B|[KMGT]iB|kB|[Bb])?\\s*$";
/// `500ms`, `30s`, `5m`, `1h30m`, `2d`, or `90` (seconds).
pub const DURATION_PATTERN: &str = "^\\s*([0-9]+|([0-9]+(ms|s|m|h|d))+)\\s*$";
/// `10.0.0.254/24` or an IPv6 address with a prefix length.
pub const CIDR_PATTERN: &str = "^[0-9A-Fa-f:.]+/[0-9]{1,3}$";

const DURATION: Check = Check::Pattern(DURATION_PATTERN);
const SIZE: Check = Check::Pattern(SIZE_PATTERN);

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
    /// What the key means (the schema's description; "" for none).
    pub doc: &'static str,
    pub check: Check,
}

impl Key {
    const fn doc(self, doc: &'static str) -> Key {
        Key { doc, ..self }
    }
    const fn check(self, check: Check) -> Key {
        Key { check, ..self }
    }
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
        doc: "",
        check: Check::None,
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
const fn toml(t: Toml, k: Key) -> Key {
    Key { toml: t, ..k }
}

/// How a node's children are arranged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Each key once (a repeatable one as often as needed), in table order.
    Record,
    /// Its children in the order written, any key any number of times (the
    /// steps of `cc`): in TOML an array with one table per child, the child
    /// flattened into it.
    Sequence,
}

/// A TOML form of a node that only some of its keys make (a mirror names a
/// VM or a network): the first key is required.
#[derive(Debug)]
pub struct Variant {
    pub name: &'static str,
    pub doc: &'static str,
    pub keys: &'static [&'static str],
}

/// One node of the language.
#[derive(Debug)]
pub struct Node {
    /// The KDL node name (and the TOML key or table that holds it).
    pub name: &'static str,
    pub usage: &'static str,
    pub keys: &'static [Key],
    pub shape: Shape,
    /// The node's name in the schema (`Vm`, `NicTable`).
    pub title: &'static str,
    /// What the node is (the schema's description; "" for none).
    pub doc: &'static str,
    /// A top-level node: what its TOML table of tables holds ("Networks by
    /// name...").
    pub many_doc: &'static str,
    /// In TOML, a bare string may stand for the node with only its first
    /// argument: the name of that choice in the schema, and its description.
    pub bare: Option<(&'static str, &'static str)>,
    /// The TOML forms of the node when it has several (see [`Variant`]).
    pub variants: &'static [Variant],
    lists: OnceLock<Lists>,
}

#[derive(Debug)]
struct Lists {
    props: Vec<&'static str>,
    children: Vec<&'static str>,
    toml: Vec<&'static str>,
}

/// A node being described: the builder behind [`Node`]'s statics.
#[derive(Clone, Copy)]
struct Def {
    name: &'static str,
    usage: &'static str,
    keys: &'static [Key],
    shape: Shape,
    title: &'static str,
    doc: &'static str,
    many_doc: &'static str,
    bare: Option<(&'static str, &'static str)>,
    variants: &'static [Variant],
}

impl Def {
    const fn title(self, title: &'static str, doc: &'static str) -> Def {
        Def { title, doc, ..self }
    }
    const fn many_doc(self, many_doc: &'static str) -> Def {
        Def { many_doc, ..self }
    }
    const fn bare(self, title: &'static str, doc: &'static str) -> Def {
        Def {
            bare: Some((title, doc)),
            ..self
        }
    }
    const fn variants(self, variants: &'static [Variant]) -> Def {
        Def { variants, ..self }
    }
    const fn sequence(self) -> Def {
        Def {
            shape: Shape::Sequence,
            ..self
        }
    }
    const fn node(self) -> Node {
        let Def {
            name,
            usage,
            keys,
            shape,
            title,
            doc,
            many_doc,
            bare,
            variants,
        } = self;
        Node {
            name,
            usage,
            keys,
            shape,
            title,
            doc,
            many_doc,
            bare,
            variants,
            lists: OnceLock::new(),
        }
    }
}

const fn def(name: &'static str, usage: &'static str, keys: &'static [Key]) -> Def {
    Def {
        name,
        usage,
        keys,
        shape: Shape::Record,
        title: "",
        doc: "",
        many_doc: "",
        bare: None,
        variants: &[],
    }
}

impl Node {
    fn lists(&self) -> &Lists {
        self.lists.get_or_init(|| {
            let names = |f: &dyn Fn(&Key) -> bool| {
                self.keys.iter().filter(|k| f(k)).map(|k| k.name).collect()
            };
            Lists {
                props: names(&|k| k.kdl == Kdl::Prop),
                children: names(&|k| k.kdl == Kdl::Child),
                toml: self.toml_table_keys().iter().map(|(n, _)| *n).collect(),
            }
        })
    }

    /// The keys of the node's TOML table with the key each comes from, in
    /// table order: a flattened node's first argument is written under the
    /// key's name, its other keys beside it.
    pub fn toml_table_keys(&self) -> Vec<(&'static str, &'static Key)> {
        let mut out = Vec::new();
        for k in self.keys {
            match (k.toml, k.ty) {
                (Toml::TableName, _) => {}
                (Toml::Flatten, Ty::Node(inner)) => {
                    for (i, ik) in inner.keys.iter().enumerate() {
                        out.push((if i == 0 { k.name } else { ik.name }, ik));
                    }
                }
                _ => out.push((k.name, k)),
            }
        }
        out
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
    /// The node's name key, when its TOML table is named by it (`[vm.NAME]`).
    pub fn table_name(&self) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.toml == Toml::TableName)
    }
}

// -- enums --------------------------------------------------------------------

pub static ACCELS: Enum = Enum {
    name: "Accel",
    doc: "",
    values: &["auto", "kvm", "tcg"],
};
pub static PROVIDER_KINDS: Enum = Enum {
    name: "ProviderKind",
    doc: "",
    values: &["local", "minimega"],
};
pub static DISK_FORMATS: Enum = Enum {
    name: "DiskFormat",
    doc: "",
    values: &["qcow2", "raw"],
};
pub static FILESYSTEMS: Enum = Enum {
    name: "Filesystem",
    doc: "",
    values: &["ext4"],
};
pub static DIRECTIONS: Enum = Enum {
    name: "Direction",
    doc: "Which frames are copied, default `both`.",
    values: &["both", "ingress", "egress"],
};
pub static EXPECTS: Enum = Enum {
    name: "Expect",
    doc: "What a check expects of its test.",
    values: &["pass", "fail"],
};

// -- experiment ---------------------------------------------------------------

pub const IMAGES: Key = child("images", Ty::Str, "images \"DIR\"")
    .doc("The images folder, `$images` in paths; relative to the experiment file.");
pub const ACCEL: Key = child("accel", Ty::Str, "accel \"auto\" (or \"kvm\", \"tcg\")")
    .doc("`auto` (default) uses KVM when it can run ordinary guests, TCG otherwise.")
    .check(Check::OneOf(&ACCELS));
pub const BOOT_TIMEOUT: Key = child("boot-timeout", Ty::Str, "boot-timeout \"60s\"")
    .doc("Every VM's default `boot-timeout` (default `120s`).")
    .check(DURATION);

pub const BASE: Key = child("base", Ty::Str, "base \"/tmp/minimega\"").doc(
    "minimega's `-base` folder (its command socket is BASE/minimega; default `/tmp/minimega`).",
);
pub const NAMESPACE: Key = child("namespace", Ty::Str, "namespace \"NAME\"")
    .doc("The minimega namespace (default: the experiment's name).");

/// `provider "minimega" { ... }`: TOML's `[experiment.provider]` holds the
/// kind as `name`.
pub static PROVIDER: Node = def(
    "provider",
    "provider \"minimega\" { base \"/tmp/minimega\"; namespace \"NAME\" }",
    &[
        arg(0, "name", Ty::Str)
            .doc("`local` or `minimega`.")
            .check(Check::OneOf(&PROVIDER_KINDS)),
        BASE,
        NAMESPACE,
    ],
)
.title(
    "Provider",
    "`provider \"minimega\" { base \"/tmp/minimega\"; namespace \"NAME\" }`.",
)
.node();

pub static EXPERIMENT: Node = def(
    "experiment",
    "experiment \"NAME\" { images \"DIR\"; accel \"auto\" }",
    // The name is a key of [experiment] in TOML (there is one experiment).
    &[
        arg(0, "name", Ty::Str).check(Check::NonEmpty),
        IMAGES,
        ACCEL,
        BOOT_TIMEOUT,
        toml(Toml::Section, child("provider", Ty::Node(&PROVIDER), "")).doc(
            "Where the experiment is built: megaplan's own engine (default) or a\nminimega cluster.",
        ),
    ],
)
.title(
    "Experiment",
    "The experiment: its name scopes everything megaplan creates.",
)
.node();

// -- network ------------------------------------------------------------------

pub const HOST_ADDRESS: Key = child("host-address", Ty::Str, "host-address \"10.0.0.254/24\"")
    .doc("An address for the host on this network, in CIDR form (`10.0.0.254/24`).")
    .check(Check::Pattern(CIDR_PATTERN));

pub static NETWORK: Node = def(
    "network",
    "network \"NAME\" { host-address \"10.0.0.254/24\" }",
    &[table_name("name"), HOST_ADDRESS],
)
.title("Network", "An isolated L2 segment.")
.many_doc("Networks by name: each is an isolated L2 segment (one Linux bridge).")
.node();

// -- disk ---------------------------------------------------------------------

pub static INJECT: Node = def(
    "inject",
    "inject \"HOST-SRC\" \"DISK-DST\"",
    &[arg(0, "src", Ty::Str), arg(1, "dst", Ty::Str)],
)
.title(
    "Inject",
    "Copy host file or folder `src` to `dst` inside the disk.",
)
.node();

pub const FROM: Key = child("from", Ty::Str, "from \"BASE-IMAGE\"")
    .doc("A base image: the disk is a copy-on-write child of it.");

pub static DISK: Node = def(
    "disk",
    "disk \"NAME\" size=\"10G\" format=\"qcow2\" filesystem=\"ext4\" keep=#true { from \"BASE\"; inject \"SRC\" \"DST\" }",
    &[
        table_name("name"),
        prop("size", Ty::Size)
            .doc("`10G`, `512M`, `1024` (bytes)...")
            .check(SIZE),
        prop("format", Ty::Str).check(Check::OneOf(&DISK_FORMATS)),
        prop("filesystem", Ty::Str)
            .doc("Format the disk on the host (and inject files before first boot).")
            .check(Check::OneOf(&FILESYSTEMS)),
        prop("keep", Ty::Bool).doc("Survive `megaplan destroy` (only `destroy --all` removes it)."),
        FROM,
        many(child("inject", Ty::Node(&INJECT), ""))
            .doc("Host files or folders copied into the disk's filesystem."),
    ],
)
.title("Disk", "A disk image created with qemu-img.")
.many_doc("Disks by name, created with qemu-img.")
.node();

// -- vm -----------------------------------------------------------------------

pub static VM_DISK: Node = def(
    "disk",
    "disk \"NAME\" mount=\"/PATH\"",
    &[
        arg(0, "name", Ty::Str).doc("A `disk` name of this file, or a path to an existing image."),
        prop("mount", Ty::Str).doc("Where the guest mounts it."),
    ],
)
.title("VmDiskTable", "")
.bare(
    "VmDisk",
    "A disk of this file or a path to an image; a bare string is `{ name = … }`.",
)
.node();

pub static NIC: Node = def(
    "nic",
    "nic \"NETWORK\" mac=\"MAC\" driver=\"virtio-net-pci\"",
    &[
        arg(0, "network", Ty::Str),
        prop("mac", Ty::Str)
            .doc("Default: a stable, locally administered MAC derived from the address.")
            .check(Check::Pattern(MAC_PATTERN)),
        prop("driver", Ty::Str).doc("QEMU device model, default `virtio-net-pci`."),
    ],
)
.title("NicTable", "")
.bare(
    "Nic",
    "A nic on a network; a bare string is `{ network = … }`.",
)
.node();

pub static MIRRORS: Node = def(
    "mirrors",
    "mirrors \"VM\" nic=0 into=0 direction=\"both\"  or  mirrors network=\"NETWORK\"",
    &[
        // Either the VM argument or the network property.
        optional(arg(0, "vm", Ty::Str)),
        prop("network", Ty::Str),
        prop("nic", Ty::Int)
            .doc("The source VM's nic, default 0.")
            .check(Check::Min(0)),
        prop("into", Ty::Int)
            .doc("This VM's nic that receives the copies, default 0.")
            .check(Check::Min(0)),
        prop("direction", Ty::Str).check(Check::OneOf(&DIRECTIONS)),
    ],
)
.title("Mirror", "")
.bare(
    "Mirror",
    "A tap mirror into this VM: a bare string is `{ vm = … }`.",
)
.variants(&[
    Variant {
        name: "VmMirror",
        doc: "Mirror one nic of one VM.",
        keys: &["vm", "nic", "into", "direction"],
    },
    Variant {
        name: "NetworkMirror",
        doc: "Mirror every tap of a network.",
        keys: &["network", "into", "direction"],
    },
])
.node();

pub const TAG_USAGE: &str = "KEY \"VALUE\" (inside tags { ... })";

const TIMEOUT: Key = prop("timeout", Ty::Str).check(DURATION);
const ALLOW_FAILURE: Key = prop("allow-failure", Ty::Bool);

pub static EXEC: Node = def(
    "exec",
    "exec \"CMD\" timeout=\"30s\" allow-failure=#true",
    &[
        arg(0, "command", Ty::Command),
        TIMEOUT.doc("`30s`, `5m`, `1h30m`..."),
        ALLOW_FAILURE.doc("A non-zero exit does not fail the apply."),
    ],
)
.title("ExecStep", "Run a command and wait for it.")
.node();
pub static BACKGROUND: Node = def(
    "background",
    "background \"CMD\"",
    &[arg(0, "command", Ty::Command), TIMEOUT, ALLOW_FAILURE],
)
.title("BackgroundStep", "Start a command and go on.")
.node();
pub static SEND: Node = def(
    "send",
    "send \"HOST-PATH\" to=\"GUEST-PATH\"",
    &[
        arg(0, "src", Ty::Str).doc("The host path."),
        Key {
            required: true,
            ..prop("to", Ty::Str)
        }
        .doc("The guest path."),
        TIMEOUT,
        ALLOW_FAILURE,
    ],
)
.title("SendStep", "Copy a host file to the guest.")
.node();
pub static RECV: Node = def(
    "recv",
    "recv \"GUEST-PATH\" to=\"HOST-DIR\" max-size=\"1G\"",
    &[
        arg(0, "src", Ty::Str).doc("The guest path."),
        Key {
            required: true,
            ..prop("to", Ty::Str)
        }
        .doc("The host folder."),
        prop("max-size", Ty::Str)
            .doc("The most the guest may send (`10M`, `2G`; default 1 GiB).")
            .check(SIZE),
        TIMEOUT,
        ALLOW_FAILURE,
    ],
)
.title("RecvStep", "Copy a guest file into a host folder.")
.node();

/// The actions of a cc step, in the order the language lists them.
pub static CC_ACTIONS: [&Node; 4] = [&EXEC, &BACKGROUND, &SEND, &RECV];

pub static CC: Node = def(
    "cc",
    "cc { exec \"CMD\"; background \"CMD\"; send \"SRC\" to=\"DST\"; recv \"SRC\" to=\"DIR\" }",
    &[
        many(child("exec", Ty::Node(&EXEC), "")),
        many(child("background", Ty::Node(&BACKGROUND), "")),
        many(child("send", Ty::Node(&SEND), "")),
        many(child("recv", Ty::Node(&RECV), "")),
    ],
)
.title(
    "CcStep",
    "A cc step: exactly one of `exec`, `background`, `send`, `recv`.",
)
.sequence()
.node();

pub const UUID: Key = child(
    "uuid",
    Ty::Str,
    "uuid \"11111111-1111-1111-1111-111111111111\"",
)
.doc("Default: a UUIDv5 of the experiment and VM names, stable across reruns.")
.check(Check::Uuid);
pub const KERNEL: Key = child("kernel", Ty::Str, "kernel \"$images/miniccc.kernel\"");
pub const INITRD: Key = child("initrd", Ty::Str, "initrd \"$images/miniccc.initrd\"");
pub const APPEND: Key =
    child("append", Ty::Str, "append \"console=ttyS0\"").doc("The kernel command line.");
pub const MEMORY: Key = child("memory", Ty::StrOrInt, "memory \"2048M\"");
pub const VCPUS: Key = child("vcpus", Ty::Int, "vcpus 2")
    .doc("Default 1.")
    .check(Check::Min(1));
pub const SNAPSHOT: Key = child("snapshot", Ty::Bool, "snapshot #false")
    .doc("Default true: disk writes go to a per-VM overlay that `destroy` removes.");
pub const HOST: Key = child("host", Ty::Str, "host \"mm1\"")
    .doc("The minimega node the VM runs on (`vm config schedule`; the minimega provider only).");
pub const TAGS: Key = child("tags", Ty::Tags, "tags { KEY \"VALUE\" }");
pub const AFTER: Key = many(child("after", Ty::Words, "after \"VM\" \"VM2\" ..."))
    .doc("This VM's cc steps wait for those VMs' steps.");
pub const QEMU_ARGS: Key = many(child(
    "qemu-args",
    Ty::Line,
    "qemu-args \"-ARG\" \"VALUE\" ...",
));

/// The keys of a `vm`, in the order the emitters write them (both syntaxes).
pub static VM: Node = def(
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
        BOOT_TIMEOUT.doc(
            "How long the first cc step waits for the guest's agent to report in\nafter boot, e.g. `60s` (default: the experiment's, else `120s`).",
        ),
        HOST,
        many(child("disk", Ty::Node(&VM_DISK), "")),
        many(child("nic", Ty::Node(&NIC), "")).doc("Network interfaces: nic i is ethi in the guest."),
        many(child("mirrors", Ty::Node(&MIRRORS), "")).doc("Tap mirrors into this VM."),
        TAGS,
        AFTER,
        QEMU_ARGS,
        child("cc", Ty::Node(&CC), "")
            .doc("Steps run in order in the guest once its agent reports in."),
    ],
)
.title("Vm", "A virtual machine (QEMU).")
.many_doc("VMs by name; a name may be a range such as `web[1-3]` (web1, web2, web3).")
.node();

// -- capture and check (issue 16) ---------------------------------------------

pub static CAPTURE_TAP: Node = def(
    "tap",
    "tap \"VM\" nic=0",
    &[
        arg(0, "vm", Ty::Str).doc("Record this VM's nic (`nic`, default 0)."),
        prop("nic", Ty::Int).check(Check::Min(0)),
    ],
)
.node();

/// `capture "NAME" { tap "VM" nic=0 }` or `capture "NAME" network="LAN"`;
/// TOML: `[capture.NAME]` with `tap` (and `nic`) or `network`.
pub static CAPTURE: Node = def(
    "capture",
    "capture \"NAME\" { tap \"VM\" nic=0 }  or  capture \"NAME\" network=\"NETWORK\"",
    &[
        table_name("name"),
        toml(Toml::Flatten, child("tap", Ty::Node(&CAPTURE_TAP), "")),
        prop("network", Ty::Str).doc("Record every member tap of this network, each frame once."),
    ],
)
.title("Capture", "A capture: `tap` (with `nic`) or `network`.")
.many_doc(
    "Captures by name: the host records a tap's or a network's frames\ninto `.megaplan/EXPERIMENT/captures/NAME.pcap`.",
)
.node();

const CHECK_STR: &str = "KEY \"VALUE\" (inside check { ... })";
const CHECK_INT: &str = "KEY N (inside check { ... })";

/// `check "NAME" { ... }`; TOML `[check."NAME"]` with the same keys.
pub static CHECK: Node = def(
    "check",
    "check \"NAME\" { from \"VM\"; ping \"10.0.0.2\" }",
    &[
        table_name("name"),
        child("from", Ty::Str, CHECK_STR).doc("The VM that pings or runs the command."),
        child("ping", Ty::Str, CHECK_STR)
            .doc("An address that must answer (or, with `expect = \"fail\"`, must not)."),
        child(
            "exec",
            Ty::Command,
            "exec \"CMD\"  or  exec \"ARG\" \"ARG\" ...",
        )
        .doc("A command run in `from`."),
        child("capture", Ty::Str, CHECK_STR).doc("A capture whose frames are counted."),
        child("match", Ty::Str, "match \"PCAP-FILTER\"")
            .doc("A pcap filter expression (pcap-filter(7)) the counted frames match."),
        child("expect", Ty::Str, "expect \"fail\" (or \"pass\")").check(Check::OneOf(&EXPECTS)),
        child("exit", Ty::Int, CHECK_INT).doc("The exit code `exec` must return (default 0)."),
        child("stdout-contains", Ty::Str, CHECK_STR),
        child("stdout-matches", Ty::Str, CHECK_STR)
            .doc("A regular expression the output must match."),
        child("at-least", Ty::Int, CHECK_INT).check(Check::Min(0)),
        child("at-most", Ty::Int, CHECK_INT).check(Check::Min(0)),
        // KDL: a bare `none`; TOML: `none = true`.
        child("none", Ty::Flag, "none").doc("No frame may match."),
        child("timeout", Ty::Str, "timeout \"30s\"")
            .doc("The longest one attempt may take (default `30s`).")
            .check(DURATION),
        child("retry", Ty::Int, "retry 3")
            .doc("Attempts after the first, until the expectation holds.")
            .check(Check::Range(0, 1000)),
        many(child("after", Ty::Words, "after \"VM-OR-CHECK\" ..."))
            .doc("VMs and earlier checks this check runs after."),
    ],
)
.title(
    "Check",
    "A check: one of `ping`, `exec` (both with `from`) or `capture` (with `match`).",
)
.many_doc("Checks by name: what must hold once the lab is up (`megaplan test`).")
.node();

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
        // A flattened node: the tap's argument under `tap`, its nic beside it.
        assert_eq!(CAPTURE.toml_keys(), ["tap", "nic", "network"]);
    }

    /// What the emitters rely on: a section comes after its parent's keys, a
    /// flattened or sequence child is a node, a bare node starts with a
    /// string argument, and only named tables' names are table names.
    #[test]
    fn shapes_the_emitters_rely_on() {
        for n in all_nodes() {
            let first_section = n.keys.iter().position(|k| k.toml == Toml::Section);
            if let Some(i) = first_section {
                assert!(
                    n.keys[i..].iter().all(|k| k.toml == Toml::Section),
                    "a section of `{}` is not last",
                    n.name
                );
            }
            for k in n.keys {
                if matches!(k.toml, Toml::Section | Toml::Flatten) {
                    assert!(matches!(k.ty, Ty::Node(_)), "`{}.{}`", n.name, k.name);
                }
                if k.toml == Toml::TableName {
                    assert!(matches!(k.kdl, Kdl::Arg(0)), "`{}.{}`", n.name, k.name);
                    assert!(TOP.iter().any(|t| std::ptr::eq(*t, n)), "`{}`", n.name);
                }
            }
            if n.shape == Shape::Sequence {
                assert!(n.keys.iter().all(|k| matches!(k.ty, Ty::Node(_))));
            }
            if n.bare.is_some() {
                assert!(matches!(
                    (n.keys[0].kdl, n.keys[0].ty),
                    (Kdl::Arg(0), Ty::Str)
                ));
            }
            assert!(!n.title.is_empty() || n.bare.is_none(), "`{}`", n.name);
        }
    }

    /// The JSON schema (generated from this table by `schema.rs`) has exactly
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
        assert_eq!(props(&defs["Capture"]), sorted(CAPTURE.toml_keys()));
        let mut steps = Vec::new();
        for d in ["ExecStep", "BackgroundStep", "SendStep", "RecvStep"] {
            steps.extend(props(&defs[d]));
        }
        steps.sort();
        steps.dedup();
        assert_eq!(steps, sorted(toml_step_keys()));
    }
}
