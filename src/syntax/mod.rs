//! Front ends: experiment text (KDL or TOML) to [`crate::model::Document`], and
//! back (`convert`).
//!
//! Invariants:
//! - Parsing never panics and never stops at the first problem: structural
//!   errors (syntax, unknown keys, wrong types) go into the returned
//!   [`Diagnostics`]; whatever could be read still lands in the document.
//! - Emitting then parsing gives back an equal document (spans aside).

pub mod kdl;
mod kdl_fast;
pub mod toml;

/// The properties of a `vm`, in the order the emitters write them (both syntaxes).
pub(crate) const VM_KEYS: &[&str] = &[
    "uuid",
    "kernel",
    "initrd",
    "append",
    "memory",
    "vcpus",
    "snapshot",
    "boot-timeout",
    "disk",
    "nic",
    "mirrors",
    "tags",
    "after",
    "qemu-args",
    "cc",
];

/// The keys of a `check`, in the order the emitters write them (both syntaxes).
pub(crate) const CHECK_KEYS: &[&str] = &[
    "from",
    "ping",
    "exec",
    "capture",
    "match",
    "expect",
    "exit",
    "stdout-contains",
    "stdout-matches",
    "at-least",
    "at-most",
    "none",
    "timeout",
    "retry",
    "after",
];

use crate::diag::{Diagnostics, SourceFile, Syntax};
use crate::model::Document;

/// Parse a file in the syntax its extension names.
pub fn parse(src: &SourceFile) -> (Document, Diagnostics) {
    match src.syntax() {
        Syntax::Kdl => kdl::parse(src),
        Syntax::Toml => toml::parse(src),
    }
}

/// Write a document in the given syntax.
pub fn emit(doc: &Document, syntax: Syntax) -> String {
    match syntax {
        Syntax::Kdl => kdl::emit(doc),
        Syntax::Toml => toml::emit(doc),
    }
}
