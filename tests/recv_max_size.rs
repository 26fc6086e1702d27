//! `recv ... max-size=SIZE`: both syntaxes, validation, conversion and the
//! resolved lab (default 1 GiB).

use megaplan::diag::{SourceFile, Syntax};
use megaplan::lab::{CcActionSpec, Lab};
use megaplan::syntax;

const KDL: &str = r#"experiment "rx"
network "LAN"
vm "a" {
    kernel "vmlinuz"
    nic "LAN"
    cc {
        recv "/var/log/big" to="out" max-size="10M"
        recv "/etc/hostname" to="out"
    }
}
"#;

const TOML: &str = r#"[experiment]
name = "rx"

[network.LAN]

[vm.a]
kernel = "vmlinuz"
nic = ["LAN"]
cc = [
    { recv = "/var/log/big", to = "out", max-size = "10M" },
    { recv = "/etc/hostname", to = "out" },
]
"#;

fn check(name: &str, text: &str) -> (Option<Lab>, Vec<&'static str>, String) {
    let src = SourceFile::new(name, text);
    let (lab, diags) = megaplan::validate::check(&src);
    let codes = diags.items.iter().map(|d| d.code.as_str()).collect();
    (lab, codes, diags.render_plain(&src))
}

fn max_sizes(lab: &Lab) -> Vec<u64> {
    lab.vms[0]
        .cc
        .iter()
        .map(|s| match &s.action {
            CcActionSpec::Recv { max_size, .. } => *max_size,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn max_size_is_read_from_both_syntaxes_with_a_1g_default() {
    for (name, text) in [("rx.kdl", KDL), ("rx.toml", TOML)] {
        let (lab, _, rendered) = check(name, text);
        let lab = lab.unwrap_or_else(|| panic!("{name}: {rendered}"));
        assert_eq!(max_sizes(&lab), [10 << 20, 1 << 30], "{name}");
    }
}

#[test]
fn max_size_survives_conversion_both_ways() {
    let src = SourceFile::new("rx.kdl", KDL);
    let (doc, diags) = syntax::parse(&src);
    assert!(!diags.has_errors());
    let toml = syntax::emit(&doc, Syntax::Toml);
    assert!(toml.contains("max-size = \"10M\""), "{toml}");
    let (doc2, diags) = syntax::parse(&SourceFile::new("rx.toml", &toml));
    assert!(!diags.has_errors());
    let kdl = syntax::emit(&doc2, Syntax::Kdl);
    assert!(kdl.contains("max-size=\"10M\""), "{kdl}");
    let (lab, _, rendered) = check("again.kdl", &kdl);
    assert_eq!(max_sizes(&lab.expect(&rendered)), [10 << 20, 1 << 30]);
}

#[test]
fn a_bad_max_size_is_an_error_naming_it() {
    for (name, text) in [
        ("bad.kdl", KDL.replace("\"10M\"", "\"lots\"")),
        ("bad.toml", TOML.replace("\"10M\"", "\"lots\"")),
        ("zero.kdl", KDL.replace("\"10M\"", "\"0\"")),
    ] {
        let (lab, codes, rendered) = check(name, &text);
        assert!(lab.is_none(), "{name}");
        assert!(codes.contains(&"megaplan::bad_size"), "{name}: {rendered}");
        assert!(rendered.contains("max-size"), "{name}: {rendered}");
    }
}

#[test]
fn max_size_belongs_to_recv_only() {
    let kdl = "experiment \"rx\"\nvm \"a\" { cc { send \"f\" to=\"/f\" max-size=\"1M\"; }; }\n";
    let (lab, _, rendered) = check("send.kdl", kdl);
    assert!(lab.is_none(), "{rendered}");
    assert!(rendered.contains("max-size"), "{rendered}");
    let toml = "[experiment]\nname = \"rx\"\n\n[vm.a]\ncc = [{ send = \"f\", to = \"/f\", max-size = \"1M\" }]\n";
    let (lab, _, rendered) = check("send.toml", toml);
    assert!(lab.is_none(), "{rendered}");
    assert!(rendered.contains("max-size"), "{rendered}");
}
