//! The KDL front end's tests: mapping, diagnostics, emitting, and the
//! differential tests of the fast reader against the kdl crate.

use kdl::KdlDocument;
use miette::SourceSpan;

use super::{emit, fast, full, parse, parse_with};
use crate::diag::{Code, Diagnostics, SourceFile};
use crate::model::{CcAction, Command, Document, MirrorSource, Sp, Tag};

fn parse_str(text: &str) -> (Document, Diagnostics) {
    parse(&SourceFile::new("test.kdl", text))
}

/// Parse text that must be free of diagnostics.
fn ok(text: &str) -> Document {
    let src = SourceFile::new("test.kdl", text);
    let (doc, diags) = parse(&src);
    assert!(diags.is_empty(), "{}", diags.render_plain(&src));
    doc
}

/// Parse text that must fail; return the diagnostic codes.
fn codes(text: &str) -> Vec<Code> {
    let (_, diags) = parse_str(text);
    assert!(diags.has_errors(), "expected errors in {text:?}");
    diags.items.iter().map(|d| d.code).collect()
}

fn slice(text: &str, span: SourceSpan) -> &str {
    &text[span.offset()..span.offset() + span.len()]
}

/// The document with every node-level `span` field zeroed: the model's
/// derived `PartialEq` compares those (only `Sp` ignores its span).
fn strip(doc: &Document) -> Document {
    let z = || SourceSpan::from(0..0);
    let mut d = doc.clone();
    d.experiments.iter_mut().for_each(|e| e.span = z());
    d.networks.iter_mut().for_each(|n| n.span = z());
    for disk in &mut d.disks {
        disk.span = z();
        disk.inject.iter_mut().for_each(|i| i.span = z());
    }
    for vm in &mut d.vms {
        vm.span = z();
        vm.disks.iter_mut().for_each(|x| x.span = z());
        vm.nics.iter_mut().for_each(|x| x.span = z());
        vm.mirrors.iter_mut().for_each(|x| x.span = z());
        vm.cc.iter_mut().for_each(|x| x.span = z());
    }
    d
}

fn assert_round_trip(doc: &Document) {
    let text = emit(doc);
    let again = ok(&text);
    assert_eq!(
        strip(&again),
        strip(doc),
        "parse(emit(d)) != d; emitted:\n{text}"
    );
    assert_eq!(emit(&again), text, "emit is not a fixpoint");
}

const FULL: &str = r#"
experiment "full" {
    images "imgs"
    accel "tcg"
}
network "LAN" {
    host-address "10.0.0.254/24"
}
network "mon"
disk "bro" size="10G" format="qcow2" filesystem="ext4" keep=#true {
    from "base.qcow2"
    inject "a/b" "/b"
    inject "c" "/d"
}
vm "web[1-3]" {
    uuid "11111111-1111-1111-1111-111111111111"
    kernel "$images/k"
    initrd "$images/i"
    append "console=ttyS0"
    memory 512
    vcpus 4
    snapshot #false
    disk "bro" mount="/bro"
    disk "/abs/x.img"
    nic "LAN" mac="02:00:00:00:00:01" driver="e1000"
    nic "mon"
    mirrors "A" "B" nic=1 into=2 direction="ingress"
    mirrors network="LAN"
    tags {
        role "web"
        "odd key" "v"
    }
    after "A" "B"
    after "C"
    qemu-args "-device" "virtio-rng-pci"
    cc {
        exec "ip link set eth0 up" timeout="30s" allow-failure=#true
        exec "sysctl" "-w" "x=1"
        background "tcpdump -i eth0"
        send "host/f" to="/guest/f"
        recv "/guest/out" to="results/"
    }
}
"#;

#[test]
fn maps_every_node_and_property() {
    let doc = ok(FULL);
    let e = &doc.experiments[0];
    assert_eq!(e.name.value, "full");
    assert_eq!(e.images.as_ref().unwrap().value, "imgs");
    assert_eq!(e.accel.as_ref().unwrap().value, "tcg");
    assert_eq!(slice(FULL, e.name.span), "\"full\"");

    assert_eq!(doc.networks.len(), 2);
    assert_eq!(doc.networks[0].name.value, "LAN");
    let ha = doc.networks[0].host_address.as_ref().unwrap();
    assert_eq!(ha.value, "10.0.0.254/24");
    assert_eq!(slice(FULL, ha.span), "\"10.0.0.254/24\"");
    assert!(doc.networks[1].host_address.is_none());

    let d = &doc.disks[0];
    assert_eq!(d.name.value, "bro");
    assert_eq!(d.size.as_ref().unwrap().value, "10G");
    assert_eq!(slice(FULL, d.size.as_ref().unwrap().span), "\"10G\"");
    assert_eq!(d.format.as_ref().unwrap().value, "qcow2");
    assert_eq!(d.filesystem.as_ref().unwrap().value, "ext4");
    assert!(d.keep.as_ref().unwrap().value);
    assert_eq!(slice(FULL, d.keep.as_ref().unwrap().span), "#true");
    assert_eq!(d.from.as_ref().unwrap().value, "base.qcow2");
    assert_eq!(d.inject.len(), 2);
    assert_eq!(d.inject[0].src.value, "a/b");
    assert_eq!(d.inject[0].dst.value, "/b");
    assert_eq!(slice(FULL, d.inject[1].span), "inject \"c\" \"/d\"");

    let vm = &doc.vms[0];
    assert_eq!(vm.name.value, "web[1-3]");
    assert_eq!(
        vm.uuid.as_ref().unwrap().value,
        "11111111-1111-1111-1111-111111111111"
    );
    assert_eq!(vm.kernel.as_ref().unwrap().value, "$images/k");
    assert_eq!(vm.initrd.as_ref().unwrap().value, "$images/i");
    assert_eq!(vm.append.as_ref().unwrap().value, "console=ttyS0");
    assert_eq!(vm.memory.as_ref().unwrap().value, "512");
    assert_eq!(slice(FULL, vm.memory.as_ref().unwrap().span), "512");
    assert_eq!(vm.vcpus.as_ref().unwrap().value, 4);
    assert!(!vm.snapshot.as_ref().unwrap().value);

    assert_eq!(vm.disks.len(), 2);
    assert_eq!(vm.disks[0].name.value, "bro");
    assert_eq!(vm.disks[0].mount.as_ref().unwrap().value, "/bro");
    assert!(vm.disks[1].mount.is_none());

    assert_eq!(vm.nics.len(), 2);
    assert_eq!(vm.nics[0].network.value, "LAN");
    assert_eq!(vm.nics[0].mac.as_ref().unwrap().value, "02:00:00:00:00:01");
    assert_eq!(vm.nics[0].driver.as_ref().unwrap().value, "e1000");

    assert_eq!(vm.mirrors.len(), 3);
    for (m, want) in vm.mirrors[..2].iter().zip(["A", "B"]) {
        assert_eq!(m.source, MirrorSource::Vm(Sp::bare(want.to_string())));
        assert_eq!(m.nic.as_ref().unwrap().value, 1);
        assert_eq!(m.into.as_ref().unwrap().value, 2);
        assert_eq!(m.direction.as_ref().unwrap().value, "ingress");
    }
    assert_eq!(
        vm.mirrors[2].source,
        MirrorSource::Network(Sp::bare("LAN".into()))
    );
    assert!(vm.mirrors[2].nic.is_none());

    assert_eq!(vm.tags.len(), 2);
    assert_eq!(vm.tags[0].key.value, "role");
    assert_eq!(slice(FULL, vm.tags[0].key.span), "role");
    assert_eq!(vm.tags[0].value.value, "web");
    assert_eq!(vm.tags[1].key.value, "odd key");

    let after: Vec<_> = vm.after.iter().map(|a| a.value.as_str()).collect();
    assert_eq!(after, ["A", "B", "C"]);
    let qa: Vec<_> = vm.qemu_args.iter().map(|a| a.value.as_str()).collect();
    assert_eq!(qa, ["-device", "virtio-rng-pci"]);

    assert_eq!(vm.cc.len(), 5);
    let s0 = &vm.cc[0];
    assert_eq!(
        s0.action,
        CcAction::Exec(Command::Shell(Sp::bare("ip link set eth0 up".into())))
    );
    assert_eq!(s0.timeout.as_ref().unwrap().value, "30s");
    assert!(s0.allow_failure.as_ref().unwrap().value);
    assert_eq!(
        vm.cc[1].action,
        CcAction::Exec(Command::Argv(vec![
            Sp::bare("sysctl".into()),
            Sp::bare("-w".into()),
            Sp::bare("x=1".into())
        ]))
    );
    assert_eq!(vm.cc[2].action.keyword(), "background");
    assert_eq!(
        vm.cc[3].action,
        CcAction::Send {
            src: Sp::bare("host/f".into()),
            to: Sp::bare("/guest/f".into())
        }
    );
    assert_eq!(
        vm.cc[4].action,
        CcAction::Recv {
            src: Sp::bare("/guest/out".into()),
            to: Sp::bare("results/".into()),
            max_size: None,
        }
    );
    assert_round_trip(&doc);
}

#[test]
fn keeps_every_experiment_node() {
    let doc = ok("experiment \"a\"\nexperiment \"b\"\n");
    assert_eq!(doc.experiments.len(), 2);
}

#[test]
fn memory_as_string_and_number() {
    let doc = ok("vm \"a\" { memory \"2048M\"; }\nvm \"b\" { memory 1024; }");
    assert_eq!(doc.vms[0].memory.as_ref().unwrap().value, "2048M");
    assert_eq!(doc.vms[1].memory.as_ref().unwrap().value, "1024");
}

#[test]
fn kdl_v1_is_accepted() {
    let v1 = r##"
experiment "old" {
    images "images"
}
disk "bro" size="10G" format="qcow2" keep=true
vm "monitor" {
    snapshot false
    disk "bro" mount="/bro"
    exec_raw r#"a "quoted" \ path"#
}
"##;
    // The unknown node is deliberate: v1 parsing must still map and check.
    let (doc, diags) = parse_str(v1);
    assert_eq!(diags.items.len(), 1, "{diags:?}");
    assert_eq!(diags.items[0].code, "megaplan::unknown_key");
    assert_eq!(slice(v1, diags.items[0].labels[0].span), "exec_raw");
    assert!(doc.disks[0].keep.as_ref().unwrap().value);
    assert!(!doc.vms[0].snapshot.as_ref().unwrap().value);
    assert_eq!(slice(v1, doc.disks[0].keep.as_ref().unwrap().span), "true");

    let clean = ok(&v1.replace("    exec_raw r#\"a \"quoted\" \\ path\"#\n", ""));
    assert_eq!(clean.vms[0].disks[0].name.value, "bro");
    assert_round_trip(&clean);
}

fn example(name: &str) -> String {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn examples_round_trip() {
    for name in ["tap-mirror.kdl", "bro-capture.kdl", "lab.kdl"] {
        let doc = ok(&example(name));
        assert_eq!(doc.experiments.len(), 1, "{name}");
        assert!(!doc.vms.is_empty(), "{name}");
        assert_round_trip(&doc);
    }
}

#[test]
fn tap_mirror_example_maps() {
    let doc = ok(&example("tap-mirror.kdl"));
    assert_eq!(doc.experiments[0].name.value, "tap-mirror");
    let nets: Vec<_> = doc.networks.iter().map(|n| n.name.value.as_str()).collect();
    assert_eq!(nets, ["LAN", "mon"]);
    let vms: Vec<_> = doc.vms.iter().map(|v| v.name.value.as_str()).collect();
    assert_eq!(vms, ["A", "B", "monitor"]);
    assert_eq!(doc.vms[0].cc.len(), 2);
    assert_eq!(
        doc.vms[2].mirrors[0].source,
        MirrorSource::Vm(Sp::bare("A".into()))
    );
}

#[test]
fn emit_is_canonical() {
    let doc = ok(r#"network "b"; experiment "x" { images "i"; }; network "a"
            vm "v" { cc { exec "echo \"hi\" \\ there"; }; snapshot #true; }"#);
    assert_eq!(
        emit(&doc),
        r#"experiment "x" {
    images "i"
}

network "b"
network "a"

vm "v" {
    snapshot #true
    cc {
        exec "echo \"hi\" \\ there"
    }
}
"#
    );
}

#[test]
fn awkward_strings_round_trip() {
    let mut doc = ok("experiment \"x\"\nvm \"a\" { tags { k \"v\"; }; }");
    let weird =
        "quote\" back\\ nl\n tab\t cr\r nul\u{0} del\u{7f} ls\u{2028} bom\u{feff} é 日本 #true";
    doc.experiments[0].name = Sp::bare(weird.to_string());
    doc.vms[0].name = Sp::bare(String::new());
    doc.vms[0].tags[0].key = Sp::bare(weird.to_string());
    doc.vms[0].tags.push(Tag {
        key: Sp::bare("true".into()),
        value: Sp::bare("".into()),
    });
    doc.vms[0].tags.push(Tag {
        key: Sp::bare("1abc".into()),
        value: Sp::bare("x".into()),
    });
    doc.vms[0].tags.push(Tag {
        key: Sp::bare("-1".into()),
        value: Sp::bare("x".into()),
    });
    assert_round_trip(&doc);
}

#[test]
fn unknown_property_suggests() {
    let text = "vm \"m\" {\n    mirrors \"A\" dirction=\"ingress\"\n}\n";
    let (doc, diags) = parse_str(text);
    assert_eq!(diags.items.len(), 1);
    let d = &diags.items[0];
    assert_eq!(d.code, "megaplan::unknown_key");
    assert_eq!(d.help.as_deref(), Some("did you mean 'direction'?"));
    assert_eq!(slice(text, d.labels[0].span), "dirction=\"ingress\"");
    // The rest of the node is still read.
    assert_eq!(doc.vms[0].mirrors.len(), 1);
}

#[test]
fn unknown_node_suggests() {
    let text = "experiment \"x\"\nvm \"m\" {\n    mirror \"A\"\n}\nnetwrok \"LAN\"\n";
    let (_, diags) = parse_str(text);
    let helps: Vec<_> = diags.items.iter().map(|d| d.help.as_deref()).collect();
    assert_eq!(
        helps,
        [
            Some("did you mean 'mirrors'?"),
            Some("did you mean 'network'?")
        ]
    );
    assert_eq!(slice(text, diags.items[0].labels[0].span), "mirror");
    assert_eq!(slice(text, diags.items[1].labels[0].span), "netwrok");
}

#[test]
fn collects_every_error() {
    let text = r#"experiment "bad" {
    imagse "images"
}
network "LAN" host-address="10.0.0.254/24"
disk "data" size="1G" format="qcow2" keep="no"
vm "A" {
    kernel 42
    vcpus "four"
    nic
    mirors "B"
    kernel "x" "y"
    cc {
        exec
        send "x"
    }
}
"#;
    let (doc, diags) = parse_str(text);
    let got: Vec<_> = diags.items.iter().map(|d| d.code).collect();
    assert_eq!(
        got,
        [
            "megaplan::unknown_key",
            "megaplan::unknown_key",
            "megaplan::wrong_type",
            "megaplan::wrong_type",
            "megaplan::wrong_type",
            "megaplan::missing_key",
            "megaplan::unknown_key",
            "megaplan::duplicate",
            "megaplan::too_many_arguments",
            "megaplan::missing_key",
            "megaplan::missing_key",
        ],
        "{}",
        diags.render_plain(&SourceFile::new("t.kdl", text))
    );
    // What could be read is still there.
    assert_eq!(doc.networks.len(), 1);
    assert_eq!(doc.disks[0].size.as_ref().unwrap().value, "1G");
    assert!(doc.disks[0].keep.is_none());
    assert_eq!(doc.vms.len(), 1);
    let wrong_keep = &diags.items[2];
    assert_eq!(slice(text, wrong_keep.labels[0].span), "\"no\"");
    let help = diags.items[1].help.as_deref().unwrap();
    assert!(help.contains("child node"), "{help}");
}

#[test]
fn structural_error_codes() {
    assert_eq!(codes("vm \"a\" { vcpus \"2\"; }"), ["megaplan::wrong_type"]);
    assert_eq!(codes("vm \"a\" { kernel 1.5; }"), ["megaplan::wrong_type"]);
    assert_eq!(
        codes("vm \"a\" { snapshot \"true\"; }"),
        ["megaplan::wrong_type"]
    );
    assert_eq!(
        codes("vm \"a\" { kernel #null; }"),
        ["megaplan::wrong_type"]
    );
    assert_eq!(codes("vm { kernel \"k\"; }"), ["megaplan::missing_key"]);
    assert_eq!(
        codes("network \"a\" \"b\""),
        ["megaplan::too_many_arguments"]
    );
    assert_eq!(
        codes("vm \"a\" { nic \"LAN\" { mac \"x\"; }; }"),
        ["megaplan::unexpected_children"]
    );
    assert_eq!(
        codes("disk \"d\" size=\"1G\" size=\"2G\""),
        ["megaplan::duplicate"]
    );
    assert_eq!(
        codes("vm \"a\" { kernel \"a\"; kernel \"b\"; }"),
        ["megaplan::duplicate"]
    );
    assert_eq!(
        codes("vm \"a\" { tags { k \"1\"; k \"2\"; }; }"),
        ["megaplan::duplicate"]
    );
    assert_eq!(
        codes("vm \"a\" { mirrors \"b\" network=\"LAN\"; }"),
        ["megaplan::conflicting_keys"]
    );
    assert_eq!(codes("vm \"a\" { mirrors; }"), ["megaplan::missing_key"]);
    assert_eq!(
        codes("vm \"a\" { cc { recv \"x\"; }; }"),
        ["megaplan::missing_key"]
    );
    assert_eq!(
        codes("vm \"a\" { vcpus (u8)2; }"),
        ["megaplan::kdl::type_annotation"]
    );
    assert_eq!(
        codes("vm \"a\" { vcpus 99999999999999999999; }"),
        ["megaplan::wrong_type"]
    );
    assert_eq!(
        codes("vm \"a\" { tags 1; }"),
        ["megaplan::too_many_arguments"]
    );
}

#[test]
fn labels_point_at_the_offender() {
    let text = "vm \"a\" {\n    nic \"LAN\" {\n        mac \"x\"\n    }\n    vcpus \"2\"\n}\n";
    let (_, diags) = parse_str(text);
    assert_eq!(
        slice(text, diags.items[0].labels[0].span),
        "{\n        mac \"x\"\n    }"
    );
    assert_eq!(slice(text, diags.items[1].labels[0].span), "\"2\"");
    assert_eq!(
        diags.items[1].help.as_deref(),
        Some("write 2 without quotes")
    );
}

#[test]
fn syntax_errors_are_rebuilt() {
    let text = "experiment \"x\"\ndisk \"bro\" size=10G format=\"qcow2\"\n";
    let (doc, diags) = parse_str(text);
    assert_eq!(doc, Document::default());
    let d = &diags.items[0];
    assert_eq!(d.code, "megaplan::kdl::syntax");
    assert_eq!(slice(text, d.labels[0].span), "10G");
    assert!(d.help.as_deref().unwrap().contains("\"10G\""));

    let text = "vm \"a\" {\n    kernel \"x\n}\n";
    let (_, diags) = parse_str(text);
    assert!(!diags.is_empty());
    assert!(
        diags
            .items
            .iter()
            .all(|d| d.code == "megaplan::kdl::syntax")
    );
    let rendered = diags.render_plain(&SourceFile::new("t.kdl", text));
    assert!(rendered.contains("t.kdl:2:"), "{rendered}");

    // Both versions fail: the KDL 2.0 errors are reported.
    let text = "disk \"d\" keep=#true\nvm \"a\" { snapshot false; }\n";
    let (_, diags) = parse_str(text);
    assert_eq!(diags.items.len(), 1, "{diags:?}");
    assert_eq!(slice(text, diags.items[0].labels[0].span), "false");
    assert!(diags.items[0].help.as_deref().unwrap().contains("#false"));
}

#[test]
fn empty_and_comment_only_files() {
    assert_eq!(ok(""), Document::default());
    assert_eq!(ok("// nothing\n/* here */\n"), Document::default());
    assert_eq!(emit(&Document::default()), "");
}

#[test]
fn garbage_does_not_panic() {
    let mut inputs: Vec<String> = vec![
        "\u{0}".into(),
        "{".into(),
        "}".into(),
        "\"".into(),
        "vm \"é".into(),
        "vm \"日本\" {{{{".into(),
        "vm \"a\" { mirrors \"é\" nic=\"é\" into=1e400 direction=#nan }".into(),
        "vm=1".into(),
        "r#\"".into(),
        "#\"\"\"\n".into(),
        "vm \"a\" size=10Gé".into(),
        "(\u{feff})vm".into(),
        "\u{feff}vm \"a\"".into(),
        "vm \"a\" { tags { (t)\"é\" (t)1; }; cc { exec; send; recv to=1; }; }".into(),
        "- - - = = = ;;; {} {} /-".into(),
    ];
    let base = format!("{FULL}{}", example("lab.kdl"));
    let cut: Vec<usize> = (0..=base.len())
        .filter(|i| base.is_char_boundary(*i))
        .step_by(41)
        .collect();
    for &i in &cut {
        inputs.push(base[..i].to_string());
    }
    for (n, i) in cut.iter().enumerate().step_by(3) {
        let mut s = base.clone();
        let junk = ["\"", "{", "}", "=", "é", ";", "#", "1", "\n", "/*"][n % 10];
        s.insert_str(*i, junk);
        inputs.push(s);
    }
    for (n, text) in inputs.iter().enumerate() {
        let src = SourceFile::new("fuzz.kdl", text.clone());
        let (doc, diags) = parse(&src);
        if n % 5 == 0 {
            let _ = diags.render_plain(&src);
        }
        let _ = emit(&doc);
    }
}

// -- the fast reader against the kdl crate ----------------------------------

/// When the fast reader accepts `text`: the kdl crate reads it as KDL 2.0
/// into the same tree, raw spans included, and `parse` gives the same
/// document and diagnostics, spans included, as the kdl-crate path.
/// Returns whether the fast reader accepted the text.
///
/// When it rejects `text` (perhaps after handing over and mapping some
/// nodes), `parse` still gives exactly what the kdl-crate path gives.
fn same_as_kdl_crate(text: &str) -> bool {
    check_against_kdl_crate(text, true)
}

/// [`same_as_kdl_crate`]; `check_rejected` false skips the (slow, two kdl
/// crate parses) comparison when the fast reader rejects `text`.
fn check_against_kdl_crate(text: &str, check_rejected: bool) -> bool {
    let mut fast = Vec::new();
    let accepted = fast::parse(text, &mut |n| fast.push(n)).is_some();
    if accepted {
        let slow = KdlDocument::parse_v2(text).map(|d| full::list(&d));
        assert_eq!(Ok(&fast), slow.as_ref(), "tree differs for {text:?}");
    } else if !check_rejected {
        return false;
    }
    let src = SourceFile::new("t.kdl", text);
    let (fast_doc, fast_diags) = parse(&src);
    let (slow_doc, slow_diags) = parse_with(&src, false);
    // Debug output shows every span; the model's PartialEq ignores `Sp`'s.
    assert_eq!(
        format!("{fast_doc:#?}"),
        format!("{slow_doc:#?}"),
        "{text:?}"
    );
    assert_eq!(
        format!("{fast_diags:#?}"),
        format!("{slow_diags:#?}"),
        "{text:?}"
    );
    accepted
}

/// The fast reader hands each top-level node over as soon as it is read,
/// before it reads the next: the caller maps and frees it, so the raw tree of
/// a large file never exists whole.
#[test]
fn fast_reader_hands_nodes_over_one_at_a_time() {
    let text = "vm \"a\" { kernel \"k\" }\nnetwork \"n\"\ndisk \"d\" size=0x10\nvm \"b\"\n";
    let mut seen = Vec::new();
    let read = fast::parse(text, &mut |n| seen.push(n.name.value));
    // Rejected at the hex number, after the two nodes before it were handed over.
    assert_eq!(read, None);
    assert_eq!(seen, ["vm", "network"]);
    let mut seen = Vec::new();
    let read = fast::parse("vm \"a\"; network \"n\"\n\nvm \"b\"", &mut |n| {
        seen.push(n.name.value)
    });
    assert_eq!(read, Some(()));
    assert_eq!(seen, ["vm", "network", "vm"]);
}

/// A file the fast reader gives up on late, after it has mapped nodes with
/// problems: the result is the full reader's alone (each problem reported
/// once, the document not holding the fast reader's nodes twice).
#[test]
fn fallback_after_mapped_nodes_starts_again() {
    let text = "experiment \"x\"\nvm \"a\" { kernal \"k\" }\nnetwork \"n\"\ndisk \"d\" size=0x10\n";
    let src = SourceFile::new("t.kdl", text);
    let (doc, diags) = parse(&src);
    let (slow_doc, slow_diags) = parse_with(&src, false);
    assert_eq!(format!("{doc:#?}"), format!("{slow_doc:#?}"));
    assert_eq!(format!("{diags:#?}"), format!("{slow_diags:#?}"));
    let codes: Vec<Code> = diags.items.iter().map(|d| d.code).collect();
    assert_eq!(
        codes.iter().filter(|c| **c == Code::UnknownKey).count(),
        1,
        "{codes:?}"
    );
    assert_eq!(doc.vms.len(), 1);
    assert_eq!(doc.networks.len(), 1);
    assert_eq!(doc.disks.len(), 1);
}

fn kdl_files(dir: &str) -> Vec<(String, String)> {
    let dir = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "kdl"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.display().to_string(), text)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn fast_reader_matches_kdl_crate_on_files() {
    let mut accepted = Vec::new();
    for dir in ["examples", "tests/bad/kdl", "tests/bad/semantic"] {
        for (path, text) in kdl_files(dir) {
            if same_as_kdl_crate(&text) {
                accepted.push(path);
            } else {
                assert!(dir != "examples", "fast reader rejected {path}");
            }
        }
    }
    assert!(accepted.len() > 30, "{accepted:?}");
    assert!(same_as_kdl_crate(&super::gen_lab::generate(50)));
    // Also every document used in the tests above.
    assert!(same_as_kdl_crate(FULL));
}

#[test]
fn fast_reader_on_tricky_inputs() {
    let accepted = [
        "",
        "// only a comment",
        "vm \"a\"",
        "vm \"a\";",
        "vm \"a\"; vm \"b\";\n",
        "\n\n  vm \"a\"  \n\n",
        "vm \"a\" {}",
        "vm \"a\" { }",
        "vm \"a\" {\n}\n",
        "vm \"a\" { kernel \"k\"}",
        "vm \"a\" { kernel \"k\"; }; network \"n\"",
        "vm \"a\" {\r\n    kernel \"k\"\r\n}\r\n",
        "vm \"a\" { tags { \"odd key\" \"v\"; k \"é 日本\"; }; }",
        "\"quoted name\" \"x\"",
        "disk \"d\" size=\"1G\" keep=#true format=#null",
        "disk \"d\" \"size\"=\"1G\"",
        "disk \"d\" size=10 size=-5 size=+7 size=1.5 size=-0.25 size=007",
        "vm \"a\" { vcpus 123456789012345678; }",
        "vm \"a\" { kernel \"\\n\\t\\r\\b\\f\\s\\\\\\\"\\u{41}\\u{1F600}\\u{0}\"; }",
        "vm \"a\" { kernel \"tab\there\"; }",
        "vm \"a\" /* c */ { /* { */ kernel /* x */ \"k\" /* y */ }",
        "vm \"a\" /* a /* nested */ comment */ {\n}",
        "vm \"a\" { kernel \"k\" // comment\n}",
        "vm \"a\" // comment\nvm \"b\"",
        "vm \"a\" {\n    kernel \"k\" \\\n        \"more\"\n}",
        "vm \"a\" \\ // continued\n    \"b\"",
        "vm \"a\"\t{\tkernel\t\"k\"\t}",
        "vm \"a\" { cc { exec \"x\" timeout=\"1s\" allow-failure=#false; }; }",
        "vm \"a\" {\n    kernel \"k\";  \n}\n",
        "a.b-c_d:e \"x\"",
        "vm \"a\" { kernel 1.5; }",
        "vm \"a\" { memory 512 ; }",
        "vm \"a\" { tags { k \"1\"; k \"2\"; }; }",
        "vm \"a\" { nic \"LAN\" { mac \"x\"; }; }",
        "vm \"a\" { snapshot \"true\"; }",
        "vm \"a\" {\n    kernel \"x\" \"y\"\n    nic\n    unknown \"z\" w=1\n}\n",
        "vm \"a\"/* c */\"b\"",
        "vm \"a\"\\\n\"b\"",
    ];
    for text in accepted {
        assert!(same_as_kdl_crate(text), "fast reader rejected {text:?}");
    }
    let rejected = [
        "\u{feff}vm \"a\"",
        "vm \"a\" size=1_000",
        "vm \"a\" size=0x10",
        "vm \"a\" size=0o7",
        "vm \"a\" size=0b1",
        "vm \"a\" size=1.5e3",
        "vm \"a\" size=1e3",
        "vm \"a\" size=1.",
        "vm \"a\" size=.5",
        "vm \"a\" size=10G",
        "vm \"a\" size=1234567890123456789",
        "vm \"a\" x=#inf",
        "vm \"a\" x=#nan",
        "vm \"a\" x=#-inf",
        "vm \"a\" x=#truex",
        "vm \"a\" x=true",
        "vm \"a\" x=bare",
        "vm bare",
        "vm \"a\" x = \"y\"",
        "vm \"a\" x= \"y\"",
        "vm \"a\" x =\"y\"",
        "vm r#\"a\"#",
        "vm #\"a\"#",
        "vm \"\"\"\nmulti\n\"\"\"",
        "(t)vm \"a\"",
        "vm (t)\"a\"",
        "vm \"a\" /- \"b\"",
        "/- vm \"a\"",
        "vm \"a\" /- { }",
        "vm \"a\"{}",
        "vm \"a\" {",
        "vm \"a\" }",
        "}",
        ";",
        "vm \"a\" { ; }",
        "vm \"a\";;",
        "vm \"a\" { } \"b\"",
        "vm \"a\" { } b",
        "vm \"a\" \"b\"\"c\"",
        "vm \"a\" \"b\\q\"",
        "vm \"a\" \"b\\/\"",
        "vm \"a\" \"b\\\n  c\"",
        "vm \"a\" \"b\\u{}\"",
        "vm \"a\" \"b\\u{D800}\"",
        "vm \"a\" \"b\\u{1234567}\"",
        "vm \"a\" \"b\\u41\"",
        "vm \"a\" \"new\nline\"",
        "vm \"a\" \"nul\u{0}\"",
        "vm \"a\" \"bidi\u{202e}\"",
        "vm \"a\" \"unterminated",
        "vm \"a\" /* unterminated",
        "vm \"a\"\rvm \"b\"",
        "vm \"a\"\u{85}vm \"b\"",
        "vm\u{a0}\"a\"",
        "vm \"a\" // \u{2028} x",
        "vm \"a\" \\ x\n\"b\"",
        "true \"a\"",
        "null",
        "日本 \"a\"",
        "-x \"a\"",
        "1 \"a\"",
        "vm=1",
        "vm \"a\" { vcpus (u8)2; }",
        "disk \"d\" keep=true",
        "vm \"a\" { snapshot false; }",
    ];
    for text in rejected {
        assert!(
            !same_as_kdl_crate(text),
            "fast reader accepted {text:?}, which it should leave to the kdl crate"
        );
    }
    let deep = format!("{}{}", "a {\n".repeat(100), "}\n".repeat(100));
    assert!(!same_as_kdl_crate(&deep));
    let shallow = format!("{}{}", "a {\n".repeat(20), "}\n".repeat(20));
    assert!(same_as_kdl_crate(&shallow));
}

/// Damaged files: every prefix and single insertions, as in
/// `garbage_does_not_panic`, but with the fast reader checked.
#[test]
fn fast_reader_on_damaged_files() {
    let base = format!("{FULL}{}{}", example("lab.kdl"), example("bro-capture.kdl"));
    let cuts: Vec<usize> = (0..=base.len())
        .filter(|i| base.is_char_boundary(*i))
        .step_by(7)
        .collect();
    let junk = [
        "\"", "{", "}", "=", "é", ";", "#", "1", "\n", "/*", "*/", "\\", " ", "/-", "x",
    ];
    for (n, &i) in cuts.iter().enumerate() {
        // A rejected text is compared in full for one cut in four (each
        // costs two kdl crate parses).
        check_against_kdl_crate(&base[..i], n % 4 == 0);
        let mut s = base.clone();
        s.insert_str(i, junk[n % junk.len()]);
        check_against_kdl_crate(&s, n % 4 == 2);
    }
}

mod soup {
    use super::same_as_kdl_crate;
    use proptest::prelude::*;

    const TOKENS: &[&str] = &[
        "vm",
        "kernel",
        "tags",
        "x",
        "size",
        "\"a\"",
        "\"é\\n\"",
        "\"\\u{41}\"",
        "\"\\q\"",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        ";",
        "{",
        "}",
        "=",
        "#true",
        "#null",
        "#nan",
        "#",
        "1",
        "-5",
        "+2",
        "1.5",
        "1_000",
        "0x10",
        "1e3",
        ".",
        "-",
        "//c",
        "/*",
        "*/",
        "/-",
        "\\",
        "\"",
        "(t)",
        "\"\"\"",
        "#\"",
        "é",
        "\u{a0}",
        "\u{feff}",
        "true",
        "x=",
        "\"k\"=",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever the fast reader accepts, the kdl crate reads the same.
        #[test]
        fn token_soup(tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..30)) {
            same_as_kdl_crate(&tokens.concat());
        }

        /// Mostly well-formed nodes, so that the fast reader accepts often.
        #[test]
        fn node_soup(nodes in prop::collection::vec(
            (
                prop::sample::select(&["vm", "\"n m\"", "kernel", "a-b"][..]),
                prop::collection::vec(
                    prop::sample::select(&[
                        " \"v\"", " 1", " -2", " 3.25", " #false", " #null", " k=\"v\"",
                        " k=1", " \"q k\"=#true", " /* c */ \"w\"", " \\\n \"c\"",
                    ][..]),
                    0..4,
                ),
                prop::sample::select(&["", " { }", " {\n  x \"1\"\n}", " { y; z 2 }"][..]),
                prop::sample::select(&["\n", ";", " // c\n", "\r\n", ";\n\n", " "][..]),
            ),
            0..6,
        )) {
            let text: String = nodes
                .iter()
                .map(|(n, es, kids, end)| format!("{n}{}{kids}{end}", es.concat()))
                .collect();
            same_as_kdl_crate(&text);
        }
    }
}
