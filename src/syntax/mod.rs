//! Front ends: experiment text (KDL or TOML) to [`crate::model::Document`], and
//! back (`convert`).
//!
//! Invariants:
//! - Parsing never panics and never stops at the first problem: structural
//!   errors (syntax, unknown keys, wrong types) go into the returned
//!   [`Diagnostics`]; whatever could be read still lands in the document.
//! - Emitting then parsing gives back an equal document (spans aside).

pub mod kdl;
pub mod lang;
pub mod toml;

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

#[cfg(test)]
mod tests {
    use crate::diag::{Code, SourceFile};

    fn codes(name: &str, text: &str) -> Vec<Code> {
        let (_, diags) = super::parse(&SourceFile::new(name, text.to_string()));
        diags.items.iter().map(|d| d.code).collect()
    }

    /// The same mistake gets the same code whichever syntax it is written in.
    #[test]
    fn same_mistake_same_code_in_both_syntaxes() {
        let cases: &[(&str, &str, Code)] = &[
            (
                "vm \"a\" { kernal \"k\" }",
                "[vm.a]\nkernal = \"k\"",
                Code::UnknownKey,
            ),
            ("netwrk \"x\"", "[netwrk.x]", Code::UnknownKey),
            (
                "disk \"d\" sise=\"1G\"",
                "[disk.d]\nsise = \"1G\"",
                Code::UnknownKey,
            ),
            (
                "network \"n\" { host-adress \"10.0.0.1/24\" }",
                "[network.n]\nhost-adress = \"10.0.0.1/24\"",
                Code::UnknownKey,
            ),
            (
                "vm \"a\" { vcpus \"2\" }",
                "[vm.a]\nvcpus = \"2\"",
                Code::WrongType,
            ),
            (
                "disk \"d\" keep=\"yes\"",
                "[disk.d]\nkeep = \"yes\"",
                Code::WrongType,
            ),
            (
                "vm \"a\" { nic mac=\"02:00:00:00:00:01\" }",
                "[vm.a]\nnic = [{ mac = \"02:00:00:00:00:01\" }]",
                Code::MissingKey,
            ),
            (
                "disk \"d\" { inject \"a\" }",
                "[disk.d]\ninject = [{ src = \"a\" }]",
                Code::MissingKey,
            ),
            (
                "vm \"a\" { cc { send \"x\" } }",
                "[vm.a]\ncc = [{ send = \"x\" }]",
                Code::MissingKey,
            ),
            (
                "vm \"a\" { mirrors \"B\" network=\"LAN\" }",
                "[vm.a]\nmirrors = [{ vm = \"B\", network = \"LAN\" }]",
                Code::ConflictingKeys,
            ),
        ];
        for (kdl, toml, want) in cases {
            let k = codes("t.kdl", kdl);
            let t = codes("t.toml", toml);
            assert_eq!(k, [*want], "KDL {kdl:?}");
            assert_eq!(t, [*want], "TOML {toml:?}");
        }
    }
}
