//! Link driver against the real kernel, each test in its own network namespace.
//! Needs root; skips (with a message) otherwise.

#[path = "common/netns.rs"]
mod netns;

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
            assert!(!tap.carrier, "nobody holds the tap open");

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
