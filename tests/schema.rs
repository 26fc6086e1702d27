//! The committed JSON Schema is the generated one, and it accepts the examples
//! and rejects structurally wrong documents.
//!
//! Regenerate the committed file with
//! `cargo run -- schema > schemas/experiment.schema.json`
//! or `UPDATE_SCHEMA=1 cargo test --test schema`.

use std::path::PathBuf;

use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema_path() -> PathBuf {
    root().join("schemas/experiment.schema.json")
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&megaplan::schema::schema_json()).unwrap();
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

fn toml_to_json(text: &str) -> Value {
    toml::from_str::<Value>(text).expect("valid TOML")
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

#[test]
fn committed_schema_is_up_to_date() {
    let generated = megaplan::schema::schema_json();
    let path = schema_path();
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write schemas/experiment.schema.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schemas/experiment.schema.json is out of date with the language table (src/syntax/lang.rs, src/schema.rs); regenerate it with\n    \
         cargo run -- schema > schemas/experiment.schema.json\nor\n    \
         UPDATE_SCHEMA=1 cargo test --test schema"
    );
}

#[test]
fn schema_is_draft_2020_12_and_closed() {
    let schema: Value = serde_json::from_str(&megaplan::schema::schema_json()).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["required"], json!(["experiment"]));
    // TOML has no null.
    assert!(!megaplan::schema::schema_json().contains("null"));
}

#[test]
fn example_validates() {
    let v = validator();
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let doc = toml_to_json(&text);
            assert_eq!(errors(&v, &doc), Vec::<String>::new(), "{}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1, "no examples/*.toml");
    let tap =
        toml_to_json(&std::fs::read_to_string(root().join("examples/tap-mirror.toml")).unwrap());
    assert!(v.is_valid(&tap));
}

const FULL: &str = r#"
[experiment]
name = "full"
images = "images"
accel = "kvm"

[network.LAN]
host-address = "10.0.0.254/24"

[disk.bro]
size = "10G"
format = "qcow2"
filesystem = "ext4"
keep = true
from = "base.qcow2"
inject = [{ src = "a", dst = "/b" }]

[vm."web[1-3]"]
uuid = "11111111-1111-1111-1111-111111111111"
kernel = "k"
initrd = "i"
append = "console=ttyS0"
memory = 512
vcpus = 2
snapshot = false
disk = ["bro", { name = "/x.qcow2", mount = "/x" }]
nic = ["LAN", { network = "LAN", mac = "02:00:00:00:00:01", driver = "e1000" }]
mirrors = ["A", { vm = "A", nic = 0, into = 0, direction = "both" }, { network = "LAN", direction = "egress" }]
tags = { role = "web" }
after = ["A"]
qemu-args = "-cpu host"
cc = [
    { exec = "true", timeout = "30s", allow-failure = true },
    { exec = ["ip", "link"] },
    { background = "tcpdump" },
    { send = "h", to = "/g" },
    { recv = "/g", to = "h" },
]
"#;

#[test]
fn every_key_validates() {
    let v = validator();
    assert_eq!(errors(&v, &toml_to_json(FULL)), Vec::<String>::new());
    // memory as a string, qemu-args as a list
    let alt = FULL.replace("memory = 512", "memory = \"2G\"").replace(
        "qemu-args = \"-cpu host\"",
        "qemu-args = [\"-cpu\", \"host\"]",
    );
    assert_eq!(errors(&v, &toml_to_json(&alt)), Vec::<String>::new());
}

/// The emitter's canonical output of the full document is valid too.
#[test]
fn emitted_toml_validates() {
    let v = validator();
    let src = megaplan::diag::SourceFile::new("full.toml", FULL);
    let (doc, diags) = megaplan::syntax::toml::parse(&src);
    assert!(diags.is_empty(), "{diags:?}");
    let out = megaplan::syntax::toml::emit(&doc);
    assert_eq!(
        errors(&v, &toml_to_json(&out)),
        Vec::<String>::new(),
        "{out}"
    );
}

#[track_caller]
fn assert_invalid(v: &jsonschema::Validator, text: &str) {
    let doc = toml_to_json(text);
    assert!(!v.is_valid(&doc), "should not validate:\n{text}");
}

#[test]
fn structural_errors_fail() {
    let v = validator();
    let base = "[experiment]\nname = \"x\"\n\n[vm.A]\n";
    // unknown keys, at every level
    assert_invalid(&v, &format!("{base}uuidd = \"1\"\n"));
    assert_invalid(&v, "[experiment]\nname = \"x\"\nimage = \"i\"\n");
    assert_invalid(&v, "[experiment]\nname = \"x\"\n[vms.A]\n");
    assert_invalid(
        &v,
        "[experiment]\nname = \"x\"\n[network.LAN]\naddress = \"1\"\n",
    );
    assert_invalid(&v, &format!("{base}nic = [{{ netwrk = \"LAN\" }}]\n"));
    // wrong types
    assert_invalid(&v, &format!("{base}vcpus = \"two\"\n"));
    assert_invalid(&v, &format!("{base}snapshot = \"no\"\n"));
    assert_invalid(&v, &format!("{base}nic = \"LAN\"\n"));
    assert_invalid(&v, &format!("{base}memory = 1.5\n"));
    // enums
    assert_invalid(
        &v,
        &format!("{base}mirrors = [{{ vm = \"B\", direction = \"sideways\" }}]\n"),
    );
    assert_invalid(&v, "[experiment]\nname = \"x\"\naccel = \"hvf\"\n");
    assert_invalid(
        &v,
        "[experiment]\nname = \"x\"\n[disk.d]\nformat = \"vmdk\"\n",
    );
    // patterns
    assert_invalid(&v, &format!("{base}uuid = \"not-a-uuid\"\n"));
    assert_invalid(
        &v,
        &format!("{base}nic = [{{ network = \"L\", mac = \"02:00\" }}]\n"),
    );
    assert_invalid(
        &v,
        "[experiment]\nname = \"x\"\n[disk.d]\nsize = \"ten gigs\"\n",
    );
    assert_invalid(
        &v,
        &format!("{base}cc = [{{ exec = \"x\", timeout = \"soon\" }}]\n"),
    );
    // missing keys
    assert_invalid(&v, "[vm.A]\n");
    assert_invalid(&v, "[experiment]\nimages = \"i\"\n");
    assert_invalid(
        &v,
        &format!("{base}nic = [{{ mac = \"02:00:00:00:00:01\" }}]\n"),
    );
    assert_invalid(&v, &format!("{base}cc = [{{ send = \"a\" }}]\n"));
    // cc steps with zero or two actions, `to` on exec, nic on a network mirror
    assert_invalid(&v, &format!("{base}cc = [{{ timeout = \"3s\" }}]\n"));
    assert_invalid(
        &v,
        &format!("{base}cc = [{{ exec = \"a\", background = \"b\" }}]\n"),
    );
    assert_invalid(
        &v,
        &format!("{base}cc = [{{ exec = \"a\", to = \"b\" }}]\n"),
    );
    assert_invalid(
        &v,
        &format!("{base}mirrors = [{{ network = \"LAN\", nic = 1 }}]\n"),
    );
    assert_invalid(
        &v,
        &format!("{base}mirrors = [{{ vm = \"A\", network = \"LAN\" }}]\n"),
    );
}

#[test]
fn the_three_required_failures() {
    let v = validator();
    let ok = "[experiment]\nname = \"x\"\n[vm.A]\nvcpus = 2\nmirrors = [{ vm = \"B\", direction = \"ingress\" }]\n";
    assert!(v.is_valid(&toml_to_json(ok)));
    assert_invalid(&v, &ok.replace("vcpus = 2", "vcpus = 2\nvcpu = 2"));
    assert_invalid(&v, &ok.replace("vcpus = 2", "vcpus = \"two\""));
    assert_invalid(&v, &ok.replace("\"ingress\"", "\"inbound\""));
}
