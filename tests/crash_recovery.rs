//! `megaplan apply` killed with SIGKILL at several points (during disk, tap,
//! QEMU and mirror creation, before and after the effect) leaves a state from
//! which the next apply converges and destroy leaves nothing.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

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

const DISK_AND_STEPS: &str = r#"
experiment "crash2" { images "@IMAGES@"; accel "tcg"; }
network "LAN"
disk "d" size="16M" format="qcow2" filesystem="ext4" {
    inject "crash.kdl" "/etc/experiment.kdl"
}
vm "A" {
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "128M"
    disk "d" mount="/data"
    nic "LAN"
    cc {
        // Not idempotent: run twice in one boot it fails ("File exists").
        exec "ip addr add 10.0.0.1/24 dev eth0"
        exec "ip link set eth0 up"
    }
}
"#;

/// Killed mid-mkfs of an ext4 disk with injected files, and before and
/// after a cc step: the next apply converges (the leftovers of the disk are
/// swept, a step that ran is not run again), and destroy leaves nothing.
#[test]
fn apply_killed_in_disk_creation_or_a_step_converges() {
    if !lab::can_boot("crash_recovery") {
        return;
    }
    let lab = Lab::new("crash.kdl", "crash2", DISK_AND_STEPS);
    let disks = lab.dir.path().join(".megaplan/crash2/disks");
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(&disks)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".tmp") || n.ends_with(".stage"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let points = [
        ("MEGAPLAN_TEST_CRASH_DURING", "ext4", "disk.d"),
        ("MEGAPLAN_TEST_CRASH_BEFORE", "vm.A.cc[0]", "vm.A.cc[0]"),
        ("MEGAPLAN_TEST_CRASH_AFTER", "vm.A.cc[0]", "vm.A.cc[0]"),
        ("MEGAPLAN_TEST_CRASH_AFTER", "vm.A.cc[1]", "vm.A.cc[1]"),
    ];
    for (var, value, address) in points {
        let out = lab.megaplan_env(
            &["apply", lab.f(), "--auto-approve", "--parallelism", "1"],
            &[(var, value)],
        );
        assert_eq!(
            out.status.signal(),
            Some(9),
            "apply was not killed at {var}={value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rec = &lab.state()["resources"][address];
        assert_eq!(rec["status"], "creating", "{var}={value}: {rec}");
        if value == "ext4" {
            assert_eq!(leftovers().len(), 2, "{:?}", leftovers());
        }

        let text = lab.plan_changes();
        let verb = if address.contains(".cc[") {
            "will run again"
        } else {
            "must be replaced"
        };
        assert!(
            text.contains(&format!(
                "# {address} {verb} (its creation was interrupted)"
            )),
            "{text}"
        );
        let applied = lab.run("apply", &["--auto-approve"]);
        assert!(applied.status.success(), "apply after {var}={value} failed");
        let progress = String::from_utf8_lossy(&applied.stderr).into_owned();
        if var == "MEGAPLAN_TEST_CRASH_AFTER" {
            assert!(
                progress.contains(&format!("{address}: ran")) && progress.contains("not run again"),
                "the step's outcome was not recovered from the agent:\n{progress}"
            );
        }
        assert!(leftovers().is_empty(), "{:?}", leftovers());
        lab.assert_converged(&format!("no convergence after {var}={value}"));
        let addrs = lab.megaplan(&[
            "cc",
            "exec",
            lab.f(),
            "--filter",
            "name=A",
            "--",
            "ip -o -4 addr show dev eth0",
        ]);
        let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
        assert_eq!(addrs.matches("10.0.0.1/24").count(), 1, "{addrs}");

        lab.ok("destroy", &["--auto-approve"]);
        lab.assert_clean();
        assert!(
            !disks.exists() || std::fs::read_dir(&disks).unwrap().next().is_none(),
            "disk files left: {:?}",
            std::fs::read_dir(&disks).unwrap().collect::<Vec<_>>()
        );
    }
}
