//! Whole-file checks: the passes together, through [`check`].

use super::*;
use crate::diag::{Diagnostics, SourceFile};

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

/// Validation does not know where an engine puts a VM's sockets: the
/// local engine's bound (`Provider::check_lab`) reports a socket path over
/// `sun_path` with its length, at the VM's name (once per range), with
/// the same code and help validation gave it.
#[test]
fn a_socket_path_over_sun_path_is_the_local_engines_bound() {
    let long = "e".repeat(64);
    let vm = "v".repeat(60);
    let text = format!(
        "experiment \"{long}\"\nvm \"{vm}\" {{ kernel \"/k\"; }}\nvm \"{vm}[1-3]\" {{ kernel \"/k\"; }}\n"
    );
    let src = SourceFile::new("/nonexistent/t.kdl", text.clone());
    let (lab, d) = check(&src);
    let lab = lab.unwrap_or_else(|| panic!("validation is engine-free: {:?}", codes(&d)));
    let problems = crate::host::local::check_lab(&lab);
    assert_eq!(problems.len(), 4, "{problems:?}");
    let d = super::locate(&src, &problems);
    assert_eq!(
        codes(&d),
        [
            "megaplan::socket_path_too_long",
            "megaplan::socket_path_too_long"
        ],
        "one per VM node"
    );
    let e = d.errors().next().unwrap();
    let root = crate::host::runtime_root(&long).join(&vm).join("qmp.sock");
    let len = root.as_os_str().len();
    assert!(len > 107);
    assert!(e.message.contains(&format!("{len} bytes")), "{}", e.message);
    assert!(e.help.as_deref().unwrap().contains("MEGAPLAN_RUNTIME_DIR"));
    let at = e.labels[0].span;
    assert_eq!(
        &text[at.offset()..at.offset() + at.len()],
        format!("\"{vm}\"")
    );
    assert_eq!(e.labels[0].text.as_deref(), Some(root.to_str().unwrap()));
    // The engine the file chooses answers: minimega's VMs have no sockets here.
    use crate::provider::Provider as _;
    type Engine = crate::minimega::provider::Engine;
    assert_eq!(Engine::check_lab(&lab).len(), 4);
    let mm = text.replacen(
        "\"\n",
        "\" { provider \"minimega\" { base \"/tmp/mm\"; }; }\n",
        1,
    );
    let (mm, d) = check_kdl(&mm);
    let mm = mm.unwrap_or_else(|| panic!("{:?}", codes(&d)));
    assert!(Engine::check_lab(&mm).is_empty());
    // A short pair of names fits.
    let (lab, _) = check_kdl("experiment \"x\"\nvm \"a\" { kernel \"/k\"; }\n");
    assert!(crate::host::local::check_lab(&lab.unwrap()).is_empty());
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
    let text = format!("experiment \"x\"\nvm \"a\" {{ kernel \"/k\"; cc {{ exec \"{ok}\"; }} }}\n");
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

/// A finding on a ranged VM's own values is reported once for the node,
/// whatever the range's size (it was reported by the first two VMs).
#[test]
fn a_ranged_vm_reports_its_own_values_once() {
    let text = "experiment \"x\"\nvm \"w[1-3]\" { kernel \"/k\"; memory \"abc\"; }\n";
    let (lab, d) = check_kdl(text);
    assert!(lab.is_none());
    assert_eq!(codes(&d), ["megaplan::bad_memory"]);
    // Two findings of one kind in one VM are both reported.
    let text = "experiment \"x\"\ndisk \"a\" size=\"1G\"\ndisk \"b\" size=\"1G\"\nvm \"w[1-2]\" { kernel \"/k\"; disk \"a\" mount=\"rel\"; disk \"b\" mount=\"x y\"; }\n";
    let (_, d) = check_kdl(text);
    assert_eq!(codes(&d), ["megaplan::bad_mount", "megaplan::bad_mount"]);
}

/// A VM that writes a disk directly and attaches it twice is refused (it
/// used to panic: "len > 1").
#[test]
fn a_writable_disk_attached_twice_is_refused() {
    let text = "experiment \"x\"\ndisk \"d\" size=\"1G\"\nvm \"a\" { kernel \"/k\"; snapshot #false; disk \"d\"; disk \"d\"; }\n";
    let (lab, d) = check_kdl(text);
    assert!(lab.is_none());
    assert_eq!(codes(&d), ["megaplan::shared_writable_disk"]);
    let e = d.errors().next().unwrap();
    assert_eq!(e.labels.len(), 2);
    assert_ne!(e.labels[0].span, e.labels[1].span);
    // With snapshot each attachment gets its own overlay: allowed.
    let (lab, d) = check_kdl(&text.replace("snapshot #false; ", ""));
    assert!(lab.is_some(), "{:?}", codes(&d));
}
