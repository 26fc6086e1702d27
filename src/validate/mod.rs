//! Validation: a [`Document`] becomes a [`Lab`], or a list of every problem.
//!
//! Validation is a row of small named passes, each in its own file, run in
//! order by [`Validator::run`] over the document and a shared context (the
//! diagnostics so far, the file's folder, `$images`):
//!
//! | pass | file | what it checks or builds |
//! |---|---|---|
//! | NUL bytes | `nul.rs` | no value holds a NUL |
//! | experiment | `experiment.rs` | one experiment node, its name, `images`, `accel`, `boot-timeout` |
//! | networks | `networks.rs` | names, duplicates, `host-address` |
//! | disks | `disks.rs` | names, duplicates, size, format, filesystem, `from`, `inject` |
//! | VM names | `names.rs` | ranges expand, names are safe, duplicates |
//! | VMs | `vms.rs` | per VM, in this order: UUID, memory and vcpus (`sizes.rs`), boot files, disks (`vm_disks.rs`), nics (`nics.rs`), tags, `after` references (`after.rs`), QEMU arguments, boot timeout, cc steps (`steps.rs`) |
//! | shared disks | `vm_disks.rs` | a disk written directly by one VM is used by no other |
//! | mirrors | `mirrors.rs` | sources, indexes, loops; expands network mirrors |
//! | `after` cycles | `after.rs` | names the whole cycle |
//!
//! Value parsers shared with other modules (names, ranges, sizes, durations,
//! MACs, CIDRs) are in `values.rs`; path resolution and "file not found"
//! warnings in `paths.rs`. Interface names are not validation's: the engine chooses
//! them (`Provider::assign_names`, after validation). A new kind of node gets its own pass file, called
//! from [`Validator::run`] after the passes whose results it needs.
//!
//! Invariants:
//! - Every check runs; errors are collected, never returned early, so a user
//!   sees all of them at once. A [`Lab`] is produced only when there is no error.
//! - Pure apart from reading file metadata for "file not found" warnings (and
//!   an image's nic manifest), each path at most once per run.
//! - Every label points at the exact value at fault.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use miette::SourceSpan;

use crate::diag::{Code, Diag, Diagnostics, SourceFile};
use crate::lab::*;
use crate::model::Document;

mod after;
mod bounds;
mod disks;
mod experiment;
mod locate;
mod mirrors;
mod names;
mod networks;
mod nics;
mod nul;
mod paths;
mod sizes;
mod steps;
mod values;
mod vm_disks;
mod vms;

#[cfg(test)]
mod tests;

pub use locate::locate;
pub use values::{
    expand_range, name_problem, parse_cidr, parse_duration_ms, parse_mac, parse_size,
};

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
            let follows = matches!(d.code, Code::NoExperiment | Code::SecondExperiment);
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
        exists: HashMap::new(),
        warned: HashSet::new(),
        nic_manifests: HashMap::new(),
    };
    let lab = v.run(doc, src);
    (lab, v.d)
}

/// What every pass shares: the diagnostics so far and how paths resolve.
struct Validator {
    d: Diagnostics,
    /// The experiment file's folder: relative paths are relative to it.
    base: PathBuf,
    /// The experiment's `images` folder, resolved (`$images`).
    images: Option<PathBuf>,
    whole_file: SourceSpan,
    /// Whether a path exists, asked once per path (10^5 VMs share a kernel).
    exists: HashMap<PathBuf, bool>,
    /// Missing files already warned about (one warning per path).
    warned: HashSet<PathBuf>,
    /// The nic models of an initrd's manifest, read once per initrd.
    nic_manifests: HashMap<PathBuf, Option<Vec<String>>>,
}

/// The nic models `driver=` accepts: those `image build` has guest drivers
/// for (`image::NIC_MODELS`).
pub const NIC_MODEL_NAMES: &[&str] = &["virtio-net-pci", "e1000", "e1000e", "rtl8139", "vmxnet3"];

/// The most vcpus QEMU's q35 machine (the one `drivers::qemu` launches) takes:
/// `max_cpus` of pc-q35 in QEMU 7.2 (pc-i440fx would be 255).
pub const MAX_VCPUS: u32 = 288;

impl Validator {
    fn err(&mut self, d: Diag) {
        self.d.push(d);
    }

    /// The passes, in order. Each reads the document (and what the passes
    /// before it built) and pushes what it finds; none stops the others.
    fn run(&mut self, doc: &Document, src: &SourceFile) -> Option<Lab> {
        if src.text.trim().is_empty() {
            self.err(
                Diag::error(Code::Empty, "the experiment file is empty")
                    .help("start with `experiment \"NAME\" { images \"images\" }` and add networks and VMs"),
            );
            return None;
        }
        self.check_nul(doc);
        let exp = self.experiment(doc);
        let ename = exp.name.as_deref().unwrap_or_default();
        let networks = self.networks(doc);
        let disks = self.disks(doc);
        let insts = self.vm_names(doc);
        let known = names::Known::new(doc, &insts);
        let vm_pass = self.vms(ename, exp.default_boot_timeout, &insts, &known);
        self.shared_writable_disks(&vm_pass.disk_users);
        let mut vms = vm_pass.vms;
        let mirrors = self.mirrors(&insts, &vms, &known);
        self.after_cycles(&insts, &vms);
        let provider_node = doc.experiment().and_then(|e| e.provider.as_ref());
        let provider = crate::minimega::placement::check(
            provider_node,
            ename,
            &doc.vms,
            &mut vms,
            &mirrors,
            &mut self.d,
        );
        // captures and checks: src/check/validate.rs (issue 16).
        let (captures, checks) =
            crate::check::validate::captures_and_checks(doc, &vms, &networks, &mut self.d);

        if self.d.has_errors() {
            return None;
        }
        Some(Lab {
            provider,
            provider_origin: match provider_node {
                Some(_) => crate::minimega::recorded::Origin::File,
                None => crate::minimega::recorded::Origin::Default,
            },
            captures,
            checks,
            name: exp.name?,
            file: src.path.clone(),
            images: self.images.clone(),
            accel: exp.accel,
            networks,
            disks,
            vms,
            mirrors,
        })
    }
}
