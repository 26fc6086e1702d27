//! The seed, end to end, under TCG with the real Debian kernel and the real
//! agent: minimega's "Tap mirroring" and "Using Bro" articles as experiments.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use lab::Lab;

fn vm(name: &str, net: &str, body: &str) -> String {
    format!(
        "vm \"{name}\" {{\n    kernel \"$images/miniccc.kernel\"\n    initrd \"$images/miniccc.initrd\"\n    memory \"256M\"\n    nic \"{net}\"\n{body}}}\n"
    )
}

fn addr(ip: &str) -> String {
    format!(
        "    cc {{\n        exec \"ip addr add {ip}/24 dev eth0\"\n        exec \"ip link set eth0 up\"\n    }}\n"
    )
}

const MONITOR_CC: &str = "    mirrors \"A\"\n    cc {\n        exec \"ip link set eth0 up\"\n        background \"tcpdump -U -n -i eth0 -w /tmp/cap.pcap\"\n    }\n";

fn seed_text(extra: &str) -> String {
    format!(
        "experiment \"{{NAME}}\" {{ images \"@IMAGES@\"; accel \"tcg\"; }}\nnetwork \"LAN\"\nnetwork \"mon\"\n{}{}{}{extra}",
        vm("A", "LAN", &addr("10.0.0.1")),
        vm("B", "LAN", &addr("10.0.0.2")),
        vm("monitor", "mon", MONITOR_CC),
    )
}

#[test]
fn mirror_shows_a_and_b_but_not_another_network() {
    if !lab::can_boot("mirror") {
        return;
    }
    let other = format!(
        "network \"other\"\n{}{}",
        vm("C", "other", &addr("10.0.1.3")),
        vm("D", "other", &addr("10.0.1.4"))
    );
    let lab = Lab::new(
        "seed.kdl",
        "seed-mirror",
        &seed_text(&other).replace("{NAME}", "seed-mirror"),
    );
    lab.ok("apply", &["--auto-approve"]);
    lab.wait_capture("monitor", "/tmp/cap.pcap");
    lab.cc_exec("A", "ping -c 3 -W 5 10.0.0.2");
    lab.cc_exec("C", "ping -c 3 -W 5 10.0.1.4");
    let seen = lab.cc_exec("monitor", "tcpdump -n -r /tmp/cap.pcap");
    lab::assert_ping_seen(&seen, "10.0.0.1", "10.0.0.2");
    assert!(
        !seen.contains("10.0.1."),
        "the monitor saw the other network:\n{seen}"
    );
    // show has the ip column from the agents.
    let show = lab.ok("show", &["--columns", "name,tap,ip,state"]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("A ") && l.contains("10.0.0.1/24") && l.contains("running")),
        "{show}"
    );
    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
}

#[test]
fn capture_on_a_keep_disk_survives_destroy_and_extracts() {
    if !lab::can_boot("capture") {
        return;
    }
    let monitor = "    snapshot #false\n    disk \"bro\" mount=\"/bro\"\n    mirrors \"A\"\n    cc {\n        exec \"ip link set eth0 up\"\n        background \"tcpdump -Z root -U -n -i eth0 -w /bro/capture.pcap\"\n    }\n";
    let text = format!(
        "experiment \"bro-e2e\" {{ images \"@IMAGES@\"; accel \"tcg\"; }}\nnetwork \"LAN\"\nnetwork \"mon\"\ndisk \"bro\" size=\"64M\" format=\"qcow2\" filesystem=\"ext4\" keep=#true\n{}{}{}",
        vm("A", "LAN", &addr("10.0.0.1")),
        vm("B", "LAN", &addr("10.0.0.2")),
        vm("monitor", "mon", monitor),
    );
    let lab = Lab::new("bro.kdl", "bro-e2e", &text);
    lab.ok("apply", &["--auto-approve"]);
    lab.wait_capture("monitor", "/bro/capture.pcap");
    lab.cc_exec("A", "ping -c 3 -W 5 10.0.0.2");
    // Refused while the VM using the disk runs.
    let to = lab.dir.path().join("extracted");
    let extract = || {
        lab.megaplan(&[
            "disk",
            "extract",
            lab.f(),
            "bro",
            "/capture.pcap",
            "--to",
            to.to_str().unwrap(),
        ])
    };
    let refused = extract();
    assert_eq!(refused.status.code(), Some(1));
    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
    let disk = lab.dir.path().join(".megaplan/bro-e2e/disks/bro.qcow2");
    assert!(disk.exists(), "the keep disk was removed by destroy");
    let out = extract();
    assert!(out.status.success());
    let read = std::process::Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(to.join("capture.pcap"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(
        text.contains("10.0.0.1 > 10.0.0.2: ICMP echo request"),
        "{text}"
    );
    lab.ok("destroy", &["--all", "--auto-approve"]);
    assert!(!disk.exists(), "destroy --all kept the disk");
}

#[test]
fn rerun_reproduces_identities_and_drift_is_repaired() {
    if !lab::can_boot("rerun") {
        return;
    }
    let lab = Lab::new(
        "seed.kdl",
        "seed-rerun",
        &seed_text("").replace("{NAME}", "seed-rerun"),
    );
    lab.ok("apply", &["--auto-approve"]);
    lab.assert_converged("plan after apply");
    let ids = |lab: &Lab| -> Vec<String> {
        ["A", "B", "monitor"]
            .iter()
            .flat_map(|v| {
                let nics: Vec<serde_json::Value> =
                    lab.state()["resources"][format!("vm.{v}")]["attrs"]["nics"]
                        .as_array()
                        .unwrap()
                        .clone();
                vec![
                    lab.attr(&format!("vm.{v}"), "uuid"),
                    nics[0]["mac"].to_string(),
                    lab.attr(&format!("vm.{v}.nic[0]"), "name"),
                ]
            })
            .collect()
    };
    let first = ids(&lab);
    let live_uuid = lab.cc_exec("A", "cat /sys/class/dmi/id/product_uuid");
    assert_eq!(
        live_uuid.lines().nth(1).unwrap_or_default().to_lowercase(),
        first[0]
    );
    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
    lab.ok("apply", &["--auto-approve"]);
    assert_eq!(
        ids(&lab),
        first,
        "identities changed across destroy + apply"
    );

    // Drift: the monitor's QEMU dies; the plan says so, apply repairs, the mirror works again.
    lab.kill_vm("monitor");
    let plan = lab.plan_changes();
    assert!(
        plan.contains("# vm.monitor must be replaced (QEMU not running)"),
        "{plan}"
    );
    assert!(
        plan.contains("# mirror.A[0]->monitor[0] must be replaced"),
        "{plan}"
    );
    assert!(plan.contains("# vm.monitor.cc[1] will run again"), "{plan}");
    lab.ok("apply", &["--auto-approve"]);
    lab.assert_converged("plan after apply");
    lab.wait_capture("monitor", "/tmp/cap.pcap");
    lab.cc_exec("A", "ping -c 2 -W 5 10.0.0.2");
    let seen = lab.cc_exec("monitor", "tcpdump -n -r /tmp/cap.pcap");
    assert!(
        seen.contains("10.0.0.1 > 10.0.0.2: ICMP echo request"),
        "{seen}"
    );
    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
}
