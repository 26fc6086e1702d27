//! Link driver against the real kernel, each test in its own network namespace.
//! Needs root; skips (with a message) otherwise.

#[path = "common/netns.rs"]
mod netns;
#[path = "common/tap.rs"]
mod tap;

use megaplan::drivers::netlink::{LinkKind, MacAddr, Netlink, NetlinkError};
use netns::{can_run, in_netns, ns_cmd};

const BR_ALIAS: &str = "megaplan:t:network.LAN";
const TAP_ALIAS: &str = "megaplan:t:vm.A.nic[0]";

#[test]
fn bridge_and_tap_carry_marker_and_are_listed() {
    if !can_run("bridge_and_tap_carry_marker_and_are_listed") {
        return;
    }
    in_netns(|ns, rt| {
        rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            let br = nl.create_bridge("mpbLAN", BR_ALIAS).await.unwrap();
            assert_eq!(br.kind, LinkKind::Bridge);
            assert_eq!(br.alias.as_deref(), Some(BR_ALIAS));
            assert!(br.admin_up);

            let mac: MacAddr = "fe:00:00:00:00:0a".parse().unwrap();
            let tap = nl
                .create_tap("mptA0", Some(mac), TAP_ALIAS, Some("mpbLAN"))
                .await
                .unwrap();
            assert_eq!(tap.kind, LinkKind::Tap);
            assert_eq!(tap.alias.as_deref(), Some(TAP_ALIAS));
            assert_eq!(tap.mac, Some(mac));
            assert_eq!(tap.controller_index, Some(br.index));
            assert_eq!(tap.controller_name.as_deref(), Some("mpbLAN"));
            assert!(tap.admin_up);
            // Nobody holds the tap open once create_tap returns. A process
            // another test thread forks at that moment holds a copy of the
            // (close-on-exec) tun fd until it execs, so ask until the kernel
            // has seen the last close, within a bound.
            let mut carrier = tap.carrier;
            let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while carrier && std::time::Instant::now() < until {
                tokio::task::yield_now().await;
                carrier = nl.link_by_name("mptA0").await.unwrap().unwrap().carrier;
            }
            assert!(!carrier, "nobody holds the tap open");

            // The tap is persistent, with a vnet header, as QEMU wants it.
            let details = ns_cmd(ns, &["ip", "-d", "link", "show", "mptA0"]);
            assert!(details.contains("tun type tap"), "{details}");
            assert!(details.contains("persist on"), "{details}");
            assert!(details.contains("vnet_hdr on"), "{details}");

            // Unmarked and differently-marked links are not ours.
            ns_cmd(
                ns,
                &[
                    "ip", "link", "add", "foreign0", "type", "veth", "peer", "name", "foreign1",
                ],
            );
            ns_cmd(ns, &["ip", "link", "add", "other0", "type", "bridge"]);
            ns_cmd(
                ns,
                &[
                    "ip",
                    "link",
                    "set",
                    "other0",
                    "alias",
                    "megaplan:other:network.X",
                ],
            );

            nl.set_address("mpbLAN", BR_ALIAS, "10.9.0.254/24")
                .await
                .unwrap();
            // Twice is fine.
            nl.set_address("mpbLAN", BR_ALIAS, "10.9.0.254/24")
                .await
                .unwrap();

            let marked = nl.list_marked("megaplan:t:").await.unwrap();
            let names: Vec<&str> = marked.iter().map(|l| l.name.as_str()).collect();
            assert_eq!(names, ["mpbLAN", "mptA0"]);
            let brl = &marked[0];
            assert!(
                brl.addresses.contains(&"10.9.0.254/24".parse().unwrap()),
                "{:?}",
                brl.addresses
            );
            assert!(nl.list_marked("megaplan:").await.unwrap().len() == 3);

            assert!(
                nl.remove_address("mpbLAN", BR_ALIAS, "10.9.0.254/24")
                    .await
                    .unwrap()
            );
            assert!(
                !nl.remove_address("mpbLAN", BR_ALIAS, "10.9.0.254/24")
                    .await
                    .unwrap()
            );

            // Delete refuses what is not ours, in every way.
            let e = nl.delete_link("foreign0", TAP_ALIAS).await.unwrap_err();
            assert!(matches!(e, NetlinkError::NotOurs { .. }), "{e}");
            let e = nl.delete_link("other0", BR_ALIAS).await.unwrap_err();
            assert!(matches!(e, NetlinkError::NotOurs { .. }), "{e}");
            let e = nl.delete_link("mptA0", BR_ALIAS).await.unwrap_err();
            assert!(matches!(e, NetlinkError::NotOurs { .. }), "{e}");
            assert!(nl.link_by_name("foreign0").await.unwrap().is_some());
            assert!(nl.link_by_name("other0").await.unwrap().is_some());
            // Setting an address on a foreign link is refused too.
            assert!(
                nl.set_address("foreign0", BR_ALIAS, "10.9.1.1/24")
                    .await
                    .is_err()
            );

            // Deleting ours works, and twice is not an error.
            assert!(nl.delete_link("mptA0", TAP_ALIAS).await.unwrap());
            assert!(!nl.delete_link("mptA0", TAP_ALIAS).await.unwrap());
            assert!(nl.delete_link("mpbLAN", BR_ALIAS).await.unwrap());
            assert!(nl.list_marked("megaplan:t:").await.unwrap().is_empty());
        })
    });
}

#[test]
fn create_is_idempotent_and_refuses_unmarked() {
    if !can_run("create_is_idempotent_and_refuses_unmarked") {
        return;
    }
    in_netns(|ns, rt| {
        rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            let br1 = nl.create_bridge("mpbLAN", BR_ALIAS).await.unwrap();
            let br2 = nl.create_bridge("mpbLAN", BR_ALIAS).await.unwrap();
            assert_eq!(br1.index, br2.index);

            let mac: MacAddr = "fe:00:00:00:00:0a".parse().unwrap();
            let t1 = nl
                .create_tap("mptA0", Some(mac), TAP_ALIAS, Some("mpbLAN"))
                .await
                .unwrap();
            let t2 = nl
                .create_tap("mptA0", Some(mac), TAP_ALIAS, Some("mpbLAN"))
                .await
                .unwrap();
            assert_eq!(t1.index, t2.index);

            // An existing marked tap is brought back to what was asked.
            ns_cmd(ns, &["ip", "link", "set", "mptA0", "nomaster", "down"]);
            let t3 = nl
                .create_tap("mptA0", Some(mac), TAP_ALIAS, Some("mpbLAN"))
                .await
                .unwrap();
            assert_eq!(t3.index, t1.index);
            assert_eq!(t3.controller_index, Some(br1.index));
            assert!(t3.admin_up);

            // Same name, other marker or other kind: refused, nothing changed.
            let e = nl
                .create_bridge("mpbLAN", "megaplan:t:network.OTHER")
                .await
                .unwrap_err();
            assert!(matches!(e, NetlinkError::NotOurs { .. }), "{e}");
            let e = nl
                .create_tap("mpbLAN", None, BR_ALIAS, None)
                .await
                .unwrap_err();
            assert!(matches!(e, NetlinkError::KindMismatch { .. }), "{e}");

            // Unmarked links of the wanted name: refused, left alone.
            ns_cmd(ns, &["ip", "link", "add", "mpbX", "type", "bridge"]);
            ns_cmd(ns, &["ip", "tuntap", "add", "dev", "mptX", "mode", "tap"]);
            let e = nl.create_bridge("mpbX", BR_ALIAS).await.unwrap_err();
            assert!(matches!(e, NetlinkError::NotOurs { .. }), "{e}");
            let e = nl
                .create_tap("mptX", None, TAP_ALIAS, None)
                .await
                .unwrap_err();
            assert!(matches!(e, NetlinkError::NotOurs { .. }), "{e}");
            let x = nl.link_by_name("mptX").await.unwrap().unwrap();
            assert_eq!(x.alias, None);
            assert_eq!(x.controller_index, None);

            // A tap cannot join an unmarked bridge.
            let e = nl
                .create_tap("mptB0", None, "megaplan:t:vm.B.nic[0]", Some("mpbX"))
                .await
                .unwrap_err();
            assert!(matches!(e, NetlinkError::NotOurs { .. }), "{e}");
            assert!(nl.link_by_name("mptB0").await.unwrap().is_none());

            // A failing tap creation (MAC the kernel refuses: multicast) leaves
            // no half-made tap behind.
            let bad_mac: MacAddr = "01:00:5e:00:00:01".parse().unwrap();
            assert!(
                nl.create_tap(
                    "mptC0",
                    Some(bad_mac),
                    "megaplan:t:vm.C.nic[0]",
                    Some("mpbLAN")
                )
                .await
                .is_err()
            );
            assert!(nl.link_by_name("mptC0").await.unwrap().is_none());
        })
    });
}

#[test]
fn bad_names_are_errors_before_any_syscall() {
    // No namespace or root needed: validation happens first.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nl = Netlink::connect().unwrap();
        for bad in [
            "",
            "this-name-is-too-long",
            "a/b",
            "a b",
            "a\nb",
            "x:y",
            "..",
            "a\u{1}",
        ] {
            let e = nl.create_bridge(bad, BR_ALIAS).await.unwrap_err();
            assert!(
                matches!(e, NetlinkError::InvalidName { .. }),
                "{bad:?}: {e}"
            );
            let e = nl.create_tap(bad, None, TAP_ALIAS, None).await.unwrap_err();
            assert!(
                matches!(e, NetlinkError::InvalidName { .. }),
                "{bad:?}: {e}"
            );
            let e = nl.delete_link(bad, TAP_ALIAS).await.unwrap_err();
            assert!(
                matches!(e, NetlinkError::InvalidName { .. }),
                "{bad:?}: {e}"
            );
        }
        let e = nl
            .create_tap("mptok", None, TAP_ALIAS, Some("bad/bridge"))
            .await
            .unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidName { .. }), "{e}");
        let e = nl.create_bridge("mpbok", "").await.unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidAlias { .. }), "{e}");
        let e = nl
            .set_address("mpbok", BR_ALIAS, "10.0.0.1")
            .await
            .unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidCidr { .. }), "{e}");
    });
}

// ---- isolation between networks through the host ----

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const GUEST_IP: [u8; 4] = [10, 0, 0, 1];
const LAN_IP: [u8; 4] = [10, 0, 0, 254];
const MON_IP: [u8; 4] = [10, 0, 1, 254];

fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

/// The sender IP of an ARP reply, if `f` is one.
fn arp_reply_from(f: &[u8]) -> Option<[u8; 4]> {
    (f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2])
        .then(|| f[28..32].try_into().unwrap())
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request from the guest to `dst`, through `via` (a MAC).
fn echo_request(via: [u8; 6], dst: [u8; 4], id: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(b"megaplan");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = via.to_vec();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// The id of an ICMP echo reply, if `f` is one.
fn echo_reply_id(f: &[u8]) -> Option<u16> {
    (f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0)
        .then(|| u16::from_be_bytes([f[38], f[39]]))
}

/// Send `probe` then `control` from the guest; read until the answer to
/// `control` arrives and return whether `probe` was answered before it. The
/// host answers both in order as it receives them (tun writes are processed
/// in the writer's context), so the control's answer is a barrier.
fn answered_before<T: PartialEq>(
    tap: &tap::TapFd,
    probe: &[u8],
    control: &[u8],
    want_probe: &T,
    want_control: &T,
    answer: impl Fn(&[u8]) -> Option<T>,
) -> bool {
    tap.send(probe);
    tap.send(control);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut probe_answered = false;
    loop {
        let f = tap
            .recv(deadline)
            .expect("the host never answered the control probe");
        match answer(&f) {
            Some(a) if &a == want_control => return probe_answered,
            Some(a) if &a == want_probe => probe_answered = true,
            _ => {}
        }
    }
}

/// Two networks with host addresses, made as apply makes them; a "guest"
/// (a tap the test holds) on LAN gets ARP and ping answers from LAN's host
/// address, and none from mon's, which the host would otherwise answer on
/// any bridge.
#[test]
fn networks_are_isolated_through_the_host() {
    use megaplan::host::Host;
    if !can_run("networks_are_isolated_through_the_host") {
        return;
    }
    in_netns(|ns, rt| {
        rt.block_on(async {
            let host = megaplan::host::LocalHost::connect().unwrap();
            let mon_alias = "megaplan:t:network.mon";
            host.ensure_bridge("mpbLAN", BR_ALIAS, Some("10.0.0.254/24"))
                .await
                .unwrap();
            host.ensure_bridge("mpbmon", mon_alias, Some("10.0.1.254/24"))
                .await
                .unwrap();
            // Again: idempotent (the filters are replaced, not doubled).
            host.ensure_bridge("mpbLAN", BR_ALIAS, Some("10.0.0.254/24"))
                .await
                .unwrap();
            for br in ["mpbLAN", "mpbmon"] {
                let read = |k: &str| {
                    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{br}/{k}"))
                        .unwrap()
                        .trim()
                        .to_string()
                };
                assert_eq!(
                    (read("arp_ignore"), read("arp_announce"), read("forwarding")),
                    ("1".into(), "2".into(), "0".into()),
                    "{br}"
                );
                let v6 =
                    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{br}/forwarding"));
                assert_eq!(v6.unwrap().trim(), "0", "{br}");
            }
            let filters = ns_cmd(ns, &["tc", "filter", "show", "dev", "mpbLAN", "ingress"]);
            assert_eq!(filters.matches("direct-action").count(), 2, "{filters}");

            let mac = MacAddr::tap_for_guest(MacAddr(GUEST_MAC));
            host.nl
                .create_tap("mptG", Some(mac), TAP_ALIAS, Some("mpbLAN"))
                .await
                .unwrap();
            let guest = tap::TapFd::open("mptG");
            let lan_mac = host
                .nl
                .link_by_name("mpbLAN")
                .await
                .unwrap()
                .unwrap()
                .mac
                .unwrap();
            // The host answers the guest without asking for its MAC.
            ns_cmd(
                ns,
                &[
                    "ip",
                    "neigh",
                    "replace",
                    "10.0.0.1",
                    "lladdr",
                    "02:00:00:00:00:0a",
                    "dev",
                    "mpbLAN",
                    "nud",
                    "permanent",
                ],
            );
            // The port forwards once the tap has carrier: ask until answered.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                guest.send(&arp_request(LAN_IP));
                let until = std::time::Instant::now() + std::time::Duration::from_millis(100);
                let mut answered = false;
                while let Some(f) = guest.recv(until) {
                    answered |= arp_reply_from(&f) == Some(LAN_IP);
                }
                if answered {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "LAN's host address never answered ARP"
                );
            }

            // L2: no ARP answer for mon's address on LAN.
            assert!(
                !answered_before(
                    &guest,
                    &arp_request(MON_IP),
                    &arp_request(LAN_IP),
                    &MON_IP,
                    &LAN_IP,
                    arp_reply_from
                ),
                "the host answered ARP for mon's host address on LAN"
            );
            // L3: a ping to mon's address sent to the host (through LAN's
            // address, as a route via it would) gets no answer; one to LAN's does.
            assert!(
                !answered_before(
                    &guest,
                    &echo_request(lan_mac.0, MON_IP, 1),
                    &echo_request(lan_mac.0, LAN_IP, 2),
                    &1,
                    &2,
                    echo_reply_id
                ),
                "the host answered a ping to mon's host address arriving on LAN"
            );
            drop(guest);
            for (name, alias) in [
                ("mptG", TAP_ALIAS),
                ("mpbLAN", BR_ALIAS),
                ("mpbmon", mon_alias),
            ] {
                assert!(host.nl.delete_link(name, alias).await.unwrap());
            }
        })
    });
}
