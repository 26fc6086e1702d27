//! Smoke test of the agent over a real virtio-serial port. Ignored by
//! default: it needs a running guest whose initramfs starts `megaplan-agent`
//! and whose QEMU has
//! `-chardev socket,id=cc,path=SOCK,server=on,wait=off -device virtio-serial-pci
//!  -device virtserialport,chardev=cc,name=megaplan.cc`.
//! Run: `MEGAPLAN_CC_SOCK=SOCK cargo test --test agent_qemu -- --ignored`.

use std::time::Duration;

use megaplan::agent::{AgentClient, Command, Exit, protocol};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
#[ignore = "needs a QEMU guest running megaplan-agent (MEGAPLAN_CC_SOCK)"]
async fn agent_over_virtio_serial() {
    let sock = std::env::var("MEGAPLAN_CC_SOCK").expect("MEGAPLAN_CC_SOCK");
    let c = AgentClient::connect_timeout(&sock, T).await.unwrap();
    let hello = c.wait_hello(T).await.unwrap();
    eprintln!("hello: {hello:?}");

    let r = c
        .exec(Command::Shell("echo hi; exit 4".into()), Some(T))
        .await
        .unwrap();
    assert_eq!((r.exit, r.stdout.as_str()), (Exit::Code(4), "hi\n"));
    let r = c
        .exec(
            Command::Shell("sleep 20".into()),
            Some(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    assert!(r.timed_out);

    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 5) as u8).collect();
    let src = dir.path().join("blob");
    std::fs::write(&src, &data).unwrap();
    let t = c.send_file(&src, "/tmp/in/blob").await.unwrap();
    assert_eq!(t.sha256, protocol::sha256_of(&data));
    let back = c
        .recv_file("/tmp/in/blob", dir.path().join("back"), T)
        .await
        .unwrap();
    assert_eq!(std::fs::read(back.path).unwrap(), data);
    c.sync_unmount(&[], T).await.unwrap();

    // Host goes away and comes back (at once: the guest may not even notice),
    // a few times: hello again, and the channel works.
    let mut c = c;
    for round in 0..3 {
        drop(c);
        c = AgentClient::connect_timeout(&sock, T).await.unwrap();
        let again = c.wait_hello(T).await.unwrap();
        assert_eq!(again.uuid, hello.uuid);
        let r = c
            .exec(Command::Shell(format!("echo round {round}")), Some(T))
            .await
            .unwrap();
        assert_eq!(r.stdout, format!("round {round}\n"));
    }
    c.ping(T).await.unwrap();
    let info = c.refresh(T).await.unwrap();
    eprintln!("info: {info:?}");
}
