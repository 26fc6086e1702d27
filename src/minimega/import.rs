//! A minimega script as a [`Document`]: minimega's `vm config` state machine,
//! launches, disks, tap mirrors and cc commands, replayed without minimega.
//!
//! Invariants:
//! - Every line is read the way minimega reads it ([`super::lex`], then its
//!   commands with minicli's prefix matching: a unique prefix names a keyword,
//!   an exact word wins over longer ones).
//! - Queries (`vm info`, `.columns … vm info`, a bare `vm config`…) and
//!   `vm start` are dropped silently; every other command without a megaplan
//!   equivalent is a warning at its line and column (an error with `strict`).
//! - Never panics, whatever the input; nothing is read from the paths named.

use std::collections::{BTreeMap, HashMap};

use miette::SourceSpan;

use super::lex::{self, Line, Word};
use super::{MARKER_TAG, MINICCC_FILES, RECV_DIR};
use crate::diag::{Diag, Diagnostics, SourceFile, Syntax};
use crate::model::{
    CcAction, CcStep, Command, Disk, Document, ExperimentNode, Inject, Mirror, MirrorSource,
    Network, Nic, Sp, Tag, Vm, VmDisk,
};
use crate::validate::{expand_range, name_problem};

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The experiment's name (default: the script's `namespace`, else its file stem).
    pub name: Option<String>,
    /// Unmapped commands are errors, not warnings.
    pub strict: bool,
}

/// The result of an import: the document, the notes for the header comment,
/// and every diagnostic about the script.
#[derive(Clone, Debug)]
pub struct Imported {
    pub doc: Document,
    pub notes: Vec<String>,
    pub diags: Diagnostics,
}

impl Imported {
    /// The experiment text: a comment naming the source and the assumptions
    /// made, then the canonical emitter's output.
    pub fn render(&self, syntax: Syntax) -> String {
        let lead = match syntax {
            Syntax::Kdl => "//",
            Syntax::Toml => "#",
        };
        let mut out = String::new();
        for n in &self.notes {
            for l in n.lines() {
                out.push_str(lead);
                out.push(' ');
                // A note quotes script text: keep it on its comment line.
                out.extend(l.chars().map(|c| if c.is_control() { ' ' } else { c }));
                out.push('\n');
            }
        }
        out.push('\n');
        out.push_str(&crate::syntax::emit(&self.doc, syntax));
        out
    }
}

const UNMAPPED: &str = "minimega::unmapped";
const TOO_BIG: &str = "minimega::too_big";

/// The most VMs one script may launch (minimega's published scale is a
/// thousand VMs per node).
pub const MAX_VMS: usize = 100_000;
/// The most cc steps an import writes, all VMs together.
pub const MAX_STEPS: usize = 1_000_000;
const SYNTAX: &str = "minimega::syntax";
const BAD_VALUE: &str = "minimega::bad_value";

/// minimega's top-level commands (3.0.1), for prefix matching.
const TOP: &[&str] = &[
    "args",
    "background",
    "background-error",
    "background-output",
    "background-status",
    "bridge",
    "capture",
    "cc",
    "check",
    "clear",
    "debug",
    "deploy",
    "disk",
    "dnsmasq",
    "echo",
    "file",
    "help",
    "history",
    "host",
    "log",
    "mesh",
    "namespace",
    "ns",
    "nuke",
    "optimize",
    "pipe",
    "plumb",
    "qos",
    "quit",
    "read",
    "router",
    "shell",
    "status",
    "tap",
    "version",
    "viz",
    "vlans",
    "vm",
    "vnc",
    "write",
];
const VM_SUBS: &[&str] = &[
    "cdrom",
    "config",
    "flush",
    "hotplug",
    "info",
    "kill",
    "launch",
    "migrate",
    "net",
    "qmp",
    "save",
    "screenshot",
    "snapshot",
    "start",
    "stop",
    "tag",
    "top",
];
const VM_CONFIG: &[&str] = &[
    "append",
    "backchannel",
    "bidirectional-copy-paste",
    "bonds",
    "cdrom",
    "clone",
    "colocate",
    "cores",
    "coschedule",
    "cpu",
    "disks",
    "fifos",
    "filesystem",
    "hostname",
    "init",
    "initrd",
    "kernel",
    "machine",
    "memory",
    "migrate",
    "networks",
    "preinit",
    "qemu",
    "qemu-append",
    "qemu-override",
    "restore",
    "save",
    "schedule",
    "serial-ports",
    "snapshot",
    "sockets",
    "state",
    "tags",
    "threads",
    "tpm-socket",
    "usb-use-xhci",
    "uuid",
    "vcpus",
    "vga",
    "virtio-ports",
    "volume",
];
const CC_SUBS: &[&str] = &[
    "background",
    "background-once",
    "clients",
    "commands",
    "delete",
    "exec",
    "exec-once",
    "exitcode",
    "filter",
    "listen",
    "log",
    "mount",
    "prefix",
    "process",
    "recv",
    "responses",
    "rtunnel",
    "send",
    "test-conn",
    "tunnel",
];
/// QEMU nic models minimega's netspec recognises as a driver (it asks QEMU;
/// these are the x86 ones).
const NIC_DRIVERS: &[&str] = &[
    "e1000",
    "e1000e",
    "e1000-82544gc",
    "e1000-82545em",
    "igb",
    "i82550",
    "i82551",
    "i82557a",
    "i82557b",
    "i82557c",
    "i82558a",
    "i82558b",
    "i82559a",
    "i82559b",
    "i82559c",
    "i82559er",
    "i82562",
    "i82801",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "tulip",
    "virtio-net-pci",
    "virtio-net-pci-non-transitional",
    "virtio-net-pci-transitional",
    "vmxnet3",
];

#[derive(Debug, PartialEq)]
enum Pick<'a> {
    One(&'a str),
    Ambiguous,
    None,
}

/// minicli's literal matching: an exact word, else a unique prefix.
fn pick<'a>(word: &str, options: &[&'a str]) -> Pick<'a> {
    if let Some(o) = options.iter().find(|o| **o == word) {
        return Pick::One(o);
    }
    let mut m = options.iter().filter(|o| o.starts_with(word));
    match (m.next(), m.next()) {
        (Some(o), None) if !word.is_empty() => Pick::One(o),
        (Some(_), Some(_)) if !word.is_empty() => Pick::Ambiguous,
        _ => Pick::None,
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn sp(w: &Word) -> SourceSpan {
    SourceSpan::from(w.span.clone())
}

fn join_span(a: &Word, b: &Word) -> SourceSpan {
    SourceSpan::from(a.span.start..b.span.end.max(a.span.start))
}

fn bare<T>(v: T) -> Sp<T> {
    Sp::bare(v)
}

/// One `vm config net` entry.
#[derive(Clone, Debug, PartialEq)]
struct NetSpec {
    vlan: String,
    mac: Option<String>,
    driver: Option<String>,
    /// The netspec in the script.
    span: SourceSpan,
}

/// minimega's `vm config`, as far as megaplan has a use for it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Config {
    // Each value keeps the span of the script's words it came from, so that
    // the validation of the import points into the script.
    kernel: Option<Sp<String>>,
    initrd: Option<Sp<String>>,
    append: Option<Sp<String>>,
    memory: Option<Sp<String>>,
    vcpus: Option<Sp<i64>>,
    uuid: Option<Sp<String>>,
    snapshot: Option<Sp<bool>>,
    disks: Vec<Sp<String>>,
    nets: Vec<NetSpec>,
    tags: BTreeMap<String, Sp<String>>,
    qemu_append: Vec<Sp<String>>,
    /// `vm config cpu qemu64`: a TCG guest.
    tcg: bool,
    /// `vm config schedule NODE`: the VM's `host`.
    schedule: Option<Sp<String>>,
    /// `vm config colocate VM`: the same `host` as that VM (resolved at the end).
    colocate: Option<Sp<String>>,
}

impl Config {
    fn clear(&mut self, field: &str) {
        match field {
            "kernel" => self.kernel = None,
            "initrd" => self.initrd = None,
            "append" => self.append = None,
            "memory" => self.memory = None,
            "vcpus" => self.vcpus = None,
            "uuid" => self.uuid = None,
            "snapshot" => self.snapshot = None,
            "disks" => self.disks.clear(),
            "networks" => self.nets.clear(),
            "tags" => self.tags.clear(),
            "qemu-append" => self.qemu_append.clear(),
            "cpu" => self.tcg = false,
            "schedule" => self.schedule = None,
            "colocate" => self.colocate = None,
            _ => {}
        }
    }
}

struct Launched {
    /// The name minimega gives it.
    mm_name: String,
    /// The megaplan name (the same unless it had to be made safe).
    name: String,
    /// Which `vm launch` it came from, and that launch's range if it was one.
    launch: usize,
    range: Option<String>,
    config: Config,
    /// The name (or count) in `vm launch`.
    span: SourceSpan,
}

#[derive(Clone, Debug, PartialEq)]
enum Filter {
    All,
    Uuid(String),
    Name(String),
    /// `vlan=ALIAS`: the VMs with a nic on that VLAN.
    Vlan(String),
    Tags(Vec<(String, String)>),
    /// A filter megaplan cannot evaluate (already warned about).
    Unmapped,
}

struct CcCmd {
    filter: Filter,
    action: CcAction,
    span: SourceSpan,
}

struct PendingMirror {
    span: SourceSpan,
    src: usize,
    src_nic: usize,
    dst: usize,
    dst_nic: usize,
}

struct Importer<'a> {
    opts: &'a Options,
    d: Diagnostics,
    notes: Vec<String>,
    namespace: Option<(String, SourceSpan)>,
    config: Config,
    saved: HashMap<String, Config>,
    vms: Vec<Launched>,
    /// minimega name -> index in `vms`.
    vm_by_name: HashMap<String, usize>,
    launches: usize,
    /// minimega's VM id counter (names `vm-ID` for `vm launch kvm N`).
    vm_ids: usize,
    /// mega_tapN -> (VM index, nic index), in launch order.
    taps: Vec<(usize, usize)>,
    used_tap_names: bool,
    disks: Vec<Disk>,
    /// A disk's file name as the script wrote it -> index in `disks`.
    disk_files: HashMap<String, usize>,
    filter: Filter,
    cc: Vec<CcCmd>,
    mirrors: Vec<PendingMirror>,
    /// VLAN alias -> network name (and its first netspec), in order of first use.
    networks: Vec<(String, String, SourceSpan)>,
    uses_images: bool,
    nic_without_driver: bool,
    renamed: Vec<String>,
    done: bool,
    /// minicli's preprocessor (`.preprocess false` turns it off).
    preprocess: bool,
}

/// Import a minimega script.
pub fn import(src: &SourceFile, opts: &Options) -> Imported {
    let text = src.text.as_str();
    let mut im = Importer {
        opts,
        d: Diagnostics::default(),
        notes: Vec::new(),
        namespace: None,
        config: Config::default(),
        saved: HashMap::new(),
        vms: Vec::new(),
        vm_by_name: HashMap::new(),
        launches: 0,
        vm_ids: 0,
        taps: Vec::new(),
        used_tap_names: false,
        disks: Vec::new(),
        disk_files: HashMap::new(),
        filter: Filter::All,
        cc: Vec::new(),
        mirrors: Vec::new(),
        networks: Vec::new(),
        uses_images: false,
        nic_without_driver: false,
        renamed: Vec::new(),
        done: false,
        preprocess: true,
    };
    let (lines, errors) = lex::lex_script(text);
    for e in errors {
        let span = SourceSpan::from(e.span());
        im.d.push(
            Diag::error(SYNTAX, format!("minimega cannot read this line: {e}"))
                .label(span, "here")
                .help("close the quote, or escape the character with '\\' (minimega escapes r n t \\ \" ' #)"),
        );
    }
    for line in &lines {
        if im.done {
            break;
        }
        im.line(line);
    }
    let doc = im.finish(src);
    let mut diags = im.d;
    diags.sort();
    Imported {
        doc,
        notes: im.notes,
        diags,
    }
}

impl Importer<'_> {
    /// "`qos add` has no megaplan equivalent; skipped", a warning (error when strict).
    fn unmapped(&mut self, words: &[Word], n: usize, why: Option<&str>) {
        let n = n.clamp(1, words.len().max(1));
        let Some(first) = words.first() else { return };
        let last = &words[n.min(words.len()) - 1];
        let what: Vec<&str> = words[..n.min(words.len())]
            .iter()
            .map(|w| w.text.as_str())
            .collect();
        let msg = format!(
            "`{}` has no megaplan equivalent{}; skipped",
            what.join(" "),
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        );
        let span = join_span(first, last);
        let d = if self.opts.strict {
            Diag::error(UNMAPPED, msg)
                .label(span, "not imported")
                .help("without --strict this is a warning and the command is left out")
        } else {
            Diag::warning(UNMAPPED, msg).label(span, "not imported")
        };
        self.d.push(d);
    }

    fn error(&mut self, code: &'static str, msg: impl Into<String>, span: SourceSpan, help: &str) {
        self.d
            .push(Diag::error(code, msg).label(span, "here").help(help));
    }

    fn line(&mut self, line: &Line) {
        self.words(&line.words);
    }

    fn words(&mut self, mut words: &[Word]) {
        let mut pre = self.preprocess;
        // `.columns X`, `.filter X`, `.annotate false`...: output modifiers
        // in front of a command.
        while let Some(w) = words.first() {
            if !w.text.starts_with('.') {
                break;
            }
            const DOT: &[&str] = &[
                ".alias",
                ".annotate",
                ".columns",
                ".compress",
                ".csv",
                ".env",
                ".filter",
                ".headers",
                ".json",
                ".preprocess",
                ".record",
                ".sort",
                ".unalias",
            ];
            match pick(&w.text, DOT) {
                Pick::One(".columns" | ".filter") => words = words.get(2..).unwrap_or(&[]),
                Pick::One(
                    ".annotate" | ".compress" | ".headers" | ".sort" | ".preprocess" | ".record"
                    | ".csv" | ".json",
                ) => {
                    let flag = words
                        .get(1)
                        .and_then(|v| match pick(&v.text, &["true", "false"]) {
                            Pick::One(b) => Some(b == "true"),
                            _ => None,
                        });
                    let skip = if flag.is_some() { 2 } else { 1 };
                    if w.text.starts_with(".p")
                        && let Some(f) = flag
                    {
                        if words.len() == skip {
                            self.preprocess = f;
                        }
                        pre = f;
                    }
                    words = words.get(skip..).unwrap_or(&[]);
                }
                _ => {
                    self.unmapped(words, 1, None);
                    return;
                }
            }
        }
        if pre {
            self.warn_preprocessed(words);
        }
        self.command(words);
    }

    /// minimega expands `$VAR` from its own environment and fetches
    /// `file:`/`http:` URLs before a command runs; the import keeps the text
    /// (and `$images` as the experiment's images folder).
    fn warn_preprocessed(&mut self, words: &[Word]) {
        let Some(first) = words.first() else { return };
        if !matches!(
            pick(&first.text, TOP),
            Pick::One("vm" | "cc" | "disk" | "tap" | "namespace")
        ) {
            return;
        }
        for w in &words[1..] {
            let (names, url) = lex::preprocessed(&w.text);
            let other: Vec<&String> = names.iter().filter(|n| *n != "images").collect();
            if url || !other.is_empty() {
                let what = if url {
                    "fetches this URL".to_string()
                } else {
                    format!("expands ${} from its environment", other[0])
                };
                self.d.push(
                    Diag::warning(
                        "minimega::preprocessed",
                        format!("minimega {what}; megaplan keeps '{}' as written", w.text),
                    )
                    .label(sp(w), "as written")
                    .help("write the value out, or put `.preprocess false` in front of the command if minimega should not expand it either"),
                );
                return;
            }
        }
    }

    fn command(&mut self, words: &[Word]) {
        let Some(first) = words.first() else { return };
        let top = match pick(&first.text, TOP) {
            Pick::One(t) => t,
            Pick::Ambiguous => {
                self.error(
                    SYNTAX,
                    format!("`{}` is ambiguous in minimega", first.text),
                    sp(first),
                    "write the command in full",
                );
                return;
            }
            Pick::None => {
                self.error(
                    SYNTAX,
                    format!("`{}` is not a minimega command", first.text),
                    sp(first),
                    "minimega would stop reading the script here; see `help` in minimega",
                );
                return;
            }
        };
        let rest = &words[1..];
        match top {
            "vm" => self.vm(words),
            "clear" => self.clear(words),
            "cc" => self.cc(words),
            "tap" => self.tap(words),
            "disk" => self.disk(words),
            "namespace" => {
                let Some(name) = rest.first() else { return };
                match &self.namespace {
                    None => self.namespace = Some((name.text.clone(), sp(name))),
                    Some((n, _)) if *n == name.text => {}
                    Some(_) => self.unmapped(words, 2, Some("one experiment has one namespace")),
                }
                if rest.len() > 1 {
                    self.words(&rest[1..]);
                }
            }
            "help" | "version" | "history" | "status" | "host" | "echo" | "check" => {}
            "quit" => self.done = true,
            "vlans" | "bridge" | "ns" | "capture" | "router" | "qos" | "dnsmasq" | "vnc"
            | "mesh" | "optimize" | "log" | "deploy"
                if rest.is_empty() => {}
            _ => {
                let n = if rest.is_empty() { 1 } else { 2 };
                self.unmapped(words, n, None)
            }
        }
    }

    fn vm(&mut self, words: &[Word]) {
        let Some(sub) = words.get(1) else {
            self.unmapped(words, 1, None);
            return;
        };
        match pick(&sub.text, VM_SUBS) {
            Pick::One("config") => self.vm_config(words),
            Pick::One("launch") => self.launch(words),
            // Queries, and starting: no declarative meaning (apply starts every VM).
            Pick::One("info" | "top" | "screenshot" | "start") => {}
            Pick::One(_) => self.unmapped(words, 2, None),
            Pick::Ambiguous | Pick::None => self.error(
                SYNTAX,
                format!("`vm {}` is not a minimega command", sub.text),
                sp(sub),
                "see `help vm` in minimega",
            ),
        }
    }

    fn vm_config(&mut self, words: &[Word]) {
        let Some(field_w) = words.get(2) else { return };
        let field = match pick(&field_w.text, VM_CONFIG) {
            Pick::One(f) => f,
            _ => {
                self.error(
                    SYNTAX,
                    format!("`vm config {}` is not a minimega setting", field_w.text),
                    sp(field_w),
                    "see `help vm config` in minimega",
                );
                return;
            }
        };
        let values = &words[3..];
        if values.is_empty() && !matches!(field, "save" | "restore" | "clone") {
            return; // a query: prints the setting
        }
        let one = |im: &mut Self| -> Option<Word> {
            if values.len() > 1 {
                im.error(
                    SYNTAX,
                    format!("`vm config {field}` takes one value"),
                    join_span(&values[1], values.last().unwrap_or(&values[1])),
                    "quote a value that holds spaces",
                );
                return None;
            }
            values.first().cloned()
        };
        match field {
            "kernel" | "initrd" | "uuid" => {
                let Some(v) = one(self) else { return };
                self.note_images(&v.text);
                let slot = match field {
                    "kernel" => &mut self.config.kernel,
                    "initrd" => &mut self.config.initrd,
                    _ => &mut self.config.uuid,
                };
                *slot = Some(Sp::new(v.text.clone(), sp(&v)));
            }
            "append" => {
                let s: Vec<&str> = values.iter().map(|w| w.text.as_str()).collect();
                self.config.append = Some(Sp::new(
                    s.join(" "),
                    join_span(&values[0], values.last().unwrap_or(&values[0])),
                ));
            }
            "memory" => {
                let Some(v) = one(self) else { return };
                if v.text.is_empty() || !v.text.chars().all(|c| c.is_ascii_digit()) {
                    self.error(
                        BAD_VALUE,
                        format!("memory '{}' is not a number of megabytes", v.text),
                        sp(&v),
                        "minimega counts memory in MB: `vm config memory 2048`",
                    );
                    return;
                }
                self.config.memory = Some(Sp::new(format!("{}M", v.text), sp(&v)));
            }
            "vcpus" => {
                let Some(v) = one(self) else { return };
                match v.text.parse::<i64>() {
                    Ok(n) => self.config.vcpus = Some(Sp::new(n, sp(&v))),
                    Err(_) => self.error(
                        BAD_VALUE,
                        format!("vcpus '{}' is not a number", v.text),
                        sp(&v),
                        "write a whole number: `vm config vcpus 2`",
                    ),
                }
            }
            "snapshot" => {
                let Some(v) = one(self) else { return };
                match pick(&v.text, &["true", "false"]) {
                    Pick::One(b) => self.config.snapshot = Some(Sp::new(b == "true", sp(&v))),
                    _ => self.error(
                        BAD_VALUE,
                        format!("snapshot '{}' is not true or false", v.text),
                        sp(&v),
                        "write `vm config snapshot true` or `false`",
                    ),
                }
            }
            "disks" => {
                let mut disks = Vec::new();
                for w in values {
                    let mut parts = w.text.split(',');
                    let path = parts.next().unwrap_or("").to_string();
                    // `,virtio` is how megaplan attaches every disk (export writes it).
                    let opts: Vec<&str> = parts.collect();
                    if !opts.is_empty() && opts != ["virtio"] {
                        self.unmapped(
                            std::slice::from_ref(w),
                            1,
                            Some("the disk's interface and cache options are left out"),
                        );
                    }
                    self.note_images(&path);
                    disks.push(Sp::new(path, sp(w)));
                }
                self.config.disks = disks;
            }
            "networks" => {
                let mut nets = Vec::new();
                for w in values {
                    match parse_netspec(&w.text, sp(w)) {
                        Ok((spec, bridge)) => {
                            if let Some(b) = bridge
                                && b != "mega_bridge"
                            {
                                self.unmapped(std::slice::from_ref(w), 1, Some("megaplan gives every network its own bridge; the bridge name is dropped"));
                            }
                            nets.push(spec);
                        }
                        Err(e) => {
                            self.error(
                                BAD_VALUE,
                                format!("'{}' is not a minimega netspec: {e}", w.text),
                                sp(w),
                                "write VLAN, BRIDGE,VLAN, VLAN,MAC or VLAN,MAC,DRIVER",
                            );
                            return;
                        }
                    }
                }
                self.config.nets = nets;
            }
            "tags" => {
                let key = values[0].text.clone();
                let Some(value) = values.get(1) else { return };
                if values.len() > 2 {
                    self.error(
                        SYNTAX,
                        "`vm config tags` takes a key and a value",
                        join_span(&values[2], values.last().unwrap_or(&values[2])),
                        "quote a value that holds spaces",
                    );
                    return;
                }
                self.config
                    .tags
                    .insert(key, Sp::new(value.text.clone(), sp(value)));
            }
            "qemu-append" => {
                self.config.qemu_append = values
                    .iter()
                    .map(|w| Sp::new(w.text.clone(), sp(w)))
                    .collect();
            }
            "cpu" => {
                let Some(v) = one(self) else { return };
                if v.text == "qemu64" {
                    self.config.tcg = true;
                } else if v.text == "host" {
                    self.config.tcg = false;
                } else {
                    self.unmapped(words, 4, Some("megaplan picks the CPU model from `accel`"));
                }
            }
            "qemu" => {
                let Some(v) = one(self) else { return };
                // The default binary, or QEMU by an absolute path (as export
                // writes it for TCG: minimega wants one).
                let named = |b: &str| {
                    b == v.text || (v.text.starts_with('/') && v.text.ends_with(&format!("/{b}")))
                };
                if !["kvm", "qemu-system-x86_64", "qemu-kvm"]
                    .into_iter()
                    .any(named)
                {
                    self.unmapped(words, 4, Some("megaplan runs qemu-system-x86_64"));
                }
            }
            "save" => {
                let Some(v) = values.first() else { return };
                self.saved.insert(v.text.clone(), self.config.clone());
            }
            "restore" => match values.first() {
                None => self.config = Config::default(),
                Some(v) => match self.saved.get(&v.text) {
                    Some(c) => self.config = c.clone(),
                    None => self.error(
                        BAD_VALUE,
                        format!("no saved config '{}'", v.text),
                        sp(v),
                        "save it first with `vm config save NAME`",
                    ),
                },
            },
            "schedule" | "colocate" => {
                let Some(v) = one(self) else { return };
                let slot = if field == "schedule" {
                    &mut self.config.schedule
                } else {
                    &mut self.config.colocate
                };
                *slot = Some(Sp::new(v.text.clone(), sp(&v)));
            }
            "coschedule" => {
                self.unmapped(words, 3, Some("megaplan places a VM by naming its host"))
            }
            _ => self.unmapped(words, 3, None),
        }
    }

    fn note_images(&mut self, s: &str) {
        if s.contains("$images") || s.contains("${images}") {
            self.uses_images = true;
        }
    }

    fn launch(&mut self, words: &[Word]) {
        // `vm launch` alone starts queued launches.
        let Some(kind) = words.get(2) else { return };
        match pick(&kind.text, &["kvm", "container"]) {
            Pick::One("kvm") => {}
            Pick::One(_) => {
                self.unmapped(words, 3, Some("megaplan runs QEMU VMs only"));
                return;
            }
            _ => {
                self.error(
                    SYNTAX,
                    format!("`{}` is not a VM type", kind.text),
                    sp(kind),
                    "write `vm launch kvm NAME`",
                );
                return;
            }
        }
        let Some(target) = words.get(3) else {
            self.error(
                SYNTAX,
                "`vm launch kvm` needs a name or a count",
                sp(kind),
                "write `vm launch kvm NAME`",
            );
            return;
        };
        let config = match words.get(4) {
            None => self.config.clone(),
            Some(c) => match self.saved.get(&c.text) {
                Some(c) => c.clone(),
                None => {
                    self.error(
                        BAD_VALUE,
                        format!("no saved config '{}'", c.text),
                        sp(c),
                        "save it first with `vm config save NAME`",
                    );
                    return;
                }
            },
        };
        if words.len() > 5 {
            self.error(
                SYNTAX,
                "`vm launch` takes a type, a name and a saved config",
                sp(&words[5]),
                "launch several VMs with a list or a range: `vm launch kvm a,b` or `web[1-3]`",
            );
            return;
        }
        // (name, the range it came from)
        let mut names: Vec<(String, Option<String>)> = Vec::new();
        if let Ok(n) = target.text.parse::<u64>() {
            if n == 0 || n > 4096 {
                self.error(
                    BAD_VALUE,
                    format!("cannot launch {n} VMs"),
                    sp(target),
                    "launch between 1 and 4096 VMs at once",
                );
                return;
            }
            for _ in 0..n {
                names.push((format!("vm-{}", self.vm_ids + names.len()), None));
            }
        } else {
            match split_list(&target.text) {
                Err(e) => {
                    self.error(
                        BAD_VALUE,
                        format!("'{}' is not a list of VM names: {e}", target.text),
                        sp(target),
                        "write names separated by commas, or a range such as web[1-3]",
                    );
                    return;
                }
                Ok(parts) => {
                    for p in parts {
                        match expand_range(&p) {
                            Ok(list) => {
                                let range = (p.contains('[') && list.len() > 1).then(|| p.clone());
                                names.extend(list.into_iter().map(|n| (n, range.clone())));
                            }
                            Err(e) => {
                                self.error(
                                    BAD_VALUE,
                                    format!("'{p}' is not a VM name range: {e}"),
                                    sp(target),
                                    "write a range such as web[1-3] or web[01-10]",
                                );
                                return;
                            }
                        }
                    }
                }
            }
        }
        if names.len() > 1 && config.uuid.is_some() {
            self.error(
                BAD_VALUE,
                "several VMs launched with one `vm config uuid`",
                sp(target),
                "minimega refuses a fixed UUID for more than one VM; launch them one by one",
            );
            return;
        }
        for (n, _) in &names {
            if n == "all" || n.parse::<i64>().is_ok() {
                self.error(
                    BAD_VALUE,
                    format!("'{n}' cannot name a VM in minimega"),
                    sp(target),
                    "VM names cannot be integers or reserved words such as 'all'",
                );
                return;
            }
            if self.vm_by_name.contains_key(n) {
                self.error(
                    BAD_VALUE,
                    format!("a VM named '{n}' was launched already"),
                    sp(target),
                    "give every VM its own name",
                );
                return;
            }
        }
        if self.vms.len() + names.len() > MAX_VMS {
            self.error(
                TOO_BIG,
                format!("the script launches more than {MAX_VMS} VMs"),
                sp(target),
                "split the experiment",
            );
            self.done = true;
            return;
        }
        if config.nets.iter().any(|n| n.driver.is_none()) {
            self.nic_without_driver = true;
        }
        let launch = self.launches;
        self.launches += 1;
        for (mm_name, range) in names {
            let name = self.safe_name(&mm_name, "VM");
            let idx = self.vms.len();
            for nic in 0..config.nets.len() {
                self.taps.push((idx, nic));
            }
            self.vm_ids += 1;
            self.vm_by_name.insert(mm_name.clone(), idx);
            self.vms.push(Launched {
                mm_name,
                name,
                launch,
                range,
                config: config.clone(),
                span: sp(target),
            });
        }
    }

    /// A name megaplan accepts: as written when it can be, else with the
    /// offending characters replaced (and a note saying so).
    fn safe_name(&mut self, name: &str, what: &str) -> String {
        if name_problem(name).is_none() {
            return name.to_string();
        }
        let mut s: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        while s.contains("..") {
            s = s.replace("..", "_");
        }
        let s = s.trim_start_matches(['-', '.']).to_string();
        let mut s: String = s.chars().take(64).collect();
        if s.is_empty() {
            s = "x".into();
        }
        self.renamed.push(format!(
            "minimega {what} '{}' is '{s}' here",
            name.escape_default()
        ));
        s
    }

    fn clear(&mut self, words: &[Word]) {
        let w = |i: usize| words.get(i).map(|w| w.text.as_str());
        // minimega's `clear` subcommands (3.0.1), for prefix matching.
        const CLEAR: &[&str] = &[
            "all",
            "background-status",
            "capture",
            "cc",
            "deploy",
            "history",
            "log",
            "namespace",
            "optimize",
            "pipe",
            "plumb",
            "qos",
            "router",
            "tap",
            "vlans",
            "vm",
            "vnc",
        ];
        let sub = w(1).map(|s| pick(s, CLEAR));
        match sub {
            Some(Pick::One("vm"))
                if w(2)
                    .is_some_and(|s| pick(s, &["config", "tag", "net"]) == Pick::One("config")) =>
            {
                match w(3) {
                    None => self.config = Config::default(),
                    Some(f) => match pick(f, VM_CONFIG) {
                        Pick::One("tags") if words.len() > 4 => {
                            self.config.tags.remove(&words[4].text);
                        }
                        Pick::One(f) => self.config.clear(f),
                        _ => self.error(
                            SYNTAX,
                            format!("`clear vm config {f}` is not a minimega command"),
                            sp(&words[3]),
                            "see `help clear vm config` in minimega",
                        ),
                    },
                }
            }
            Some(Pick::One("cc"))
                if w(2).is_some_and(|s| {
                    pick(s, &["commands", "filter", "prefix", "responses"]) == Pick::One("filter")
                }) =>
            {
                self.filter = Filter::All;
            }
            Some(Pick::One("cc"))
                if w(2).is_some_and(|s| {
                    pick(s, &["commands", "filter", "prefix", "responses"])
                        == Pick::One("responses")
                }) => {}
            Some(Pick::Ambiguous | Pick::None) => self.error(
                SYNTAX,
                format!("`clear {}` is not a minimega command", words[1].text),
                sp(&words[1]),
                "write the command in full; see `help clear` in minimega",
            ),
            _ => self.unmapped(words, 3.min(words.len()), None),
        }
    }

    fn cc(&mut self, words: &[Word]) {
        let Some(sub) = words.get(1) else { return };
        let sub_name = match pick(&sub.text, CC_SUBS) {
            Pick::One(s) => s,
            _ => {
                self.error(
                    SYNTAX,
                    format!("`cc {}` is not a minimega command", sub.text),
                    sp(sub),
                    "see `help cc` in minimega",
                );
                return;
            }
        };
        let args = &words[2..];
        match sub_name {
            "filter" => {
                if args.is_empty() {
                    return;
                }
                self.filter = self.parse_filter(words, args);
            }
            "clients" | "commands" | "responses" | "exitcode" => {}
            "exec" | "exec-once" | "background" | "background-once" => {
                if args.is_empty() {
                    self.error(
                        SYNTAX,
                        format!("`cc {sub_name}` needs a command"),
                        sp(sub),
                        "write `cc exec COMMAND`",
                    );
                    return;
                }
                if args[0].text.starts_with("stdin=")
                    || args[0].text.starts_with("stdout=")
                    || args[0].text.starts_with("stderr=")
                {
                    self.unmapped(words, 3, Some("plumbing a command's stdio"));
                    return;
                }
                let argv: Vec<String> = args.iter().map(|w| w.text.clone()).collect();
                let cmd = command_of(argv, join_span(&args[0], args.last().unwrap_or(&args[0])));
                let action = if sub_name.starts_with("exec") {
                    CcAction::Exec(cmd)
                } else {
                    CcAction::Background(cmd)
                };
                self.push_cc(
                    action,
                    join_span(&words[0], words.last().unwrap_or(&words[0])),
                );
            }
            "send" | "recv" => {
                if args.is_empty() {
                    self.error(
                        SYNTAX,
                        format!("`cc {sub_name}` needs a file"),
                        sp(sub),
                        "write `cc send FILE`",
                    );
                    return;
                }
                for a in args {
                    self.note_images(&a.text);
                    let action = if sub_name == "send" {
                        let rel = a.text.trim_start_matches('/');
                        CcAction::Send {
                            src: Sp::new(a.text.clone(), sp(a)),
                            to: Sp::new(format!("{MINICCC_FILES}/{rel}"), sp(a)),
                        }
                    } else {
                        CcAction::Recv {
                            src: Sp::new(a.text.clone(), sp(a)),
                            to: Sp::new(RECV_DIR.to_string(), sp(a)),
                            max_size: None,
                        }
                    };
                    self.push_cc(action, join_span(&words[0], a));
                }
            }
            _ => self.unmapped(words, 2, None),
        }
    }

    fn push_cc(&mut self, action: CcAction, span: SourceSpan) {
        if self.filter == Filter::Unmapped {
            // Warned about at the filter.
            return;
        }
        self.cc.push(CcCmd {
            filter: self.filter.clone(),
            action,
            span,
        });
    }

    fn parse_filter(&mut self, words: &[Word], args: &[Word]) -> Filter {
        let mut uuid = None;
        let mut name = None;
        let mut vlan = None;
        let mut tags = Vec::new();
        for a in args {
            let Some((k, v)) = a.text.split_once('=') else {
                self.error(
                    BAD_VALUE,
                    format!("malformed id=value pair: {}", a.text),
                    sp(a),
                    "write `cc filter uuid=UUID`, `name=NAME` or `KEY=VALUE` for a tag",
                );
                return Filter::Unmapped;
            };
            match k.to_ascii_lowercase().as_str() {
                "uuid" => uuid = Some(v.to_ascii_lowercase()),
                "name" => name = Some(v.to_string()),
                "vlan" => vlan = Some(v.to_string()),
                "hostname" | "arch" | "os" | "ip" | "mac" | "state" | "host" | "id" => {
                    self.unmapped(words, words.len(), Some(&format!("megaplan cannot select VMs by {k}; the cc commands under this filter are left out")));
                    return Filter::Unmapped;
                }
                "tag" => {
                    let (tk, tv) = v.split_once(['=', ':']).unwrap_or((v, ""));
                    tags.push((tk.to_string(), tv.to_string()));
                }
                _ => tags.push((k.to_string(), v.to_string())),
            }
        }
        match (uuid, name, vlan, tags.is_empty()) {
            (Some(u), None, None, true) => Filter::Uuid(u),
            (None, Some(n), None, true) => Filter::Name(n),
            (None, None, Some(v), true) => Filter::Vlan(v),
            (None, None, None, false) => Filter::Tags(tags),
            (None, None, None, true) => Filter::All,
            _ => {
                self.unmapped(
                    words,
                    words.len(),
                    Some("combined filters; the cc commands under this filter are left out"),
                );
                Filter::Unmapped
            }
        }
    }

    fn vm_index(&self, name: &str) -> Option<usize> {
        self.vm_by_name.get(name).copied()
    }

    fn tap(&mut self, words: &[Word]) {
        let Some(sub) = words.get(1) else { return };
        match pick(&sub.text, &["create", "delete", "mirror"]) {
            Pick::One("mirror") => {}
            Pick::One(_) => {
                self.unmapped(words, 2, Some("megaplan makes the taps of VM nics only"));
                return;
            }
            _ => {
                self.error(
                    SYNTAX,
                    format!("`tap {}` is not a minimega command", sub.text),
                    sp(sub),
                    "see `help tap` in minimega",
                );
                return;
            }
        }
        let args = &words[2..];
        let resolved = match args.len() {
            4 => {
                let nic = |w: &Word| w.text.parse::<usize>().ok();
                match (
                    self.vm_index(&args[0].text),
                    nic(&args[1]),
                    self.vm_index(&args[2].text),
                    nic(&args[3]),
                ) {
                    (Some(s), Some(sn), Some(d), Some(dn)) => Some((s, sn, d, dn, &args[0])),
                    _ => {
                        self.error(
                            BAD_VALUE,
                            "`tap mirror` names a VM or nic this script did not launch",
                            join_span(&args[0], &args[3]),
                            "write `tap mirror VM NIC VM2 NIC2` after launching both VMs",
                        );
                        return;
                    }
                }
            }
            2 | 3 => {
                let tap = |im: &Self, w: &Word| {
                    w.text
                        .strip_prefix("mega_tap")
                        .and_then(|n| n.parse::<usize>().ok())
                        .and_then(|n| im.taps.get(n).copied())
                };
                if args.len() == 3 {
                    let b = args[2].clone();
                    self.unmapped(std::slice::from_ref(&b), 1, Some("the mirror's bridge"));
                }
                match (tap(self, &args[0]), tap(self, &args[1])) {
                    (Some((s, sn)), Some((d, dn))) => {
                        self.used_tap_names = true;
                        Some((s, sn, d, dn, &args[0]))
                    }
                    _ => {
                        self.error(
                            BAD_VALUE,
                            "`tap mirror` names a tap this script did not create",
                            join_span(&args[0], &args[1]),
                            "on a fresh minimega, taps are mega_tap0, mega_tap1… in launch order; or write `tap mirror VM NIC VM2 NIC2`",
                        );
                        return;
                    }
                }
            }
            _ => {
                self.error(
                    SYNTAX,
                    "`tap mirror` takes two taps or two VM nics",
                    sp(sub),
                    "write `tap mirror VM NIC VM2 NIC2`",
                );
                return;
            }
        };
        if let Some((s, sn, d, dn, at)) = resolved {
            let at = sp(at);
            if sn >= self.vms[s].config.nets.len() || dn >= self.vms[d].config.nets.len() {
                self.error(
                    BAD_VALUE,
                    "`tap mirror` names a nic the VM does not have",
                    at,
                    "nics count from 0 in the order of `vm config net`",
                );
                return;
            }
            self.mirrors.push(PendingMirror {
                span: join_span(&words[0], words.last().unwrap_or(&words[0])),
                src: s,
                src_nic: sn,
                dst: d,
                dst_nic: dn,
            });
        }
    }

    fn disk(&mut self, words: &[Word]) {
        let Some(sub) = words.get(1) else { return };
        let sub_name = match pick(
            &sub.text,
            &[
                "commit",
                "create",
                "info",
                "inject",
                "rebase",
                "resize",
                "set-backing",
                "snapshot",
            ],
        ) {
            Pick::One(s) => s,
            _ => {
                self.error(
                    SYNTAX,
                    format!("`disk {}` is not a minimega command", sub.text),
                    sp(sub),
                    "see `help disk` in minimega",
                );
                return;
            }
        };
        let args = &words[2..];
        match sub_name {
            "info" => {}
            "create" => {
                // 3.0.1: `disk create qcow2 NAME SIZE`; older scripts: `disk create NAME SIZE`.
                let (format, file, size) = match args {
                    [f, n, s] => match pick(&f.text, &["qcow2", "raw"]) {
                        Pick::One(f) => (f.to_string(), n, s),
                        _ => {
                            self.error(
                                BAD_VALUE,
                                format!("disk format '{}' is not qcow2 or raw", f.text),
                                sp(f),
                                "write `disk create qcow2 NAME SIZE`",
                            );
                            return;
                        }
                    },
                    [n, s] => {
                        let f = if n.text.ends_with(".raw") || n.text.ends_with(".img") {
                            "raw"
                        } else {
                            "qcow2"
                        };
                        (f.to_string(), n, s)
                    }
                    _ => {
                        self.error(
                            SYNTAX,
                            "`disk create` takes a format, a file name and a size",
                            sp(sub),
                            "write `disk create qcow2 NAME SIZE`",
                        );
                        return;
                    }
                };
                if self.disk_files.contains_key(&file.text) {
                    self.error(
                        BAD_VALUE,
                        format!("disk '{}' was created already", file.text),
                        sp(file),
                        "create every disk once",
                    );
                    return;
                }
                let name = self.disk_name(&file.text);
                self.disk_files.insert(file.text.clone(), self.disks.len());
                let line = join_span(&words[0], words.last().unwrap_or(&words[0]));
                self.disks.push(Disk {
                    name: Sp::new(name, sp(file)),
                    size: Some(Sp::new(size.text.clone(), sp(size))),
                    format: Some(Sp::new(format, line)),
                    filesystem: None,
                    keep: None,
                    from: None,
                    inject: Vec::new(),
                    span: line,
                });
            }
            "snapshot" => {
                let [base, dst] = args else {
                    self.unmapped(
                        words,
                        2,
                        Some("a snapshot without a destination gets a random name"),
                    );
                    return;
                };
                if self.disk_files.contains_key(&dst.text) {
                    self.error(
                        BAD_VALUE,
                        format!("disk '{}' was created already", dst.text),
                        sp(dst),
                        "create every disk once",
                    );
                    return;
                }
                self.note_images(&base.text);
                let name = self.disk_name(&dst.text);
                self.disk_files.insert(dst.text.clone(), self.disks.len());
                let line = join_span(&words[0], words.last().unwrap_or(&words[0]));
                self.disks.push(Disk {
                    name: Sp::new(name, sp(dst)),
                    size: None,
                    format: Some(Sp::new("qcow2".into(), line)),
                    filesystem: None,
                    keep: None,
                    from: Some(Sp::new(base.text.clone(), sp(base))),
                    inject: Vec::new(),
                    span: line,
                });
            }
            "inject" => {
                let Some(img) = args.first() else {
                    self.error(
                        SYNTAX,
                        "`disk inject` needs an image",
                        sp(sub),
                        "write `disk inject IMAGE files SRC:DST`",
                    );
                    return;
                };
                let (file, part) = match img.text.rsplit_once(':') {
                    Some((f, p)) if p == "none" || p.parse::<u32>().is_ok() => (f, Some(p)),
                    _ => (img.text.as_str(), None),
                };
                let Some(&di) = self.disk_files.get(file) else {
                    self.unmapped(
                        words,
                        3,
                        Some("megaplan injects files only into a disk it creates"),
                    );
                    return;
                };
                if part.is_some_and(|p| p != "1" && p != "none") {
                    self.unmapped(words, 3, Some("megaplan's disks have one filesystem"));
                    return;
                }
                if args.get(1).map(|w| w.text.as_str()) != Some("files") || args.len() < 3 {
                    self.unmapped(
                        words,
                        3,
                        Some("only `disk inject IMAGE files SRC:DST…` maps"),
                    );
                    return;
                }
                if self.disks[di].from.is_some() {
                    self.unmapped(
                        words,
                        3,
                        Some("megaplan injects files only into a blank disk"),
                    );
                    return;
                }
                let mut inject = Vec::new();
                for w in &args[2..] {
                    let Some((s, d)) = w.text.split_once(':') else {
                        self.error(
                            BAD_VALUE,
                            format!("'{}' is not SRC:DST", w.text),
                            sp(w),
                            "write `disk inject IMAGE files SRC:DST`",
                        );
                        return;
                    };
                    self.note_images(s);
                    inject.push(Inject {
                        src: Sp::new(s.to_string(), sp(w)),
                        dst: Sp::new(d.to_string(), sp(w)),
                        span: sp(w),
                    });
                }
                let line = join_span(&words[0], words.last().unwrap_or(&words[0]));
                let disk = &mut self.disks[di];
                disk.filesystem
                    .get_or_insert_with(|| Sp::new("ext4".into(), line));
                disk.inject.extend(inject);
            }
            _ => self.unmapped(words, 2, None),
        }
    }

    fn disk_name(&mut self, file: &str) -> String {
        let base = file.rsplit('/').next().unwrap_or(file);
        let stem = base
            .strip_suffix(".qcow2")
            .or_else(|| base.strip_suffix(".qc2"))
            .or_else(|| base.strip_suffix(".raw"))
            .or_else(|| base.strip_suffix(".img"))
            .unwrap_or(base);
        let mut name = self.safe_name(stem, "disk");
        while self.disks.iter().any(|d| d.name.value == name) {
            name.push('_');
        }
        name
    }

    fn network_for(&mut self, vlan: &str, span: SourceSpan) -> String {
        if let Some((_, n, _)) = self.networks.iter().find(|(v, _, _)| v == vlan) {
            return n.clone();
        }
        let mut name = if !vlan.is_empty() && vlan.chars().all(|c| c.is_ascii_digit()) {
            format!("vlan{vlan}")
        } else {
            self.safe_name(vlan, "VLAN")
        };
        while self.networks.iter().any(|(_, n, _)| *n == name) {
            name.push('_');
        }
        self.networks.push((vlan.to_string(), name.clone(), span));
        name
    }

    fn matches(&self, f: &Filter, vm: &Launched) -> bool {
        match f {
            Filter::All => true,
            Filter::Uuid(u) => {
                vm.config
                    .uuid
                    .as_ref()
                    .map(|x| x.value.to_ascii_lowercase())
                    == Some(u.clone())
            }
            Filter::Name(n) => vm.mm_name == *n,
            Filter::Vlan(a) => vm.config.nets.iter().any(|n| n.vlan == *a),
            Filter::Tags(t) => t.iter().all(|(k, v)| {
                vm.config
                    .tags
                    .get(k)
                    .is_some_and(|have| v.is_empty() || have.value == *v)
            }),
            Filter::Unmapped => false,
        }
    }

    /// Each VM's `host`: its `schedule`, or through `colocate` the host of
    /// the VM it names (followed along a chain); a colocate that leads to
    /// no host is a located warning.
    fn hosts(&mut self) -> Vec<Option<Sp<String>>> {
        let groups = self.mirror_groups();
        let mut out = Vec::with_capacity(self.vms.len());
        for i in 0..self.vms.len() {
            let c = &self.vms[i].config;
            if let Some(h) = &c.schedule {
                out.push(Some(h.clone()));
                continue;
            }
            let Some(first) = c.colocate.clone() else {
                out.push(None);
                continue;
            };
            let mut at = first.clone();
            let mut seen = vec![i];
            let found = loop {
                let Some(j) = self.vm_index(&at.value) else {
                    break Err(format!("no VM '{}' in this script", at.value));
                };
                if seen.contains(&j) {
                    break Err("the colocations form a loop".to_string());
                }
                // Bounded work whatever the script: each VM walks at most this far.
                if seen.len() > 64 {
                    break Err("a chain of more than 64 colocations".to_string());
                }
                seen.push(j);
                let t = &self.vms[j].config;
                match (&t.schedule, &t.colocate) {
                    (Some(h), _) => break Ok(Sp::new(h.value.clone(), first.span)),
                    (None, Some(next)) => at = next.clone(),
                    (None, None) => {
                        // Mirrors joining them keep them together anyway
                        // (megaplan colocates mirrored VMs by itself).
                        if groups[i] == groups[j] {
                            break Err(String::new());
                        }
                        break Err(format!("VM '{}' has no `vm config schedule`", at.value));
                    }
                }
            };
            match found {
                Ok(h) => out.push(Some(h)),
                Err(why) if why.is_empty() => out.push(None),
                Err(why) => {
                    let d = Diag::warning(
                        UNMAPPED,
                        format!(
                            "`vm config colocate {}` has no megaplan equivalent here ({why}); skipped",
                            first.value
                        ),
                    )
                    .label(first.span, "no host to copy")
                    .help("megaplan places a VM with `host`: give the VM it names a `vm config schedule NODE`");
                    self.d.push(if self.opts.strict {
                        Diag {
                            severity: miette::Severity::Error,
                            ..d
                        }
                    } else {
                        d
                    });
                    out.push(None);
                }
            }
        }
        out
    }

    /// Each VM's group of VMs joined by mirrors (union-find, once).
    fn mirror_groups(&self) -> Vec<usize> {
        fn root(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        let mut p: Vec<usize> = (0..self.vms.len()).collect();
        for m in &self.mirrors {
            let (a, b) = (root(&mut p, m.src), root(&mut p, m.dst));
            p[a] = b;
        }
        (0..p.len()).map(|x| root(&mut p, x)).collect()
    }

    fn finish(&mut self, src: &SourceFile) -> Document {
        let hosts = self.hosts();
        // Networks in order of first use; then each VM.
        let mut vms: Vec<Vm> = Vec::new();
        for (i, host) in hosts.into_iter().enumerate() {
            let c = self.vms[i].config.clone();
            let mut nics = Vec::new();
            for n in &c.nets {
                let network = self.network_for(&n.vlan, n.span);
                nics.push(Nic {
                    network: Sp::new(network, n.span),
                    mac: n.mac.clone().map(|m| Sp::new(m, n.span)),
                    driver: n.driver.clone().map(|d| Sp::new(d, n.span)),
                    span: n.span,
                });
            }
            let disks = c
                .disks
                .iter()
                .map(|p| VmDisk {
                    name: Sp::new(
                        match self.disk_files.get(&p.value) {
                            Some(&di) => self.disks[di].name.value.clone(),
                            None => p.value.clone(),
                        },
                        p.span,
                    ),
                    mount: None,
                    span: p.span,
                })
                .collect();
            let at = self.vms[i].span;
            vms.push(Vm {
                boot_timeout: None,
                host,
                name: Sp::new(self.vms[i].name.clone(), at),
                uuid: c.uuid.clone(),
                kernel: c.kernel.clone(),
                initrd: c.initrd.clone(),
                append: c.append.clone(),
                memory: c.memory.clone(),
                vcpus: c.vcpus.clone(),
                snapshot: c.snapshot.clone(),
                disks,
                nics,
                mirrors: Vec::new(),
                tags: c
                    .tags
                    .iter()
                    .filter(|(k, _)| k.as_str() != MARKER_TAG)
                    .map(|(k, v)| Tag {
                        key: Sp::new(k.clone(), v.span),
                        value: v.clone(),
                    })
                    .collect(),
                after: Vec::new(),
                qemu_args: c.qemu_append.clone(),
                cc: Vec::new(),
                span: at,
            });
        }
        for m in &self.mirrors {
            vms[m.dst].mirrors.push(Mirror {
                source: MirrorSource::Vm(Sp::new(self.vms[m.src].name.clone(), m.span)),
                nic: (m.src_nic != 0).then(|| Sp::new(m.src_nic as i64, m.span)),
                into: (m.dst_nic != 0).then(|| Sp::new(m.dst_nic as i64, m.span)),
                direction: None,
                span: m.span,
            });
        }
        let cc = std::mem::take(&mut self.cc);
        let mut steps = 0usize;
        // Each command is matched against every VM: bound that work too.
        let work = cc.len().saturating_mul(self.vms.len());
        for c in &cc {
            if steps > MAX_STEPS || work > 50 * MAX_STEPS {
                self.d.push(
                    Diag::error(
                        TOO_BIG,
                        format!("the script makes more than {MAX_STEPS} cc steps"),
                    )
                    .label(c.span, "from here on")
                    .help("split the experiment"),
                );
                break;
            }
            let mut hit = false;
            for (i, v) in self.vms.iter().enumerate() {
                if self.matches(&c.filter, v) {
                    hit = true;
                    steps += 1;
                    vms[i].cc.push(CcStep {
                        action: c.action.clone(),
                        timeout: None,
                        allow_failure: None,
                        span: c.span,
                    });
                }
            }
            if !hit {
                let d = Diag::warning(
                    "minimega::no_vm",
                    "no VM of this script matches the cc filter; the command is left out",
                )
                .label(c.span, "runs nowhere")
                .help("cc filter uuid= matches only a UUID set with `vm config uuid`");
                self.d.push(if self.opts.strict {
                    Diag {
                        severity: miette::Severity::Error,
                        ..d
                    }
                } else {
                    d
                });
            }
        }
        // Keep a launched range as one `vm` node when its VMs came out identical.
        let mut out: Vec<Vm> = Vec::new();
        let mut i = 0;
        while i < vms.len() {
            let l = &self.vms[i];
            if let Some(r) = &l.range {
                let mut j = i;
                while j < vms.len()
                    && self.vms[j].launch == l.launch
                    && self.vms[j].range.as_ref() == Some(r)
                {
                    j += 1;
                }
                let named = |v: &Vm| Vm {
                    name: bare(String::new()),
                    ..v.clone()
                };
                let mentioned = self
                    .mirrors
                    .iter()
                    .any(|m| (m.src >= i && m.src < j) || (m.dst >= i && m.dst < j));
                if j - i > 1
                    && !mentioned
                    && name_problem(r.replace(['[', ']', ','], "").as_str()).is_none()
                    && expand_range(r).is_ok_and(|e| {
                        e.len() == j - i && e.iter().zip(&self.vms[i..j]).all(|(a, b)| *a == b.name)
                    })
                    && vms[i..j].iter().all(|v| named(v) == named(&vms[i]))
                {
                    let mut v = vms[i].clone();
                    v.name = Sp::new(r.clone(), v.name.span);
                    out.push(v);
                    i = j;
                    continue;
                }
            }
            out.push(vms[i].clone());
            i += 1;
        }
        let networks: Vec<Network> = self
            .networks
            .iter()
            .map(|(_, n, at)| Network {
                name: Sp::new(n.clone(), *at),
                host_address: None,
                span: *at,
            })
            .collect();
        let name = match (&self.opts.name, &self.namespace) {
            (Some(n), _) => n.clone(),
            (None, Some((n, _))) => {
                let n = n.clone();
                self.safe_name(&n, "namespace")
            }
            (None, None) => {
                let stem = src
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "imported".into());
                self.safe_name(&stem, "script name")
            }
        };
        let all_tcg = !self.vms.is_empty() && self.vms.iter().all(|v| v.config.tcg);
        // The header comment.
        let mut notes = vec![format!(
            "Imported from the minimega script {} by `megaplan import minimega`.",
            src.name()
        )];
        if self.uses_images {
            notes.push(
                "minimega's $images placeholder is this experiment's `images` folder.".into(),
            );
        }
        if self.used_tap_names {
            let taps: Vec<String> = self
                .taps
                .iter()
                .enumerate()
                .map(|(n, (v, nic))| format!("mega_tap{n} = {} nic {nic}", self.vms[*v].name))
                .collect();
            notes.push(format!(
                "`tap mirror mega_tapN …` assumes a fresh minimega, which numbers taps in launch order: {}.",
                taps.join(", ")
            ));
        }
        let numeric: Vec<String> = self
            .networks
            .iter()
            .filter(|(v, n, _)| v != n)
            .map(|(v, n, _)| format!("VLAN {v} is network {n}"))
            .collect();
        if !numeric.is_empty() {
            notes.push(format!("minimega {}.", numeric.join(", ")));
        }
        if self.nic_without_driver {
            notes.push("nics without a driver get megaplan's virtio-net-pci (minimega's default is e1000).".into());
        }
        if cc_has(&out, |a| matches!(a, CcAction::Send { .. })) {
            notes.push(format!("`cc send FILE` reads FILE here relative to this file (minimega: its files folder) and writes {MINICCC_FILES}/FILE in the guest, as miniccc does."));
        }
        if cc_has(&out, |a| matches!(a, CcAction::Recv { .. })) {
            notes.push(format!(
                "`cc recv` files land in {RECV_DIR}/ next to this file."
            ));
        }
        if !self.disks.is_empty() || self.vms.iter().any(|v| !v.config.disks.is_empty()) {
            notes.push(
                "Disk paths are relative to this file (minimega: to its files folder).".into(),
            );
        }
        notes.append(&mut self.renamed);
        notes.retain(|n| !n.is_empty());
        if !all_tcg && self.vms.iter().any(|v| v.config.tcg) {
            notes.push(
                "Some VMs had `vm config cpu qemu64` and some not; accel is left to auto.".into(),
            );
        }
        self.notes = notes;
        let at = self
            .namespace
            .as_ref()
            .map_or(SourceSpan::from(0..0), |(_, s)| *s);
        Document {
            experiments: vec![ExperimentNode {
                name: Sp::new(name, at),
                images: self.uses_images.then(|| bare("images".to_string())),
                accel: all_tcg.then(|| bare("tcg".to_string())),
                boot_timeout: None,
                provider: None,
                span: at,
            }],
            networks,
            disks: std::mem::take(&mut self.disks),
            vms: out,
            ..Document::default()
        }
    }
}

fn cc_has(vms: &[Vm], f: impl Fn(&CcAction) -> bool) -> bool {
    vms.iter().any(|v| v.cc.iter().any(|s| f(&s.action)))
}

/// A cc command's words as a megaplan command: `sh -c X` is the shell
/// command X; words a shell would read back unchanged are one shell
/// string (as megaplan's examples write them); anything else stays argv.
pub(crate) fn command_of(argv: Vec<String>, span: SourceSpan) -> Command {
    if argv.len() == 3 && argv[0] == "sh" && argv[1] == "-c" {
        return Command::Shell(Sp::new(argv[2].clone(), span));
    }
    if shell_safe(&argv) {
        return Command::Shell(Sp::new(argv.join(" "), span));
    }
    Command::Argv(argv.into_iter().map(|w| Sp::new(w, span)).collect())
}

/// Words that `sh -c "w1 w2 …"` splits back into exactly these words and runs
/// as this argv (no quoting, expansion, assignment or keyword).
pub(crate) fn shell_safe(argv: &[String]) -> bool {
    const KEYWORDS: &[&str] = &[
        "if", "then", "else", "elif", "fi", "case", "esac", "for", "while", "until", "do", "done",
        "in", "function", "select", "time", "!", "{", "}", "[[", "]]",
    ];
    let Some(first) = argv.first() else {
        return false;
    };
    if KEYWORDS.contains(&first.as_str()) || first.contains('=') {
        return false;
    }
    argv.iter().all(|w| {
        !w.is_empty()
            && w.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '-' | '_' | '.' | '/' | ':' | ',' | '+' | '@' | '%' | '=')
            })
    })
}

/// minimega's netspec: (the spec, the bridge if one was named).
fn parse_netspec(spec: &str, span: SourceSpan) -> Result<(NetSpec, Option<String>), &'static str> {
    let f: Vec<&str> = spec.split(',').collect();
    let is_driver = |d: &str| NIC_DRIVERS.contains(&d);
    let is_qinq = |q: &str| q.eq_ignore_ascii_case("qinq");
    let (b, v, m, d, q): (Option<&str>, &str, Option<&str>, Option<&str>, bool) = match f.as_slice()
    {
        [v] => (None, v, None, None, false),
        [v, x] if is_qinq(x) => (None, v, None, None, true),
        [v, x] if is_mac(x) => (None, v, Some(x), None, false),
        [v, x] if is_driver(x) => (None, v, None, Some(x), false),
        [b, v] => (Some(b), v, None, None, false),
        [v, m, x] if is_qinq(x) && is_mac(m) => (None, v, Some(m), None, true),
        [v, d, x] if is_qinq(x) && is_driver(d) => (None, v, None, Some(d), true),
        [b, v, x] if is_qinq(x) => (Some(b), v, None, None, true),
        [b, v, m] if is_mac(m) => (Some(b), v, Some(m), None, false),
        [v, m, d] if is_mac(m) && is_driver(d) => (None, v, Some(m), Some(d), false),
        [b, v, d] if is_driver(d) => (Some(b), v, None, Some(d), false),
        [v, m, d, x] if is_qinq(x) && is_mac(m) => (None, v, Some(m), Some(d), true),
        [b, v, m, x] if is_qinq(x) && is_mac(m) => (Some(b), v, Some(m), None, true),
        [b, v, d, x] if is_qinq(x) && is_driver(d) => (Some(b), v, None, Some(d), true),
        [b, v, m, d] if is_driver(d) && is_mac(m) => (Some(b), v, Some(m), Some(d), false),
        [b, v, m, d, x] if is_mac(m) && is_driver(d) && is_qinq(x) => {
            (Some(b), v, Some(m), Some(d), true)
        }
        _ => return Err("malformed netspec"),
    };
    if q {
        return Err("QinQ (dot1q-tunnel) has no megaplan equivalent");
    }
    if v.is_empty() {
        return Err("the VLAN is empty");
    }
    Ok((
        NetSpec {
            vlan: v.to_string(),
            mac: m.map(|m| m.to_ascii_lowercase().replace('-', ":")),
            driver: d.map(str::to_string),
            span,
        },
        b.map(str::to_string),
    ))
}

/// minimega's `ranges.SplitList`: commas outside brackets separate names.
fn split_list(s: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut inside = false;
    let mut prev = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' if inside => return Err(format!("nested '[' at char {i}")),
            '[' => inside = true,
            ']' if !inside => return Err(format!("unmatched ']' at char {i}")),
            ']' => inside = false,
            ',' if !inside => {
                parts.push(s[prev..i].to_string());
                prev = i + 1;
            }
            _ => {}
        }
    }
    if inside {
        return Err("unterminated '['".into());
    }
    parts.push(s[prev..].to_string());
    if parts.iter().any(|p| p.is_empty()) {
        return Err("an empty name".into());
    }
    Ok(parts)
}
