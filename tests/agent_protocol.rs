//! The cc protocol: framing, and the real `megaplan-agent` binary driven end
//! to end over a unix socket (no QEMU): the test listens where QEMU's chardev
//! socket would be and the agent connects to it with `--port`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use megaplan::agent::protocol::{
    self, Command, Exit, FrameError, Hello, Incoming, Interface, MAX_FRAME, Message, OUTPUT_CAP,
    PROTOCOL_VERSION,
};
use megaplan::agent::{AgentClient, AgentError, ExecResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const T: Duration = Duration::from_secs(20);
const UUID: &str = "11111111-2222-3333-4444-555555555555";

fn sample_messages() -> Vec<Message> {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        agent: "0.1.0".into(),
        uuid: Some(UUID.into()),
        hostname: "a".into(),
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: Some("02:00:00:00:00:01".into()),
            addrs: vec!["10.0.0.1/24".into(), "fe80::1/64".into()],
        }],
        features: vec![protocol::Feature::StepExec],
    };
    vec![
        Message::Hello(hello.clone()),
        Message::Ping { id: 1 },
        Message::Pong { id: 1 },
        Message::Refresh { id: 2 },
        Message::Info { id: 2, hello },
        Message::Exec {
            id: 3,
            command: Command::Shell("echo 'hi' \"there\"\n".into()),
            timeout_ms: Some(1500),
            background: false,
            max_output: Some(1 << 18),
        },
        Message::Exec {
            id: 4,
            command: Command::Argv(vec!["ip".into(), "link".into()]),
            timeout_ms: None,
            background: true,
            max_output: None,
        },
        Message::ExecResult(ExecResult {
            id: 3,
            exit: Exit::Signal(9),
            timed_out: true,
            stdout: "ü\u{1}".into(),
            stderr: String::new(),
            stdout_truncated: true,
            stderr_truncated: false,
            duration_ms: 12,
        }),
        Message::Started { id: 4, pid: 77 },
        Message::StepExec {
            id: 8,
            step: "vm.A.cc[0] 0123 g1 s7".into(),
            command: Command::Shell("true".into()),
            timeout_ms: None,
            background: true,
        },
        Message::StepResult(protocol::StepResult {
            id: 8,
            step: "vm.A.cc[0] 0123 g1 s7".into(),
            replayed: true,
            result: None,
            pid: Some(78),
            error: None,
        }),
        Message::PutFile {
            id: 5,
            path: "/x".into(),
            mode: 0o644,
            size: 3,
        },
        Message::FileChunk {
            id: 5,
            offset: 0,
            data: protocol::b64_encode(b"abc"),
        },
        Message::FileEnd {
            id: 5,
            size: 3,
            sha256: protocol::sha256_of(b"abc"),
            mode: None,
        },
        Message::GetFile {
            id: 6,
            path: "/y".into(),
        },
        Message::SyncUnmount {
            id: 7,
            paths: vec!["/bro".into()],
        },
        Message::Done { id: 7 },
        Message::Error {
            id: None,
            message: "nope".into(),
        },
        Message::Error {
            id: Some(8),
            message: "nope".into(),
        },
    ]
}

fn raw_frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[tokio::test]
async fn frames_round_trip() {
    let msgs = sample_messages();
    let mut wire = Vec::new();
    for m in &msgs {
        protocol::write_message(&mut wire, m).await.unwrap();
    }
    let mut r: &[u8] = &wire;
    for m in &msgs {
        let got = protocol::read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(got, Incoming::Message(m.clone()));
    }
    assert!(protocol::read_frame(&mut r).await.unwrap().is_none());
}

#[test]
fn wire_format_is_tagged_json() {
    let f = protocol::encode_frame(&Message::Exec {
        id: 9,
        command: Command::Argv(vec!["true".into()]),
        timeout_ms: None,
        background: false,
        max_output: None,
    })
    .unwrap();
    let len = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
    assert_eq!(len, f.len() - 4);
    let v: serde_json::Value = serde_json::from_slice(&f[4..]).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type": "exec", "id": 9, "command": {"argv": ["true"]}, "background": false})
    );
    let r: Message =
        serde_json::from_str(r#"{"type":"exec_result","id":1,"exit":{"code":0},"stdout":"x"}"#)
            .unwrap();
    assert!(matches!(r, Message::ExecResult(ref e) if e.success() && e.stdout == "x"));
}

#[tokio::test]
async fn malformed_frames_are_reported_and_the_stream_continues() {
    let mut wire = raw_frame(b"{not json");
    wire.extend(raw_frame(br#"{"type":"bogus","id":7}"#));
    wire.extend(raw_frame(b""));
    wire.extend(raw_frame(&[0xff, 0xfe, 0x00]));
    wire.extend(protocol::encode_frame(&Message::Ping { id: 1 }).unwrap());
    let mut r: &[u8] = &wire;
    for want_id in [None, Some(7), None, None] {
        match protocol::read_frame(&mut r).await.unwrap() {
            Some(Incoming::Malformed { id, .. }) => assert_eq!(id, want_id),
            other => panic!("expected malformed, got {other:?}"),
        }
    }
    assert_eq!(
        protocol::read_frame(&mut r).await.unwrap(),
        Some(Incoming::Message(Message::Ping { id: 1 }))
    );
}

#[tokio::test]
async fn oversized_frames_are_skipped_or_refused_without_allocating() {
    // Slightly too large: skipped, then the next frame reads fine.
    let len = MAX_FRAME + 10;
    let mut wire = (len as u32).to_be_bytes().to_vec();
    wire.resize(4 + len, b'x');
    wire.extend(protocol::encode_frame(&Message::Ping { id: 2 }).unwrap());
    let mut r: &[u8] = &wire;
    assert_eq!(
        protocol::read_frame(&mut r).await.unwrap(),
        Some(Incoming::Oversized { len })
    );
    assert_eq!(
        protocol::read_frame(&mut r).await.unwrap(),
        Some(Incoming::Message(Message::Ping { id: 2 }))
    );
    // Absurd: refused at once (the 4 GiB body is never read or allocated).
    let wire = [0xff, 0xff, 0xff, 0xf0, b'{'];
    let mut r: &[u8] = &wire;
    assert!(matches!(
        protocol::read_frame(&mut r).await,
        Err(FrameError::TooLarge { len: 0xffff_fff0 })
    ));
    // Sending one is refused too.
    let big = Message::Exec {
        id: 1,
        command: Command::Shell("x".repeat(MAX_FRAME)),
        timeout_ms: None,
        background: false,
        max_output: None,
    };
    assert!(matches!(
        protocol::encode_frame(&big),
        Err(FrameError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn truncated_frames_are_errors() {
    let full = protocol::encode_frame(&Message::Ping { id: 3 }).unwrap();
    for cut in [1, 3, 5, full.len() - 1] {
        let mut r: &[u8] = &full[..cut];
        assert!(
            matches!(
                protocol::read_frame(&mut r).await,
                Err(FrameError::Truncated { .. })
            ),
            "cut at {cut}"
        );
    }
    let mut r: &[u8] = &[];
    assert!(protocol::read_frame(&mut r).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------
// End to end with the real agent binary.

struct Harness {
    dir: tempfile::TempDir,
    listener: UnixListener,
    _agent: tokio::process::Child,
}

impl Harness {
    fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cc.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_megaplan-agent"))
            .arg("--port")
            .arg(&sock)
            .arg("--uuid")
            .arg(UUID)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Harness {
            dir,
            listener,
            _agent: agent,
        }
    }

    async fn accept(&self) -> UnixStream {
        let (s, _) = tokio::time::timeout(T, self.listener.accept())
            .await
            .expect("agent connects")
            .unwrap();
        s
    }

    async fn client(&self) -> AgentClient {
        AgentClient::from_stream(self.accept().await)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

fn sh(s: &str) -> Command {
    Command::Shell(s.to_string())
}

fn argv(v: &[&str]) -> Command {
    Command::from(v)
}

#[tokio::test]
async fn agent_says_hello_and_runs_commands() {
    let h = Harness::start();
    let c = h.client().await;
    let hello = c.wait_hello(T).await.unwrap();
    assert_eq!(hello.version, PROTOCOL_VERSION);
    assert_eq!(hello.uuid.as_deref(), Some(UUID));
    assert!(!hello.hostname.is_empty());
    let lo = hello
        .interfaces
        .iter()
        .find(|i| i.name == "lo")
        .expect("lo");
    assert!(lo.addrs.contains(&"127.0.0.1/8".to_string()), "{lo:?}");
    assert_eq!(c.refresh(T).await.unwrap().uuid.as_deref(), Some(UUID));
    c.ping(T).await.unwrap();

    // Shell string: stdout, stderr, non-zero exit.
    let r = c
        .exec(sh("echo out; echo err >&2; exit 3"), Some(T))
        .await
        .unwrap();
    assert_eq!(
        (r.exit, r.stdout.as_str(), r.stderr.as_str()),
        (Exit::Code(3), "out\n", "err\n")
    );
    assert!(!r.success() && !r.timed_out);

    // Argv list: no shell involved.
    let r = c
        .exec(argv(&["printf", "%s|%s", "a b", "$HOME"]), Some(T))
        .await
        .unwrap();
    assert_eq!((r.exit, r.stdout.as_str()), (Exit::Code(0), "a b|$HOME"));
    assert!(r.success());

    // A program that does not exist is a remote error, and the channel lives on.
    let e = c
        .exec(argv(&["/nonexistent/megaplan-test"]), Some(T))
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Remote(_)), "{e:?}");

    // stdin is /dev/null: a reader of stdin ends at once.
    let r = c.exec(sh("cat; echo done"), Some(T)).await.unwrap();
    assert_eq!(r.stdout, "done\n");

    // Output is capped.
    let r = c
        .exec(sh("head -c 200000 /dev/zero | tr '\\0' a"), Some(T))
        .await
        .unwrap();
    assert_eq!(r.stdout.len(), OUTPUT_CAP);
    assert!(r.stdout_truncated && !r.stderr_truncated);
    // max_output raises the cap; output that fits is not marked truncated.
    let r = c
        .exec_capped(
            sh("head -c 200000 /dev/zero | tr '\\0' a"),
            Some(T),
            Some(256 << 10),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout.len(), 200_000);
    assert!(!r.stdout_truncated);
    // and is bounded by what fits in one reply frame.
    let r = c
        .exec_capped(
            sh("head -c 2000000 /dev/zero | tr '\\0' a; head -c 2000000 /dev/zero | tr '\\0' b >&2"),
            Some(T),
            Some(u64::MAX),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout.len(), protocol::MAX_OUTPUT_LIMIT);
    assert!(r.stdout_truncated && r.stderr_truncated);

    // A timeout kills the whole process group (the pipeline too).
    let start = Instant::now();
    let r = c
        .exec(
            sh("sleep 30 | cat; echo never"),
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(r.timed_out);
    assert_eq!(r.exit, Exit::Signal(9));
    assert_eq!(r.stdout, "");
    assert!(start.elapsed() < Duration::from_secs(10));

    // Concurrent execs: the reader blocks on a fifo until the writer runs, so
    // this only finishes if both are served at the same time.
    let fifo = h.path("fifo");
    let fifo = fifo.to_str().unwrap();
    c.exec(argv(&["mkfifo", fifo]), Some(T)).await.unwrap();
    let (a, b) = tokio::join!(
        c.exec(sh(&format!("cat {fifo}")), Some(T)),
        c.exec(sh(&format!("echo through > {fifo}")), Some(T)),
    );
    assert_eq!(a.unwrap().stdout, "through\n");
    assert!(b.unwrap().success());

    // Background: detached, reported by pid, keeps running after the reply.
    let pid = c
        .background(sh(&format!("echo from-background > {fifo}; exec sleep 60")))
        .await
        .unwrap();
    assert!(pid > 0);
    let r = c.exec(sh(&format!("cat {fifo}")), Some(T)).await.unwrap();
    assert_eq!(r.stdout, "from-background\n");
    let r = c
        .exec(sh(&format!("kill -0 {pid} && kill {pid}")), Some(T))
        .await
        .unwrap();
    assert!(r.success(), "{r:?}");

    // Sync with nothing to unmount succeeds; a bogus mount point is reported.
    c.sync_unmount(&[], T).await.unwrap();
    let e = c
        .sync_unmount(&["/nonexistent/megaplan-mnt"], T)
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Remote(_)), "{e:?}");
    c.ping(T).await.unwrap();
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn files_go_there_and_back() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::start();
    let c = h.client().await;
    c.wait_hello(T).await.unwrap();

    let data = pattern(3 * 1024 * 1024 + 123);
    let src = h.path("src.bin");
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    let want = protocol::sha256_of(&data);

    let guest = h.path("guest/sub/dir/file.bin");
    let guest = guest.to_str().unwrap();
    let sent = c.send_file(&src, guest).await.unwrap();
    assert_eq!(
        (sent.size, sent.sha256.as_str()),
        (data.len() as u64, want.as_str())
    );
    assert_eq!(std::fs::read(guest).unwrap(), data);
    let mode = std::fs::metadata(guest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);

    let back = h.path("back");
    let got = c.recv_file(guest, &back, T).await.unwrap();
    assert_eq!(got.path, back.join("file.bin"));
    assert_eq!(got.sha256, want);
    assert_eq!(std::fs::read(&got.path).unwrap(), data);

    // An empty file works too.
    let empty = h.path("empty");
    std::fs::write(&empty, b"").unwrap();
    let guest_empty = h.path("guest/empty");
    let t = c
        .send_file(&empty, guest_empty.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(t.size, 0);
    let t = c
        .recv_file(guest_empty.to_str().unwrap(), &back, T)
        .await
        .unwrap();
    assert_eq!(t.sha256, protocol::sha256_of(b""));

    // Failures are remote errors and leave the channel usable.
    let e = c
        .send_file(&src, "/proc/megaplan-no/such/file")
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Remote(_)), "{e:?}");
    let e = c.send_file(&src, "relative/path").await.unwrap_err();
    assert!(matches!(e, AgentError::Remote(_)), "{e:?}");
    let e = c
        .recv_file("/nonexistent/megaplan-file", &back, T)
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Remote(_)), "{e:?}");
    assert!(!back.join("megaplan-file").exists());
    c.ping(T).await.unwrap();
}

async fn read_msg(s: &mut UnixStream) -> Option<Message> {
    match tokio::time::timeout(T, protocol::read_frame(s))
        .await
        .expect("reply in time")
    {
        Ok(Some(Incoming::Message(m))) => Some(m),
        Ok(None) => None,
        other => panic!("unexpected {other:?}"),
    }
}

async fn expect_hello(s: &mut UnixStream) {
    assert!(matches!(read_msg(s).await, Some(Message::Hello(_))));
}

#[tokio::test]
async fn agent_survives_bad_frames_and_reconnects() {
    let h = Harness::start();
    let mut s = h.accept().await;
    expect_hello(&mut s).await;

    // Malformed JSON: an error reply, and the connection stays usable.
    s.write_all(&raw_frame(b"{\"type\": \"exec\", "))
        .await
        .unwrap();
    assert!(matches!(
        read_msg(&mut s).await,
        Some(Message::Error { id: None, .. })
    ));
    s.write_all(&raw_frame(br#"{"type":"frobnicate","id":41}"#))
        .await
        .unwrap();
    assert!(matches!(
        read_msg(&mut s).await,
        Some(Message::Error { id: Some(41), .. })
    ));
    // A reply-only message sent to the guest is refused, not obeyed.
    s.write_all(&protocol::encode_frame(&Message::Done { id: 42 }).unwrap())
        .await
        .unwrap();
    assert!(matches!(
        read_msg(&mut s).await,
        Some(Message::Error { id: Some(42), .. })
    ));
    s.write_all(&protocol::encode_frame(&Message::Ping { id: 1 }).unwrap())
        .await
        .unwrap();
    assert_eq!(read_msg(&mut s).await, Some(Message::Pong { id: 1 }));

    // Oversized but skippable: error reply, stream resynchronised.
    let len = MAX_FRAME * 2;
    let mut big = (len as u32).to_be_bytes().to_vec();
    big.resize(4 + len, b' ');
    s.write_all(&big).await.unwrap();
    assert!(matches!(
        read_msg(&mut s).await,
        Some(Message::Error { id: None, .. })
    ));
    s.write_all(&protocol::encode_frame(&Message::Ping { id: 2 }).unwrap())
        .await
        .unwrap();
    assert_eq!(read_msg(&mut s).await, Some(Message::Pong { id: 2 }));

    // Absurd length: error reply, then the agent closes ...
    s.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    assert!(matches!(
        read_msg(&mut s).await,
        Some(Message::Error { id: None, .. })
    ));
    assert_eq!(read_msg(&mut s).await, None);
    drop(s);
    // ... and comes back with a new hello.
    let mut s = h.accept().await;
    expect_hello(&mut s).await;

    // A truncated frame then EOF: the agent reconnects.
    s.write_all(&[0, 0, 0, 100, b'{', b'"']).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut rest)).await;
    drop(s);
    let mut s = h.accept().await;
    expect_hello(&mut s).await;
    s.write_all(&protocol::encode_frame(&Message::Ping { id: 3 }).unwrap())
        .await
        .unwrap();
    assert_eq!(read_msg(&mut s).await, Some(Message::Pong { id: 3 }));
}

#[tokio::test]
async fn client_sees_reconnect_and_disconnect() {
    let h = Harness::start();
    let c = h.client().await;
    let first = c.wait_hello(T).await.unwrap();

    // The host side goes away: the agent reopens the channel and says hello again.
    drop(c);
    let c = h.client().await;
    let second = c.wait_hello(T).await.unwrap();
    assert_eq!(first.uuid, second.uuid);

    // An exec in flight when the channel drops fails with Disconnected.
    let c2 = {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        AgentClient::from_stream(a)
    };
    let e = c2.exec(sh("true"), Some(T)).await.unwrap_err();
    assert!(
        matches!(e, AgentError::Disconnected | AgentError::Io(_)),
        "{e:?}"
    );
    let e = c2.wait_hello(T).await.unwrap_err();
    assert!(matches!(e, AgentError::Disconnected), "{e:?}");

    c.ping(T).await.unwrap();
}

#[tokio::test]
async fn connect_waits_for_the_socket_and_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("later.sock");
    let e = AgentClient::connect_timeout(&sock, Duration::from_millis(200))
        .await
        .err()
        .expect("no socket, no client");
    assert!(matches!(e, AgentError::Timeout(_)), "{e:?}");

    // The socket appears while connect is retrying (as when QEMU starts).
    let path: &Path = &sock;
    let bind_later = async {
        tokio::task::yield_now().await;
        UnixListener::bind(path).unwrap()
    };
    let (client, listener) = tokio::join!(AgentClient::connect_timeout(path, T), bind_later);
    let client = client.unwrap();
    let (mut s, _) = listener.accept().await.unwrap();
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        agent: String::new(),
        uuid: None,
        hostname: "h".into(),
        interfaces: vec![],
        features: vec![],
    });
    protocol::write_message(&mut s, &hello).await.unwrap();
    assert_eq!(client.wait_hello(T).await.unwrap().hostname, "h");
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A hostile guest file: setuid and world-writable, larger than allowed, with
/// links planted at the temporary and at the final host path.
#[tokio::test]
async fn recv_is_bounded_ignores_the_guest_mode_and_never_follows_links() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::start();
    let c = h.client().await;
    c.wait_hello(T).await.unwrap();

    let canary = h.path("canary");
    std::fs::write(&canary, "canary\n").unwrap();
    let data = pattern(300 * 1024);
    let guest = h.path("guest/wide.bin");
    std::fs::create_dir_all(guest.parent().unwrap()).unwrap();
    std::fs::write(&guest, &data).unwrap();
    std::fs::set_permissions(&guest, std::fs::Permissions::from_mode(0o4777)).unwrap();
    let guest = guest.to_str().unwrap();

    // A link planted where the old code put its temporary file is not followed.
    let back = h.path("back");
    std::fs::create_dir_all(&back).unwrap();
    std::os::unix::fs::symlink(&canary, back.join(".wide.bin.part")).unwrap();
    let got = c.recv_file(guest, &back, T).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "canary\n");
    // The guest's mode is not kept: 0644, no setuid, nobody else writes.
    let mode = std::fs::metadata(&got.path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);
    assert_eq!(names_in(&back), [".wide.bin.part", "wide.bin"]);

    // More than max-size: an error naming the limit, and nothing kept.
    let small = h.path("small");
    let e = c
        .recv_file_limited(guest, &small, T, 100 * 1024)
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains("100 KiB"), "{e}");
    assert!(names_in(&small).is_empty(), "{:?}", names_in(&small));
    // Exactly max-size is fine.
    let exact = h.path("exact");
    c.recv_file_limited(guest, &exact, T, data.len() as u64)
        .await
        .unwrap();
    assert_eq!(std::fs::read(exact.join("wide.bin")).unwrap(), data);

    // The final name is a symlink: refused, the link and its target untouched.
    let linked = h.path("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::os::unix::fs::symlink(&canary, linked.join("wide.bin")).unwrap();
    let e = c.recv_file(guest, &linked, T).await.unwrap_err();
    assert!(matches!(e, AgentError::Refused(_)), "{e:?}");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "canary\n");
    assert_eq!(std::fs::read_link(linked.join("wide.bin")).unwrap(), canary);
    assert_eq!(names_in(&linked), ["wide.bin"]);
    c.ping(T).await.unwrap();
}

/// Stands in for QEMU's chardev: the agent's end is `agent`, and host
/// clients connect to `sock`, which (like QEMU's) has a backlog of one and
/// serves one client at a time. Frames from the agent go to whichever client
/// is connected, whole (a frame is never split between two clients).
fn fake_qemu(sock: &Path, agent: UnixStream) -> tokio::task::JoinHandle<()> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(sock.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: plain socket/bind/listen on a sockaddr_un we fill in.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(c.as_bytes_with_nul()) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0);
        assert_eq!(libc::listen(fd, 1), 0);
        let l = std::os::unix::net::UnixListener::from_raw_fd(fd);
        l.set_nonblocking(true).unwrap();
        UnixListener::from_std(l).unwrap()
    };
    tokio::spawn(async move {
        let (mut ar, mut aw) = agent.into_split();
        let (ftx, mut frx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        tokio::spawn(async move {
            loop {
                let mut hdr = [0u8; 4];
                if ar.read_exact(&mut hdr).await.is_err() {
                    return;
                }
                let mut frame = hdr.to_vec();
                frame.resize(4 + u32::from_be_bytes(hdr) as usize, 0);
                if ar.read_exact(&mut frame[4..]).await.is_err() || ftx.send(frame).await.is_err() {
                    return;
                }
            }
        });
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                tokio::select! {
                    f = frx.recv() => match f {
                        Some(f) => { let _ = cw.write_all(&f).await; }
                        None => return,
                    },
                    n = cr.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => { if aw.write_all(&buf[..n]).await.is_err() { return; } }
                    },
                }
            }
        }
    })
}

/// Five sessions at once on one guest, through a socket that serves one
/// client at a time: each waits its turn on the session lock instead of
/// failing with EAGAIN, and each gets its own answer.
#[tokio::test]
async fn concurrent_sessions_on_one_guest_take_turns() {
    let h = Harness::start();
    let agent = h.accept().await;
    let sock = h.path("qemu-cc.sock");
    let qemu = fake_qemu(&sock, agent);
    let lock = h.path("cc.lock");
    let runs = (0..5).map(|i| {
        let (sock, lock) = (sock.clone(), lock.clone());
        async move {
            let c = AgentClient::connect_exclusive(&sock, &lock, T, T).await?;
            let r = c.exec(sh(&format!("echo session-{i}")), Some(T)).await?;
            Ok::<_, AgentError>(r.stdout)
        }
    });
    let outs = futures::future::join_all(runs).await;
    for (i, o) in outs.into_iter().enumerate() {
        assert_eq!(o.unwrap(), format!("session-{i}\n"));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A session that never ends: the next one gives up after its bound,
    // with a clear error, instead of hanging or failing at once.
    let held = AgentClient::connect_exclusive(&sock, &lock, T, T)
        .await
        .unwrap();
    let wait = Duration::from_millis(300);
    let e = AgentClient::connect_exclusive(&sock, &lock, wait, wait)
        .await
        .err()
        .expect("busy");
    assert!(matches!(e, AgentError::Busy { .. }), "{e:?}");
    assert!(e.to_string().contains("another megaplan session"), "{e}");
    drop(held);
    let c = AgentClient::connect_exclusive(&sock, &lock, T, T)
        .await
        .unwrap();
    c.ping(T).await.unwrap();

    // A symlink planted at the lock path is not followed.
    let planted = h.path("planted.lock");
    std::os::unix::fs::symlink(h.path("target"), &planted).unwrap();
    assert!(
        AgentClient::connect_exclusive(&sock, &planted, T, T)
            .await
            .is_err()
    );
    assert!(!h.path("target").exists());
    qemu.abort();
}

/// `step_exec` runs a run id once per agent: asked again (even by a new
/// host connection while the first run is still going, as after a host
/// killed mid-step) it answers with that run's outcome.
#[tokio::test]
async fn steps_run_once_per_id_across_reconnects() {
    let h = Harness::start();
    let count = h.path("count");
    let fifo = h.path("go");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let cmd = sh(&format!(
        "echo run >> {}; cat {}",
        count.display(),
        fifo.display()
    ));

    // Host 1 starts the step, then goes away while it runs.
    let c1 = h.client().await;
    c1.wait_hello(T).await.unwrap();
    let first = {
        let cmd = cmd.clone();
        tokio::spawn(async move {
            c1.step_exec("vm.A.cc[0] h g1 s1", cmd, Some(T), false)
                .await
        })
    };
    // Opening the fifo for writing returns once the step's `cat` opened it.
    let fifo2 = fifo.clone();
    let writer = tokio::task::spawn_blocking(move || std::fs::File::create(fifo2).unwrap())
        .await
        .unwrap();
    first.abort();
    let _ = first.await;

    // Host 2 asks for the same run: it waits for the run, which it then ends.
    let c2 = h.client().await;
    c2.wait_hello(T).await.unwrap();
    let again = {
        let cmd = cmd.clone();
        let c2 = std::sync::Arc::new(c2);
        let c = c2.clone();
        (
            tokio::spawn(
                async move { c.step_exec("vm.A.cc[0] h g1 s1", cmd, Some(T), false).await },
            ),
            c2,
        )
    };
    let (task, c2) = again;
    {
        use std::io::Write;
        let mut w = writer;
        w.write_all(b"finished\n").unwrap();
    }
    let r = task.await.unwrap().unwrap();
    assert!(r.replayed, "{r:?}");
    let res = r.result.expect("a foreground result");
    assert_eq!(
        (res.exit, res.stdout.as_str()),
        (Exit::Code(0), "finished\n")
    );
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "run\n");

    // Done: asked again, it answers at once, still without running.
    let r = c2
        .step_exec("vm.A.cc[0] h g1 s1", cmd.clone(), Some(T), false)
        .await
        .unwrap();
    assert!(r.replayed);
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "run\n");

    // Another id is another run.
    let r = c2
        .step_exec(
            "vm.A.cc[0] h g1 s9",
            sh(&format!("echo run >> {}", count.display())),
            Some(T),
            false,
        )
        .await
        .unwrap();
    assert!(!r.replayed);
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "run\nrun\n");

    // A background step starts once: the same pid comes back.
    let bg = sh("true");
    let a = c2.step_exec("bg", bg.clone(), None, true).await.unwrap();
    let b = c2.step_exec("bg", bg, None, true).await.unwrap();
    assert!(a.pid.is_some() && !a.replayed);
    assert_eq!((b.pid, b.replayed), (a.pid, true));
}
