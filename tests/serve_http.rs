//! `megaplan serve` over real sockets: the page and its assets, 404 outside
//! them, no other origin, the event stream, the token off loopback
//! (inside a network namespace with a veth address), and `--allow-actions`
//! (apply and destroy of a one-network lab through the page, in a namespace).

#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TEXT: &str = "experiment \"web\"\nnetwork \"LAN\"\nnetwork \"mon\"\nvm \"A\" { kernel \"/nonexistent/k\"; nic \"LAN\"; }\nvm \"B\" { kernel \"/nonexistent/k\"; nic \"LAN\"; nic \"mon\"; }\nvm \"monitor\" { kernel \"/nonexistent/k\"; nic \"mon\"; mirrors \"A\" direction=\"both\"; }\n";

/// A `megaplan serve` child (killed on drop) and the address it printed.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /events` on `addr`: the stream, read up to its first event, and
/// that event's `data: ` line.
fn events(addr: &str) -> (BufReader<TcpStream>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream closed");
    }
    (r, line)
}

/// `serve` refused to start: it exited 1 saying `why`.
fn assert_refused(started: Result<Server, String>, why: &str) {
    let Err(err) = started else {
        panic!("serve started, but should have refused: {why}");
    };
    assert!(err.starts_with("Some(1)") && err.contains(why), "{err}");
}

/// A token file holding `token` in `dir`: its path.
fn write_token(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let f = dir.join("token");
    std::fs::write(&f, token).unwrap();
    f
}

fn serve(dir: &std::path::Path, netns: Option<&str>, args: &[&str]) -> Result<Server, String> {
    serve_text(dir, netns, TEXT, args)
}

fn serve_text(
    dir: &std::path::Path,
    netns: Option<&str>,
    text: &str,
    args: &[&str],
) -> Result<Server, String> {
    let file = dir.join("web.kdl");
    std::fs::write(&file, text).unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_megaplan")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_megaplan")),
    };
    let mut child = cmd
        .arg("serve")
        .arg(&file)
        .args(args)
        .env("MEGAPLAN_RUNTIME_DIR", dir.join("run"))
        .env("NO_COLOR", "1")
        .env_remove("MEGAPLAN_SERVE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    match line.trim().strip_prefix("listening on http://") {
        Some(a) => Ok(Server {
            child,
            addr: a.trim_end_matches('/').to_string(),
        }),
        None => {
            let out = child.wait_with_output().unwrap();
            Err(format!(
                "{:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// (status code, headers, body) of one request.
fn get(addr: &str, path: &str, headers: &str) -> (u16, String, String) {
    try_get(addr, path, headers).unwrap()
}

fn try_get(addr: &str, path: &str, headers: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    if headers.contains("Host:") {
        write!(s, "GET {path} HTTP/1.1\r\n{headers}\r\n")?;
    } else {
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n")?;
    }
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no head in {out:?}")))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, head.to_string(), body.to_string()))
}

#[test]
fn the_page_its_assets_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), None, &["--listen", "127.0.0.1:0"]).unwrap();
    let (code, head, html) = get(&srv.addr, "/", "");
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("text/html"), "{head}");
    assert!(html.contains("<script src=\"app.js\">"), "{html}");
    for path in ["/app.js", "/style.css", "/snapshot.json", "/graph.svg"] {
        let (code, _, body) = get(&srv.addr, path, "");
        assert_eq!(code, 200, "{path}");
        // Nothing on the page comes from elsewhere; the SVG namespace is a name, not a fetch.
        let body = body
            .replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
            .replace("xmlns=\\\"http://www.w3.org/2000/svg\\\"", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} names another origin"
        );
    }
    for path in [
        "/nope",
        "/assets/app.js",
        "/../../etc/passwd",
        "/%2e%2e/Cargo.toml",
        "/src/serve/mod.rs",
    ] {
        assert_eq!(get(&srv.addr, path, "").0, 404, "{path}");
    }
    // Without a token, a page elsewhere that rebinds its name to 127.0.0.1
    // gets nothing: only loopback names are served.
    let port = srv.addr.rsplit(':').next().unwrap();
    assert_eq!(
        get(&srv.addr, "/snapshot.json", "Host: evil.example\r\n").0,
        403
    );
    assert_eq!(
        get(&srv.addr, "/", &format!("Host: evil.example:{port}\r\n")).0,
        403
    );
    assert_eq!(
        get(&srv.addr, "/", &format!("Host: localhost:{port}\r\n")).0,
        200
    );
    // The served drawing is the CLI's, with the live state on each VM.
    let (_, _, svg) = get(&srv.addr, "/graph.svg", "");
    let cli = Command::new(env!("CARGO_BIN_EXE_megaplan"))
        .args(["graph", "web.kdl", "--format", "svg"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(cli.status.success());
    let cli = String::from_utf8(cli.stdout).unwrap();
    assert_eq!(cli.matches("<g class=\"vm\"").count(), 3, "{cli}");
    assert_eq!(cli.matches("<path class=\"mirror\"").count(), 1, "{cli}");
    assert_eq!(
        svg.replace(" data-state=\"absent\"", "")
            .replace("<text class=\"state\"", "\n<text class=\"state\"")
            .lines()
            .filter(|l| !l.starts_with("<text class=\"state\""))
            .count(),
        cli.lines().count()
    );
    assert_eq!(svg.matches("data-state=\"absent\"").count(), 3, "{svg}");
    let (_, _, snap) = get(&srv.addr, "/snapshot.json", "");
    let snap: serde_json::Value = serde_json::from_str(&snap).unwrap();
    assert_eq!(snap["vms"].as_array().unwrap().len(), 3);
    assert!(
        snap["plan"]
            .as_str()
            .unwrap()
            .contains("vm.A will be created"),
        "{snap}"
    );
    // The event stream starts with the current snapshot.
    let (_stream, line) = events(&srv.addr);
    let ev: serde_json::Value = serde_json::from_str(line.trim_start_matches("data: ")).unwrap();
    assert_eq!(ev["experiment"], "web");
    // Writes are refused: the view is read-only.
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
        srv.addr
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    // Without --allow-actions there are no actions: 404, and no buttons.
    for method in ["POST", "GET"] {
        let (code, _, _) = request(&srv.addr, method, "/actions/apply", "", "{}");
        assert_eq!(code, 404, "{method}");
    }
    assert!(!html.contains("action-apply"), "{html}");
}

/// (status, body) of one request with a body.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

/// `--allow-actions` on a lab of one network, in its own namespace: the
/// safeguards refuse each malformed action, then apply through the page
/// creates the bridge, `cc exec` answers for a lab without guests, and
/// destroy removes it.
#[test]
fn actions_apply_and_destroy_through_the_page() {
    if !netns::can_run("serve_http actions") {
        return;
    }
    let ns = netns::NetnsGuard::new();
    netns::ns_cmd(&ns.name, &["ip", "link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let text = "experiment \"webact\"\nnetwork \"LAN\"\n";
    // Actions need the token even on loopback.
    assert_refused(
        serve_text(
            dir.path(),
            Some(&ns.name),
            text,
            &["--listen", "127.0.0.1:0", "--allow-actions"],
        ),
        "--allow-actions needs --token",
    );
    let token_file = write_token(dir.path(), "act-token\n");
    let srv = serve_text(
        dir.path(),
        Some(&ns.name),
        text,
        &[
            "--listen",
            "127.0.0.1:0",
            "--allow-actions",
            "--token-file",
            token_file.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ],
    )
    .unwrap();
    let addr = srv.addr.clone();
    let path = ns.path();
    let bridges = {
        let ns = ns.name.clone();
        move || netns::ns_cmd(&ns, &["ip", "-o", "link", "show", "type", "bridge"])
    };
    let b2 = bridges.clone();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd; affects this thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let origin = format!("Origin: http://{addr}\r\n");
        let auth = "Authorization: Bearer act-token\r\n";
        let json = "Content-Type: application/json\r\n";
        let good = format!("{origin}{auth}{json}");
        // The page has the buttons.
        let (_, _, html) = get(&addr, "/?token=act-token", "");
        assert!(html.contains("<button id=\"action-apply\""), "{html}");
        // Each safeguard, on apply: nothing may run.
        let refused = [
            ("GET", good.clone(), 405),
            ("POST", format!("{origin}{json}"), 401),
            (
                "POST",
                format!("{origin}Authorization: Bearer wrong\r\n{json}"),
                401,
            ),
            ("POST", format!("{auth}{json}"), 403),
            (
                "POST",
                format!("Origin: http://evil.example\r\n{auth}{json}"),
                403,
            ),
            (
                "POST",
                format!("{origin}{auth}Content-Type: text/plain\r\n"),
                415,
            ),
        ];
        for (method, headers, want) in &refused {
            let (code, head, body) = request(&addr, method, "/actions/apply", headers, "{}");
            assert_eq!(code, *want, "{method} {headers:?}: {head}\n{body}");
        }
        // The token in the query alone does not do for an action.
        let (code, _, _) = request(
            &addr,
            "POST",
            "/actions/apply?token=act-token",
            &format!("{origin}{json}"),
            "{}",
        );
        assert_eq!(code, 401);
        assert!(!b2().contains("mpb"), "a refused action changed the host");
        let (code, _, body) = request(
            &addr,
            "POST",
            "/actions/cc-exec",
            &good,
            r#"{"command":["true"],"filter":["bogus"]}"#,
        );
        assert_eq!(code, 400, "{body}");

        let (code, _, body) = request(&addr, "POST", "/actions/apply", &good, "{}");
        assert_eq!(code, 200, "{body}");
        let res: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(res["exit"], 0, "{res}");
        assert!(
            res["stdout"]
                .as_str()
                .unwrap()
                .contains("network.LAN will be created"),
            "{res}"
        );
        assert!(b2().contains("mpb"), "apply made no bridge");
        // The snapshot sees it (the next refresh, within a few seconds).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, _, snap) = get(&addr, "/snapshot.json?token=act-token", "");
            let snap: serde_json::Value = serde_json::from_str(&snap).unwrap();
            if snap["has_changes"] == false {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the page never saw the apply: {snap}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // cc exec runs the CLI's: no VM matches, which it says (exit 1).
        let (code, _, body) = request(
            &addr,
            "POST",
            "/actions/cc-exec",
            &good,
            r#"{"command":["true"]}"#,
        );
        assert_eq!(code, 200, "{body}");
        let res: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(res["exit"], 1, "{res}");
        assert!(
            res["stderr"]
                .as_str()
                .unwrap()
                .contains("no VM matches the filter"),
            "{res}"
        );

        let (code, _, body) = request(&addr, "POST", "/actions/destroy", &good, "");
        assert_eq!(code, 200, "{body}");
        let res: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(res["exit"], 0, "{res}");
    })
    .join()
    .unwrap();
    assert!(!bridges().contains("mpb"), "destroy left the bridge");
    drop(srv);
}

#[test]
fn connections_beyond_the_limit_are_turned_away() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), None, &["--listen", "127.0.0.1:0"]).unwrap();
    // 64 event streams hold every slot (each has had its first event).
    let mut held = Vec::new();
    for _ in 0..64 {
        let (r, _) = events(&srv.addr);
        held.push(r);
    }
    assert_eq!(get(&srv.addr, "/", "").0, 503);
    held.pop();
    // A freed slot serves again (bounded wait for the server to see the close).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let code = try_get(&srv.addr, "/", "").map_or(0, |r| r.0);
        if code == 200 || std::time::Instant::now() > deadline {
            assert_eq!(code, 200);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn off_loopback_every_request_needs_the_token() {
    if !netns::can_run("serve_http") {
        return;
    }
    let ns = netns::NetnsGuard::new();
    netns::ns_cmd(
        &ns.name,
        &[
            "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ],
    );
    netns::ns_cmd(
        &ns.name,
        &["ip", "addr", "add", "10.203.0.1/24", "dev", "v0"],
    );
    for l in ["lo", "v0", "v1"] {
        netns::ns_cmd(&ns.name, &["ip", "link", "set", l, "up"]);
    }
    let dir = tempfile::tempdir().unwrap();
    // Without a token, binding off loopback is refused.
    assert_refused(
        serve(dir.path(), Some(&ns.name), &["--listen", "10.203.0.1:0"]),
        "needs --token",
    );
    let token_file = write_token(dir.path(), "s3cret-token\n");
    let srv = serve(
        dir.path(),
        Some(&ns.name),
        &[
            "--listen",
            "10.203.0.1:0",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(srv.addr.starts_with("10.203.0.1:"), "{}", srv.addr);
    let addr = srv.addr.clone();
    let path = ns.path();
    let (codes, html) = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd; affects this thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let codes = [
            get(&addr, "/", "").0,
            get(&addr, "/events", "").0,
            get(&addr, "/nope", "").0,
            get(&addr, "/?token=wrong", "").0,
            get(&addr, "/", "Authorization: Bearer wrong\r\n").0,
            get(&addr, "/", "Authorization: Bearer s3cret-token\r\n").0,
            get(&addr, "/snapshot.json?token=s3cret-token", "").0,
            get(&addr, "/nope?token=s3cret-token", "").0,
            // The page loads its stylesheet and script with the token on.
            get(&addr, "/app.js?token=s3cret-token", "").0,
            get(&addr, "/style.css?token=s3cret-token", "").0,
        ]
        .to_vec();
        (codes, get(&addr, "/?token=s3cret-token", "").2)
    })
    .join()
    .unwrap();
    assert_eq!(codes, [401, 401, 401, 401, 401, 200, 200, 404, 200, 200]);
    assert!(html.contains("src=\"app.js?token=s3cret-token\""), "{html}");
    assert!(
        html.contains("href=\"style.css?token=s3cret-token\""),
        "{html}"
    );
    drop(srv);
}

/// (status code, head, body bytes) of one request.
fn get_bytes(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {out:?}"));
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head, out[end + 4..].to_vec())
}

/// A pcap file: the global header (Ethernet) and one 60-byte frame.
fn pcap_bytes() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&65535u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    for v in [1_796_139_427u32, 5, 60, 60] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend((0..60u8).map(|i| i.wrapping_mul(7)));
    b
}

fn report(passed: bool, message: &str) -> serde_json::Value {
    serde_json::json!({
        "version": 1, "experiment": "web", "started": 1_796_139_427u64, "duration_ms": 12,
        "passed": usize::from(passed), "failed": usize::from(!passed),
        "results": [{
            "name": "A reaches B", "kind": "ping", "from": "A", "expect": "pass",
            "passed": passed, "message": message, "command": "in A: ping -c 1 -W 3 10.0.0.2",
            "attempts": 1, "duration_ms": 12, "exit": if passed { 0 } else { 1 },
        }],
    })
}

#[test]
fn captures_download_by_name_and_check_results_are_in_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let captures = state.join("captures");
    std::fs::create_dir_all(&captures).unwrap();
    let pcap = pcap_bytes();
    std::fs::write(captures.join("mon.pcap"), &pcap).unwrap();
    // A link planted in the state folder is never followed.
    std::fs::write(dir.path().join("secret"), "not a capture").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), captures.join("lan.pcap")).unwrap();
    std::fs::write(
        state.join("checks.json"),
        report(true, "A got a reply from 10.0.0.2").to_string(),
    )
    .unwrap();
    let text = format!(
        "{TEXT}capture \"mon\" {{ tap \"monitor\" nic=0; }}\ncapture \"lan\" network=\"LAN\"\ncapture \"empty\" {{ tap \"A\" nic=0; }}\n"
    );
    let srv = serve_text(
        dir.path(),
        None,
        &text,
        &[
            "--listen",
            "127.0.0.1:0",
            "--token",
            "tok",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )
    .unwrap();
    let a = &srv.addr;
    // The capture's bytes, as a pcap download.
    let (code, head, body) = get_bytes(a, "/captures/mon.pcap?token=tok");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("Content-Type: application/vnd.tcpdump.pcap\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Content-Disposition: attachment; filename=\"mon.pcap\"\r\n"),
        "{head}"
    );
    assert_eq!(body, pcap);
    // The token, as on every route.
    assert_eq!(get_bytes(a, "/captures/mon.pcap").0, 401);
    assert_eq!(get_bytes(a, "/captures/mon.pcap?token=nope").0, 401);
    // Names only: nothing else under captures/, no path from the request.
    for path in [
        "/captures/nope.pcap",
        "/captures/mon",
        "/captures/mon.pcap/",
        "/captures/MON.pcap",
        "/captures/mon%2Epcap",
        "/captures/../checks.json",
        "/captures/..%2Fchecks.json",
        "/captures/..%2F..%2Fsecret.pcap",
        "/captures/%2e%2e%2fsecret.pcap",
        "/captures/.%2Fmon.pcap",
        "/captures//mon.pcap",
        "/captures/captures%2Fmon.pcap",
        "/captures/",
        "/captures",
    ] {
        let (code, _, body) = get_bytes(a, &format!("{path}?token=tok"));
        assert_eq!(code, 404, "{path}");
        assert_ne!(body, pcap, "{path}");
    }
    // A capture without a file yet: 404 with why.
    let (code, _, body) = get_bytes(a, "/captures/empty.pcap?token=tok");
    assert_eq!(code, 404);
    assert!(String::from_utf8_lossy(&body).contains("no file yet"));
    // The link is refused, not followed.
    let (code, _, body) = get_bytes(a, "/captures/lan.pcap?token=tok");
    assert_ne!(code, 200);
    assert!(!String::from_utf8_lossy(&body).contains("not a capture"));

    // The snapshot: the captures with their links, and the check results.
    let (_, _, snap) = get(a, "/snapshot.json?token=tok", "");
    let snap: serde_json::Value = serde_json::from_str(&snap).unwrap();
    let caps = snap["captures"].as_array().unwrap();
    let names: Vec<&str> = caps.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mon", "lan", "empty"], "{snap}");
    assert_eq!(caps[0]["download"], "captures/mon.pcap");
    assert_eq!(caps[0]["bytes"], pcap.len());
    assert_eq!(
        caps[0]["recorder"],
        serde_json::Value::Null,
        "no recorder runs"
    );
    assert_eq!(caps[1]["records"], "network LAN");
    assert_eq!(
        caps[1]["bytes"],
        serde_json::Value::Null,
        "a link is no file"
    );
    assert_eq!(caps[2]["bytes"], serde_json::Value::Null);
    assert_eq!(snap["checks"]["passed"], 1, "{snap}");
    assert_eq!(
        snap["checks"]["results"][0]["message"],
        "A got a reply from 10.0.0.2"
    );
    // The drawing marks every capture: two nics and a network.
    let svg = snap["svg"].as_str().unwrap();
    assert_eq!(svg.matches("<g class=\"capture\"").count(), 3, "{svg}");

    // A new checks.json is pushed without a reload: the event stream carries it.
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /events?token=tok HTTP/1.1\r\nHost: {a}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut next = || loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream closed");
        if let Some(d) = line.strip_prefix("data: ") {
            return serde_json::from_str::<serde_json::Value>(d).unwrap();
        }
    };
    assert_eq!(next()["checks"]["passed"], 1);
    let tmp = state.join("checks.json.new");
    std::fs::write(&tmp, report(false, "no reply from 10.0.0.2").to_string()).unwrap();
    std::fs::rename(&tmp, state.join("checks.json")).unwrap();
    let ev = next();
    assert_eq!(ev["checks"]["failed"], 1, "{ev}");
    assert_eq!(
        ev["checks"]["results"][0]["message"],
        "no reply from 10.0.0.2"
    );
    // One that does not parse says so.
    std::fs::write(state.join("checks.json"), "{").unwrap();
    let ev = next();
    assert!(
        ev["checks"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("is not a check report")),
        "{ev}"
    );
}

#[test]
fn graph_svg_boxes_the_vms_by_the_nodes_recorded_in_the_state() {
    use megaplan::state::{Attrs, Kind, Record, State, StateDir};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.kdl");
    std::fs::write(&file, TEXT).unwrap();
    let graph = || {
        let out = Command::new(env!("CARGO_BIN_EXE_megaplan"))
            .args(["graph", "web.kdl", "--format", "svg"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        run::stdout(&out)
    };
    // No state yet: no host boxes.
    assert_eq!(graph().matches("<g class=\"host\"").count(), 0);
    // The nodes a provider recorded (what the minimega provider keeps as a
    // computed attribute), saved through the state store.
    let sd = StateDir::for_file(&file, "web", None);
    let mut state = State::new("web");
    for (vm, node) in [("A", "mm1"), ("B", "mm2"), ("monitor", "mm1")] {
        let mut attrs = Attrs::new();
        attrs.insert("node".into(), node.into());
        state
            .resources
            .insert(format!("vm.{vm}"), Record::new(Kind::Vm, attrs));
    }
    sd.save(&mut state).unwrap();
    let svg = graph();
    assert_eq!(svg.matches("<g class=\"host\"").count(), 2, "{svg}");
    for (vm, node) in [("A", "mm1"), ("B", "mm2"), ("monitor", "mm1")] {
        assert!(
            svg.contains(&format!("data-vm=\"{vm}\" data-host=\"{node}\"")),
            "{svg}"
        );
    }
    // The host box comes before (holds) its VMs: mm2's box, then B.
    let mm2 = svg.find("<g class=\"host\" data-host=\"mm2\"").unwrap();
    assert!(svg.find("data-vm=\"B\"").unwrap() > mm2, "{svg}");
    assert!(svg.find("data-vm=\"A\"").unwrap() < mm2, "{svg}");
}
