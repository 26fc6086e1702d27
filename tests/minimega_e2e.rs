//! minimega scripts end to end.
//! - The seed article's minimega script, imported, applied under TCG by
//!   megaplan's own engine: A pings B and the monitor sees it through the
//!   imported `tap mirror mega_tap0 mega_tap2`.
//! - Issue 14's e2e item 3 from the export side: `megaplan export minimega`
//!   of examples/tap-mirror.kdl with A placed on one node and B on the
//!   other, read by minimega on a fresh two-node mesh, gives the `vm info`
//!   megaplan expects (names, UUIDs, MACs, VLANs, hosts; the monitor kept
//!   with A, its mirror on A's node; disks, kernel and initrd in megaplan's
//!   folder of minimega's file path, a disk minimega creates and an ext4
//!   disk `export --stage` makes, fetched by the other node), and the
//!   teardown the script ends with leaves nothing on either node.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/minimega.rs"]
mod minimega;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use std::time::Duration;

use lab::Lab;
use megaplan::minimega::client::{Command as Mm, Name, vm_infos};

#[test]
fn the_imported_article_applies_and_the_monitor_sees_a_ping() {
    if !lab::can_boot("minimega import e2e") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set: this test must run (root, QEMU, the guest kernel)"
        );
        return;
    }
    let article = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/minimega/tap-mirror.mm"),
    )
    .unwrap();
    // What a minimega user adds to run it small and watch the monitor.
    let script = format!(
        "vm config memory 256\n{article}\n\
         cc filter uuid=33333333-3333-3333-3333-333333333333\n\
         cc exec ip link set eth0 up\n\
         cc background tcpdump -U -n -i eth0 -w /tmp/cap.pcap\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let mm = dir.path().join("tap-mirror.mm");
    std::fs::write(&mm, script).unwrap();
    let kdl = run::stdout(&run::megaplan(&[
        "import",
        "minimega",
        mm.to_str().unwrap(),
        "--name",
        "mm-import-e2e",
    ]));
    assert!(kdl.contains("images \"images\""), "{kdl}");
    let lab = Lab::new(
        "imported.kdl",
        "mm-import-e2e",
        &kdl.replace("images \"images\"", "images \"@IMAGES@\""),
    );
    lab.ok("apply", &["--auto-approve"]);
    // tcpdump is capturing once its file exists (bounded wait in the guest).
    lab.wait_capture("monitor", "/tmp/cap.pcap");
    lab.cc_exec("A", "ping -c 3 -W 5 10.0.0.2");
    let seen = lab.cc_exec("monitor", "tcpdump -n -r /tmp/cap.pcap");
    lab::assert_ping_seen(&seen, "10.0.0.1", "10.0.0.2");
    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
}

#[test]
fn the_exported_seed_with_placement_builds_what_megaplan_expects_on_a_fresh_mesh() {
    // One -filepath on both nodes: iomeshage serves mm1's files to mm2.
    let Some(mesh) = minimega::Mesh::start_same_filepath("minimega_e2e export") else {
        return;
    };
    let (mm1, mm2) = (&mesh.nodes[0], &mesh.nodes[1]);
    let seed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tap-mirror.kdl"),
    )
    .unwrap();
    // A on the head node, B on the other; the monitor goes with A.
    let placed = seed
        .replace(
            "vm \"A\" {\n",
            "vm \"A\" {\n    host \"mm1\"\n    memory \"256M\"\n    disk \"data\"\n",
        )
        .replace(
            "vm \"B\" {\n",
            "vm \"B\" {\n    host \"mm2\"\n    memory \"256M\"\n    disk \"etc\" mount=\"/data\"\n",
        )
        .replace(
            "vm \"monitor\" {\n",
            "vm \"monitor\" {\n    memory \"256M\"\n",
        )
        .replace(
            "images \"images\"",
            &format!("images {:?}", lab::image_dir()),
        );
    assert_eq!(placed.matches("memory").count(), 3, "{placed}");
    assert_eq!(placed.matches("    disk ").count(), 2, "{placed}");
    let dir = tempfile::tempdir().unwrap();
    // Disks: one minimega creates from the script, one megaplan's mkfs
    // makes with a file in it (staged, as the script's header says).
    let motd = dir.path().join("motd");
    std::fs::write(&motd, "staged by export\n").unwrap();
    let placed = format!(
        "{placed}\ndisk \"data\" size=\"64M\"\ndisk \"etc\" size=\"16M\" filesystem=\"ext4\" {{\n    inject {:?} \"/motd\"\n}}\n",
        motd.to_str().unwrap()
    );
    let files = mm1.dir.join("files");
    let file = dir.path().join("tap-mirror.kdl");
    std::fs::write(&file, &placed).unwrap();
    let script = run::stdout(&run::megaplan(&[
        "export",
        "minimega",
        file.to_str().unwrap(),
        "--accel",
        "tcg",
        "--stage",
        files.to_str().unwrap(),
    ]));
    let qemu = minimega::which("qemu-system-x86_64").unwrap();
    for want in [
        "ns add-hosts mm1,mm2\n".to_string(),
        "vm config schedule mm1\nvm launch kvm A\n".into(),
        "vm config schedule mm2\nvm launch kvm B\n".into(),
        "vm config schedule mm1\nvm launch kvm monitor\n".into(),
        format!("vm config qemu {}\nvm config cpu qemu64\n", qemu.display()),
        "tap mirror A 0 monitor 0\n".into(),
        "#   namespace tap-mirror ns run clear tap mirror\n".into(),
    ] {
        assert!(script.contains(&want), "missing {want:?} in:\n{script}");
    }
    // What megaplan expects: its own lab of the same file.
    let (lab, diags) =
        megaplan::validate::check(&megaplan::diag::SourceFile::new(&file, placed.clone()));
    let lab = lab.unwrap_or_else(|| panic!("{diags:?}"));

    let path = mm1.dir.join("export.mm");
    std::fs::write(&path, &script).unwrap();
    let mut head = mm1.client();
    head.run_ok(&Mm::new("read").arg(path.to_str().unwrap()).unwrap())
        .unwrap_or_else(|e| panic!("minimega read: {e}\n{script}"));
    let ns = Name::new("tap-mirror").unwrap();
    let cmd = Mm::new("vm").word("info").in_namespace(&ns);
    let vms = vm_infos(&cmd, &head.run_ok(&cmd).unwrap()).unwrap();
    assert_eq!(vms.len(), lab.vms.len(), "{vms:?}");
    let mut vlan_of = std::collections::BTreeMap::new();
    for want in &lab.vms {
        let got = vms
            .iter()
            .find(|v| v.name == want.name)
            .unwrap_or_else(|| panic!("no VM {} in {vms:?}", want.name));
        assert_eq!(got.uuid, want.uuid.to_string(), "{}: UUID", want.name);
        assert_eq!(
            Some(got.host.as_str()),
            want.host.as_deref(),
            "{}: host",
            want.name
        );
        assert_eq!(got.networks.len(), want.nics.len(), "{}: nics", want.name);
        for (g, w) in got.networks.iter().zip(&want.nics) {
            assert_eq!(g.mac, w.mac, "{}: MAC", w.address);
            assert_eq!(g.alias, w.network, "{}: VLAN alias", w.address);
            assert_eq!(g.driver, w.driver, "{}: driver", w.address);
            // One alias, one VLAN, on both nodes.
            let v = *vlan_of.entry(w.network.clone()).or_insert(g.vlan);
            assert_eq!(v, g.vlan, "{}: VLAN", w.address);
        }
    }
    assert_eq!(vlan_of.len(), 2);
    assert_ne!(vlan_of["LAN"], vlan_of["mon"]);
    // Disks, kernel and initrd as the provider names them: in megaplan's
    // folder of minimega's file path, by digest for the boot files.
    let sha = |p: &std::path::Path| {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(p).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let exp = format!("{}/megaplan/tap-mirror", files.display());
    let a = lab.vm("A").unwrap();
    let (kernel, initrd) = (a.kernel.as_deref().unwrap(), a.initrd.as_deref().unwrap());
    let cols = head.run_ok(&cmd).unwrap();
    let rows: Vec<_> = cols.iter().flat_map(|r| r.rows()).collect();
    for (vm, disks) in [
        ("A", format!("{exp}/disks/data.qcow2,virtio")),
        ("B", format!("{exp}/disks/etc.qcow2,virtio")),
        ("monitor", String::new()),
    ] {
        let row = rows
            .iter()
            .find(|r| r.iter().any(|(k, v)| *k == "name" && *v == vm))
            .unwrap_or_else(|| panic!("no row for {vm}: {rows:?}"));
        let col = |c: &str| {
            row.iter()
                .find(|(k, _)| *k == c)
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| panic!("no {c} column: {row:?}"))
        };
        assert_eq!(col("disks"), disks, "{vm}: disks");
        assert_eq!(
            col("kernel"),
            format!("{exp}/boot/{}", sha(kernel)),
            "{vm}: kernel"
        );
        assert_eq!(
            col("initrd"),
            format!("{exp}/boot/{}", sha(initrd)),
            "{vm}: initrd"
        );
    }
    // The staged ext4 disk holds its file; mm2 got it through iomeshage
    // (its own files/, seen at the same path in its mount namespace).
    let etc = files.join("megaplan/tap-mirror/disks/etc.qcow2");
    assert!(etc.is_file(), "{}", etc.display());
    let on_mm2 = mm2.dir.join("files/megaplan/tap-mirror/disks/etc.qcow2");
    assert!(
        minimega::wait_for(Duration::from_secs(60), || on_mm2.is_file()),
        "{} not fetched by mm2",
        on_mm2.display()
    );
    assert!(
        script.contains("#   megaplan/tap-mirror/disks/etc.qcow2  <- disk etc: mkfs.ext4"),
        "{script}"
    );
    assert!(
        script.contains("disk create qcow2 \"megaplan/tap-mirror/disks/data.qcow2\" 67108864\n"),
        "{script}"
    );
    let monitor = vms.iter().find(|v| v.name == "monitor").unwrap();
    assert_eq!(monitor.host, "mm1", "the monitor is kept with its source");
    // The mirror is on A's node: an OVS mirror into the monitor's tap.
    let mirrors = mm1.mirror_names();
    assert_eq!(
        mirrors.trim(),
        format!("mirror-{}", monitor.networks[0].tap),
        "mirrors on mm1"
    );

    // The teardown the script ends with, as a user would run it.
    let teardown: Vec<&str> = script
        .lines()
        .skip_while(|l| !l.starts_with("# To remove this experiment"))
        .skip(1)
        .filter_map(|l| l.strip_prefix("#   "))
        .collect();
    assert_eq!(teardown.len(), 4, "{script}");
    let down = mm1.dir.join("down.mm");
    std::fs::write(&down, teardown.join("\n") + "\n").unwrap();
    head.run_ok(&Mm::new("read").arg(down.to_str().unwrap()).unwrap())
        .expect("teardown");
    for node in [mm1, mm2] {
        let mut ports = Vec::new();
        let bare = minimega::wait_for(Duration::from_secs(60), || {
            ports = node.bridge_ports();
            ports == [minimega::TRUNK] && node.qemus().is_empty()
        });
        assert!(bare, "{}: left {ports:?} {:?}", node.name, node.processes());
        let left = node.mirror_names();
        assert!(
            left.trim().is_empty(),
            "{}: mirrors left: {left}",
            node.name
        );
    }
    drop(head);
    mesh.stop();
}
