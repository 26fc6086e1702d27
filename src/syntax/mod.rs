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
pub mod values;

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

    /// Both emitters write every key of the table, in the table's order: a
    /// key added to the table but not to an emitter fails here.
    #[test]
    fn emitters_follow_the_table() {
        let kdl = r#"
experiment "x" { images "i"; accel "tcg"; boot-timeout "9s" }
network "n" { host-address "10.0.0.254/24" }
disk "d" size="1G" format="qcow2" filesystem="ext4" keep=#true { from "b"; inject "s" "/d" }
vm "v" {
    uuid "11111111-1111-1111-1111-111111111111"
    kernel "k"
    initrd "i"
    append "a"
    memory "1G"
    vcpus 2
    snapshot #true
    boot-timeout "5s"
    host "mm1"
    disk "d" mount="/m"
    nic "n" mac="02:00:00:00:00:01" driver="e1000"
    mirrors "w" nic=0 into=0 direction="both"
    tags { role "x" }
    after "w"
    qemu-args "-no-reboot"
    cc { exec "true" timeout="1s" allow-failure=#true; background "b"; send "a" to="/b"; recv "/c" to="d" max-size="1M" }
}
"#;
        let (doc, diags) = super::parse(&SourceFile::new("t.kdl", kdl.to_string()));
        assert!(diags.is_empty(), "{diags:?}");
        // KDL: the vm block's child nodes, in order.
        let out = super::emit(&doc, crate::diag::Syntax::Kdl);
        let vm_block = &out[out.find("vm \"v\"").unwrap()..];
        let kids: Vec<&str> = vm_block
            .lines()
            .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| *w != "}")
            .collect();
        assert_eq!(kids, super::lang::VM.children());
        let disk_line = out.lines().find(|l| l.starts_with("disk ")).unwrap();
        let props: Vec<&str> = disk_line
            .split_whitespace()
            .filter_map(|w| w.split_once('=').map(|(k, _)| k))
            .collect();
        assert_eq!(props, super::lang::DISK.props());
        // TOML: the keys of the [vm.v] table, in order.
        let out = super::emit(&doc, crate::diag::Syntax::Toml);
        let vm_table = &out[out.find("[vm.v]").unwrap()..];
        let keys: Vec<&str> = vm_table
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .filter(|k| !k.starts_with(' '))
            .collect();
        assert_eq!(keys, super::lang::VM.toml_keys());
    }
}
