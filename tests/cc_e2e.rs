//! cc steps of every kind on real guests (TCG): exec as a string and as an
//! argv, background, send, recv, allow-failure, timeout, `after` ordering
//! across VMs; their recorded results; `cc exec` with filters, timeouts,
//! output caps and five at once on one guest; `show`'s ip and cc columns; a
//! failing step failing the apply.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use lab::Lab;

const TEXT: &str = r#"
experiment "cc" { images "@IMAGES@"; accel "tcg"; }
network "LAN"
vm "srv" {
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "192M"
    nic "LAN"
    tags { role "server"; }
    cc {
        exec "ip addr add 10.0.0.1/24 dev eth0"
        exec "ip" "link" "set" "eth0" "up"
        send "payload.txt" to="/root/in/payload.txt"
        exec "sha256sum /root/in/payload.txt"
        background "sleep 1000"
        recv "/etc/hostname" to="got"
        exec "echo failing >&2; exit 3" allow-failure=#true
        exec "sleep 30" timeout="1s" allow-failure=#true
    }
}
vm "cli[1-2]" {
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "192M"
    nic "LAN"
    tags { role "client"; }
    after "srv"
    cc {
        exec "ip addr add 10.0.0.1$(hostname | tr -dc 0-9)/24 dev eth0"
        exec "ip link set eth0 up"
        exec "ping -c 1 -W 5 10.0.0.1"
    }
}
"#;

fn read(lab: &Lab, rel: &str) -> String {
    std::fs::read_to_string(lab.dir.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn steps_of_every_kind_run_in_order_and_are_recorded() {
    if !lab::can_boot("cc_e2e") {
        return;
    }
    let lab = Lab::new("cc.kdl", "cc", TEXT);
    let payload = "megaplan payload\n".repeat(1000);
    std::fs::write(lab.dir.path().join("payload.txt"), &payload).unwrap();
    lab.ok("apply", &["--auto-approve"]);

    let cc = ".megaplan/cc/cc";
    for i in 0..8 {
        let exit = read(&lab, &format!("{cc}/srv/{i}/exit"));
        let want = match i {
            6 => "3",
            7 => "124",
            _ => "0",
        };
        assert_eq!(exit.trim(), want, "srv step {i}");
    }
    // send: the guest's hash is the host's.
    let host_hash = megaplan::agent::protocol::sha256_of(payload.as_bytes());
    assert!(read(&lab, &format!("{cc}/srv/3/stdout")).starts_with(&host_hash));
    // recv: the guest's hostname is the VM's name.
    assert_eq!(read(&lab, "got/hostname").trim(), "srv");
    assert!(read(&lab, &format!("{cc}/srv/6/stderr")).contains("failing"));
    // after: the clients' pings to srv worked, so srv's address came first.
    for c in ["cli1", "cli2"] {
        assert_eq!(
            read(&lab, &format!("{cc}/{c}/2/exit")).trim(),
            "0",
            "{c} could not ping srv"
        );
    }
    let out = lab.megaplan(&["cc", "responses", lab.f()]);
    assert!(out.status.success());
    let responses = String::from_utf8_lossy(&out.stdout);
    assert!(
        responses.contains("== vm.srv.cc[6] (exit 3)"),
        "{responses}"
    );
    // A timed-out step says so; transfers read as sentences.
    assert!(
        responses.contains("== vm.srv.cc[7] (timed out after 1s)"),
        "{responses}"
    );
    assert!(
        responses.contains(&format!(
            "sent {} bytes to /root/in/payload.txt (sha256 {host_hash})",
            payload.len()
        )),
        "{responses}"
    );
    assert!(
        responses.contains("received 4 bytes from /etc/hostname into "),
        "{responses}"
    );
    assert!(!responses.contains("Transfer {"), "{responses}");

    // Five cc exec at once on one guest all get through, each its own answer.
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..5)
            .map(|i| {
                let lab = &lab;
                s.spawn(move || {
                    let echo = format!("echo parallel-{i}");
                    lab.megaplan(&["cc", "exec", lab.f(), "--filter", "name=srv", "--", &echo])
                })
            })
            .collect();
        for (i, r) in runs.into_iter().enumerate() {
            let out = r.join().unwrap();
            assert!(out.status.success(), "parallel cc exec {i} failed");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("parallel-{i}\n")), "{text}");
        }
    });

    // cc exec --timeout: the same wording as a step, and timed_out in JSON.
    let srv = |args: &[&str]| {
        let mut all = vec!["cc", "exec", lab.f(), "--filter", "name=srv"];
        all.extend_from_slice(args);
        lab.megaplan(&all)
    };
    let out = srv(&["--timeout", "1s", "--", "sleep 30"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("== srv (timed out after 1s)"),
        "{out:?}"
    );
    let out = srv(&["--timeout", "1s", "--json", "--", "sleep 30"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["timed_out"], true, "{v}");
    assert_eq!(v[0]["exit"], 124, "{v}");

    // Output past 64 KiB is cut, and says so; --max-output raises the cap.
    let big = "head -c 100000 /dev/zero | tr '\\0' a";
    let out = srv(&["--", big]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("(stdout truncated at 64 KiB; --max-output raises it)"),
        "{out:?}"
    );
    let out = srv(&["--json", "--", big]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["stdout_truncated"], true, "{v}");
    assert_eq!(v[0]["stdout"].as_str().unwrap().len(), 64 << 10);
    let out = srv(&["--max-output", "200K", "--json", "--", big]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["stdout_truncated"], false, "{v}");
    assert_eq!(v[0]["stdout"].as_str().unwrap().len(), 100_000);

    // cc exec with a tag filter reaches both clients and only them.
    let out = lab.megaplan(&[
        "cc",
        "exec",
        lab.f(),
        "--filter",
        "tag:role=client",
        "--json",
        "--",
        "hostname",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["stdout"].as_str().unwrap().trim().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["cli1", "cli2"]);
    // megaplan's kernel command line reached the guest, `append` after it.
    let out = lab.megaplan(&[
        "cc",
        "exec",
        lab.f(),
        "--filter",
        "name=srv",
        "--",
        "cat",
        "/proc/cmdline",
    ]);
    assert!(out.status.success());
    let cmdline = String::from_utf8_lossy(&out.stdout);
    assert!(
        cmdline.contains("console=ttyS0 no_timer_check megaplan.hostname=srv"),
        "{cmdline}"
    );
    // A failing command makes cc exec fail.
    assert_eq!(
        lab.megaplan(&["cc", "exec", lab.f(), "--filter", "name=srv", "--", "false"])
            .status
            .code(),
        Some(1)
    );
    // show: ip and cc columns from the agents and the state.
    let show = lab.ok("show", &["--columns", "name,ip,cc"]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("srv ") && l.contains("10.0.0.1/24") && l.contains("8/8")),
        "{show}"
    );
    assert!(
        show.lines()
            .any(|l| l.starts_with("cli1") && l.contains("10.0.0.11/24") && l.contains("3/3")),
        "{show}"
    );
    lab.assert_converged("plan after apply");

    // A step that fails without allow-failure fails the apply and taints its
    // VM: the next plan replaces the VM and reruns its steps in a fresh boot.
    std::fs::write(
        &lab.file,
        std::fs::read_to_string(&lab.file).unwrap().replace(
            "ping -c 1 -W 5 10.0.0.1\"",
            "ping -c 1 -W 5 10.0.0.1\"\n        exec \"exit 7\"",
        ),
    )
    .unwrap();
    let out = lab.run("apply", &["--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("vm.cli1.cc[3]: vm.cli1.cc[3] exited 7"));
    let plan = String::from_utf8_lossy(&lab.run("plan", &[]).stdout).to_string();
    assert!(
        plan.contains("# vm.cli1 must be replaced (tainted: vm.cli1.cc[3] failed)"),
        "{plan}"
    );
    assert!(
        plan.contains("# vm.cli1.cc[0] will run again (its VM is replaced)"),
        "{plan}"
    );
    assert!(
        plan.contains("# vm.cli1.cc[3] will run again (it failed last time; its VM is replaced)"),
        "{plan}"
    );
    assert!(!plan.contains("# vm.srv must"), "{plan}");

    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
}
