//! megaplan's minimega client against a real two-node minimega mesh
//! (tests/common/minimega.rs): the mesh answers from both nodes, a namespace
//! places VMs on both nodes, a VLAN spans the nodes through the VXLAN trunk,
//! `vm kill` shows in `vm info`, and clearing everything leaves no tap and no
//! QEMU behind. One mesh for the whole file (one test function): starting a
//! mesh is most of the cost.
//!
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

use std::time::{Duration, Instant};

use megaplan::minimega::client::{Client, ClientError, Command as Mm, Name, VmState};
use minimega::{Mesh, TRUNK, by_name, namespace_listed, vm_info, wait_for};

const NS: &str = "mp-mesh";
/// Host tap addresses on the VMs' VLAN, one per node.
const TAP_ADDRS: [&str; 2] = ["10.77.0.1", "10.77.0.2"];
const TAPS: [&str; 2] = ["mmh1", "mmh2"];

/// From `node`'s host tap to mm2's, COUNT pings within DEADLINE seconds.
fn ping(node: &minimega::Node, count: u32, deadline: u32) -> std::process::Output {
    let (count, deadline) = (count.to_string(), deadline.to_string());
    let wait = deadline.clone();
    node.try_exec(&[
        "busybox",
        "ping",
        "-c",
        &count,
        "-i",
        "0.2",
        "-W",
        &wait,
        "-w",
        &deadline,
        "-I",
        TAPS[0],
        TAP_ADDRS[1],
    ])
}

#[test]
fn a_two_node_mesh_runs_vms_on_both_nodes_and_cleans_up() {
    let t0 = Instant::now();
    let Some(mesh) = Mesh::start("minimega_mesh") else {
        return;
    };
    eprintln!("mesh up after {:?}", t0.elapsed());
    let (mm1, mm2) = (&mesh.nodes[0], &mesh.nodes[1]);
    let mut head = mm1.client();
    let mut c2 = mm2.client();
    let ns = Name::new(NS).unwrap();

    // Quoting, checked against minimega's own lexer: each value comes back
    // from `echo` as the one item it was sent as.
    for v in [
        "# not a comment",
        r#"say "hi" \ bye"#,
        "it's",
        "",
        "tab\there",
    ] {
        let r = head.run_ok(&Mm::new("echo").arg(v).unwrap()).expect("echo");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].response, v, "echo {v:?}");
    }
    // A per-host error is an error of run_ok, naming the host.
    let err = head
        .run_ok(&Mm::new("vm").word("kill").arg("no-such-vm").unwrap())
        .unwrap_err();
    match &err {
        ClientError::Host { errors, .. } => {
            assert_eq!(errors.len(), 1, "{err}");
            assert_eq!(errors[0].0, "mm1", "{err}");
            assert!(errors[0].1.contains("no-such-vm"), "{err}");
        }
        e => panic!("expected a host error, got {e}"),
    }

    // The fixture's leftover check sees this mesh's own daemons.
    for node in [mm1, mm2] {
        let mut comms: Vec<String> = node.processes().into_iter().map(|(_, c)| c).collect();
        comms.sort();
        assert_eq!(
            comms,
            ["minimega", "ovs-vswitchd", "ovsdb-server"],
            "processes in {}'s namespace",
            node.name
        );
    }

    // (a) Both nodes answer: the head itself, the other through the mesh.
    let r = head.run_ok(&Mm::new("host").word("name")).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].host, "mm1");
    let r = head
        .run_ok(
            &Mm::new("mesh")
                .word("send")
                .arg("all")
                .unwrap()
                .word("host")
                .word("name"),
        )
        .unwrap();
    assert_eq!(
        r.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(),
        ["mm2"]
    );
    for c in [&mut head, &mut c2] {
        let r = c.run_ok(&Mm::new("mesh").word("status")).unwrap();
        assert_eq!(minimega::cell(&r, "size"), Some("2"), "{r:?}");
    }

    // (b) A namespace over both nodes (a new one leaves out the head node)
    // and one VM scheduled on each.
    head.run_ok(
        &Mm::new("ns")
            .word("add-hosts")
            .arg("mm1")
            .unwrap()
            .in_namespace(&ns),
    )
    .unwrap();
    let mut hosts: Vec<String> = head
        .run_ok(&Mm::new("host").word("name").in_namespace(&ns))
        .unwrap()
        .into_iter()
        .map(|r| r.host)
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["mm1", "mm2"]);

    let images = lab::image_dir();
    let kernel = images.join("miniccc.kernel");
    let initrd = images.join("miniccc.initrd");
    // minimega takes a relative qemu path as a file in its -filepath folder.
    let qemu = minimega::which("qemu-system-x86_64").unwrap();
    let config = [
        Mm::new("vm")
            .word("config")
            .word("kernel")
            .arg(kernel.to_str().unwrap()),
        Mm::new("vm")
            .word("config")
            .word("initrd")
            .arg(initrd.to_str().unwrap()),
        Mm::new("vm")
            .word("config")
            .word("append")
            .arg("console=ttyS0"),
        Ok(Mm::new("vm").word("config").word("memory").num(256)),
        Ok(Mm::new("vm").word("config").word("vcpus").num(1)),
        Mm::new("vm")
            .word("config")
            .word("qemu")
            .arg(qemu.to_str().unwrap()),
        Mm::new("vm").word("config").word("cpu").arg("qemu64"),
        Mm::new("vm")
            .word("config")
            .word("networks")
            .arg("lan,virtio-net-pci"),
    ];
    for cmd in config {
        head.run_ok(&cmd.unwrap().in_namespace(&ns)).unwrap();
    }
    for (vm, node) in [("vm-b", "mm2"), ("vm-a", "mm1")] {
        head.run_ok(
            &Mm::new("vm")
                .word("config")
                .word("schedule")
                .arg(node)
                .unwrap()
                .in_namespace(&ns),
        )
        .unwrap();
        head.run_ok(
            &Mm::new("vm")
                .word("launch")
                .word("kvm")
                .arg(vm)
                .unwrap()
                .in_namespace(&ns),
        )
        .unwrap();
    }
    head.run_ok(
        &Mm::new("vm")
            .word("start")
            .arg("all")
            .unwrap()
            .in_namespace(&ns),
    )
    .unwrap();
    let mut vms = Vec::new();
    let running = wait_for(Duration::from_secs(60), || {
        vms = vm_info(&mut head, &ns);
        vms.len() == 2 && vms.iter().all(|v| v.state == VmState::Running)
    });
    assert!(running, "VMs not both RUNNING: {vms:?}");
    eprintln!("VMs running after {:?}", t0.elapsed());
    let (a, b) = (by_name(&vms, "vm-a"), by_name(&vms, "vm-b"));
    assert_eq!((a.host.as_str(), b.host.as_str()), ("mm1", "mm2"));
    for (vm, node) in [(a, mm1), (b, mm2)] {
        let uuid = uuid::Uuid::parse_str(&vm.uuid)
            .unwrap_or_else(|e| panic!("{}: UUID {:?}: {e}", vm.name, vm.uuid));
        assert!(!uuid.is_nil());
        assert_eq!(vm.namespace, NS);
        assert_eq!(vm.networks.len(), 1, "{vm:?}");
        let tap = &vm.networks[0].tap;
        // The tap and the QEMU process are really on the node vm info names.
        assert!(
            node.bridge_ports().contains(tap),
            "{tap} not on {}'s bridge",
            node.name
        );
        assert!(
            node.qemus().contains(&(vm.pid as i32)),
            "{}: pid {} is no QEMU in {}'s namespace ({:?})",
            vm.name,
            vm.pid,
            node.name,
            node.processes()
        );
    }
    assert_ne!(a.uuid, b.uuid);
    let vlan = a.networks[0].vlan;
    assert_eq!(
        b.networks[0].vlan, vlan,
        "one alias, one VLAN on both nodes"
    );
    assert!(vlan > 0);

    // (c) The VLAN spans the nodes: a host tap on it on each node, in the
    // node's own namespace, and a ping from mm1's to mm2's, which can only
    // cross over the VXLAN trunked into both bridges.
    for (i, c) in [&mut head, &mut c2].into_iter().enumerate() {
        c.run_ok(
            &Mm::new("tap")
                .word("create")
                .num(vlan as u64)
                .word("ip")
                .arg(&format!("{}/24", TAP_ADDRS[i]))
                .unwrap()
                .arg(TAPS[i])
                .unwrap()
                .in_namespace(&ns),
        )
        .unwrap();
    }
    for (i, node) in [mm1, mm2].into_iter().enumerate() {
        assert!(node.bridge_ports().iter().any(|p| p == TAPS[i]));
    }
    // busybox (a prerequisite of megaplan's image) has the ping; exit 0 means
    // at least one reply. First with mm1's VXLAN pointed at an address
    // nobody has: no reply, so the trunk is the only way across.
    let remote = |addr: &str| {
        let id = minimega::VXLAN_ID.to_string();
        mm1.exec(&[
            "ip", "link", "set", TRUNK, "type", "vxlan", "id", &id, "remote", addr,
        ]);
    };
    remote("10.213.0.99");
    let cut = ping(mm1, 2, 3);
    remote(mm2.addr);
    assert!(
        !cut.status.success(),
        "ping crossed without the trunk: {}",
        String::from_utf8_lossy(&cut.stdout),
    );
    let ping = ping(mm1, 3, 30);
    assert!(
        ping.status.success(),
        "no L2 across the nodes on VLAN {vlan}: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );

    // (d) vm kill shows in vm info (the other VM keeps running).
    head.run_ok(
        &Mm::new("vm")
            .word("kill")
            .arg("vm-b")
            .unwrap()
            .in_namespace(&ns),
    )
    .unwrap();
    let killed = wait_for(Duration::from_secs(30), || {
        vms = vm_info(&mut head, &ns);
        by_name(&vms, "vm-b").state == VmState::Quit
    });
    assert!(killed, "vm-b not QUIT after vm kill: {vms:?}");
    assert_eq!(by_name(&vms, "vm-a").state, VmState::Running);
    assert!(
        wait_for(Duration::from_secs(30), || mm2.qemus().is_empty()),
        "QEMU of vm-b still runs on mm2: {:?}",
        mm2.processes()
    );

    let listed = |c: &mut Client| namespace_listed(c, NS);
    assert!(
        listed(&mut head),
        "namespace {NS} not listed on the head node"
    );
    assert!(listed(&mut c2), "namespace {NS} not listed on mm2");

    // (e) Clear everything; nothing is left on either node.
    for cmd in [
        Mm::new("clear").word("tap").word("mirror"),
        Mm::new("tap").word("delete").arg("all").unwrap(),
    ] {
        for c in [&mut head, &mut c2] {
            c.run_ok(&cmd.clone().in_namespace(&ns)).unwrap();
        }
    }
    head.run_ok(&Mm::new("vm").word("flush").in_namespace(&ns))
        .unwrap();
    head.run_ok(&Mm::new("clear").word("namespace").name(&ns))
        .unwrap();
    for node in [mm1, mm2] {
        node.assert_bare();
    }
    assert!(
        !listed(&mut head),
        "namespace {NS} still listed after clear namespace"
    );
    assert!(
        !listed(&mut c2),
        "namespace {NS} still listed on mm2 after clear namespace"
    );

    drop((head, c2));
    mesh.stop();
    eprintln!("whole test {:?}", t0.elapsed());
}
