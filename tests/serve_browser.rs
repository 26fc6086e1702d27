//! `megaplan serve` in a real browser: Debian's headless Chromium, driven
//! over the DevTools protocol (`--remote-debugging-pipe`), against the seed
//! experiment (examples/tap-mirror.kdl's shape) booted under TCG in a
//! private network namespace. The page lists every VM and network, draws
//! one shape per VM and one line per mirror, loads nothing from another
//! origin, and shows a killed VM dead within 3 s, pushed, without a reload.
//! Served on a veth address with a token, the page works the same (its
//! assets and event stream carry the token).
//!
//! With `MEGAPLAN_UPDATE_SCREENSHOT=1` it also rewrites docs/web-view.png.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

fn vm(name: &str, net: &str, body: &str) -> String {
    format!(
        "vm \"{name}\" {{\n    kernel \"$images/miniccc.kernel\"\n    initrd \"$images/miniccc.initrd\"\n    memory \"128M\"\n    nic \"{net}\"\n{body}}}\n"
    )
}

fn text() -> String {
    let addr = |ip: &str| {
        format!(
            "    cc {{\n        exec \"ip addr add {ip}/24 dev eth0\"\n        exec \"ip link set eth0 up\"\n    }}\n"
        )
    };
    format!(
        "experiment \"tap-mirror\" {{ images \"@IMAGES@\"; accel \"tcg\"; }}\nnetwork \"LAN\"\nnetwork \"mon\"\n{}{}{}{CHECKS}",
        vm("A", "LAN", &addr("10.0.0.1")),
        vm("B", "LAN", &addr("10.0.0.2")),
        vm(
            "monitor",
            "mon",
            "    mirrors \"A\"\n    cc {\n        exec \"ip link set eth0 up\"\n        exec \"echo out-text; echo why-it-failed >&2; exit 3\" allow-failure=#true\n    }\n"
        )
    )
}

/// The seed's captures and checks (examples/tap-mirror.kdl).
const CHECKS: &str = r#"capture "mon" {
    tap "monitor" nic=0
}
capture "lan" network="LAN"
check "A reaches B" {
    from "A"
    ping "10.0.0.2"
    retry 3
}
check "the monitor sees A's ICMP to B" {
    capture "mon"
    match "icmp and src host 10.0.0.1 and dst host 10.0.0.2"
    at-least 1
    after "A reaches B"
}
check "B's network cannot reach the monitor's" {
    from "B"
    ping "10.0.0.3"
    expect "fail"
}
"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A headless Chromium in the lab's namespace, spoken to over its pipe.
struct Browser {
    child: Child,
    tx: File,
    rx: mpsc::Receiver<Value>,
    next: u64,
    session: Option<String>,
    /// Every event seen, in order.
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: a valid two-int buffer.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (fds[0], fds[1])
}

impl Browser {
    fn launch(ns: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (to_read, to_write) = pipe();
        let (from_read, from_write) = pipe();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "chromium"])
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec: the
        // pipe ends become fds 3 (commands in) and 4 (replies out).
        unsafe {
            cmd.pre_exec(move || {
                let a = libc::fcntl(to_read, libc::F_DUPFD, 100);
                let b = libc::fcntl(from_write, libc::F_DUPFD, 100);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        // SAFETY: fds from pipe2 above, each owned once from here on.
        let (tx, reader) = unsafe {
            libc::close(to_read);
            libc::close(from_write);
            (File::from_raw_fd(to_write), File::from_raw_fd(from_read))
        };
        let (etx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut msg = Vec::new();
            while r.read_until(0, &mut msg).is_ok_and(|n| n > 0) {
                msg.pop();
                if let Ok(v) = serde_json::from_slice::<Value>(&msg)
                    && etx.send(v).is_err()
                {
                    break;
                }
                msg.clear();
            }
        });
        Browser {
            child,
            tx,
            rx,
            next: 0,
            session: None,
            events: Vec::new(),
            _profile: profile,
        }
    }

    /// Send a command (to the attached page, once there is one) and wait for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut m = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            m["sessionId"] = s.clone().into();
        }
        let mut bytes = serde_json::to_vec(&m).unwrap();
        bytes.push(0);
        self.tx.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method}"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// What the promise `expr` resolves to.
    fn eval_await(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        r["result"]["value"].clone()
    }

    /// Poll the page until `ok` holds for what `expr` evaluates to, or the deadline.
    fn wait_for(&mut self, expr: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expr);
            if ok(&v) || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PAGE: &str = r#"JSON.stringify({
  updates: Number(document.body.dataset.updates || 0),
  loaded: document.documentElement.dataset.loaded,
  vms: [...document.querySelectorAll('#vms .vm')].map(d => [d.dataset.vm, d.dataset.state, Number(d.dataset.since),
    d.querySelector('td[data-key=addresses]').textContent]),
  networks: [...document.querySelectorAll('#networks tbody tr')].map(r => r.cells[0].textContent),
  shapes: document.querySelectorAll('#topology svg g.vm').length,
  // The boxes are painted (not left black by a blocked style).
  fills: [...document.querySelectorAll('#topology svg g.vm rect')].map(r => getComputedStyle(r).fill),
  mirrors: document.querySelectorAll('#topology svg path.mirror').length,
  steps: document.querySelectorAll('#vms details.step').length,
  failed: [...document.querySelectorAll('#vms details.step.failed')].map(d => [d.dataset.step,
    d.querySelector('summary').textContent, d.querySelector('pre.stdout')?.textContent,
    d.querySelector('pre.stderr')?.textContent]),
  serial: [...document.querySelectorAll('#vms details.serial pre')].map(p => p.textContent.length),
  checks: [...document.querySelectorAll('#checks tbody tr')].map(r => [r.dataset.check,
    r.cells[0].textContent, r.querySelector('summary').textContent]),
  checks_summary: document.getElementById('checks-summary').textContent,
  captures: [...document.querySelectorAll('#captures tbody tr')].map(r => [r.dataset.capture,
    r.querySelector('a.download')?.getAttribute('href') ?? null]),
  capture_marks: [...document.querySelectorAll('#topology svg g.capture')].map(g => g.dataset.capture),
  text: document.body.innerText,
})"#;

#[test]
fn the_page_shows_the_experiment_and_a_killed_vm_within_3s() {
    if !lab::can_boot("serve_browser") {
        return;
    }
    if Command::new("chromium").arg("--version").output().is_err() {
        netns::skip(
            "serve_browser",
            "chromium missing (bash scripts/setup-host.sh)",
        );
        return;
    }
    let lab = lab::Lab::new("tap-mirror.kdl", "tap-mirror", &text());
    lab.ok("apply", &["--auto-approve"]);
    let _ = lab.ns_cmd(&["ip", "link", "set", "lo", "up"]);
    let mut serve = lab.spawn("serve", &["--listen", "127.0.0.1:0"]);
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut serve_err = lab::OutputWatch::new(serve.stderr.take().unwrap());
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve did not start: {line}"))
        .to_string();
    let origin = base.trim_end_matches('/').to_string();

    let mut b = Browser::launch(&lab.ns.name);
    let target = b.call("Target.createTarget", json!({ "url": "about:blank" }));
    let session = b.call(
        "Target.attachToTarget",
        json!({ "targetId": target["targetId"], "flatten": true }),
    );
    b.session = Some(session["sessionId"].as_str().unwrap().to_string());
    b.call("Network.enable", json!({}));
    b.call("Page.enable", json!({}));
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
    );
    b.call("Page.navigate", json!({ "url": base }));

    // Every VM running, with its steps and addresses; every network; the drawing.
    let first = {
        let v = b.wait_for(PAGE, Duration::from_secs(60), |v| {
            let p: Value = serde_json::from_str(v.as_str().unwrap_or("{}")).unwrap_or_default();
            p["vms"]
                .as_array()
                .is_some_and(|vms| vms.len() == 3 && vms.iter().all(|x| x[1] == "running"))
                && p["vms"][0][3] == "10.0.0.1/24"
                && p["vms"][1][3] == "10.0.0.2/24"
        });
        serde_json::from_str::<Value>(v.as_str().unwrap()).unwrap()
    };
    let names: Vec<&str> = first["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[0].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A", "B", "monitor"], "{first}");
    assert!(
        first["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v[1] == "running"),
        "{first}"
    );
    assert_eq!(first["networks"], json!(["LAN", "mon"]), "{first}");
    assert_eq!(first["shapes"], 3, "{first}");
    assert_eq!(
        first["fills"],
        json!([
            "rgb(227, 246, 227)",
            "rgb(227, 246, 227)",
            "rgb(227, 246, 227)"
        ]),
        "{first}"
    );
    assert_eq!(first["mirrors"], 1, "{first}");
    assert_eq!(first["steps"], 6, "{first}");
    // The failed step: its exit code, its stdout and its stderr.
    let failed = &first["failed"];
    assert_eq!(failed.as_array().unwrap().len(), 1, "{first}");
    assert_eq!(failed[0][0], "vm.monitor.cc[1]", "{first}");
    assert!(
        failed[0][1].as_str().unwrap().ends_with("exit 3"),
        "{first}"
    );
    assert_eq!(failed[0][2], "out-text\n", "{first}");
    assert_eq!(failed[0][3], "why-it-failed\n", "{first}");
    // Each VM's serial console tail is on the page.
    let serial = first["serial"].as_array().unwrap();
    assert_eq!(serial.len(), 3, "{first}");
    assert!(serial.iter().all(|n| n.as_u64().unwrap() > 0), "{first}");
    // The addresses the guests' agents report.
    assert_eq!(first["vms"][0][3], "10.0.0.1/24", "{first}");
    assert_eq!(first["vms"][1][3], "10.0.0.2/24", "{first}");
    let text = first["text"].as_str().unwrap();
    assert!(
        text.contains("vm.A.cc[0]: exec ip addr add 10.0.0.1/24 dev eth0 — exit 0"),
        "{text}"
    );
    assert!(text.contains("No changes."), "the plan: {text}");
    assert!(serve_err.wait_for("event stream opened", Duration::from_secs(10)));
    // No checks have run yet; the captures are listed and drawn.
    assert_eq!(first["checks"], json!([]), "{first}");
    assert!(
        first["checks_summary"]
            .as_str()
            .unwrap()
            .starts_with("No checks have run"),
        "{first}"
    );
    assert_eq!(first["capture_marks"], json!(["lan", "mon"]), "{first}");

    // `megaplan check` on the running experiment: its results show without
    // a reload, as checks.json says, each with its message.
    let check = lab.run("check", &[]);
    let report: Value = serde_json::from_slice(
        &std::fs::read(lab.dir.path().join(".megaplan/tap-mirror/checks.json")).unwrap(),
    )
    .unwrap();
    let want: Vec<Value> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!([
                r["name"],
                if r["passed"] == true { "pass" } else { "FAIL" },
                r["message"]
            ])
        })
        .collect();
    assert_eq!(want.len(), 3, "{report}");
    let checked = {
        let v = b.wait_for(PAGE, Duration::from_secs(5), |v| {
            let p: Value = serde_json::from_str(v.as_str().unwrap_or("{}")).unwrap_or_default();
            p["checks"].as_array().is_some_and(|c| c.len() == 3)
        });
        serde_json::from_str::<Value>(v.as_str().unwrap()).unwrap()
    };
    assert_eq!(checked["checks"], json!(want), "{checked}");
    assert_eq!(checked["loaded"], first["loaded"], "the page reloaded");
    assert!(
        check.status.success(),
        "megaplan check: {}\n{report}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert_eq!(checked["checks"][0][1], "pass", "{checked}");
    assert!(
        checked["checks_summary"]
            .as_str()
            .unwrap()
            .starts_with("3 passed, 0 failed"),
        "{checked}"
    );
    // Each capture has a download link; the monitor's is a pcap file.
    assert_eq!(
        checked["captures"],
        json!([["mon", "captures/mon.pcap"], ["lan", "captures/lan.pcap"]]),
        "{checked}"
    );
    let got = b.eval_await(
        r#"fetch(document.querySelector('#captures tr[data-capture=mon] a.download').href)
          .then(async r => [r.status, r.headers.get('content-type'), r.headers.get('content-disposition'),
            [...new Uint8Array(await r.arrayBuffer())].slice(0, 4)])"#,
    );
    let magic = &got[3];
    assert_eq!(got[0], 200, "{got}");
    assert_eq!(got[1], "application/vnd.tcpdump.pcap", "{got}");
    assert_eq!(got[2], "attachment; filename=\"mon.pcap\"", "{got}");
    // pcap's magic, in either byte order (microsecond or nanosecond).
    assert!(
        [
            json!([0xd4, 0xc3, 0xb2, 0xa1]),
            json!([0xa1, 0xb2, 0xc3, 0xd4]),
            json!([0x4d, 0x3c, 0xb2, 0xa1]),
            json!([0xa1, 0xb2, 0x3c, 0x4d])
        ]
        .contains(magic),
        "{got}"
    );
    // An address appearing in a guest shows within 3 s, pushed.
    assert_eq!(checked["vms"][2][3], "", "the monitor has no address yet");
    let out = lab.megaplan(&[
        "cc",
        "exec",
        lab.f(),
        "--filter",
        "name=monitor",
        "--",
        "ip addr add 10.0.0.3/24 dev eth0",
    ]);
    assert!(out.status.success(), "cc exec");
    let added_at = Instant::now();
    let v = b.wait_for(PAGE, Duration::from_secs(3), |v| {
        let p: Value = serde_json::from_str(v.as_str().unwrap_or("{}")).unwrap_or_default();
        p["vms"][2][3] == "10.0.0.3/24"
    });
    let took = added_at.elapsed();
    let checked = serde_json::from_str::<Value>(v.as_str().unwrap()).unwrap();
    assert_eq!(
        checked["vms"][2][3], "10.0.0.3/24",
        "after {took:?}: {checked}"
    );
    assert!(took <= Duration::from_secs(3), "{took:?}");
    assert_eq!(checked["loaded"], first["loaded"], "the page reloaded");
    let first = checked;

    if std::env::var_os("MEGAPLAN_UPDATE_SCREENSHOT").is_some() {
        let shot = b.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/web-view.png"),
            png,
        )
        .unwrap();
    }

    // Kill a VM: the page shows it dead within 3 s, pushed, not reloaded.
    let updates = first["updates"].as_u64().unwrap();
    let killed_at = now_ms();
    lab.kill_vm("monitor");
    let after = {
        let v = b.wait_for(PAGE, Duration::from_secs(3), |v| {
            let p: Value = serde_json::from_str(v.as_str().unwrap_or("{}")).unwrap_or_default();
            p["vms"][2][1] == "dead"
        });
        serde_json::from_str::<Value>(v.as_str().unwrap()).unwrap()
    };
    assert_eq!(after["vms"][2][1], "dead", "{after}");
    let since = after["vms"][2][2].as_u64().unwrap();
    assert!(
        since >= killed_at && since - killed_at <= 3000,
        "dead at {since}, killed at {killed_at}"
    );
    assert_eq!(after["loaded"], first["loaded"], "the page reloaded");
    assert!(after["updates"].as_u64().unwrap() > updates, "{after}");
    assert_eq!(after["vms"][0][1], "running", "{after}");
    assert!(
        after["text"]
            .as_str()
            .unwrap()
            .contains("vm.monitor must be replaced"),
        "the plan shows the repair: {}",
        after["text"]
    );

    // Only the server's origin was ever asked for anything.
    let urls: Vec<String> = b
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .map(|e| e["params"]["request"]["url"].as_str().unwrap().to_string())
        .collect();
    assert!(urls.iter().any(|u| u.ends_with("/events")), "{urls:?}");
    assert!(urls.iter().any(|u| u.ends_with("/app.js")), "{urls:?}");
    for u in &urls {
        assert!(
            u.starts_with(&format!("{origin}/")),
            "{u} is not from {origin}"
        );
    }
    let _ = serve.kill();
    let _ = serve.wait();

    // Off loopback, with a token: the page, its assets and its event stream
    // all carry it, so the page works as on loopback.
    for cmd in [
        &[
            "ip", "link", "add", "w0", "type", "veth", "peer", "name", "w1",
        ][..],
        &["ip", "addr", "add", "10.204.0.1/24", "dev", "w0"],
        &["ip", "link", "set", "w0", "up"],
        &["ip", "link", "set", "w1", "up"],
    ] {
        lab.ns_cmd(cmd);
    }
    let token_file = lab.dir.path().join("token");
    std::fs::write(&token_file, "t0k/en+=\n").unwrap();
    let mut serve = lab.spawn(
        "serve",
        &[
            "--listen",
            "10.204.0.1:0",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve did not start: {line}"))
        .to_string();
    assert!(base.starts_with("http://10.204.0.1:"), "{base}");
    b.call(
        "Page.navigate",
        json!({ "url": format!("{base}?token=t0k%2Fen%2B%3D") }),
    );
    let v = b.wait_for(
        "JSON.stringify([document.querySelectorAll('#vms .vm').length, document.getElementById('live').textContent, getComputedStyle(document.querySelector('header')).display])",
        Duration::from_secs(20),
        |v| v.as_str() == Some("[3,\"live\",\"flex\"]"),
    );
    assert_eq!(v.as_str(), Some("[3,\"live\",\"flex\"]"), "with a token");
    let _ = b.call("Browser.close", json!({}));
    drop(b);
    let _ = serve.kill();
    let _ = serve.wait();
}
