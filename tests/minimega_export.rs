//! Issue 14's Tests item 3 against what the provider built, on a real
//! two-node minimega mesh (tests/common/minimega.rs), through the `megaplan`
//! binary: after apply, every VM's `vm info` (uuid, host, state, memory,
//! vcpus, snapshot, append, tags, VLAN aliases, MACs, drivers); after
//! destroy, the `export minimega --stage` script read by minimega on the
//! same bare mesh gives the same rows. Some VMs have no `host`: minimega's
//! scheduler and `vm config colocate` place them, and megaplan records
//! where.
//!
//! Its own file (its own process): meshes of one process would share a
//! minimega context, so each mesh test file runs one mesh at a time.
//!
//! Needs root, QEMU, Open vSwitch and scripts/minimega.sh's build; skips
//! with the reason otherwise, and fails instead when CI or MEGAPLAN_E2E is
//! set.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/minimega.rs"]
mod minimega;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use megaplan::minimega::client::{Client, Command as Mm, Name, VmNetwork, VmState, vm_infos};
use minimega::{Mesh, by_name, namespace_listed, vm_info, wait_for};
use run::Run;

/// The experiment: VMs with a `host`, a host-less mirrored pair
/// (`vm config colocate`) and a host-less VM (minimega's scheduler).
fn placed_and_free(base: &Path, images: &Path) -> String {
    let vm = |name: &str, memory: &str, body: &str| {
        format!(
            "vm \"{name}\" {{\n    kernel \"$images/miniccc.kernel\"\n    initrd \"$images/miniccc.initrd\"\n    memory \"{memory}\"\n{body}}}\n"
        )
    };
    format!(
        "experiment \"mm-same\" {{\n    images \"{images}\"\n    provider \"minimega\" {{\n        base \"{base}\"\n    }}\n}}\nnetwork \"LAN\"\nnetwork \"mon\"\n{}{}{}{}{}",
        // Every `vm config` the builder writes that `vm info` shows.
        vm(
            "A",
            "192M",
            "    host \"mm1\"\n    vcpus 2\n    snapshot #false\n    append \"quiet loglevel=3\"\n    tags {\n        role \"client\"\n        note \"two words\"\n    }\n    nic \"LAN\"\n",
        ),
        vm("B", "128M", "    host \"mm2\"\n    nic \"LAN\"\n"),
        // No host on either: minimega places S, and T with it.
        vm("S", "128M", "    nic \"LAN\"\n"),
        vm("T", "128M", "    nic \"mon\"\n    mirrors \"S\"\n"),
        // No host, no partner: minimega's scheduler alone.
        vm("F", "128M", "    nic \"LAN\"\n"),
        images = images.display(),
        base = base.display(),
    )
}

/// A VM as `vm info` shows what it was built with (not what it does: no
/// pid, tap names, uptime or VLAN numbers).
#[derive(Debug, PartialEq, Eq)]
struct Built {
    uuid: String,
    host: String,
    state: VmState,
    memory: String,
    vcpus: String,
    snapshot: String,
    append: String,
    tags: BTreeMap<String, String>,
    aliases: Vec<String>,
    macs: Vec<String>,
    drivers: Vec<String>,
}

/// Every VM of `ns`, by name, from every node's `vm info`.
fn built(c: &mut Client, ns: &Name) -> BTreeMap<String, Built> {
    let cmd = Mm::new("vm").word("info").in_namespace(ns);
    let resps = c.run_ok(&cmd).unwrap();
    let typed = vm_infos(&cmd, &resps).unwrap();
    let mut out = BTreeMap::new();
    for r in &resps {
        for row in r.rows() {
            let col = |k: &str| {
                row.iter()
                    .find(|(c, _)| *c == k)
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_else(|| panic!("no {k} column in {row:?}"))
            };
            let name = col("name");
            let v = typed
                .iter()
                .find(|v| v.name == name && v.host == r.host)
                .unwrap_or_else(|| panic!("{name} on {}: not in {typed:?}", r.host));
            let nets =
                |f: fn(&VmNetwork) -> &String| v.networks.iter().map(|n| f(n).clone()).collect();
            let row = Built {
                uuid: v.uuid.clone(),
                host: v.host.clone(),
                state: v.state,
                memory: col("memory"),
                vcpus: col("vcpus"),
                snapshot: col("snapshot"),
                append: col("append"),
                tags: v.tags.clone(),
                aliases: nets(|n| &n.alias),
                macs: nets(|n| &n.mac),
                drivers: nets(|n| &n.driver),
            };
            assert!(out.insert(name.clone(), row).is_none(), "{name} twice");
        }
    }
    out
}

#[test]
fn the_exported_script_builds_what_the_provider_built_and_minimega_places_host_less_vms() {
    let Some(mesh) = Mesh::start("minimega_provider export") else {
        return;
    };
    let mm1 = &mesh.nodes[0];
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    mesh.build_miniccc_image(&images);
    let file = work.path().join("mm-same.kdl");
    std::fs::write(&file, placed_and_free(&mm1.base, &images)).unwrap();
    let run = Run::new(&file, work.path());
    let ns = Name::new("mm-same").unwrap();
    let mut head = mm1.client();

    // The provider's build.
    run.ok(&["apply", "--auto-approve"]);
    let ours = built(&mut head, &ns);
    assert_eq!(
        ours.keys().map(String::as_str).collect::<Vec<_>>(),
        ["A", "B", "F", "S", "T"],
        "{ours:#?}"
    );
    let a = &ours["A"];
    assert_eq!(
        (&*a.memory, &*a.vcpus, &*a.snapshot, &*a.append),
        // minimega prints its append list in brackets.
        ("192", "2", "false", "[quiet loglevel=3]"),
        "{a:?}"
    );
    assert_eq!(a.tags.get("note").map(String::as_str), Some("two words"));
    assert_eq!((&*a.host, &*ours["B"].host), ("mm1", "mm2"));
    // minimega placed the host-less pair together, and the mirror between
    // them is on that node (an OVS mirror into T's tap).
    let (s, t) = (&ours["S"], &ours["T"]);
    assert!(s.host == "mm1" || s.host == "mm2", "{s:?}");
    assert_eq!(s.host, t.host, "the mirrored pair on one node: {ours:#?}");
    eprintln!(
        "minimega placed S and T on {}, F on {}",
        s.host, ours["F"].host
    );
    let on = mesh.nodes.iter().find(|n| n.name == s.host).unwrap();
    let t_tap = by_name(&vm_info(&mut head, &ns), "T").networks[0]
        .tap
        .clone();
    assert_eq!(on.mirror_names().trim(), format!("mirror-{t_tap}"));
    // What megaplan recorded is where minimega put each VM.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("state/state.json")).unwrap(),
    )
    .unwrap();
    for (name, b) in &ours {
        assert_eq!(b.state, VmState::Running, "{name}: {b:?}");
        let rec = &state["resources"][format!("vm.{name}")]["attrs"];
        assert_eq!(rec["node"], b.host.as_str(), "vm.{name}: {rec}");
    }
    let (code, text) = run.plan();
    assert_eq!(code, Some(0), "a second plan is empty:\n{text}");
    run.ok(&["destroy", "--auto-approve"]);
    for node in &mesh.nodes {
        node.assert_bare();
        assert!(!namespace_listed(&mut node.client(), "mm-same"));
    }

    // The exported script, read by minimega on the same bare mesh.
    let out = run::megaplan(&[
        "export",
        "minimega",
        file.to_str().unwrap(),
        "--accel",
        "tcg",
        "--stage",
        mm1.dir.join("files").to_str().unwrap(),
    ]);
    let script = run::stdout(&out);
    // Placement is minimega's for S, T and F: no `schedule` for them.
    for (vm, last) in [
        ("S", "snapshot true"),
        ("T", "colocate S"),
        ("F", "snapshot true"),
    ] {
        let launch = format!("\nvm launch kvm {vm}\n");
        let at = script.find(&launch).unwrap_or_else(|| panic!("{script}"));
        let block = &script[script[..at].rfind("clear vm config").unwrap()..at];
        assert!(!block.contains("schedule"), "{vm}:\n{block}");
        if last == "colocate S" {
            assert!(block.ends_with("vm config colocate S"), "{vm}:\n{block}");
        } else {
            assert!(!block.contains("colocate"), "{vm}:\n{block}");
        }
    }
    let path = mm1.dir.join("mm-same.mm");
    std::fs::write(&path, &script).unwrap();
    head.run_ok(&Mm::new("read").arg(path.to_str().unwrap()).unwrap())
        .unwrap_or_else(|e| panic!("minimega read: {e}\n{script}"));
    let theirs = built(&mut head, &ns);
    assert_eq!(theirs, ours, "the script built other VMs:\n{script}");

    // Down again, with the script's own teardown.
    let teardown: Vec<&str> = script
        .lines()
        .skip_while(|l| !l.starts_with("# To remove this experiment"))
        .skip(1)
        .filter_map(|l| l.strip_prefix("#   "))
        .collect();
    let down = mm1.dir.join("down.mm");
    std::fs::write(&down, teardown.join("\n") + "\n").unwrap();
    head.run_ok(&Mm::new("read").arg(down.to_str().unwrap()).unwrap())
        .expect("teardown");
    for node in &mesh.nodes {
        let bare = wait_for(Duration::from_secs(60), || {
            node.bridge_ports() == [minimega::TRUNK] && node.qemus().is_empty()
        });
        assert!(bare, "{}: left {:?}", node.name, node.processes());
        assert!(node.mirror_names().trim().is_empty(), "{}", node.name);
        assert!(!namespace_listed(&mut node.client(), "mm-same"));
    }
    drop(head);
    mesh.stop();
}
