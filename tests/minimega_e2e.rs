//! The seed article's minimega script, imported, applied under TCG: A pings
//! B and the monitor sees it through the imported `tap mirror mega_tap0
//! mega_tap2`.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns.rs"]
mod netns;

use lab::Lab;

fn cc(lab: &Lab, vm: &str, cmd: &str) -> String {
    let out = lab.megaplan(&[
        "cc",
        "exec",
        lab.f(),
        "--filter",
        &format!("name={vm}"),
        "--",
        cmd,
    ]);
    assert!(out.status.success(), "cc exec on {vm} failed: {cmd}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .args([
            "import",
            "minimega",
            mm.to_str().unwrap(),
            "--name",
            "mm-import-e2e",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kdl = String::from_utf8(out.stdout).unwrap();
    assert!(kdl.contains("images \"images\""), "{kdl}");
    let lab = Lab::new(
        "imported.kdl",
        "mm-import-e2e",
        &kdl.replace("images \"images\"", "images \"@IMAGES@\""),
    );
    lab.ok("apply", &["--auto-approve"]);
    // tcpdump is capturing once its file exists (bounded wait in the guest).
    cc(
        &lab,
        "monitor",
        "i=0; while [ ! -s /tmp/cap.pcap ] && [ $i -lt 200 ]; do i=$((i+1)); sleep 0.05; done; test -s /tmp/cap.pcap",
    );
    cc(&lab, "A", "ping -c 3 -W 5 10.0.0.2");
    let seen = cc(&lab, "monitor", "tcpdump -n -r /tmp/cap.pcap");
    assert!(
        seen.contains("10.0.0.1 > 10.0.0.2: ICMP echo request"),
        "{seen}"
    );
    assert!(
        seen.contains("10.0.0.2 > 10.0.0.1: ICMP echo reply"),
        "{seen}"
    );
    lab.ok("destroy", &["--auto-approve"]);
    lab.assert_clean();
}
