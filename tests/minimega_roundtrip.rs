//! The round trip through a real minimega (issue 15): a minimega script run
//! by minimega, and `megaplan export minimega` of `megaplan import minimega`
//! of that script run by the same minimega afterwards, give the same
//! `vm info`: names, UUIDs, nics (networks, the MACs and drivers the script
//! fixes), VLANs, tags, disks, memory, vcpus, and the same mirrors (read from
//! minimega's Open vSwitch, as minimega has no command listing them).
//!
//! The guests boot `megaplan image build --miniccc` (issue 14): minimega's
//! own miniccc answers minimega's `cc exec`, whose response is checked.
//!
//! One minimega instance for the whole file (one test function), on one node
//! (tests/common/minimega.rs `Mesh::start_single`): the article's script runs
//! first, as `tap mirror mega_tap0 mega_tap2` assumes a fresh minimega.
//! Needs root, QEMU, Open vSwitch and scripts/minimega.sh's build; skips with
//! the reason otherwise, and fails instead when CI or MEGAPLAN_E2E is set.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/minimega.rs"]
mod minimega;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use megaplan::minimega::client::{Client, Command as Mm, Name};
use minimega::{Mesh, Node, wait_for};

/// One nic as minimega reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Nic {
    /// The VLAN alias, or `vlanN` for a VLAN given by number (what import
    /// names that network).
    net: String,
    vlan: i64,
    mac: String,
    driver: String,
    tap: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Vm {
    uuid: String,
    nics: Vec<Nic>,
    tags: BTreeMap<String, String>,
    /// Disk file names (minimega keeps them in its files folder).
    disks: Vec<String>,
    memory: u64,
    vcpus: u64,
}

/// (VM, nic) mirrored into (VM, nic).
type MirrorSet = BTreeSet<((String, usize), (String, usize))>;

#[derive(Debug)]
struct Seen {
    vms: BTreeMap<String, Vm>,
    mirrors: MirrorSet,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn megaplan(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "megaplan {args:?}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// `read FILE` on the node: minimega runs the script line by line.
fn read(c: &mut Client, node: &Node, name: &str, script: &str) {
    let path = node.dir.join(name);
    std::fs::write(&path, script).unwrap();
    c.run_ok(&Mm::new("read").arg(path.to_str().unwrap()).unwrap())
        .unwrap_or_else(|e| panic!("minimega read {name}: {e}\n{script}"));
}

fn u64_of(v: &serde_json::Value, k: &str) -> u64 {
    match &v[k] {
        serde_json::Value::Number(n) => n.as_u64().unwrap(),
        serde_json::Value::String(s) => s.parse().unwrap(),
        other => panic!("{k}: {other}"),
    }
}

/// `vm info` of the namespace, and the mirrors on the node's bridge.
fn observe(c: &mut Client, node: &Node, ns: &Name) -> Seen {
    let cmd = Mm::new("vm").word("info").in_namespace(ns);
    let resps = c.run_ok(&cmd).expect("vm info");
    let mut vms = BTreeMap::new();
    let mut by_tap: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for r in &resps {
        let Some(list) = r.data.as_array() else {
            continue;
        };
        for v in list {
            let name = v["Name"].as_str().unwrap().to_string();
            let nics: Vec<Nic> = v["Networks"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|n| {
                            let alias = n["Alias"].as_str().unwrap_or_default();
                            let vlan = n["VLAN"].as_i64().unwrap();
                            Nic {
                                // minimega reports a VLAN given by number
                                // with its number as the alias.
                                net: if alias.is_empty()
                                    || alias.chars().all(|c| c.is_ascii_digit())
                                {
                                    format!("vlan{vlan}")
                                } else {
                                    alias.to_string()
                                },
                                vlan,
                                mac: n["MAC"].as_str().unwrap().to_ascii_lowercase(),
                                driver: n["Driver"].as_str().unwrap_or_default().to_string(),
                                tap: n["Tap"].as_str().unwrap().to_string(),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            for (i, n) in nics.iter().enumerate() {
                by_tap.insert(n.tap.clone(), (name.clone(), i));
            }
            let tags = v["Tags"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let disks = v["Disks"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| {
                            let p = d["Path"].as_str().unwrap();
                            Path::new(p)
                                .file_name()
                                .unwrap()
                                .to_string_lossy()
                                .into_owned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            vms.insert(
                name,
                Vm {
                    uuid: v["UUID"].as_str().unwrap().to_ascii_lowercase(),
                    nics,
                    tags,
                    disks,
                    memory: u64_of(v, "Memory"),
                    vcpus: u64_of(v, "VCPUs"),
                },
            );
        }
    }
    // minimega names each mirror `mirror-DESTTAP` in OVS, selecting the
    // source port both ways.
    let ovs_json = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["ovs-vsctl", "--timeout=30", "--format=json"];
        a.extend_from_slice(args);
        serde_json::from_str(&node.exec(&a)).unwrap()
    };
    let ports = ovs_json(&["--columns=_uuid,name", "list", "port"]);
    let port_name: BTreeMap<String, String> = ports["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row[0][1].as_str().unwrap().to_string(),
                row[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let one_uuid = |v: &serde_json::Value| -> Vec<String> {
        match v[0].as_str() {
            Some("uuid") => vec![v[1].as_str().unwrap().to_string()],
            Some("set") => v[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u[1].as_str().unwrap().to_string())
                .collect(),
            _ => panic!("OVS value {v}"),
        }
    };
    let mut mirrors = MirrorSet::new();
    let list = ovs_json(&[
        "--columns=select_src_port,select_dst_port,output_port",
        "list",
        "mirror",
    ]);
    for row in list["data"].as_array().unwrap() {
        let src = one_uuid(&row[0]);
        assert_eq!(
            src,
            one_uuid(&row[1]),
            "a mirror selects its source both ways"
        );
        assert_eq!(src.len(), 1, "one source per mirror: {row}");
        let dst = one_uuid(&row[2]);
        let vm_nic = |u: &String| {
            let tap = &port_name[u];
            by_tap
                .get(tap)
                .unwrap_or_else(|| panic!("mirror port {tap} is no VM nic of {ns:?}"))
                .clone()
        };
        mirrors.insert((vm_nic(&src[0]), vm_nic(&dst[0])));
    }
    Seen { vms, mirrors }
}

/// What the script fixes, so what the export must reproduce.
struct Fixed {
    /// (VM, nic) whose MAC the script sets.
    macs: BTreeSet<(&'static str, usize)>,
    /// (VM, nic) whose driver the script sets.
    drivers: BTreeSet<(&'static str, usize)>,
}

/// The exported run shows what the original run showed.
fn assert_same(experiment: &str, orig: &Seen, exp: &Seen, fixed: &Fixed) {
    assert_eq!(
        orig.vms.keys().collect::<Vec<_>>(),
        exp.vms.keys().collect::<Vec<_>>(),
        "VM names"
    );
    assert!(!orig.vms.is_empty());
    for (name, o) in &orig.vms {
        let e = &exp.vms[name];
        assert_eq!(o.uuid, e.uuid, "{name}: UUID");
        assert_eq!(o.memory, e.memory, "{name}: memory");
        assert_eq!(o.vcpus, e.vcpus, "{name}: vcpus");
        assert_eq!(o.disks, e.disks, "{name}: disks");
        let mut tags = e.tags.clone();
        // Export's ownership marker, the one tag the original cannot have.
        assert_eq!(
            tags.remove("megaplan").as_deref(),
            Some(format!("{experiment}:vm.{name}").as_str()),
            "{name}: marker"
        );
        assert_eq!(o.tags, tags, "{name}: tags");
        assert_eq!(o.nics.len(), e.nics.len(), "{name}: nics");
        for (i, (a, b)) in o.nics.iter().zip(&e.nics).enumerate() {
            assert_eq!(a.net, b.net, "{name} nic {i}: network");
            if fixed.macs.contains(&(name.as_str(), i)) {
                assert_eq!(a.mac, b.mac, "{name} nic {i}: MAC");
            } else {
                // megaplan's deterministic MAC: locally administered unicast.
                let first = u8::from_str_radix(&b.mac[..2], 16).unwrap();
                assert_eq!(first & 0b11, 0b10, "{name} nic {i}: MAC {}", b.mac);
            }
            if fixed.drivers.contains(&(name.as_str(), i)) {
                assert_eq!(a.driver, b.driver, "{name} nic {i}: driver");
            } else {
                // A nic without a driver gets megaplan's (the import says so).
                assert_eq!(b.driver, "virtio-net-pci", "{name} nic {i}: driver");
            }
        }
    }
    // The same VLANs: nics share a VLAN in one run exactly when they do in
    // the other (the numbers are minimega's, from its alias range).
    for s in [orig, exp] {
        let mut vlan_of: BTreeMap<&str, i64> = BTreeMap::new();
        for n in s.vms.values().flat_map(|v| &v.nics) {
            let v = *vlan_of.entry(&n.net).or_insert(n.vlan);
            assert_eq!(v, n.vlan, "network {} on two VLANs", n.net);
        }
        let distinct: BTreeSet<i64> = vlan_of.values().copied().collect();
        assert_eq!(
            distinct.len(),
            vlan_of.len(),
            "networks sharing a VLAN: {vlan_of:?}"
        );
    }
    assert!(!orig.mirrors.is_empty());
    assert_eq!(orig.mirrors, exp.mirrors, "mirrors");
}

/// `megaplan export minimega` of `megaplan import minimega` of SCRIPT.
/// The files the export names in minimega's file path go to `files`.
fn import_export(dir: &Path, name: &str, script: &str, files: &Path) -> String {
    let mm = dir.join(format!("{name}.mm"));
    std::fs::write(&mm, script).unwrap();
    let kdl = dir.join(format!("{name}.kdl"));
    let o = Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .args([
            "import",
            "minimega",
            mm.to_str().unwrap(),
            "-o",
            kdl.to_str().unwrap(),
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(o.status.success(), "import {name}: {err}");
    // Within the mapped subset: nothing skipped.
    assert!(
        !err.contains("no megaplan equivalent"),
        "import {name}: {err}"
    );
    megaplan(&[
        "export",
        "minimega",
        kdl.to_str().unwrap(),
        "--stage",
        files.to_str().unwrap(),
    ])
}

/// Kill and forget a namespace's VMs, its mirrors, taps and the namespace.
fn clear(c: &mut Client, node: &Node, ns: &Name) {
    for cmd in [
        Mm::new("clear").word("tap").word("mirror").in_namespace(ns),
        Mm::new("vm")
            .word("kill")
            .arg("all")
            .unwrap()
            .in_namespace(ns),
        Mm::new("vm").word("flush").in_namespace(ns),
    ] {
        c.run_ok(&cmd).unwrap();
    }
    c.run_ok(&Mm::new("clear").word("namespace").name(ns))
        .unwrap();
    let mut ports = Vec::new();
    let bare = wait_for(Duration::from_secs(60), || {
        ports = node.bridge_ports();
        ports.is_empty() && node.qemus().is_empty()
    });
    assert!(
        bare,
        "left after clearing {ns:?}: ports {ports:?}, {:?}",
        node.processes()
    );
}

/// The output of `cc exec COMMAND` on the VM with UUID, through minimega's cc
/// and the guest's miniccc.
fn cc_exec(c: &mut Client, ns: &Name, uuid: &str, command: &[&str]) -> String {
    c.run_ok(
        &Mm::new("cc")
            .word("filter")
            .arg(&format!("uuid={uuid}"))
            .unwrap()
            .in_namespace(ns),
    )
    .unwrap();
    let mut exec = Mm::new("cc").word("exec");
    for w in command {
        exec = exec.arg(w).unwrap();
    }
    c.run_ok(&exec.in_namespace(ns)).unwrap();
    // The newest command is the one just sent.
    let cmds = c
        .run_ok(&Mm::new("cc").word("commands").in_namespace(ns))
        .unwrap();
    let id = cmds
        .iter()
        .flat_map(|r| r.rows())
        .filter_map(|row| {
            row.iter()
                .find(|(k, _)| *k == "id")
                .and_then(|(_, v)| v.parse::<u64>().ok())
        })
        .max()
        .expect("cc commands lists the command");
    let mut out = String::new();
    // A booting TCG guest: miniccc connects once init starts it, and cc
    // answers on miniccc's heartbeat.
    let answered = wait_for(Duration::from_secs(240), || {
        // minimega records every command in its history: ask twice a second.
        std::thread::sleep(Duration::from_millis(500));
        match c.run_ok(
            &Mm::new("cc")
                .word("responses")
                .num(id)
                .word("raw")
                .in_namespace(ns),
        ) {
            Ok(r) => {
                out = r.iter().map(|r| r.response.as_str()).collect();
                !out.trim().is_empty()
            }
            Err(_) => false,
        }
    });
    assert!(answered, "no cc response to {command:?} on {uuid}");
    out
}

/// minimega's preprocessor has no `$images`: the test gives the folder.
fn with_images(script: &str, images: &Path) -> String {
    script.replace("$images", images.to_str().unwrap())
}

#[test]
fn import_then_export_runs_on_minimega_like_the_original_script() {
    let Some(mesh) = Mesh::start_single("minimega_roundtrip") else {
        return;
    };
    let node = mesh.head();
    let mut c = node.client();
    let work = tempfile::tempdir().unwrap();

    // The image: megaplan's, with minimega's miniccc.
    let images = work.path().join("images");
    mesh.build_miniccc_image(&images);

    let qemu = minimega::which("qemu-system-x86_64").unwrap();
    // What a minimega user adds to run without KVM, small.
    let tcg = format!(
        "vm config qemu {}\nvm config cpu qemu64\nvm config memory 256\n",
        qemu.display()
    );

    // 1. The article's script (examples/minimega/tap-mirror.mm).
    let article = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/minimega/tap-mirror.mm"),
    )
    .unwrap();
    // minimega keeps a `vm config` per namespace: after the namespace line.
    let seed = article.replacen(
        "namespace tap-mirror\n",
        &format!("namespace tap-mirror\n{tcg}"),
        1,
    );
    assert_ne!(seed, article);
    let ns = Name::new("tap-mirror").unwrap();
    read(&mut c, node, "seed.mm", &with_images(&seed, &images));
    let orig = observe(&mut c, node, &ns);
    // minimega's cc through miniccc in megaplan's image: the answer comes
    // from the VM the filter names. (The article's nics have minimega's
    // default e1000, which the guest kernel here has no driver for, so its
    // `ip addr` commands fail in the guest; that is the kernel's, not cc's.)
    let a = "11111111-1111-1111-1111-111111111111";
    let uuid = cc_exec(&mut c, &ns, a, &["cat", "/sys/class/dmi/id/product_uuid"]);
    assert_eq!(uuid.trim().to_ascii_lowercase(), a);
    assert_eq!(
        orig.mirrors,
        MirrorSet::from([(("A".into(), 0), ("monitor".into(), 0))]),
        "mega_tap0 -> mega_tap2 on a fresh minimega"
    );
    clear(&mut c, node, &ns);
    let exported = import_export(work.path(), "seed", &seed, &node.dir.join("files"));
    assert!(
        exported.contains("tap mirror A 0 monitor 0\n"),
        "{exported}"
    );
    read(
        &mut c,
        node,
        "seed-export.mm",
        &with_images(&exported, &images),
    );
    let exp = observe(&mut c, node, &ns);
    assert_same(
        "tap-mirror",
        &orig,
        &exp,
        &Fixed {
            macs: BTreeSet::new(),
            drivers: BTreeSet::new(),
        },
    );
    clear(&mut c, node, &ns);

    // 2. A richer script: several nics, VLAN,MAC and VLAN,MAC,DRIVER, a
    // numeric VLAN, tags carried over and changed, a created disk, a mirror
    // of a second nic, cc by tag and by UUID.
    let rich = format!(
        "namespace rich
{tcg}\
disk create qcow2 data.qcow2 64M
vm config kernel $images/miniccc.kernel
vm config initrd $images/miniccc.initrd
vm config append console=ttyS0 quiet
vm config vcpus 2
vm config disk data.qcow2
vm config tags role web
vm config net LAN,de:ad:be:ef:00:01 DMZ,virtio-net-pci 100
vm config uuid aaaaaaaa-0000-0000-0000-000000000001
vm launch kvm web1
vm config net LAN,de:ad:be:ef:00:02,e1000 DMZ,virtio-net-pci 100
vm config uuid aaaaaaaa-0000-0000-0000-000000000002
vm config tags tier front
vm launch kvm web2
clear vm config disks
clear vm config tags
vm config vcpus 1
vm config tags role monitor
vm config net 100,virtio-net-pci LAN
vm config uuid aaaaaaaa-0000-0000-0000-000000000003
vm launch kvm mon
tap mirror web1 1 mon 0
vm start all
cc filter role=web
cc exec hostname
cc filter uuid=aaaaaaaa-0000-0000-0000-000000000003
cc exec ip link set eth0 promisc on
clear cc filter
"
    );
    let ns = Name::new("rich").unwrap();
    read(&mut c, node, "rich.mm", &with_images(&rich, &images));
    let orig = observe(&mut c, node, &ns);
    assert_eq!(orig.vms["web2"].tags.len(), 2, "{:?}", orig.vms["web2"]);
    assert_eq!(orig.vms["web1"].nics[2].vlan, 100);
    clear(&mut c, node, &ns);
    std::fs::remove_file(node.dir.join("files/data.qcow2")).unwrap();
    let exported = import_export(work.path(), "rich", &rich, &node.dir.join("files"));
    read(
        &mut c,
        node,
        "rich-export.mm",
        &with_images(&exported, &images),
    );
    let exp = observe(&mut c, node, &ns);
    assert_same(
        "rich",
        &orig,
        &exp,
        &Fixed {
            macs: BTreeSet::from([("web1", 0), ("web2", 0)]),
            drivers: BTreeSet::from([("web1", 1), ("web2", 0), ("web2", 1), ("mon", 0)]),
        },
    );
    clear(&mut c, node, &ns);

    drop(c);
    mesh.stop();
}
