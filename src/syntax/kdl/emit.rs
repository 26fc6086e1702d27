//! The KDL emitter: a [`Document`] as canonical KDL 2.0.

use crate::model::{
    Capture, CaptureSource, CcAction, CcStep, Check, Command, Disk, Document, ExperimentNode,
    MirrorSource, Network, Sp, Vm,
};

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
    if let Some(p) = &e.provider {
        let mut pn = Node::new(format!("provider {}", quote(&p.kind)));
        kid_str(&mut pn.kids, "base", &p.base);
        kid_str(&mut pn.kids, "namespace", &p.namespace);
        n.kids.push(pn);
    }
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
    kid_str(k, "host", &vm.host);
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
