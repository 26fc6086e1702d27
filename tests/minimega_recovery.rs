//! Recovery on a real two-node minimega mesh (tests/common/minimega.rs),
//! through the `megaplan` binary, A placed on mm1 and B on mm2:
//! 1. an apply killed in the middle of its launch batch (A and B queued in
//!    minimega, not launched: `MEGAPLAN_TEST_CRASH_QUEUED=vm.B`) leaves
//!    both recorded `Creating` and minimega's queue full; the next apply
//!    drops the queue, launches both, and the plan after it is empty;
//! 2. a VM on a dead node (issue 14): mm2's minimega is killed (a crashed
//!    or lost node). The next `megaplan plan` names B, its node and the
//!    `node_unreachable` reason, exits 2, in bounded time, and leaves A
//!    alone; `destroy` removes A and says it could not remove B; the harness
//!    then ends what the dead minimega left and its teardown finds nothing
//!    else.
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

use std::path::Path;
use std::time::{Duration, Instant};

use megaplan::minimega::client::{Command as Mm, Name, vm_infos};
use minimega::{Mesh, wait_for};
use run::Run;

fn experiment(base: &Path, images: &Path) -> String {
    let vm = |name: &str, host: &str| {
        format!(
            "vm \"{name}\" {{\n    host \"{host}\"\n    kernel \"$images/miniccc.kernel\"\n    initrd \"$images/miniccc.initrd\"\n    memory \"128M\"\n    nic \"LAN\"\n}}\n"
        )
    };
    format!(
        "experiment \"mm-dead\" {{\n    images \"{}\"\n    provider \"minimega\" {{\n        base \"{}\"\n    }}\n}}\nnetwork \"LAN\"\n{}{}",
        images.display(),
        base.display(),
        vm("A", "mm1"),
        vm("B", "mm2")
    )
}

#[test]
fn a_crash_mid_batch_converges_and_a_vm_on_a_dead_node_is_named() {
    let Some(mut mesh) = Mesh::start("minimega_recovery") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    mesh.build_miniccc_image(&images);
    let file = work.path().join("mm-dead.kdl");
    std::fs::write(&file, experiment(&mesh.nodes[0].base, &images)).unwrap();
    let run = Run::new(&file, work.path());
    let ns = Name::new("mm-dead").unwrap();

    let mut head = mesh.nodes[0].client();

    // 1. Killed with A and B queued in minimega, before the batch launched.
    let out = run.megaplan_env(
        &["apply", "--auto-approve"],
        &[("MEGAPLAN_TEST_CRASH_QUEUED", "vm.B")],
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "the apply was killed at the crash point: {}",
        run::text(&out)
    );
    let queue = head
        .run_ok(&Mm::new("ns").word("queue").in_namespace(&ns))
        .unwrap();
    let queue: String = queue.iter().map(|r| r.response.as_str()).collect();
    assert!(
        queue.contains("Names: A") && queue.contains("Names: B"),
        "A and B are queued in minimega: {queue}"
    );
    let cmd = Mm::new("vm").word("info").in_namespace(&ns);
    assert!(vm_infos(&cmd, &head.run(&cmd).unwrap()).unwrap().is_empty());
    let out = run.megaplan(&["plan", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for vm in ["vm.A", "vm.B"] {
        let c = json["resource_changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["address"] == vm)
            .unwrap_or_else(|| panic!("no {vm} in {json}"));
        assert_eq!(c["action_reason"], "creation_interrupted", "{c}");
    }
    let out = run.megaplan(&["apply", "--auto-approve"]);
    assert!(out.status.success(), "apply: {}", run::text(&out));
    let queue = head
        .run_ok(&Mm::new("ns").word("queue").in_namespace(&ns))
        .unwrap();
    assert!(
        queue.iter().all(|r| r.response.trim().is_empty()),
        "nothing stays queued: {queue:?}"
    );
    let vms = vm_infos(&cmd, &head.run(&cmd).unwrap()).unwrap();
    let mut names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["A", "B"], "each VM once: {vms:?}");
    let out = run.megaplan(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", run::text(&out));
    assert_eq!(mesh.nodes[1].qemus().len(), 1, "B's QEMU runs on mm2");

    // mm2 is lost: its minimega dies, B's QEMU runs on there, unreachable.
    // 2. mm2 is lost.
    mesh.nodes[1].kill_minimega();
    let t = Instant::now();
    let out = run.megaplan(&["plan", "--detailed-exitcode"]);
    let took = t.elapsed();
    let text = run::text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        took < Duration::from_secs(60),
        "the plan took {took:?}: {text}"
    );
    let b = text
        .lines()
        .find(|l| l.contains("vm.B ") && l.contains("replaced"))
        .unwrap_or_else(|| panic!("no line replacing vm.B: {text}"));
    assert!(b.contains("its node mm2 did not answer"), "{b}");
    assert!(
        !text.lines().any(|l| l.contains("# vm.A ")),
        "A (on mm1) is left alone: {text}"
    );
    let out = run.megaplan(&["plan", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let change = json["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "vm.B")
        .unwrap_or_else(|| panic!("no vm.B in {json}"));
    assert_eq!(change["action_reason"], "node_unreachable", "{change}");

    // Destroy removes A and says it could not remove B, naming mm2.
    let out = run.megaplan(&["destroy", "--auto-approve"]);
    let text = run::text(&out);
    assert!(!out.status.success(), "destroy cannot remove B: {text}");
    assert!(
        text.lines()
            .any(|l| l.contains("vm.B") && l.contains("was not removed") && l.contains("mm2")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("vm.A: destroyed")),
        "A, on the live node, is destroyed: {text}"
    );
    assert!(
        wait_for(Duration::from_secs(60), || mesh.nodes[0].qemus().is_empty()),
        "A's QEMU is gone from mm1"
    );
    let cmd = Mm::new("vm").word("info").in_namespace(&ns);
    let left = vm_infos(&cmd, &head.run(&cmd).unwrap()).unwrap();
    assert!(left.iter().all(|v| v.name != "A"), "{left:?}");
    drop(head);

    // What the dead minimega left on mm2 (B's QEMU) is the harness's to end.
    let killed = mesh.nodes[1].kill_orphans();
    assert!(
        killed.iter().any(|c| c.starts_with("qemu")),
        "B's QEMU was left on mm2: {killed:?}"
    );
    mesh.stop();
}
