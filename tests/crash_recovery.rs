//! `megaplan apply` killed with SIGKILL at several points (during disk, tap,
//! QEMU and mirror creation, before and after the effect) leaves a state from
//! which the next apply converges and destroy leaves nothing.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns.rs"]
mod netns;

use std::os::unix::process::ExitStatusExt;

use lab::Lab;

const TEXT: &str = r#"
experiment "crash" { images "@IMAGES@"; accel "tcg"; }
network "LAN"
network "mon"
disk "d" size="16M" format="qcow2"
vm "A" {
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "128M"
    disk "d"
    nic "LAN"
}
vm "monitor" {
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "128M"
    nic "mon"
    mirrors "A"
}
"#;

#[test]
fn apply_killed_anywhere_converges_and_destroys_clean() {
    if !lab::can_boot("crash_recovery") {
        return;
    }
    let lab = Lab::new("crash.kdl", "crash", TEXT);
    let points = [
        ("BEFORE", "disk.d"),
        ("AFTER", "disk.d"),
        ("AFTER", "vm.A.nic[0]"),
        ("BEFORE", "vm.A"),
        ("AFTER", "vm.A"),
        ("AFTER", "mirror.A[0]->monitor[0]"),
    ];
    for (when, address) in points {
        let var = format!("MEGAPLAN_TEST_CRASH_{when}");
        let out = lab.megaplan_env(
            &["apply", lab.f(), "--auto-approve", "--parallelism", "1"],
            &[(&var, address)],
        );
        assert_eq!(
            out.status.signal(),
            Some(9),
            "apply was not killed at {when} {address}"
        );
        let rec = &lab.state()["resources"][address];
        assert_eq!(rec["status"], "creating", "{when} {address}: {rec}");

        let text = lab.plan_changes();
        assert!(
            text.contains(&format!(
                "# {address} must be replaced (its creation was interrupted)"
            )),
            "{text}"
        );

        lab.ok("apply", &["--auto-approve"]);
        lab.assert_converged(&format!("no convergence after {when} {address}"));
        let links = lab.ns_cmd(&["ip", "-d", "-o", "link", "show"]);
        assert_eq!(links.matches("alias megaplan:crash:").count(), 4, "{links}");
        let a_tap = lab.attr("vm.A.nic[0]", "name");
        let filters = lab.ns_cmd(&["tc", "filter", "show", "dev", &a_tap, "ingress"]);
        assert_eq!(filters.matches("mirred").count(), 1, "{filters}");
        assert_eq!(
            std::process::Command::new("pgrep")
                .args([
                    "-c",
                    "-f",
                    &format!("{}/run/crash/A/", lab.dir.path().display())
                ])
                .output()
                .unwrap()
                .stdout,
            b"1\n",
            "exactly one QEMU for A"
        );

        lab.ok("destroy", &["--auto-approve"]);
        lab.assert_clean();
    }
}
