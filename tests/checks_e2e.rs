//! `megaplan test` end to end on real guests (TCG): captures recorded from
//! the host and checks through the guest agent and on the capture files.
//! One lab: a passing file (exit 0, every JUnit testcase passing, captures
//! holding exactly the pings' frames, each once), then the same experiment
//! with one false check (exit 1, exactly that testcase failing, the
//! markdown saying why), then `destroy --all`; nothing is left.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use std::process::Command;

use lab::Lab;

/// `-s 123`: 14 (Ethernet) + 20 (IPv4) + 8 (ICMP) + 123 bytes on the wire,
/// a size no other frame of this lab has.
const PING_FRAME: u32 = 14 + 20 + 8 + 123;

const BODY: &str = r#"
network "LAN"
network "mon"
vm "A" {
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "160M"
    nic "LAN"
    cc {
        exec "ip addr add 10.0.0.1/24 dev eth0"
        exec "ip link set eth0 up"
    }
}
vm "B" {
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "160M"
    nic "LAN"
    cc {
        exec "ip addr add 10.0.0.2/24 dev eth0"
        exec "ip link set eth0 up"
    }
}
vm "monitor" {
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "160M"
    nic "mon"
    mirrors "A"
    after "A" "B"
    cc {
        exec "ip addr add 10.0.0.3/24 dev eth0"
        exec "ip link set eth0 up"
    }
}
capture "mon" { tap "monitor" nic=0; }
capture "lan" network="LAN"
check "A reaches B" {
    from "A"
    ping "10.0.0.2"
    retry 3
}
check "three pings on LAN" {
    from "A"
    exec "ping -c 3 -s 123 10.0.0.2"
    exit 0
    stdout-matches "3 packets transmitted, 3 (packets )?received"
}
check "the monitor saw A's pings to B" {
    capture "mon"
    match "icmp and src host 10.0.0.1 and dst host 10.0.0.2 and greater 165"
    at-least 3
    after "three pings on LAN"
}
check "no TCP on LAN" {
    capture "lan"
    match "tcp"
    none
}
check "B's network cannot reach the monitor's" {
    from "B"
    ping "10.0.0.3"
    expect "fail"
}
"#;

const FALSE_CHECK: &str = r#"
check "B cannot reach A" {
    from "B"
    ping "10.0.0.1"
    expect "fail"
}
"#;

fn file_text(extra: &str) -> String {
    format!("experiment \"chk\" {{ images \"@IMAGES@\"; accel \"tcg\"; }}\n{BODY}{extra}")
}

/// (name, passed, failure text) of every testcase of a JUnit file.
fn testcases(xml: &str) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    for part in xml.split("<testcase ").skip(1) {
        let body = part.split("</testcase>").next().unwrap();
        let name = body
            .split(" name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .replace("&apos;", "'");
        let failure = body.split("<failure").nth(1).map(str::to_string);
        out.push((name, failure.is_none(), failure.unwrap_or_default()));
    }
    out
}

fn frames(lab: &Lab, name: &str) -> Vec<megaplan::capture::Frame> {
    let path = lab
        .dir
        .path()
        .join(".megaplan/chk/captures")
        .join(format!("{name}.pcap"));
    let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    megaplan::capture::parse_frames(&mut f).unwrap()
}

/// The ICMP frames of the `-s 123` pings: (echo requests A->B, replies B->A).
fn ping_frames(frames: &[megaplan::capture::Frame]) -> (usize, usize) {
    let big: Vec<_> = frames
        .iter()
        .filter(|f| f.orig_len == PING_FRAME && f.data.len() > 34)
        .filter(|f| f.data[12..14] == [0x08, 0x00] && f.data[14 + 9] == 1)
        .collect();
    let req = big
        .iter()
        .filter(|f| f.data[34] == 8 && f.data[26..30] == [10, 0, 0, 1])
        .count();
    let rep = big
        .iter()
        .filter(|f| f.data[34] == 0 && f.data[26..30] == [10, 0, 0, 2])
        .count();
    assert_eq!(req + rep, big.len(), "only the pings have this size");
    (req, rep)
}

fn recorders_left() -> String {
    let out = Command::new("pgrep")
        .args(["-af", "capture-record --marker megaplan:chk:"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn megaplan_test_reports_checks_and_captures_each_frame_once() {
    if !lab::can_boot("checks_e2e") {
        return;
    }
    let lab = Lab::new("pass.kdl", "chk", &file_text(""));
    let dir = lab.dir.path();
    let (j1, m1) = (dir.join("pass.xml"), dir.join("pass.md"));

    // 1. A passing file, kept up to look at its captures.
    let out = lab.run(
        "test",
        &[
            "--junit",
            j1.to_str().unwrap(),
            "--markdown",
            m1.to_str().unwrap(),
            "--keep",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "every check holds");
    let cases = testcases(&std::fs::read_to_string(&j1).unwrap());
    assert_eq!(cases.len(), 5, "{cases:?}");
    assert!(cases.iter().all(|(_, ok, _)| *ok), "{cases:?}");
    let md = std::fs::read_to_string(&m1).unwrap();
    assert!(md.contains("✅ passed (5 of 5 checks passed)"), "{md}");
    // The recorders run while the lab is up, and the plan is empty.
    assert!(!recorders_left().is_empty(), "recorders run while kept");
    lab.assert_converged("after megaplan test --keep");
    // Exactly the three pings and their replies, each once: on the
    // network capture a frame crosses two member taps but is kept once;
    // the monitor's tap gets the mirror of A's nic (both directions).
    for cap in ["lan", "mon"] {
        assert_eq!(ping_frames(&frames(&lab, cap)), (3, 3), "capture {cap}");
    }
    let lan = frames(&lab, "lan");
    for (i, a) in lan.iter().enumerate() {
        assert!(
            !lan[i + 1..]
                .iter()
                .any(|b| b.data == a.data && b.time.abs_diff(a.time).as_millis() < 50),
            "a frame recorded twice on lan"
        );
    }
    // The same files through the CLI.
    let stdout = |args: &[&str]| {
        let out = lab.megaplan(args);
        assert!(out.status.success(), "megaplan {args:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let list = stdout(&["capture", "list", lab.f()]);
    assert!(
        list.contains("lan") && list.contains("network LAN"),
        "{list}"
    );
    let path = stdout(&["capture", "path", lab.f(), "lan"]);
    assert!(
        path.trim().ends_with(".megaplan/chk/captures/lan.pcap"),
        "{path}"
    );
    // `megaplan check` reruns the checks against the running lab (the exec
    // check pings three more times: the recorders go on).
    assert_eq!(lab.run("check", &[]).status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(".megaplan/chk/checks.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["passed"], 5);
    // Destroy stops the recorders and keeps the files.
    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
    assert_eq!(recorders_left(), "", "recorders left after destroy");
    assert_eq!(ping_frames(&frames(&lab, "lan")), (6, 6), "kept at destroy");

    // 2. The same experiment with one false check: exit non-zero, exactly
    // that testcase failing, the markdown saying why; destroyed after.
    let fail = dir.join("fail.kdl");
    let images = std::fs::read_to_string(lab.file.clone()).unwrap();
    let images = images.lines().next().unwrap().to_string();
    std::fs::write(&fail, format!("{images}\n{BODY}{FALSE_CHECK}")).unwrap();
    let (j2, m2) = (dir.join("fail.xml"), dir.join("fail.md"));
    let out = lab.megaplan(&[
        "test",
        fail.to_str().unwrap(),
        "--junit",
        j2.to_str().unwrap(),
        "--markdown",
        m2.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "a false check fails the test");
    let cases = testcases(&std::fs::read_to_string(&j2).unwrap());
    assert_eq!(cases.len(), 6, "{cases:?}");
    let failed: Vec<_> = cases.iter().filter(|(_, ok, _)| !ok).collect();
    assert_eq!(failed.len(), 1, "{cases:?}");
    assert_eq!(failed[0].0, "B cannot reach A");
    assert!(
        failed[0].2.contains("expected to fail, but it held"),
        "{}",
        failed[0].2
    );
    assert!(
        failed[0].2.contains("ping -c 1 -W 3 10.0.0.1"),
        "the command: {}",
        failed[0].2
    );
    assert!(
        failed[0].2.contains("1 packets received"),
        "its output: {}",
        failed[0].2
    );
    let md = std::fs::read_to_string(&m2).unwrap();
    assert!(md.contains("❌ failed (5 of 6 checks passed)"), "{md}");
    assert!(md.contains("Why “B cannot reach A” failed"), "{md}");
    assert!(md.contains("expected to fail, but it held"), "{md}");
    lab.assert_clean();
    assert_eq!(recorders_left(), "", "recorders left after megaplan test");
    // A new capture starts empty: this run's pings only.
    assert_eq!(
        ping_frames(&frames(&lab, "lan")),
        (3, 3),
        "the second run's own"
    );

    // 3. destroy --all removes the capture files.
    let out = lab.megaplan(&["destroy", fail.to_str().unwrap(), "--all", "--auto-approve"]);
    assert!(out.status.success());
    assert!(
        !dir.join(".megaplan/chk/captures").exists(),
        "captures removed by --all"
    );
    lab.assert_clean();
}
