//! The engine on a real host: `megaplan apply` boots three guests under TCG
//! with a tap mirror, inside a private network namespace; a second plan is
//! empty; killing one QEMU shows up in the plan with its reason and the
//! mirror's rewiring; apply repairs it; destroy leaves nothing behind. A
//! second apply while one holds the lock fails at once.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use lab::Lab;

fn text() -> String {
    let vm = |name: &str, net: &str, extra: &str| {
        format!(
            "vm \"{name}\" {{\n    kernel \"$images/miniccc.kernel\"\n    initrd \"$images/miniccc.initrd\"\n    memory \"128M\"\n    nic \"{net}\"\n    {extra}\n}}\n"
        )
    };
    format!(
        "experiment \"e2e\" {{ images \"@IMAGES@\"; accel \"tcg\"; }}\nnetwork \"LAN\"\nnetwork \"mon\"\n{}{}{}",
        vm("A", "LAN", ""),
        vm("B", "LAN", ""),
        vm("monitor", "mon", "mirrors \"A\" direction=\"both\"")
    )
}

#[test]
fn apply_repair_and_destroy_three_guests_with_a_mirror() {
    if !lab::can_boot("engine_tcg") {
        return;
    }
    let lab = Lab::new("e2e.kdl", "e2e", &text());
    let done = lab.ok("apply", &["--auto-approve"]);
    // The summary names megaplan's own CPU time (benches/apply-scale.sh reads it).
    let own: f64 = done
        .split("megaplan's own CPU ")
        .nth(1)
        .and_then(|r| r.strip_suffix("s.\n"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no own CPU in the summary: {done}"));
    assert!(own > 0.0, "{done}");
    let links = lab.ns_cmd(&["ip", "-d", "-o", "link", "show"]);
    assert_eq!(links.matches("alias megaplan:e2e:").count(), 5, "{links}");
    lab.assert_converged("plan after apply");

    let a_tap = lab.attr("vm.A.nic[0]", "name");
    let mon_tap = lab.attr("vm.monitor.nic[0]", "name");
    for side in ["ingress", "egress"] {
        let f = lab.ns_cmd(&["tc", "filter", "show", "dev", &a_tap, side]);
        assert!(f.contains("mirred") && f.contains(&mon_tap), "{side}: {f}");
    }

    // A second apply while the lock is held fails at once, naming the holder.
    {
        let sd = megaplan::state::StateDir {
            root: lab.dir.path().join(".megaplan/e2e"),
            experiment: "e2e".into(),
        };
        let _held = sd.lock("test holder").unwrap();
        let out = lab.run("apply", &["--auto-approve"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "a held lock exits 3 (a conflict)"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("locked by pid") && err.contains("test holder"),
            "{err}"
        );
    }

    let old = lab.kill_vm("monitor");
    let plan = lab.plan_changes();
    assert!(
        plan.contains("# vm.monitor must be replaced (QEMU not running)"),
        "{plan}"
    );
    assert!(
        plan.contains("# mirror.A[0]->monitor[0] must be replaced"),
        "{plan}"
    );

    lab.ok("apply", &["--auto-approve"]);
    lab.assert_converged("plan after apply");
    assert_ne!(lab.pid("monitor"), old);
    assert!(
        lab.ns_cmd(&["tc", "filter", "show", "dev", &a_tap, "ingress"])
            .contains("mirred")
    );

    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
    assert!(lab.state()["resources"].as_object().unwrap().is_empty());
}

/// A guest whose kernel panics fails its step at once with the panic line and
/// where the serial log is, instead of waiting two minutes for its agent;
/// the next plan reruns the step, and destroy cleans up.
#[test]
fn a_kernel_panic_fails_the_step_with_its_reason() {
    if !lab::can_boot("engine_tcg") {
        return;
    }
    // No such init in the initrd: the kernel falls back to a root device
    // there is none of, and panics.
    let text = "experiment \"panic\" { images \"@IMAGES@\"; accel \"tcg\"; }\n\
        vm \"P\" {\n    kernel \"$images/miniccc.kernel\"\n    initrd \"$images/miniccc.initrd\"\n    \
        append \"rdinit=/no/such/init\"\n    memory \"128M\"\n    cc { exec \"true\"; }\n}\n";
    let lab = Lab::new("panic.kdl", "panic", text);
    let out = lab.run("apply", &["--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "error: vm.P.cc[0]: agent of P will not report in: the guest kernel panicked: Kernel panic - not syncing: VFS: Unable to mount root fs"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("P.serial.log)"), "{stdout}");
    let plan = lab.ok("plan", &[]);
    assert!(plan.contains("vm.P.cc[0]"), "{plan}");
    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
}

/// A guest whose agent never starts (its init is a shell waiting on the
/// console) fails its step after the file's `boot-timeout`, not two minutes,
/// and the error names the serial log and shows its last lines.
#[test]
fn a_silent_guest_fails_after_its_boot_timeout_with_the_serial_log() {
    if !lab::can_boot("engine_tcg") {
        return;
    }
    let text = "experiment \"silent\" { images \"@IMAGES@\"; accel \"tcg\"; }\n\
        vm \"S\" {\n    kernel \"$images/miniccc.kernel\"\n    initrd \"$images/miniccc.initrd\"\n    \
        append \"rdinit=/bin/sh\"\n    memory \"128M\"\n    boot-timeout \"5s\"\n    cc { exec \"true\"; }\n}\n";
    let lab = Lab::new("silent.kdl", "silent", text);
    let started = std::time::Instant::now();
    let out = lab.run("apply", &["--auto-approve"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        stdout.contains("error: vm.S.cc[0]: agent of S did not report in within 5s (boot-timeout)"),
        "{stdout}"
    );
    let log_line = stdout
        .lines()
        .find(|l| l.starts_with("serial log "))
        .unwrap_or_else(|| panic!("no serial log line: {stdout}"));
    assert!(log_line.ends_with("S.serial.log, last lines:"), "{stdout}");
    // The kernel's boot messages are in the log: some of them are shown.
    let shown: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("serial log "))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert!(!shown.is_empty() && shown.len() <= 10, "{stdout}");
    // Well within the old fixed two minutes (QEMU start and the plan included).
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
}

/// `megaplan console`: the log shows the guest's boot text, and attached,
/// a command typed into the guest's shell on ttyS0 runs there and its
/// output comes back; Ctrl-] detaches.
#[test]
fn console_reads_the_boot_text_and_types_into_the_guest() {
    use std::io::Write;
    if !lab::can_boot("engine_tcg") {
        return;
    }
    let text = "experiment \"console\" { images \"@IMAGES@\"; accel \"tcg\"; }\n\
        vm \"C\" {\n    kernel \"$images/miniccc.kernel\"\n    initrd \"$images/miniccc.initrd\"\n    \
        append \"megaplan.shell\"\n    memory \"256M\"\n    cc { exec \"true\"; }\n}\n";
    let lab = Lab::new("console.kdl", "console", text);
    lab.ok("apply", &["--auto-approve"]);
    let wait = std::time::Duration::from_secs(60);

    // The log, followed: the kernel's first line is there.
    let mut follow = lab.spawn("console", &["C", "--follow"]);
    let mut log = lab::OutputWatch::new(follow.stdout.take().unwrap());
    let found = log.wait_for("Linux version", wait);
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert!(found, "no boot text in the followed log: {}", log.seen);

    // Attached: type into the guest's shell.
    let mut attached = lab.spawn("console", &["C"]);
    let mut stdin = attached.stdin.take().unwrap();
    let mut out = lab::OutputWatch::new(attached.stdout.take().unwrap());
    stdin.write_all(b"\necho console-$((6*7))\n").unwrap();
    let answered = out.wait_for("console-42", wait);
    stdin.write_all(&[0x1d]).unwrap();
    let status = attached.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut attached.stderr.take().unwrap(), &mut err).unwrap();
    assert!(answered, "the guest's shell did not answer: {}", out.seen);
    assert!(status.success(), "{err}");
    assert!(err.contains("attached to the console of C"), "{err}");
    assert!(err.contains("detached from C"), "{err}");

    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
}
