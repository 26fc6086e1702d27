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
//! - Before the kdl crate, the fast reader (`fast`) tries the file; it
//!   reads only a strict subset of KDL 2.0 and yields the same tree, spans
//!   included, so the result does not depend on which reader read the file.
//!
//! Layout (no module here uses one that uses it back; `layering` test below):
//! - `raw`: the tree both readers build (a leaf);
//! - `fast`: the strict single-pass reader of a KDL 2.0 subset, -> raw;
//! - `full`: the kdl crate fallback and its syntax errors, -> raw;
//! - `map`: raw -> model, with the structural diagnostics, -> raw;
//! - `emit`: model -> canonical KDL (uses none of the others).

mod emit;
mod fast;
mod full;
mod map;
mod raw;

pub use emit::emit;

use crate::diag::{Diagnostics, SourceFile};
use crate::model::Document;
use map::Parser;

/// Parse a KDL experiment file. Structural problems go into the diagnostics;
/// whatever could be read lands in the document.
pub fn parse(src: &SourceFile) -> (Document, Diagnostics) {
    parse_with(src, true)
}

/// [`parse`], with or without trying the fast reader first; the result is the
/// same either way (the differential tests check it).
fn parse_with(src: &SourceFile, fast: bool) -> (Document, Diagnostics) {
    let text = src.text.as_str();
    let mut p = Parser {
        text,
        diags: Diagnostics::default(),
    };
    let mut doc = Document::default();
    // The fast reader hands each top-level node over as it reads it and the
    // mapper frees it once mapped: the raw tree never exists whole beside the
    // document (10^5 VMs: ~470 MB less at the peak).
    if fast && fast::parse(text, &mut |node| p.node(node, &mut doc)).is_some() {
        return (doc, p.diags);
    }
    // Outside the fast reader's subset (possibly after some nodes were
    // mapped): start again from nothing, so what the full reader reports
    // does not depend on how far the fast one got.
    doc = Document::default();
    p.diags = Diagnostics::default();
    if let Some(nodes) = full::read(text, &mut p.diags) {
        for node in nodes {
            p.node(node, &mut doc);
        }
    }
    (doc, p.diags)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
#[allow(dead_code)]
#[path = "../../../examples/gen_lab.rs"]
mod gen_lab;

#[cfg(test)]
mod layering {
    //! Keeps the layout above: each module of `syntax::kdl` names only the
    //! siblings listed for it, so there is no import cycle.

    const MODULES: &[(&str, &str, &[&str])] = &[
        ("raw", include_str!("raw.rs"), &[]),
        ("fast", include_str!("fast.rs"), &["raw"]),
        ("full", include_str!("full.rs"), &["raw"]),
        ("map", include_str!("map.rs"), &["raw"]),
        ("emit", include_str!("emit.rs"), &[]),
    ];
    const SIBLINGS: &[&str] = &["raw", "fast", "full", "map", "emit", "tests"];

    /// The siblings a module names (`super::x`, `kdl::x`, `super::{x, ..}`)
    /// outside comments.
    fn names(src: &str) -> Vec<String> {
        let mut found = Vec::new();
        for line in src.lines().map(str::trim_start) {
            if line.starts_with("//") {
                continue;
            }
            for prefix in ["super::", "kdl::"] {
                for (i, _) in line.match_indices(prefix) {
                    let rest = &line[i + prefix.len()..];
                    let rest = rest.strip_prefix('{').unwrap_or(rest);
                    for part in rest.split([',', '}']) {
                        let name: String = part
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if SIBLINGS.contains(&name.as_str()) {
                            found.push(name);
                        }
                        if !rest.starts_with(|c: char| c.is_whitespace())
                            && !line[i..].contains('{')
                        {
                            break;
                        }
                    }
                }
            }
        }
        found
    }

    #[test]
    fn modules_name_only_their_lower_layers() {
        for (module, src, allowed) in MODULES {
            for used in names(src) {
                assert!(
                    allowed.contains(&used.as_str()),
                    "syntax/kdl/{module}.rs uses `{used}`; it may use only {allowed:?}"
                );
            }
        }
    }

    #[test]
    fn the_check_sees_a_sibling_use() {
        assert_eq!(names("use super::raw::{RawNode, fix};"), ["raw"]);
        assert_eq!(names("use super::{map, raw::X};"), ["map", "raw"]);
        assert!(names("// super::map in a comment").is_empty());
    }
}
