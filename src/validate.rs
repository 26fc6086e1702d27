//! Validation: a [`Document`] becomes a [`Lab`], or a list of every problem.
//!
//! Invariants:
//! - Every check runs; errors are collected, never returned early, so a user
//!   sees all of them at once. A [`Lab`] is produced only when there is no error.
//! - Pure apart from reading file metadata for "file not found" warnings.
//! - Every label points at the exact value at fault.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use miette::SourceSpan;
use petgraph::graph::DiGraph;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::diag::{Diag, Diagnostics, SourceFile, did_you_mean};
use crate::identity;
use crate::lab::*;
use crate::model::{self, Document, Sp};

/// Parse and validate a file: the lab (when there is no error) and every diagnostic.
///
/// Structural errors do not hide the others: unless the file could not be
/// read as KDL/TOML at all, validation runs on what was read, and only its
/// findings inside a top-level node that has a structural error are dropped
/// (they would mostly repeat it).
pub fn check(src: &SourceFile) -> (Option<Lab>, Diagnostics) {
    let (doc, mut diags) = crate::syntax::parse(src);
    let syntax_failed = diags.errors().any(|d| d.code.is_syntax());
    if syntax_failed {
        diags.sort();
        return (None, diags);
    }
    let (lab, more) = validate(&doc, src);
    if diags.has_errors() {
        let failed: Vec<(usize, usize)> = node_spans(&doc)
            .filter(|(start, end)| {
                diags.errors().any(|d| {
                    d.labels
                        .first()
                        .is_some_and(|l| (*start..*end).contains(&l.span.offset()))
                })
            })
            .collect();
        for d in more.items {
            let at = d.labels.first().map(|l| l.span.offset());
            let inside_failed =
                at.is_some_and(|o| failed.iter().any(|(s, e)| (*s..*e).contains(&o)));
            // A dropped experiment node is already reported structurally.
            let follows = matches!(
                d.code.as_str(),
                "megaplan::no_experiment" | "megaplan::second_experiment"
            );
            if !inside_failed && !follows {
                diags.push(d);
            }
        }
        diags.sort();
        return (None, diags);
    }
    diags.extend(more);
    diags.sort();
    if diags.has_errors() {
        (None, diags)
    } else {
        (lab, diags)
    }
}

/// The byte range of every top-level node of a document: from its start to
/// the start of the next one (a TOML table's span covers only its header).
fn node_spans(doc: &Document) -> impl Iterator<Item = (usize, usize)> {
    let mut starts: Vec<usize> = doc
        .experiments
        .iter()
        .map(|e| e.span.offset())
        .chain(doc.networks.iter().map(|n| n.span.offset()))
        .chain(doc.disks.iter().map(|d| d.span.offset()))
        .chain(doc.vms.iter().map(|v| v.span.offset()))
        .chain(doc.captures.iter().map(|c| c.span.offset()))
        .chain(doc.checks.iter().map(|c| c.span.offset()))
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let ends: Vec<usize> = starts.iter().skip(1).copied().chain([usize::MAX]).collect();
    starts.into_iter().zip(ends)
}

/// Validate a parsed document.
pub fn validate(doc: &Document, src: &SourceFile) -> (Option<Lab>, Diagnostics) {
    let mut v = Validator {
        d: Diagnostics::default(),
        base: src
            .path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from(".")),
        images: None,
        whole_file: SourceSpan::from(0..src.text.len().min(1)),
        warned: HashSet::new(),
    };
    let lab = v.run(doc, src);
    (lab, v.d)
}

struct Validator {
    d: Diagnostics,
    base: PathBuf,
    images: Option<PathBuf>,
    whole_file: SourceSpan,
    /// Missing files already warned about (one warning per path).
    warned: HashSet<PathBuf>,
}

/// The nic models `driver=` accepts: those `image build` has guest drivers
/// for (`image::NIC_MODELS`).
pub const NIC_MODEL_NAMES: &[&str] = &["virtio-net-pci", "e1000", "e1000e", "rtl8139", "vmxnet3"];

/// The most vcpus QEMU's q35 machine (the one `drivers::qemu` launches) takes:
/// `max_cpus` of pc-q35 in QEMU 7.2 (pc-i440fx would be 255).
pub const MAX_VCPUS: u32 = 288;

/// Room kept free in a protocol frame beside the command of an exec (fields a
/// newer agent protocol may add, such as a step id).
const FRAME_MARGIN: usize = 4096;

/// Names become interface aliases, file names and QEMU arguments.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("a name cannot be empty");
    }
    if name.len() > 64 {
        return Some("a name can be at most 64 bytes long");
    }
    if name == "." || name == ".." || name.contains("..") {
        return Some("a name cannot contain '..'");
    }
    if name.contains('/') {
        return Some("a name cannot contain '/'");
    }
    if name.chars().any(|c| c.is_control()) {
        return Some("a name cannot contain control characters");
    }
    if name.starts_with('-') || name.starts_with('.') {
        return Some("a name cannot start with '-' or '.'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some("a name may hold only letters, digits, '-', '_' and '.'");
    }
    None
}

/// Expand `web[1-3]`, `web[01-10]`, `n[1,4-5]` into names. Err: what is wrong.
pub fn expand_range(name: &str) -> Result<Vec<String>, String> {
    let Some(open) = name.find('[') else {
        if name.contains(']') {
            return Err("unbalanced ']' in a VM name".into());
        }
        return Ok(vec![name.to_string()]);
    };
    let Some(close_rel) = name[open..].find(']') else {
        return Err("unbalanced '[' in a VM name range".into());
    };
    let close = open + close_rel;
    let (prefix, body, suffix) = (&name[..open], &name[open + 1..close], &name[close + 1..]);
    if suffix.contains('[') || suffix.contains(']') {
        return Err("a VM name can hold only one range".into());
    }
    let mut out = Vec::new();
    for part in body.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let width = if lo.len() > 1 && lo.starts_with('0') {
            lo.len()
        } else {
            0
        };
        let (Ok(a), Ok(b)) = (lo.parse::<u64>(), hi.parse::<u64>()) else {
            return Err(format!("'{part}' is not a number or a range like 1-3"));
        };
        if a > b {
            return Err(format!("the range {a}-{b} runs backwards"));
        }
        if b - a >= 100_000 || out.len() as u64 + (b - a) >= 1_000_000 {
            return Err("a VM range can make at most 1,000,000 VMs".into());
        }
        for i in a..=b {
            out.push(format!("{prefix}{i:0width$}{suffix}"));
        }
    }
    Ok(out)
}

/// Sizes: `10G`, `512M`, `64K`, `1T`, `1024` (bytes), with optional `i`/`iB`/`B`.
pub fn parse_size(s: &str, default_unit: u64) -> Option<u64> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return None;
    }
    let n: u64 = s[..digits_end].parse().ok()?;
    let unit = match s[digits_end..].trim() {
        "" => default_unit,
        "B" | "b" => 1,
        "K" | "k" | "KB" | "KiB" | "kB" => 1 << 10,
        "M" | "m" | "MB" | "MiB" => 1 << 20,
        "G" | "g" | "GB" | "GiB" => 1 << 30,
        "T" | "t" | "TB" | "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Durations: `500ms`, `30s`, `5m`, `1h30m`, `90` (seconds).
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(1000);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !c.is_ascii_digit())?;
        if end == 0 {
            return None;
        }
        let n: u64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(mult)?)?;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// `aa:bb:cc:dd:ee:ff`, unicast. Returns the normalised (lowercase) MAC.
pub fn parse_mac(s: &str) -> Result<String, &'static str> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err("a MAC address is six hex pairs separated by ':', like 02:00:00:00:00:01");
    }
    let first = u8::from_str_radix(parts[0], 16).map_err(|_| "bad hex")?;
    if first & 1 == 1 {
        return Err(
            "this is a multicast MAC address: a nic needs a unicast one (even first octet)",
        );
    }
    Ok(s.to_ascii_lowercase())
}

/// `10.0.0.1/24` or `fd00::1/64`: an address a host can have on a segment.
pub fn parse_cidr(s: &str) -> Result<(), &'static str> {
    use std::net::IpAddr;
    let Some((addr, len)) = s.split_once('/') else {
        return Err("a host address needs a prefix length, like 10.0.0.254/24");
    };
    let Ok(len) = len.parse::<u8>() else {
        return Err("the prefix length must be a number");
    };
    let addr = match addr.parse::<IpAddr>() {
        Ok(a) => a,
        Err(_) => return Err("not an IPv4 or IPv6 address"),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err("the prefix length is too long for this address");
    }
    if len == 0 {
        return Err("a /0 prefix is every address, not a segment");
    }
    if addr.is_unspecified() {
        return Err("the unspecified address is not a host address");
    }
    if addr.is_loopback() {
        return Err("a loopback address is not an address on a segment");
    }
    if addr.is_multicast() {
        return Err("a multicast address is not a host address");
    }
    match addr {
        IpAddr::V4(a) => {
            if a.is_broadcast() {
                return Err("the broadcast address is not a host address");
            }
            if a.is_link_local() {
                return Err("a link-local address (169.254.0.0/16) is not a host address here");
            }
            if a.octets()[0] >= 240 {
                return Err("an address in 240.0.0.0/4 is reserved, not a host address");
            }
            if len <= 30 {
                let bits = u32::from(a);
                let host_mask = u32::MAX >> len;
                if bits & host_mask == 0 {
                    return Err("this is the network address of its prefix, not a host address");
                }
                if bits & host_mask == host_mask {
                    return Err("this is the broadcast address of its prefix, not a host address");
                }
            }
        }
        IpAddr::V6(a) => {
            if a.segments()[0] & 0xffc0 == 0xfe80 {
                return Err("a link-local address (fe80::/10) is not a host address here");
            }
        }
    }
    Ok(())
}

fn hash_hex(v: &impl serde::Serialize) -> String {
    let json = serde_json::to_vec(v).expect("serialising plain data cannot fail");
    let h = Sha256::digest(&json);
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

struct VmInst<'a> {
    name: String,
    src: &'a model::Vm,
}

impl Validator {
    fn err(&mut self, d: Diag) {
        self.d.push(d);
    }

    /// A `boot-timeout` in ms; an error (and None) unless it is a duration > 0.
    fn boot_timeout(&mut self, t: &Sp<String>) -> Option<u64> {
        let ms = parse_duration_ms(&t.value).filter(|&ms| ms > 0);
        if ms.is_none() {
            self.err(
                Diag::error(
                    "megaplan::bad_duration",
                    format!("'{}' is not a duration", t.value),
                )
                .label(t.span, "not a duration")
                .help("write how long to wait for the guest's agent: \"60s\", \"5m\" (default \"120s\")"),
            );
        }
        ms
    }

    /// Refuse a NUL in any value of the file (names are checked by
    /// [`name_problem`]): every string reaches an argv, a path, the kernel
    /// command line or a protocol frame, where a NUL ends it or is refused.
    /// A VM's sockets (QMP, cc) live in its runtime folder; a unix socket
    /// path holds at most [`runtime::MAX_SOCKET_PATH`] bytes.
    fn check_socket_path(
        &mut self,
        experiment: &str,
        vm_name: &str,
        vm: &model::Vm,
        once: &mut impl FnMut(&mut Self, Diag, &'static str),
    ) {
        use crate::drivers::runtime;
        let longest = [runtime::QMP_SOCKET_NAME, runtime::CC_SOCKET_NAME]
            .into_iter()
            .max_by_key(|n| n.len())
            .expect("two names");
        let root = crate::host::runtime_dir("", "");
        let sock = crate::host::runtime_dir(experiment, vm_name).join(longest);
        let len = sock.as_os_str().len();
        if len > runtime::MAX_SOCKET_PATH {
            once(
                self,
                Diag::error(
                    "megaplan::socket_path_too_long",
                    format!(
                        "VM '{vm_name}' would have a socket path of {len} bytes: a unix socket path holds at most {}",
                        runtime::MAX_SOCKET_PATH
                    ),
                )
                .label(vm.name.span, format!("{}", sock.display()))
                .help(format!(
                    "the path is the runtime folder ({} bytes: MEGAPLAN_RUNTIME_DIR or /run/megaplan), /EXPERIMENT ({} bytes), /VM ({} bytes) and /{longest}: shorten the experiment or VM name by {} bytes, or set MEGAPLAN_RUNTIME_DIR to a shorter folder",
                    root.as_os_str().len().saturating_sub(1),
                    experiment.len() + 1,
                    vm_name.len() + 1,
                    len - runtime::MAX_SOCKET_PATH
                )),
                "sockpath",
            );
        }
    }

    /// A cc command travels in one protocol frame: refuse one that cannot fit.
    fn check_command_size(
        &mut self,
        c: &model::Command,
        span: SourceSpan,
        once: &mut impl FnMut(&mut Self, Diag, &'static str),
    ) {
        use crate::agent::protocol::{self, Message};
        let command = match c {
            model::Command::Shell(s) => protocol::Command::Shell(s.value.clone()),
            model::Command::Argv(a) => {
                protocol::Command::Argv(a.iter().map(|s| s.value.clone()).collect())
            }
        };
        let msg = Message::Exec {
            id: u64::MAX,
            command,
            timeout_ms: Some(u64::MAX),
            background: false,
            max_output: Some(u64::MAX),
        };
        let len = serde_json::to_vec(&msg).map_or(usize::MAX, |v| v.len());
        let limit = protocol::MAX_FRAME - FRAME_MARGIN;
        if len > limit {
            once(
                self,
                Diag::error(
                    "megaplan::command_too_large",
                    format!("this command is {len} bytes when sent to the guest: at most {limit} fit in one message"),
                )
                .label(span, "too large")
                .help("put a long script in a file and `send` it to the guest, then exec it"),
                "cmdsize",
            );
        }
    }

    fn check_nul(&mut self, doc: &Document) {
        let mut vals: Vec<(&'static str, &Sp<String>)> = Vec::new();
        for e in &doc.experiments {
            vals.extend(e.images.iter().map(|v| ("images", v)));
            vals.extend(e.accel.iter().map(|v| ("accel", v)));
        }
        for n in &doc.networks {
            vals.extend(n.host_address.iter().map(|v| ("host-address", v)));
        }
        for d in &doc.disks {
            for (what, v) in [
                ("size", &d.size),
                ("format", &d.format),
                ("filesystem", &d.filesystem),
                ("from", &d.from),
            ] {
                vals.extend(v.iter().map(|v| (what, v)));
            }
            for i in &d.inject {
                vals.push(("inject source", &i.src));
                vals.push(("inject destination", &i.dst));
            }
        }
        for vm in &doc.vms {
            for (what, v) in [
                ("uuid", &vm.uuid),
                ("kernel", &vm.kernel),
                ("initrd", &vm.initrd),
                ("append", &vm.append),
                ("memory", &vm.memory),
            ] {
                vals.extend(v.iter().map(|v| (what, v)));
            }
            for d in &vm.disks {
                vals.push(("disk", &d.name));
                vals.extend(d.mount.iter().map(|v| ("mount", v)));
            }
            for n in &vm.nics {
                vals.push(("nic network", &n.network));
                vals.extend(n.mac.iter().map(|v| ("mac", v)));
                vals.extend(n.driver.iter().map(|v| ("driver", v)));
            }
            for m in &vm.mirrors {
                match &m.source {
                    model::MirrorSource::Vm(v) => vals.push(("mirrors", v)),
                    model::MirrorSource::Network(v) => vals.push(("mirrors network", v)),
                }
                vals.extend(m.direction.iter().map(|v| ("direction", v)));
            }
            for t in &vm.tags {
                vals.push(("tag name", &t.key));
                vals.push(("tag value", &t.value));
            }
            vals.extend(vm.after.iter().map(|v| ("after", v)));
            vals.extend(vm.qemu_args.iter().map(|v| ("qemu-args", v)));
            for step in &vm.cc {
                vals.extend(step.timeout.iter().map(|v| ("timeout", v)));
                match &step.action {
                    model::CcAction::Exec(c) | model::CcAction::Background(c) => match c {
                        model::Command::Shell(v) => vals.push(("command", v)),
                        model::Command::Argv(a) => vals.extend(a.iter().map(|v| ("command", v))),
                    },
                    model::CcAction::Send { src, to } => {
                        vals.push(("send source", src));
                        vals.push(("send destination", to));
                    }
                    model::CcAction::Recv { src, to, max_size } => {
                        vals.push(("recv source", src));
                        vals.push(("recv destination", to));
                        vals.extend(max_size.iter().map(|v| ("max-size", v)));
                    }
                }
            }
        }
        for (what, v) in vals {
            if let Some(at) = v.value.find('\0') {
                self.err(
                    Diag::error("megaplan::nul_byte", format!("the {what} contains a NUL byte"))
                        .label(v.span, format!("NUL at byte {at} of this value"))
                        .help("a NUL would cut this value short in a QEMU argument, a path or a guest command: remove it"),
                );
            }
        }
    }

    fn check_name(&mut self, what: &str, name: &Sp<String>) -> bool {
        if let Some(problem) = name_problem(&name.value) {
            self.err(
                Diag::error("megaplan::bad_name", format!("{what} name '{}' is not allowed", name.value.escape_debug()))
                    .label(name.span, problem)
                    .help("names become interface aliases, file names and QEMU arguments: use letters, digits, '-', '_' and '.'"),
            );
            false
        } else {
            true
        }
    }

    /// Resolve a path: `$images` and relative paths.
    fn path(&mut self, p: &Sp<String>) -> PathBuf {
        let raw = &p.value;
        if let Some(rest) = raw.strip_prefix("$images") {
            let rest = rest.trim_start_matches('/');
            let images = match &self.images {
                Some(i) => i.clone(),
                None => {
                    self.err(
                        Diag::error(
                            "megaplan::no_images",
                            "'$images' is used but the experiment sets no images folder",
                        )
                        .label(p.span, "uses $images")
                        .help(
                            "add `images \"DIR\"` to the experiment node (relative to this file)",
                        ),
                    );
                    self.base.clone()
                }
            };
            return if rest.is_empty() {
                images
            } else {
                images.join(rest)
            };
        }
        let path = Path::new(raw);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    fn warn_missing(&mut self, path: &Path, sp: &Sp<String>, what: &str) {
        if !path.exists() && self.warned.insert(path.to_path_buf()) {
            self.d.push(
                Diag::warning("megaplan::missing_file", format!("{what} '{}' does not exist (yet)", crate::diag::escape(&path.display().to_string())))
                    .label(sp.span, "not found")
                    .help(if matches!(what, "kernel" | "initrd") {
                        "this is an error at apply time; `megaplan image build --out DIR` makes a cc-enabled kernel and initrd".to_string()
                    } else {
                        format!("this is an error at apply time: create the {what}, or fix the path (a relative path is relative to this file)")
                    }),
            );
        }
    }

    fn run(&mut self, doc: &Document, src: &SourceFile) -> Option<Lab> {
        // --- experiment ------------------------------------------------------
        if src.text.trim().is_empty() {
            self.err(
                Diag::error("megaplan::empty", "the experiment file is empty")
                    .help("start with `experiment \"NAME\" { images \"images\" }` and add networks and VMs"),
            );
            return None;
        }
        self.check_nul(doc);
        let exp = match doc.experiments.as_slice() {
            [] => {
                let first = doc
                    .networks
                    .iter()
                    .map(|n| n.span)
                    .chain(doc.disks.iter().map(|d| d.span))
                    .chain(doc.vms.iter().map(|v| v.span))
                    .min_by_key(|s| s.offset())
                    .unwrap_or(self.whole_file);
                self.err(
                    Diag::error("megaplan::no_experiment", "there is no experiment node")
                        .label(first, "the experiment node belongs before this")
                        .help("add `experiment \"NAME\"` (TOML: `[experiment]` with `name = \"NAME\"`): the name scopes everything megaplan creates"),
                );
                None
            }
            [first, rest @ ..] => {
                for other in rest {
                    self.err(
                        Diag::error(
                            "megaplan::second_experiment",
                            "a file describes exactly one experiment",
                        )
                        .label(other.span, "second experiment node")
                        .label(first.span, "the first one is here")
                        .help("remove one of them, or split the file in two"),
                    );
                }
                Some(first)
            }
        };
        let exp_name = exp.map(|e| {
            self.check_name("experiment", &e.name);
            e.name.value.clone()
        });
        if let Some(images) = exp.and_then(|e| e.images.as_ref()) {
            let p = Path::new(&images.value);
            self.images = Some(if p.is_absolute() {
                p.to_path_buf()
            } else {
                self.base.join(p)
            });
        }
        let accel = match exp.and_then(|e| e.accel.as_ref()) {
            None => Accel::Auto,
            Some(a) => match a.value.as_str() {
                "auto" => Accel::Auto,
                "kvm" => Accel::Kvm,
                "tcg" => Accel::Tcg,
                other => {
                    self.err(
                        Diag::error(
                            "megaplan::bad_accel",
                            format!("unknown accelerator '{other}'"),
                        )
                        .label(a.span, "expected \"auto\", \"kvm\" or \"tcg\"")
                        .help_opt(did_you_mean(other, ["auto", "kvm", "tcg"])),
                    );
                    Accel::Auto
                }
            },
        };
        let ename = exp_name.clone().unwrap_or_default();
        let default_boot_timeout = exp
            .and_then(|e| e.boot_timeout.as_ref())
            .and_then(|t| self.boot_timeout(t))
            .unwrap_or(crate::lab::DEFAULT_BOOT_TIMEOUT_MS);

        // --- networks --------------------------------------------------------
        let mut networks = Vec::new();
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for n in &doc.networks {
            self.check_name("network", &n.name);
            if let Some(prev) = seen.insert(n.name.value.clone(), n.name.span) {
                self.err(
                    Diag::error(
                        "megaplan::duplicate_network",
                        format!("network '{}' is defined twice", n.name.value),
                    )
                    .label(n.name.span, "defined again here")
                    .label(prev, "first defined here")
                    .help("give each network its own name"),
                );
                continue;
            }
            if let Some(h) = &n.host_address
                && let Err(e) = parse_cidr(&h.value)
            {
                self.err(
                    Diag::error(
                        "megaplan::bad_cidr",
                        format!("'{}' is not a valid host address", h.value),
                    )
                    .label(h.span, e)
                    .help("write an address with its prefix length, like \"10.0.0.254/24\""),
                );
            }
            let address = format!("network.{}", n.name.value);
            networks.push(NetworkSpec {
                name: n.name.value.clone(),
                bridge: identity::bridge_name(&ename, &address),
                address,
                host_address: n.host_address.as_ref().map(|h| h.value.clone()),
            });
        }
        let net_names: Vec<&str> = doc.networks.iter().map(|n| n.name.value.as_str()).collect();

        // --- disks -----------------------------------------------------------
        let mut disks = Vec::new();
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for disk in &doc.disks {
            self.check_name("disk", &disk.name);
            if let Some(prev) = seen.insert(disk.name.value.clone(), disk.name.span) {
                self.err(
                    Diag::error(
                        "megaplan::duplicate_disk",
                        format!("disk '{}' is defined twice", disk.name.value),
                    )
                    .label(disk.name.span, "defined again here")
                    .label(prev, "first defined here")
                    .help("give each disk its own name"),
                );
                continue;
            }
            let size_bytes = disk.size.as_ref().and_then(|s| match parse_size(&s.value, 1) {
                Some(0) => {
                    self.err(
                        Diag::error("megaplan::bad_size", "a disk cannot be empty")
                            .label(s.span, "size 0")
                            .help("give a size such as \"10G\""),
                    );
                    None
                }
                Some(n) => Some(n),
                None => {
                    self.err(
                        Diag::error("megaplan::bad_size", format!("'{}' is not a size", s.value))
                            .label(s.span, "not a size")
                            .help("write a number with a unit: \"512M\", \"10G\", \"1T\" (a bare number is bytes)"),
                    );
                    None
                }
            });
            if disk.size.is_none() && disk.from.is_none() {
                self.err(
                    Diag::error("megaplan::disk_without_size", format!("disk '{}' has neither a size nor a base image", disk.name.value))
                        .label(disk.name.span, "no size= and no from")
                        .help("add size=\"10G\", or `from \"base.qcow2\"` to make a copy-on-write child of a base image"),
                );
            }
            let format = match disk.format.as_ref() {
                None => DiskFormat::Qcow2,
                Some(f) => match f.value.as_str() {
                    "qcow2" => DiskFormat::Qcow2,
                    "raw" => DiskFormat::Raw,
                    other => {
                        self.err(
                            Diag::error(
                                "megaplan::bad_format",
                                format!("unknown disk format '{other}'"),
                            )
                            .label(f.span, "expected \"qcow2\" or \"raw\"")
                            .help_opt(did_you_mean(other, ["qcow2", "raw"])),
                        );
                        DiskFormat::Qcow2
                    }
                },
            };
            if let Some(fs) = &disk.filesystem
                && fs.value != "ext4"
            {
                self.err(
                    Diag::error(
                        "megaplan::bad_filesystem",
                        format!("filesystem '{}' is not supported", fs.value),
                    )
                    .label(fs.span, "only \"ext4\" is supported")
                    .help("use filesystem=\"ext4\", or leave it out for a blank disk"),
                );
            }
            if let Some(first) = disk.inject.first()
                && disk.filesystem.is_none()
            {
                self.err(
                    Diag::error(
                        "megaplan::inject_without_filesystem",
                        format!(
                            "disk '{}' injects files but has no filesystem",
                            disk.name.value
                        ),
                    )
                    .label(first.span, "inject needs a filesystem")
                    .help("add filesystem=\"ext4\" to the disk"),
                );
            }
            if disk.from.is_some() && disk.filesystem.is_some() {
                self.err(
                    Diag::error(
                        "megaplan::from_with_filesystem",
                        "a disk made from a base image cannot also be formatted",
                    )
                    .label(
                        disk.filesystem.as_ref().map_or(disk.span, |f| f.span),
                        "filesystem here",
                    )
                    .help("remove filesystem= (the base image already has one) or remove `from`"),
                );
            }
            let from = disk.from.as_ref().map(|f| {
                let p = self.path(f);
                self.warn_missing(&p, f, "base image");
                p
            });
            let mut inject = Vec::new();
            for inj in &disk.inject {
                let p = self.path(&inj.src);
                self.warn_missing(&p, &inj.src, "file to inject");
                if !inj.dst.value.starts_with('/') {
                    self.err(
                        Diag::error(
                            "megaplan::relative_guest_path",
                            format!("'{}' is not an absolute path", inj.dst.value),
                        )
                        .label(inj.dst.span, "must start with '/'")
                        .help("paths inside the disk are absolute, like \"/etc/motd\""),
                    );
                }
                inject.push((p, inj.dst.value.clone()));
            }
            disks.push(DiskSpec {
                name: disk.name.value.clone(),
                address: format!("disk.{}", disk.name.value),
                size_bytes,
                format,
                filesystem: disk.filesystem.as_ref().map(|f| f.value.clone()),
                keep: disk.keep.as_ref().is_some_and(|k| k.value),
                from,
                inject,
            });
        }
        let disk_names: Vec<&str> = doc.disks.iter().map(|d| d.name.value.as_str()).collect();

        // --- VM names (ranges) ------------------------------------------------
        let mut insts: Vec<VmInst> = Vec::new();
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for vm in &doc.vms {
            let names = match expand_range(&vm.name.value) {
                Ok(n) => n,
                Err(e) => {
                    self.err(
                        Diag::error(
                            "megaplan::bad_range",
                            format!("VM name '{}' is not a valid range", vm.name.value),
                        )
                        .label(vm.name.span, e)
                        .help("a range looks like \"web[1-3]\" or \"web[01-10]\""),
                    );
                    continue;
                }
            };
            for name in names {
                let sp = Sp::new(name.clone(), vm.name.span);
                if !self.check_name("VM", &sp) {
                    break;
                }
                if let Some(prev) = seen.insert(name.clone(), vm.name.span) {
                    self.err(
                        Diag::error("megaplan::duplicate_vm", format!("VM '{name}' is defined twice"))
                            .label(vm.name.span, if vm.name.value == name { "defined again here".to_string() } else { format!("this range makes '{name}' again") })
                            .label(prev, "first defined here")
                            .help("give each VM its own name; ranges like web[1-3] expand to web1, web2, web3"),
                    );
                    continue;
                }
                insts.push(VmInst { name, src: vm });
            }
        }
        let vm_names: Vec<String> = insts.iter().map(|i| i.name.clone()).collect();
        let vm_name_set: HashSet<&str> = vm_names.iter().map(String::as_str).collect();

        // --- VMs ------------------------------------------------------------
        let mut vms = Vec::new();
        let mut uuids: HashMap<Uuid, SourceSpan> = HashMap::new();
        let mut macs: HashMap<String, SourceSpan> = HashMap::new();
        let mut exclusive_disks: HashMap<String, (String, SourceSpan)> = HashMap::new();
        let mut disk_users: HashMap<String, Vec<(String, SourceSpan, bool)>> = HashMap::new();
        let mut reported_spans: HashSet<(usize, &'static str)> = HashSet::new();
        let mut mirrors = Vec::new();

        for inst in &insts {
            let vm = inst.src;
            let first_of_range = reported_spans.insert((vm.span.offset(), "vm"));
            // Errors on a ranged VM's own values are reported once, not per instance.
            let mut once = |this: &mut Self, d: Diag, key: &'static str| {
                if first_of_range || reported_spans.insert((vm.span.offset(), key)) {
                    this.err(d);
                }
            };
            let address = format!("vm.{}", inst.name);
            let uuid = match &vm.uuid {
                None => identity::vm_uuid(&ename, &inst.name),
                Some(u) => match Uuid::parse_str(&u.value) {
                    Ok(id) => id,
                    Err(e) => {
                        once(
                            self,
                            Diag::error("megaplan::bad_uuid", format!("'{}' is not a UUID", u.value))
                                .label(u.span, e.to_string())
                                .help("write 8-4-4-4-12 hex digits, or leave uuid out: megaplan derives a stable one"),
                            "uuid",
                        );
                        identity::vm_uuid(&ename, &inst.name)
                    }
                },
            };
            let uuid_span = vm.uuid.as_ref().map_or(vm.name.span, |u| u.span);
            if let Some(prev) = uuids.insert(uuid, uuid_span) {
                self.err(
                    Diag::error(
                        "megaplan::duplicate_uuid",
                        format!("VM '{}' has the UUID {uuid} of another VM", inst.name),
                    )
                    .label(uuid_span, "used again here")
                    .label(prev, "first used here")
                    .help(if vm.name.value.contains('[') {
                        "a VM range with a fixed uuid gives every VM the same one: leave uuid out"
                            .to_string()
                    } else {
                        "each VM needs its own UUID; leave uuid out to get a stable derived one"
                            .to_string()
                    }),
                );
            }
            let memory_mib = match &vm.memory {
                None => 2048,
                Some(m) => {
                    match parse_size(&m.value, 1 << 20) {
                        Some(0) => {
                            once(
                                self,
                                Diag::error("megaplan::zero_memory", "a VM needs some memory")
                                    .label(m.span, "0")
                                    .help(
                                        "memory defaults to \"2048M\"; tiny guests run in \"256M\"",
                                    ),
                                "memory",
                            );
                            0
                        }
                        Some(b) if b < (1 << 20) => {
                            once(
                                self,
                                Diag::error(
                                    "megaplan::bad_memory",
                                    "memory is counted in whole MiB",
                                )
                                .label(m.span, "less than 1 MiB")
                                .help("write \"256M\" or \"2G\""),
                                "memory",
                            );
                            0
                        }
                        Some(b) => b >> 20,
                        None => {
                            once(self, Diag::error("megaplan::bad_memory", format!("'{}' is not an amount of memory", m.value))
                            .label(m.span, "not a size")
                            .help("write \"256M\" or \"2G\" (a bare number is MiB, as in minimega)"), "memory");
                            0
                        }
                    }
                }
            };
            let vcpus = match &vm.vcpus {
                None => 1,
                Some(c) if c.value <= 0 => {
                    once(
                        self,
                        Diag::error("megaplan::zero_vcpus", "a VM needs at least one vcpu")
                            .label(c.span, format!("{}", c.value))
                            .help("vcpus defaults to 1"),
                        "vcpus",
                    );
                    1
                }
                Some(c) if c.value > i64::from(MAX_VCPUS) => {
                    once(
                        self,
                        Diag::error(
                            "megaplan::bad_vcpus",
                            format!("{} vcpus are more than the VM's machine takes", c.value),
                        )
                        .label(c.span, format!("at most {MAX_VCPUS}"))
                        .help(format!(
                            "megaplan runs VMs on QEMU's q35 machine, which takes at most {MAX_VCPUS} vcpus"
                        )),
                        "vcpus",
                    );
                    1
                }
                Some(c) => c.value as u32,
            };
            self.check_socket_path(&ename, &inst.name, vm, &mut once);
            let snapshot = vm.snapshot.as_ref().is_none_or(|s| s.value);
            let kernel = vm.kernel.as_ref().map(|k| {
                let p = self.path(k);
                if first_of_range {
                    self.warn_missing(&p, k, "kernel");
                }
                p
            });
            let initrd = vm.initrd.as_ref().map(|k| {
                let p = self.path(k);
                if first_of_range {
                    self.warn_missing(&p, k, "initrd");
                }
                p
            });
            if kernel.is_none() && vm.disks.is_empty() {
                once(self, Diag::error("megaplan::nothing_to_boot", format!("VM '{}' has neither a kernel nor a disk to boot", inst.name))
                    .label(vm.name.span, "nothing to boot")
                    .help("add `kernel \"$images/miniccc.kernel\"` and `initrd \"$images/miniccc.initrd\"`"), "boot");
            }
            if vm.initrd.is_some()
                && vm.kernel.is_none()
                && let Some(i) = &vm.initrd
            {
                once(
                    self,
                    Diag::error(
                        "megaplan::initrd_without_kernel",
                        "an initrd needs a kernel",
                    )
                    .label(i.span, "initrd without kernel")
                    .help("add `kernel \"…\"` beside it"),
                    "initrd",
                );
            }

            // disks
            let mut vdisks = Vec::new();
            let mut mounts: HashMap<&str, SourceSpan> = HashMap::new();
            for vd in &vm.disks {
                if let Some(m) = &vd.mount {
                    if !m.value.starts_with('/')
                        || m.value.contains("..")
                        || m.value
                            .chars()
                            .any(|c| c.is_control() || c.is_whitespace() || c == ',')
                    {
                        once(
                            self,
                            Diag::error(
                                "megaplan::bad_mount",
                                format!("'{}' is not a usable mount point", m.value),
                            )
                            .label(
                                m.span,
                                "must be an absolute path without '..', spaces or commas",
                            )
                            .help("write mount=\"/bro\""),
                            "mount",
                        );
                    }
                    if let Some(prev) = mounts.insert(m.value.as_str(), m.span) {
                        once(
                            self,
                            Diag::error(
                                "megaplan::duplicate_mount",
                                format!("two disks are mounted at '{}'", m.value),
                            )
                            .label(m.span, "again here")
                            .label(prev, "first here")
                            .help("give each disk its own mount point"),
                            "mount2",
                        );
                    }
                }
                let source = if disk_names.contains(&vd.name.value.as_str()) {
                    disk_users.entry(vd.name.value.clone()).or_default().push((
                        inst.name.clone(),
                        vd.name.span,
                        snapshot,
                    ));
                    DiskSource::Named(vd.name.value.clone())
                } else if vd.name.value.contains('/')
                    || vd.name.value.contains('.')
                    || vd.name.value.starts_with('$')
                {
                    let p = self.path(&vd.name);
                    if first_of_range {
                        self.warn_missing(&p, &vd.name, "disk image");
                    }
                    if !snapshot {
                        exclusive_disks
                            .entry(p.display().to_string())
                            .or_insert((inst.name.clone(), vd.name.span));
                    }
                    DiskSource::Path(p)
                } else {
                    once(self, Diag::error("megaplan::unknown_disk", format!("there is no disk '{}'", vd.name.value))
                        .label(vd.name.span, "unknown disk")
                        .help(did_you_mean(&vd.name.value, disk_names.iter().copied()).unwrap_or_else(|| {
                            "define it with `disk \"NAME\" size=\"10G\"`, or give a path to an image file".to_string()
                        })), "disk");
                    continue;
                };
                vdisks.push(VmDiskSpec {
                    source,
                    mount: vd.mount.as_ref().map(|m| m.value.clone()),
                });
            }

            // nics
            let mut nics = Vec::new();
            for (i, nic) in vm.nics.iter().enumerate() {
                if !net_names.contains(&nic.network.value.as_str()) {
                    once(
                        self,
                        Diag::error(
                            "megaplan::unknown_network",
                            format!("there is no network '{}'", nic.network.value),
                        )
                        .label(nic.network.span, "unknown network")
                        .help(
                            did_you_mean(&nic.network.value, net_names.iter().copied())
                                .unwrap_or_else(|| {
                                    format!("define it with `network \"{}\"`", nic.network.value)
                                }),
                        ),
                        "nic",
                    );
                }
                let naddr = format!("{address}.nic[{i}]");
                let mac = match &nic.mac {
                    None => identity::mac(&ename, &naddr),
                    Some(m) => match parse_mac(&m.value) {
                        Ok(mac) => mac,
                        Err(e) => {
                            once(self, Diag::error("megaplan::bad_mac", format!("'{}' is not a valid MAC address", m.value))
                                .label(m.span, e)
                                .help("leave mac out and megaplan derives a stable, locally administered one"), "mac");
                            identity::mac(&ename, &naddr)
                        }
                    },
                };
                let mac_span = nic.mac.as_ref().map_or(nic.span, |m| m.span);
                if let Some(prev) = macs.insert(mac.clone(), mac_span) {
                    self.err(
                        Diag::error(
                            "megaplan::duplicate_mac",
                            format!("MAC {mac} is used by two nics"),
                        )
                        .label(mac_span, format!("{naddr} uses it again"))
                        .label(prev, "first used here")
                        .help("each nic needs its own MAC; leave mac out to get a derived one"),
                    );
                }
                let driver = nic
                    .driver
                    .as_ref()
                    .map_or_else(|| "virtio-net-pci".to_string(), |d| d.value.clone());
                if let Some(d) = &nic.driver
                    && !NIC_MODEL_NAMES.contains(&d.value.as_str())
                {
                    once(
                        self,
                        Diag::error(
                            "megaplan::bad_driver",
                            format!("'{}' is not a nic model megaplan supports", d.value),
                        )
                        .label(d.span, format!("expected one of: {}", NIC_MODEL_NAMES.join(", ")))
                        .help(
                            did_you_mean(&d.value, NIC_MODEL_NAMES.iter().copied()).unwrap_or_else(|| {
                                "`megaplan image build` includes guest drivers for these models only".to_string()
                            }),
                        ),
                        "driver",
                    );
                }
                // An image megaplan built says which nic models its guest can
                // drive: a nic it cannot gets no interface, and every later
                // nic's ethN would silently be another one.
                if let (Some(d), Some(models)) = (
                    &nic.driver,
                    initrd.as_deref().and_then(crate::image::read_nic_manifest),
                ) && NIC_MODEL_NAMES.contains(&d.value.as_str())
                    && !models.contains(&d.value)
                {
                    once(
                        self,
                        Diag::warning(
                            "megaplan::driver_not_in_image",
                            format!(
                                "the guest image has no driver for nic model '{}': this nic gets no interface in the guest, and the nics after it move down one ethN",
                                d.value
                            ),
                        )
                        .label(d.span, "no guest driver in the image")
                        .help(format!(
                            "the image's kernel drives: {} (see {}); use one of those, or build the image from a kernel with this driver",
                            if models.is_empty() { "none".to_string() } else { models.join(", ") },
                            crate::diag::escape(
                                &crate::image::nic_manifest(initrd.as_deref().unwrap_or(Path::new("")))
                                    .display()
                                    .to_string()
                            )
                        )),
                        "nicdriver",
                    );
                }
                nics.push(NicSpec {
                    index: i,
                    tap: identity::tap_name(&ename, &naddr),
                    address: naddr,
                    network: nic.network.value.clone(),
                    mac,
                    driver,
                });
            }

            // tags
            let mut tags = BTreeMap::new();
            for t in &vm.tags {
                if tags
                    .insert(t.key.value.clone(), t.value.value.clone())
                    .is_some()
                {
                    once(
                        self,
                        Diag::error(
                            "megaplan::duplicate_tag",
                            format!("tag '{}' is set twice", t.key.value),
                        )
                        .label(t.key.span, "set again here")
                        .help("a tag has one value"),
                        "tag",
                    );
                }
            }

            // after
            let mut after = Vec::new();
            for a in &vm.after {
                let names = match expand_range(&a.value) {
                    Ok(n) => n,
                    Err(e) => {
                        once(
                            self,
                            Diag::error(
                                "megaplan::bad_range",
                                format!("'{}' is not a VM name or range", a.value),
                            )
                            .label(a.span, e)
                            .help("a range looks like \"web[1-3]\" or \"web[01-10]\""),
                            "afterrange",
                        );
                        continue;
                    }
                };
                for name in names {
                    let a = &Sp::new(name, a.span);
                    if !vm_name_set.contains(a.value.as_str()) {
                        once(
                            self,
                            Diag::error(
                                "megaplan::unknown_vm",
                                format!("there is no VM '{}'", a.value),
                            )
                            .label(a.span, "unknown VM")
                            .help_opt(did_you_mean(&a.value, vm_names.iter().map(String::as_str))),
                            "after",
                        );
                    } else if a.value == inst.name {
                        self.err(
                            Diag::error(
                                "megaplan::after_cycle",
                                format!("VM '{}' waits for itself", inst.name),
                            )
                            .label(a.span, "after itself")
                            .help("remove it from `after`"),
                        );
                    } else if !after.contains(&a.value) {
                        after.push(a.value.clone());
                    }
                }
            }

            // qemu args
            let qemu_args: Vec<String> = vm.qemu_args.iter().map(|a| a.value.clone()).collect();
            for a in &vm.qemu_args {
                if a.value.chars().any(|c| c.is_control()) {
                    once(
                        self,
                        Diag::error(
                            "megaplan::bad_qemu_arg",
                            "a QEMU argument cannot contain control characters",
                        )
                        .label(a.span, "here")
                        .help("give each argument as its own string"),
                        "qemuarg",
                    );
                }
            }

            let boot_timeout_ms = match &vm.boot_timeout {
                Some(t) if first_of_range => self.boot_timeout(t),
                Some(t) => parse_duration_ms(&t.value).filter(|&ms| ms > 0),
                None => None,
            }
            .unwrap_or(default_boot_timeout);

            // cc steps
            let mut cc = Vec::new();
            for (i, step) in vm.cc.iter().enumerate() {
                let timeout_ms =
                    step.timeout
                        .as_ref()
                        .and_then(|t| match parse_duration_ms(&t.value) {
                            Some(0) | None => {
                                once(
                                    self,
                                    Diag::error(
                                        "megaplan::bad_duration",
                                        format!("'{}' is not a duration", t.value),
                                    )
                                    .label(t.span, "not a duration")
                                    .help("write \"30s\", \"5m\", \"1h30m\" or \"500ms\""),
                                    "timeout",
                                );
                                None
                            }
                            Some(ms) => Some(ms),
                        });
                let cmd = |c: &model::Command| match c {
                    model::Command::Shell(s) => CommandSpec::Shell(s.value.clone()),
                    model::Command::Argv(a) => {
                        CommandSpec::Argv(a.iter().map(|s| s.value.clone()).collect())
                    }
                };
                let empty_cmd = |c: &model::Command| match c {
                    model::Command::Shell(s) => s.value.trim().is_empty().then_some(s.span),
                    model::Command::Argv(a) => a.is_empty().then_some(step.span),
                };
                let action = match &step.action {
                    model::CcAction::Exec(c) | model::CcAction::Background(c) => {
                        let span = match c {
                            model::Command::Shell(s) => s.span,
                            model::Command::Argv(_) => step.span,
                        };
                        self.check_command_size(c, span, &mut once);
                        if let Some(span) = empty_cmd(c) {
                            once(
                                self,
                                Diag::error("megaplan::empty_command", "a cc step needs a command")
                                    .label(span, "empty")
                                    .help("for example: exec \"ip link set eth0 up\""),
                                "cmd",
                            );
                        }
                        if matches!(step.action, model::CcAction::Exec(_)) {
                            CcActionSpec::Exec(cmd(c))
                        } else {
                            if let Some(t) = &step.timeout {
                                once(
                                    self,
                                    Diag::warning(
                                        "megaplan::timeout_ignored",
                                        "a background step runs on: its timeout is ignored",
                                    )
                                    .label(t.span, "ignored")
                                    .help("use exec for a command that must finish"),
                                    "bgtimeout",
                                );
                            }
                            CcActionSpec::Background(cmd(c))
                        }
                    }
                    model::CcAction::Send { src: s, to } => {
                        let p = self.path(s);
                        if first_of_range {
                            self.warn_missing(&p, s, "file to send");
                        }
                        if !to.value.starts_with('/') {
                            once(
                                self,
                                Diag::error(
                                    "megaplan::relative_guest_path",
                                    format!("'{}' is not an absolute guest path", to.value),
                                )
                                .label(to.span, "must start with '/'")
                                .help("write to=\"/root/file\""),
                                "sendto",
                            );
                        }
                        CcActionSpec::Send {
                            src: p,
                            to: to.value.clone(),
                        }
                    }
                    model::CcAction::Recv {
                        src: s,
                        to,
                        max_size,
                    } => {
                        if !s.value.starts_with('/') {
                            once(
                                self,
                                Diag::error(
                                    "megaplan::relative_guest_path",
                                    format!("'{}' is not an absolute guest path", s.value),
                                )
                                .label(s.span, "must start with '/'")
                                .help("write recv \"/bro/capture.pcap\" to=\"captures\""),
                                "recvsrc",
                            );
                        }
                        let p = self.path(to);
                        let max_size = match max_size {
                            None => crate::agent::client::DEFAULT_MAX_RECV,
                            Some(m) => match parse_size(&m.value, 1) {
                                Some(n) if n > 0 => n,
                                _ => {
                                    once(
                                        self,
                                        Diag::error(
                                            "megaplan::bad_size",
                                            format!("'{}' is not a size", m.value),
                                        )
                                        .label(m.span, "max-size expected")
                                        .help("write max-size=\"10M\" (default 1G)"),
                                        "recvmax",
                                    );
                                    0
                                }
                            },
                        };
                        CcActionSpec::Recv {
                            src: s.value.clone(),
                            to: p,
                            max_size,
                        }
                    }
                };
                let allow_failure = step.allow_failure.as_ref().is_some_and(|a| a.value);
                let hash = hash_hex(&(&action, timeout_ms, allow_failure));
                cc.push(CcSpec {
                    index: i,
                    address: format!("{address}.cc[{i}]"),
                    action,
                    timeout_ms,
                    allow_failure,
                    hash,
                });
            }

            vms.push(VmSpec {
                name: inst.name.clone(),
                address,
                uuid,
                kernel,
                initrd,
                append: vm.append.as_ref().map(|a| a.value.clone()),
                memory_mib,
                vcpus,
                snapshot,
                boot_timeout_ms,
                disks: vdisks,
                nics,
                tags,
                after,
                qemu_args,
                cc,
            });
        }

        // non-snapshot disks used by more than one VM
        for (disk, users) in &disk_users {
            if users.len() > 1
                && let Some((vm, span, _)) = users.iter().find(|u| !u.2)
            {
                let other = users.iter().find(|u| &u.0 != vm).expect("len > 1");
                self.err(Diag::error("megaplan::shared_writable_disk", format!("disk '{disk}' is written directly by VM '{vm}' but also used by VM '{}'", other.0))
                    .label(*span, format!("'{vm}' has snapshot #false"))
                    .label(other.1, format!("'{}' uses it too", other.0))
                    .help("a disk without snapshot may be used by one VM only; keep snapshot #true on the others' VMs or give them their own disk"));
            }
        }

        // mirrors (needs every VM's nics)
        let mut mirror_seen: HashSet<String> = HashSet::new();
        let mut mirror_reported: HashSet<(usize, &'static str)> = HashSet::new();
        // By name, first wins (as a linear `find` would): lookups stay O(1) with 10,000s of VMs.
        let mut vm_by_name: HashMap<&str, &VmSpec> = HashMap::with_capacity(vms.len());
        for v in &vms {
            vm_by_name.entry(v.name.as_str()).or_insert(v);
        }
        for inst in &insts {
            let vm = inst.src;
            let Some(&dest) = vm_by_name.get(inst.name.as_str()) else {
                continue;
            };
            for m in &vm.mirrors {
                let mut report = |this: &mut Self, d: Diag, key: &'static str| {
                    if mirror_reported.insert((m.span.offset(), key)) {
                        this.err(d);
                    }
                };
                let direction = match m.direction.as_ref() {
                    None => Direction::Both,
                    Some(d) => match d.value.as_str() {
                        "both" => Direction::Both,
                        "ingress" => Direction::Ingress,
                        "egress" => Direction::Egress,
                        other => {
                            report(
                                self,
                                Diag::error(
                                    "megaplan::bad_direction",
                                    format!("unknown mirror direction '{other}'"),
                                )
                                .label(d.span, "expected \"both\", \"ingress\" or \"egress\"")
                                .help_opt(did_you_mean(other, ["both", "ingress", "egress"])),
                                "dir",
                            );
                            Direction::Both
                        }
                    },
                };
                let into = match &m.into {
                    None => 0usize,
                    Some(i) if i.value < 0 || i.value as usize >= dest.nics.len() => {
                        report(
                            self,
                            Diag::error(
                                "megaplan::mirror_index",
                                format!("VM '{}' has no nic {}", dest.name, i.value),
                            )
                            .label(
                                i.span,
                                format!(
                                    "'{}' has {}",
                                    dest.name,
                                    crate::diag::plural(dest.nics.len(), "nic")
                                ),
                            )
                            .help("into= counts this VM's nics from 0"),
                            "into",
                        );
                        continue;
                    }
                    Some(i) => i.value as usize,
                };
                if dest.nics.is_empty() {
                    report(
                        self,
                        Diag::error(
                            "megaplan::mirror_without_nic",
                            format!(
                                "VM '{}' mirrors traffic but has no nic to receive it",
                                dest.name
                            ),
                        )
                        .label(m.span, "mirror here")
                        .help(
                            "add `nic \"mon\"` to this VM: copies arrive on its nic 0 (or into=N)",
                        ),
                        "nonic",
                    );
                    continue;
                }
                let sources: Vec<(String, usize)> = match &m.source {
                    model::MirrorSource::Vm(src_vm) => {
                        let names = match expand_range(&src_vm.value) {
                            Ok(n) => n,
                            Err(e) => {
                                report(
                                    self,
                                    Diag::error(
                                        "megaplan::bad_range",
                                        format!("'{}' is not a VM name or range", src_vm.value),
                                    )
                                    .label(src_vm.span, e)
                                    .help("a range looks like \"web[1-3]\" or \"web[01-10]\""),
                                    "range",
                                );
                                continue;
                            }
                        };
                        let mut sources = Vec::new();
                        'names: for name in &names {
                            if *name == inst.name {
                                report(self, Diag::error("megaplan::mirror_self", format!("VM '{}' mirrors itself", inst.name))
                                    .label(src_vm.span, "this VM")
                                    .help("a VM cannot receive copies of its own traffic: mirror another VM"), "self");
                                continue 'names;
                            }
                            let Some(&src) = vm_by_name.get(name.as_str()) else {
                                if !vm_name_set.contains(name.as_str()) {
                                    report(
                                        self,
                                        Diag::error(
                                            "megaplan::unknown_vm",
                                            format!("there is no VM '{name}'"),
                                        )
                                        .label(src_vm.span, "unknown VM")
                                        .help_opt(
                                            did_you_mean(name, vm_names.iter().map(String::as_str)),
                                        ),
                                        "src",
                                    );
                                }
                                continue 'names;
                            };
                            let nic = match &m.nic {
                                None => 0usize,
                                Some(n) if n.value < 0 || n.value as usize >= src.nics.len() => {
                                    report(
                                        self,
                                        Diag::error(
                                            "megaplan::mirror_index",
                                            format!("VM '{}' has no nic {}", src.name, n.value),
                                        )
                                        .label(
                                            n.span,
                                            format!(
                                                "'{}' has {}",
                                                src.name,
                                                crate::diag::plural(src.nics.len(), "nic")
                                            ),
                                        )
                                        .help("nic= counts the mirrored VM's nics from 0"),
                                        "nic",
                                    );
                                    continue 'names;
                                }
                                Some(n) => n.value as usize,
                            };
                            if src.nics.is_empty() {
                                report(
                                    self,
                                    Diag::error(
                                        "megaplan::mirror_index",
                                        format!("VM '{}' has no nic to mirror", src.name),
                                    )
                                    .label(src_vm.span, "no nics")
                                    .help("mirror a VM that has a nic"),
                                    "nic0",
                                );
                                continue 'names;
                            }
                            sources.push((src.name.clone(), nic));
                        }
                        sources
                    }
                    model::MirrorSource::Network(net) => {
                        if let Some(n) = &m.nic {
                            report(
                                self,
                                Diag::error(
                                    "megaplan::mirror_nic_with_network",
                                    "nic= applies to a VM mirror, not a network mirror",
                                )
                                .label(n.span, "not with network=")
                                .help("a network mirror copies every tap of the network"),
                                "netnic",
                            );
                        }
                        if !net_names.contains(&net.value.as_str()) {
                            report(
                                self,
                                Diag::error(
                                    "megaplan::unknown_network",
                                    format!("there is no network '{}'", net.value),
                                )
                                .label(net.span, "unknown network")
                                .help_opt(did_you_mean(&net.value, net_names.iter().copied())),
                                "net",
                            );
                            continue;
                        }
                        if dest.nics[into].network == net.value {
                            report(self, Diag::error("megaplan::mirror_loop", format!("VM '{}' mirrors network '{}' into a nic on that same network", dest.name, net.value))
                                .label(net.span, "mirrored network")
                                .help("receive the copies on a nic of another network (into=N), or copies would be copied again"), "loop");
                            continue;
                        }
                        vms.iter()
                            .filter(|v| v.name != dest.name)
                            .flat_map(|v| {
                                v.nics
                                    .iter()
                                    .filter(|n| n.network == net.value)
                                    .map(|n| (v.name.clone(), n.index))
                            })
                            .collect()
                    }
                };
                // Every frame on a network is sent by one member: a network
                // mirror copies what each member sends (tap ingress), so each
                // frame arrives once. Both sides of every tap would copy a
                // unicast twice and a broadcast once per member.
                let direction = match (&m.source, direction) {
                    (model::MirrorSource::Network(_), Direction::Both) => Direction::Ingress,
                    (_, d) => d,
                };
                for (src_vm, nic) in sources {
                    let address = MirrorSpec::address_of(&src_vm, nic, &dest.name, into);
                    if !mirror_seen.insert(address.clone()) {
                        continue;
                    }
                    mirrors.push(MirrorSpec {
                        address,
                        source_vm: src_vm,
                        source_nic: nic,
                        dest_vm: dest.name.clone(),
                        dest_nic: into,
                        direction,
                        network: match &m.source {
                            model::MirrorSource::Network(n) => Some(n.value.clone()),
                            model::MirrorSource::Vm(_) => None,
                        },
                    });
                }
            }
        }

        // after cycles: name the whole cycle
        self.check_after_cycles(&insts, &vms);

        // interface name collisions (48-bit hashes: astronomically unlikely, but checked)
        let mut ifnames: HashMap<&str, &str> = HashMap::new();
        for n in &networks {
            if let Some(prev) = ifnames.insert(&n.bridge, &n.address) {
                self.err(
                    Diag::error(
                        "megaplan::ifname_collision",
                        format!(
                            "{} and {prev} would share interface name {}",
                            n.address, n.bridge
                        ),
                    )
                    .at(self.whole_file)
                    .help("rename one of them"),
                );
            }
        }
        for v in &vms {
            for n in &v.nics {
                if let Some(prev) = ifnames.insert(&n.tap, &n.address) {
                    self.err(
                        Diag::error(
                            "megaplan::ifname_collision",
                            format!(
                                "{} and {prev} would share interface name {}",
                                n.address, n.tap
                            ),
                        )
                        .at(self.whole_file)
                        .help("rename one of them"),
                    );
                }
            }
        }

        let (captures, checks) =
            crate::check::validate::captures_and_checks(doc, &vms, &networks, &mut self.d);

        if self.d.has_errors() {
            return None;
        }
        Some(Lab {
            captures,
            checks,
            name: exp_name?,
            file: src.path.clone(),
            images: self.images.clone(),
            accel,
            networks,
            disks,
            vms,
            mirrors,
        })
    }

    fn check_after_cycles(&mut self, insts: &[VmInst], vms: &[VmSpec]) {
        let mut g: DiGraph<&str, ()> = DiGraph::new();
        let idx: HashMap<&str, _> = vms
            .iter()
            .map(|v| (v.name.as_str(), g.add_node(v.name.as_str())))
            .collect();
        for v in vms {
            for a in &v.after {
                if let (Some(&from), Some(&to)) = (idx.get(a.as_str()), idx.get(v.name.as_str())) {
                    g.add_edge(from, to, ());
                }
            }
        }
        let mut reported = HashSet::new();
        for scc in petgraph::algo::tarjan_scc(&g) {
            if scc.len() < 2 {
                continue;
            }
            // Walk the cycle in order so the message reads A -> B -> A.
            let members: HashSet<_> = scc.iter().copied().collect();
            let start = *scc.iter().min_by_key(|n| g[**n]).expect("non-empty");
            let mut path = vec![start];
            let mut cur = start;
            loop {
                let next = g
                    .neighbors(cur)
                    .filter(|n| members.contains(n))
                    .min_by_key(|n| g[*n])
                    .expect("a strongly connected component has a successor");
                if next == start || path.contains(&next) {
                    path.push(next);
                    break;
                }
                path.push(next);
                cur = next;
            }
            let names: Vec<&str> = path.iter().map(|n| g[*n]).collect();
            let cycle = names.join(" -> ");
            if !reported.insert(cycle.clone()) {
                continue;
            }
            let mut d = Diag::error(
                "megaplan::after_cycle",
                format!("the `after` ordering has a cycle: {cycle}"),
            )
            .help("cc steps would wait for each other forever: remove one `after` of the cycle");
            // Label each `after` entry that makes an edge of the cycle.
            for w in names.windows(2) {
                let (first, then) = (w[0], w[1]);
                if let Some(inst) = insts.iter().find(|i| i.name == then)
                    && let Some(a) = inst.src.after.iter().find(|a| {
                        a.value == first
                            || expand_range(&a.value).is_ok_and(|n| n.iter().any(|n| n == first))
                    })
                {
                    d = d.label(a.span, format!("'{then}' waits for '{first}'"));
                }
            }
            self.err(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand() {
        assert_eq!(expand_range("web[1-3]").unwrap(), ["web1", "web2", "web3"]);
        assert_eq!(expand_range("n[08-10]").unwrap(), ["n08", "n09", "n10"]);
        assert_eq!(expand_range("n[1,4-5]").unwrap(), ["n1", "n4", "n5"]);
        assert_eq!(expand_range("plain").unwrap(), ["plain"]);
        assert!(expand_range("web[3-1]").is_err());
        assert!(expand_range("web[1-").is_err());
        assert!(expand_range("web[a-b]").is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10G", 1), Some(10 << 30));
        assert_eq!(parse_size("512M", 1), Some(512 << 20));
        assert_eq!(parse_size("2048", 1 << 20), Some(2048 << 20));
        assert_eq!(parse_size("10X", 1), None);
        assert_eq!(parse_size("G", 1), None);
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("30"), Some(30_000));
        assert_eq!(parse_duration_ms("30x"), None);
        assert_eq!(parse_duration_ms("s"), None);
    }

    #[test]
    fn macs_and_cidrs() {
        assert_eq!(parse_mac("02:AA:00:00:00:01").unwrap(), "02:aa:00:00:00:01");
        assert!(parse_mac("01:00:00:00:00:01").is_err());
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_cidr("10.0.0.1/24").is_ok());
        assert!(parse_cidr("10.0.0.1").is_err());
        assert!(parse_cidr("10.0.0.1/33").is_err());
        assert!(parse_cidr("fd00::1/64").is_ok());
    }

    fn check_kdl(text: &str) -> (Option<Lab>, Diagnostics) {
        check(&SourceFile::new("/nonexistent/t.kdl", text))
    }

    fn codes(d: &Diagnostics) -> Vec<&'static str> {
        d.errors().map(|d| d.code.as_str()).collect()
    }

    /// An image megaplan built lists the nic models its guest can drive: a
    /// nic model it lacks is a warning at validate (it used to make the
    /// guest's ethN silently another nic).
    #[test]
    fn a_nic_model_the_image_cannot_drive_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("g.initrd");
        std::fs::write(&initrd, b"x").unwrap();
        std::fs::write(dir.path().join("g.kernel"), b"x").unwrap();
        std::fs::write(
            crate::image::nic_manifest(&initrd),
            "# comment\nvirtio-net-pci\nvmxnet3\n",
        )
        .unwrap();
        let file = |driver: &str| {
            format!(
                "experiment \"x\"\nnetwork \"LAN\"\nvm \"A\" {{ kernel \"g.kernel\"; initrd \"g.initrd\"; nic \"LAN\" driver=\"{driver}\"; }}\n"
            )
        };
        let warned = |driver: &str| {
            let (lab, d) = check(&SourceFile::new(dir.path().join("t.kdl"), file(driver)));
            assert!(lab.is_some(), "{d:?}");
            d.warnings()
                .filter(|w| w.code == "megaplan::driver_not_in_image")
                .count()
        };
        assert_eq!(warned("e1000"), 1);
        assert_eq!(warned("rtl8139"), 1);
        assert_eq!(warned("vmxnet3"), 0);
        assert_eq!(warned("virtio-net-pci"), 0);
        // An image without a manifest (not built by megaplan) is not checked.
        std::fs::remove_file(crate::image::nic_manifest(&initrd)).unwrap();
        assert_eq!(warned("e1000"), 0);
    }

    #[test]
    fn host_addresses_must_be_addresses_of_a_host() {
        for bad in [
            "224.0.0.1/24",
            "255.255.255.255/24",
            "0.0.0.0/0",
            "10.0.0.1/0",
            "::/0",
            "::/64",
            "0.0.0.0/24",
            "127.0.0.1/8",
            "::1/128",
            "169.254.1.1/16",
            "fe80::1/64",
            "ff02::1/64",
            "10.0.0.0/24",
            "10.0.0.255/24",
            "240.0.0.1/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad} accepted");
        }
        for good in [
            "10.0.0.254/24",
            "192.168.1.1/31",
            "10.1.2.3/32",
            "fd00::1/64",
        ] {
            assert!(parse_cidr(good).is_ok(), "{good} refused");
        }
    }

    #[test]
    fn a_socket_path_over_sun_path_is_refused_with_its_length() {
        let long = "e".repeat(64);
        let vm = "v".repeat(60);
        let text = format!("experiment \"{long}\"\nvm \"{vm}\" {{ kernel \"/k\"; }}\n");
        let (lab, d) = check_kdl(&text);
        assert!(lab.is_none());
        let e = d
            .errors()
            .find(|e| e.code == "megaplan::socket_path_too_long")
            .expect("refused");
        let root = crate::host::runtime_root(&long).join(&vm).join("qmp.sock");
        let len = root.as_os_str().len();
        assert!(len > 107);
        assert!(e.message.contains(&format!("{len} bytes")), "{}", e.message);
        assert!(e.help.as_deref().unwrap().contains("MEGAPLAN_RUNTIME_DIR"));
        // A short pair of names fits.
        let (lab, d) = check_kdl("experiment \"x\"\nvm \"a\" { kernel \"/k\"; }\n");
        assert!(lab.is_some(), "{:?}", codes(&d));
    }

    #[test]
    fn an_exec_larger_than_a_frame_is_refused() {
        let big = "x".repeat(crate::agent::protocol::MAX_FRAME);
        let text =
            format!("experiment \"x\"\nvm \"a\" {{ kernel \"/k\"; cc {{ exec \"{big}\"; }} }}\n");
        let (lab, d) = check_kdl(&text);
        assert!(lab.is_none());
        assert_eq!(codes(&d), ["megaplan::command_too_large"]);
        // Escaping counts: a command of quotes doubles when encoded.
        let quotes = "\\\"".repeat(crate::agent::protocol::MAX_FRAME / 2 - 100);
        let text = format!(
            "experiment \"x\"\nvm \"a\" {{ kernel \"/k\"; cc {{ background \"{quotes}\"; }} }}\n"
        );
        let (_, d) = check_kdl(&text);
        assert_eq!(codes(&d), ["megaplan::command_too_large"]);
        let ok = "x".repeat(1000);
        let text =
            format!("experiment \"x\"\nvm \"a\" {{ kernel \"/k\"; cc {{ exec \"{ok}\"; }} }}\n");
        assert!(check_kdl(&text).0.is_some());
    }

    #[test]
    fn vcpus_are_bounded_by_the_machine_type() {
        let at = |n: u32| format!("experiment \"x\"\nvm \"a\" {{ kernel \"/k\"; vcpus {n}; }}\n");
        assert!(check_kdl(&at(MAX_VCPUS)).0.is_some());
        let (lab, d) = check_kdl(&at(MAX_VCPUS + 1));
        assert!(lab.is_none());
        assert_eq!(codes(&d), ["megaplan::bad_vcpus"]);
    }

    #[test]
    fn a_nul_in_any_value_is_refused() {
        for (prop, value) in [
            ("append", "console=ttyS0\\u{0}x"),
            ("initrd", "/i\\u{0}"),
            ("kernel", "/k\\u{0}"),
        ] {
            let text = if prop == "kernel" {
                format!("experiment \"x\"\nvm \"a\" {{ {prop} \"{value}\"; }}\n")
            } else {
                format!("experiment \"x\"\nvm \"a\" {{ kernel \"/k\"; {prop} \"{value}\"; }}\n")
            };
            let (lab, d) = check_kdl(&text);
            assert!(lab.is_none(), "{prop}");
            assert!(
                codes(&d).contains(&"megaplan::nul_byte"),
                "{prop}: {:?}",
                codes(&d)
            );
        }
        let text = "experiment \"x\"\nvm \"a\" { kernel \"/k\"; tags { role \"a\\u{0}\"; }; cc { exec \"ls\" \"/\\u{0}\"; send \"f\" to=\"/x\\u{0}\"; recv \"/y\\u{0}\" to=\"out\"; }; disk \"/d\\u{0}.qcow2\" mount=\"/m\"; }\n";
        let (_, d) = check_kdl(text);
        assert_eq!(
            d.errors()
                .filter(|e| e.code == "megaplan::nul_byte")
                .count(),
            5,
            "{:?}",
            d.errors().map(|e| &e.message).collect::<Vec<_>>()
        );
    }

    #[test]
    fn after_and_mirrors_take_ranges() {
        let text = r#"experiment "x"
network "LAN"
network "mon"
vm "web[1-3]" { kernel "/k"; nic "LAN"; }
vm "db" { kernel "/k"; nic "LAN"; after "web[1-2]" "web3"; }
vm "ids" { kernel "/k"; nic "mon"; mirrors "web[2-3]"; }
"#;
        let (lab, d) = check_kdl(text);
        let lab = lab.unwrap_or_else(|| panic!("{:?}", codes(&d)));
        let db = lab.vms.iter().find(|v| v.name == "db").unwrap();
        assert_eq!(db.after, ["web1", "web2", "web3"]);
        let mut sources: Vec<&str> = lab.mirrors.iter().map(|m| m.source_vm.as_str()).collect();
        sources.sort();
        assert_eq!(sources, ["web2", "web3"]);
        // A range naming a missing VM is an unknown VM, and a broken range says so.
        let (_, d) = check_kdl(&text.replace("\"web[1-2]\" \"web3\"", "\"web[2-4]\""));
        assert!(d.errors().any(|e| e.message == "there is no VM 'web4'"));
        let (_, d) = check_kdl(&text.replace("mirrors \"web[2-3]\"", "mirrors \"web[3-2]\""));
        assert_eq!(codes(&d), ["megaplan::bad_range"]);
    }

    #[test]
    fn structural_errors_do_not_hide_reference_errors() {
        let text = r#"experiment "x"
network "LAN" { host-adress "10.0.0.1/24"; }
vm "a" { kernel "/k"; nic "LNA"; }
"#;
        let (_, d) = check_kdl(text);
        assert_eq!(
            codes(&d),
            ["megaplan::unknown_key", "megaplan::unknown_network"]
        );
        // Inside the node that failed, findings would repeat the structural error.
        let text = r#"experiment "x"
network "LAN"
vm "a" { kernel "/k"; nic "LAN" bogus=1; mirrors "nobody"; }
"#;
        let (_, d) = check_kdl(text);
        assert_eq!(codes(&d), ["megaplan::unknown_key"]);
    }

    #[test]
    fn names() {
        assert!(name_problem("LAN").is_none());
        assert!(name_problem("web-1.a_b").is_none());
        assert!(name_problem("../etc").is_some());
        assert!(name_problem("a/b").is_some());
        assert!(name_problem("a\nb").is_some());
        assert!(name_problem("-x").is_some());
        assert!(name_problem("a b").is_some());
    }
}
