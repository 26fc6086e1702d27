//! Tap mirrors with real frames, each test in its own network namespace.
//!
//! Topology (all made with the driver, like an experiment would):
//!   bridge mpbLAN: taps mptA, mptB      (the two endpoints)
//!   bridge mpbmon: taps mptM, mptM2, mptP (mirror destinations and a probe)
//! The test process holds every tap open through /dev/net/tun (without vnet
//! header), so it writes raw Ethernet frames into A and B and reads what the
//! kernel sends out of each tap. Frames carry a unique tag.
//!
//! "A is mirrored" is checked by: A sends a frame to B (A ingress) and waits
//! until B has it; B sends one to A (A egress) and waits until A has it; by
//! then any mirror copy has already been handed to M (mirroring happens before
//! the bridge forwards, and before A's own queue). Then P sends a barrier frame
//! that the mon bridge floods to M; once M has the barrier, everything M got
//! before it is known. M's root qdisc is `noqueue`, so M's queue is strictly
//! in order. No sleeps: every wait is a poll with a bounded deadline.

#[path = "common/netns.rs"]
mod netns;
#[path = "common/tap.rs"]
mod tap;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use megaplan::drivers::netlink::{MacAddr, Netlink};
use megaplan::drivers::tc::{Direction, Tc};
use netns::{can_run, in_netns, ns_cmd};
use tap::TapFd;

const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
const MAGIC: &[u8; 6] = b"MPTEST";
const DEADLINE: Duration = Duration::from_secs(5);

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a]; // "guest" MACs behind the taps
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const MAC_P: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0f];
const BROADCAST: [u8; 6] = [0xff; 6];

fn alias(addr: &str) -> String {
    format!("megaplan:mirror-test:{addr}")
}

impl TapFd {
    /// Read frames until the one tagged `tag` arrives; returns every test tag
    /// seen (including `tag`), or None at the deadline.
    fn wait_tag(&self, tag: u64, within: Duration) -> Option<BTreeSet<u64>> {
        let deadline = Instant::now() + within;
        let mut seen = BTreeSet::new();
        while let Some(f) = self.recv(deadline) {
            if let Some(t) = tag_of(&f) {
                seen.insert(t);
                if t == tag {
                    return Some(seen);
                }
            }
        }
        None
    }

    /// Every test tag already queued (no waiting).
    fn drain(&self) -> BTreeSet<u64> {
        let mut seen = BTreeSet::new();
        while let Some(f) = self.recv(Instant::now()) {
            if let Some(t) = tag_of(&f) {
                seen.insert(t);
            }
        }
        seen
    }
}

fn frame(dst: [u8; 6], src: [u8; 6], tag: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(MAGIC);
    f.extend_from_slice(&tag.to_be_bytes());
    f.resize(60, 0);
    f
}

fn tag_of(f: &[u8]) -> Option<u64> {
    if f.len() < 28 || f[12..14] != ETHERTYPE.to_be_bytes() || &f[14..20] != MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(f[20..28].try_into().unwrap()))
}

struct Lab {
    a: TapFd,
    b: TapFd,
    m: TapFd,
    m2: TapFd,
    p: TapFd,
    next_tag: u64,
    /// Every frame written, by tag, to compare mirror copies byte for byte.
    sent: std::collections::HashMap<u64, Vec<u8>>,
}

impl Lab {
    async fn build(ns: &str, nl: &Netlink) -> Lab {
        // Less noise (IPv6 DAD, router solicitations) on new links.
        ns_cmd(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns_cmd(
            ns,
            &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        );
        nl.create_bridge("mpbLAN", &alias("network.LAN"))
            .await
            .unwrap();
        nl.create_bridge("mpbmon", &alias("network.mon"))
            .await
            .unwrap();
        for (i, (tap, nic, br)) in [
            ("mptA", "vm.A.nic[0]", "mpbLAN"),
            ("mptB", "vm.B.nic[0]", "mpbLAN"),
            ("mptM", "vm.monitor.nic[0]", "mpbmon"),
            ("mptM2", "vm.monitor2.nic[0]", "mpbmon"),
            ("mptP", "vm.probe.nic[0]", "mpbmon"),
        ]
        .into_iter()
        .enumerate()
        {
            let mac = MacAddr::tap_for_guest(MacAddr([0x02, 0, 0, 0, 1, i as u8]));
            nl.create_tap(tap, Some(mac), &alias(nic), Some(br))
                .await
                .unwrap();
        }
        for m in ["mptM", "mptM2"] {
            ns_cmd(ns, &["tc", "qdisc", "replace", "dev", m, "root", "noqueue"]);
        }
        let mut lab = Lab {
            a: TapFd::open("mptA"),
            b: TapFd::open("mptB"),
            m: TapFd::open("mptM"),
            m2: TapFd::open("mptM2"),
            p: TapFd::open("mptP"),
            next_tag: 1,
            sent: Default::default(),
        };
        lab.warm_up();
        lab
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn send(&mut self, from: char, dst: [u8; 6], src: [u8; 6]) -> u64 {
        let t = self.tag();
        let f = frame(dst, src, t);
        match from {
            'A' => self.a.send(&f),
            'B' => self.b.send(&f),
            'P' => self.p.send(&f),
            _ => unreachable!(),
        }
        self.sent.insert(t, f);
        t
    }

    /// Bridge ports come up asynchronously once the taps have carrier: retry
    /// until each path delivers (each try waits at most 100 ms for its frame).
    fn warm_up(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        for (from, to) in [('A', 'B'), ('B', 'A'), ('P', 'M'), ('P', '2')] {
            loop {
                assert!(Instant::now() < deadline, "path {from}->{to} never came up");
                let (dst, src) = match from {
                    'A' => (MAC_B, MAC_A),
                    'B' => (MAC_A, MAC_B),
                    _ => (BROADCAST, MAC_P),
                };
                let t = self.send(from, dst, src);
                let rx = match to {
                    'A' => &self.a,
                    'B' => &self.b,
                    'M' => &self.m,
                    _ => &self.m2,
                };
                if rx.wait_tag(t, Duration::from_millis(100)).is_some() {
                    break;
                }
            }
        }
        self.m.drain();
        self.m2.drain();
    }

    /// Send A->B and B->A, then a barrier to both monitors; return which of the
    /// two frames each monitor saw: ((ingress, egress) on M, (ingress, egress) on M2).
    fn probe(&mut self) -> ((bool, bool), (bool, bool)) {
        let t_in = self.send('A', MAC_B, MAC_A);
        assert!(
            self.b.wait_tag(t_in, DEADLINE).is_some(),
            "B never got A's frame"
        );
        let t_out = self.send('B', MAC_A, MAC_B);
        assert!(
            self.a.wait_tag(t_out, DEADLINE).is_some(),
            "A never got B's frame"
        );
        let barrier = self.send('P', BROADCAST, MAC_P);
        let mut result = Vec::new();
        for mon in [&self.m, &self.m2] {
            let mut seen = mon
                .wait_tag(barrier, DEADLINE)
                .unwrap_or_else(|| panic!("{} never got the barrier", mon.name));
            seen.extend(mon.drain());
            result.push((seen.contains(&t_in), seen.contains(&t_out)));
        }
        (result[0], result[1])
    }

    /// Like probe, but also checks that a mirrored copy is byte-identical.
    fn probe_exact_copy(&mut self) {
        let t = self.send('A', MAC_B, MAC_A);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let f = self.m.recv(deadline).expect("no mirror copy on M");
            if tag_of(&f) == Some(t) {
                assert_eq!(&f, &self.sent[&t], "mirror copy differs from the frame");
                break;
            }
        }
        assert!(self.b.wait_tag(t, DEADLINE).is_some());
    }
}

const NONE: (bool, bool) = (false, false);
const IN: (bool, bool) = (true, false);
const OUT: (bool, bool) = (false, true);
const BOTH: (bool, bool) = (true, true);

fn filters_on(ns: &str, dev: &str) -> String {
    let i = ns_cmd(ns, &["tc", "filter", "show", "dev", dev, "ingress"]);
    let e = ns_cmd(ns, &["tc", "filter", "show", "dev", dev, "egress"]);
    format!("{i}{e}")
}

fn qdiscs_on(ns: &str, dev: &str) -> String {
    ns_cmd(ns, &["tc", "qdisc", "show", "dev", dev])
}

#[test]
fn mirror_directions_with_real_frames() {
    if !can_run("mirror_directions_with_real_frames") {
        return;
    }
    in_netns(|ns, rt| {
        let nl = rt.block_on(async { Netlink::connect().unwrap() });
        let tc = Tc::new(&nl);
        let mut lab = rt.block_on(Lab::build(ns, &nl));

        assert_eq!(lab.probe(), (NONE, NONE), "no mirror yet");

        // Ingress only.
        rt.block_on(tc.add_mirror("mptA", "mptM", Direction::Ingress))
            .unwrap();
        let ms = rt.block_on(tc.list_mirrors("mptA")).unwrap();
        assert_eq!(ms.len(), 1, "{ms:?}");
        assert_eq!(ms[0].direction, Direction::Ingress);
        assert_eq!(ms[0].dst_name.as_deref(), Some("mptM"));
        assert!(ms[0].is_for("mptM"));
        assert_eq!(lab.probe(), (IN, NONE));
        lab.probe_exact_copy();
        assert_eq!(
            rt.block_on(tc.remove_mirror("mptA", "mptM", Direction::Both))
                .unwrap(),
            1
        );
        assert_eq!(lab.probe(), (NONE, NONE), "removed mirror still copies");
        assert!(
            !rt.block_on(tc.has_clsact("mptA")).unwrap(),
            "{}",
            qdiscs_on(ns, "mptA")
        );

        // Egress only.
        rt.block_on(tc.add_mirror("mptA", "mptM", Direction::Egress))
            .unwrap();
        assert_eq!(lab.probe(), (OUT, NONE));
        assert_eq!(
            rt.block_on(tc.remove_mirror("mptA", "mptM", Direction::Egress))
                .unwrap(),
            1
        );
        assert_eq!(lab.probe(), (NONE, NONE));

        // Both, added twice (idempotent), then taken down one side at a time.
        rt.block_on(tc.add_mirror("mptA", "mptM", Direction::Both))
            .unwrap();
        let first = rt.block_on(tc.list_mirrors("mptA")).unwrap();
        rt.block_on(tc.add_mirror("mptA", "mptM", Direction::Both))
            .unwrap();
        let second = rt.block_on(tc.list_mirrors("mptA")).unwrap();
        assert_eq!(first, second);
        assert_eq!(second.len(), 2);
        assert_ne!(second[0].priority, second[1].priority);
        assert_eq!(lab.probe(), (BOTH, NONE));
        assert_eq!(
            rt.block_on(tc.remove_mirror("mptA", "mptM", Direction::Ingress))
                .unwrap(),
            1
        );
        assert_eq!(lab.probe(), (OUT, NONE));
        let left = rt.block_on(tc.list_mirrors("mptA")).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].direction, Direction::Egress);
        assert_eq!(
            rt.block_on(tc.remove_mirror("mptA", "mptM", Direction::Egress))
                .unwrap(),
            1
        );
        assert_eq!(lab.probe(), (NONE, NONE));

        // Nothing left behind on the source.
        assert!(rt.block_on(tc.list_mirrors("mptA")).unwrap().is_empty());
        assert!(!rt.block_on(tc.has_clsact("mptA")).unwrap());
        assert!(
            !qdiscs_on(ns, "mptA").contains("clsact"),
            "{}",
            qdiscs_on(ns, "mptA")
        );
        teardown(ns, rt, &nl);
    });
}

#[test]
fn several_mirrors_on_one_source() {
    if !can_run("several_mirrors_on_one_source") {
        return;
    }
    in_netns(|ns, rt| {
        let nl = rt.block_on(async { Netlink::connect().unwrap() });
        let tc = Tc::new(&nl);
        let mut lab = rt.block_on(Lab::build(ns, &nl));

        rt.block_on(tc.add_mirror("mptA", "mptM", Direction::Both))
            .unwrap();
        rt.block_on(tc.add_mirror("mptA", "mptM2", Direction::Ingress))
            .unwrap();
        // A mirror on another source into the same destination.
        rt.block_on(tc.add_mirror("mptB", "mptM2", Direction::Ingress))
            .unwrap();
        let ms = rt.block_on(tc.list_mirrors("mptA")).unwrap();
        assert_eq!(ms.len(), 3, "{ms:?}");
        let prios: BTreeSet<u16> = ms.iter().map(|m| m.priority).collect();
        assert_eq!(prios.len(), 3, "priorities must be distinct: {ms:?}");
        // Refresh's batched listing agrees with the per-tap one.
        let all = batched(rt, &tc, &nl);
        assert_eq!(
            all.keys().collect::<Vec<_>>(),
            ["mptA", "mptB"],
            "only taps with mirrors: {all:?}"
        );
        assert_eq!(all["mptA"], ms);
        assert_eq!(all["mptB"], rt.block_on(tc.list_mirrors("mptB")).unwrap());
        assert_eq!(all["mptB"][0].dst_name.as_deref(), Some("mptM2"));
        // M2 sees A's ingress via A, and B's ingress (= the B->A frame) via B.
        assert_eq!(lab.probe(), (BOTH, BOTH));

        // Remove one mirror: the other keeps working.
        assert_eq!(
            rt.block_on(tc.remove_mirror("mptB", "mptM2", Direction::Both))
                .unwrap(),
            1
        );
        assert_eq!(lab.probe(), (BOTH, IN));
        assert_eq!(
            rt.block_on(tc.remove_mirror("mptA", "mptM", Direction::Both))
                .unwrap(),
            2
        );
        assert_eq!(lab.probe(), (NONE, IN));
        let ms = rt.block_on(tc.list_mirrors("mptA")).unwrap();
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].dst_name.as_deref(), Some("mptM2"));
        // Only our remaining filter, no empty leftovers.
        let shown = filters_on(ns, "mptA");
        assert_eq!(shown.matches("mirred").count(), 1, "{shown}");

        // clear_mirrors drops the qdisc and everything on it.
        assert!(rt.block_on(tc.clear_mirrors("mptA")).unwrap());
        assert!(!rt.block_on(tc.clear_mirrors("mptA")).unwrap());
        assert_eq!(lab.probe(), (NONE, NONE));
        assert!(filters_on(ns, "mptA").trim().is_empty());
        assert!(!qdiscs_on(ns, "mptA").contains("clsact"));
        teardown(ns, rt, &nl);
    });
}

#[test]
fn foreign_filters_and_vanished_destinations() {
    if !can_run("foreign_filters_and_vanished_destinations") {
        return;
    }
    in_netns(|ns, rt| {
        let nl = rt.block_on(async { Netlink::connect().unwrap() });
        let tc = Tc::new(&nl);
        let mut lab = rt.block_on(Lab::build(ns, &nl));

        // Someone else's mirror (no cookie) on the same source, same kind of filter.
        ns_cmd(ns, &["tc", "qdisc", "add", "dev", "mptA", "clsact"]);
        ns_cmd(
            ns,
            &[
                "tc", "filter", "add", "dev", "mptA", "egress", "prio", "7", "protocol", "all",
                "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev",
                "mptM2", "continue",
            ],
        );
        rt.block_on(tc.add_mirror("mptA", "mptM", Direction::Ingress))
            .unwrap();
        let ms = rt.block_on(tc.list_mirrors("mptA")).unwrap();
        assert_eq!(ms.len(), 1, "only ours is listed: {ms:?}");
        assert_eq!(batched(rt, &tc, &nl)["mptA"], ms);
        assert_eq!(lab.probe(), (IN, OUT));

        // Removing ours leaves theirs, and their qdisc.
        assert_eq!(
            rt.block_on(tc.remove_mirror("mptA", "mptM", Direction::Both))
                .unwrap(),
            1
        );
        assert_eq!(lab.probe(), (NONE, OUT));
        assert!(rt.block_on(tc.has_clsact("mptA")).unwrap());
        assert!(filters_on(ns, "mptA").contains("mirred"));
        ns_cmd(ns, &["tc", "qdisc", "del", "dev", "mptA", "clsact"]);

        // An `ingress` qdisc is not ours to replace.
        ns_cmd(ns, &["tc", "qdisc", "add", "dev", "mptB", "ingress"]);
        let e = rt
            .block_on(tc.add_mirror("mptB", "mptM", Direction::Both))
            .unwrap_err();
        assert!(e.to_string().contains("not clsact"), "{e}");
        assert!(
            batched(rt, &tc, &nl).is_empty(),
            "an ingress qdisc and a foreign filter are no mirrors of ours"
        );
        ns_cmd(ns, &["tc", "qdisc", "del", "dev", "mptB", "ingress"]);

        // The destination disappears: the mirror shows as dead, and can still be
        // removed by the destination's name; re-adding after the destination is
        // re-created replaces the stale filter.
        rt.block_on(tc.add_mirror("mptA", "mptM", Direction::Both))
            .unwrap();
        drop(lab); // release the taps
        rt.block_on(nl.delete_link("mptM", &alias("vm.monitor.nic[0]")))
            .unwrap();
        let ms = rt.block_on(tc.list_mirrors("mptA")).unwrap();
        assert_eq!(ms.len(), 2);
        assert!(
            ms.iter()
                .all(|m| m.dst_ifindex.is_none() && m.is_for("mptM")),
            "{ms:?}"
        );
        assert_eq!(batched(rt, &tc, &nl)["mptA"], ms);
        rt.block_on(nl.create_tap("mptM", None, &alias("vm.monitor.nic[0]"), Some("mpbmon")))
            .unwrap();
        rt.block_on(tc.add_mirror("mptA", "mptM", Direction::Both))
            .unwrap();
        let new_index = rt.block_on(nl.index_of("mptM")).unwrap();
        let ms = rt.block_on(tc.list_mirrors("mptA")).unwrap();
        assert_eq!(ms.len(), 2, "{ms:?}");
        assert!(
            ms.iter().all(|m| m.dst_ifindex == Some(new_index)),
            "{ms:?}"
        );
        rt.block_on(nl.delete_link("mptM", &alias("vm.monitor.nic[0]")))
            .unwrap();
        assert_eq!(
            rt.block_on(tc.remove_mirror("mptA", "mptM", Direction::Both))
                .unwrap(),
            2
        );
        assert!(!rt.block_on(tc.has_clsact("mptA")).unwrap());
        teardown(ns, rt, &nl);
    });
}

/// `Tc::list_mirrors_of` over every marked link, as refresh calls it, with the
/// link listing as the name map.
fn batched(
    rt: &tokio::runtime::Runtime,
    tc: &Tc,
    nl: &Netlink,
) -> std::collections::BTreeMap<String, Vec<megaplan::drivers::tc::MirrorInfo>> {
    rt.block_on(async {
        let links = nl.list_marked("megaplan:mirror-test:").await.unwrap();
        let taps: Vec<(String, u32)> = links
            .iter()
            .filter(|l| l.name.starts_with("mpt"))
            .map(|l| (l.name.clone(), l.index))
            .collect();
        let names = links.iter().map(|l| (l.index, l.name.clone())).collect();
        tc.list_mirrors_of(&taps, &names).await.unwrap()
    })
}

/// Delete everything through the driver and check nothing marked is left.
fn teardown(ns: &str, rt: &tokio::runtime::Runtime, nl: &Netlink) {
    rt.block_on(async {
        for l in nl.list_marked("megaplan:mirror-test:").await.unwrap() {
            let a = l.alias.clone().unwrap();
            nl.delete_link(&l.name, &a).await.unwrap();
        }
        assert!(nl.list_marked("megaplan:").await.unwrap().is_empty());
    });
    let links = ns_cmd(ns, &["ip", "-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "only lo should be left: {links}");
}

/// `mirrors network="LAN"` as validate expands it and the host wires it (one
/// mirror per member tap, with the direction the lab says): every frame on
/// LAN reaches the monitor exactly once, unicast in either direction and a
/// broadcast alike.
#[test]
fn a_network_mirror_delivers_each_frame_once() {
    use megaplan::host::Host;
    if !can_run("a_network_mirror_delivers_each_frame_once") {
        return;
    }
    let src = megaplan::diag::SourceFile::new(
        "/nonexistent/mirror-test.kdl",
        "experiment \"mirror-test\"\nnetwork \"LAN\"\nnetwork \"mon\"\n\
         vm \"A\" { kernel \"k\"; nic \"LAN\"; }\n\
         vm \"B\" { kernel \"k\"; nic \"LAN\"; }\n\
         vm \"monitor\" { kernel \"k\"; nic \"mon\"; mirrors network=\"LAN\"; }\n",
    );
    let (lab_spec, diags) = megaplan::validate::check(&src);
    let lab_spec = lab_spec.unwrap_or_else(|| panic!("{diags:?}"));
    // The lab's taps stand for the test's (same VMs, same bridges).
    let tap_of = |vm: &str| match vm {
        "A" => "mptA",
        "B" => "mptB",
        "monitor" => "mptM",
        other => panic!("unexpected VM {other}"),
    };
    let wiring: Vec<(&str, &str, &str)> = lab_spec
        .mirrors
        .iter()
        .map(|m| {
            (
                tap_of(&m.source_vm),
                tap_of(&m.dest_vm),
                m.direction.as_str(),
            )
        })
        .collect();
    assert_eq!(wiring.len(), 2, "one mirror per member of LAN: {wiring:?}");
    in_netns(move |ns, rt| {
        let host = rt.block_on(async { megaplan::host::LocalHost::connect().unwrap() });
        let mut lab = rt.block_on(Lab::build(ns, &host.nl));
        for (s, d, dir) in &wiring {
            rt.block_on(host.add_mirror(s, d, dir)).unwrap();
        }
        let a_to_b = lab.send('A', MAC_B, MAC_A);
        assert!(lab.b.wait_tag(a_to_b, DEADLINE).is_some());
        let b_to_a = lab.send('B', MAC_A, MAC_B);
        assert!(lab.a.wait_tag(b_to_a, DEADLINE).is_some());
        let bcast = lab.send('A', BROADCAST, MAC_A);
        assert!(lab.b.wait_tag(bcast, DEADLINE).is_some());
        // Everything M was handed before P's barrier is in M's queue.
        let barrier = lab.send('P', BROADCAST, MAC_P);
        let deadline = Instant::now() + DEADLINE;
        let mut copies: std::collections::BTreeMap<u64, usize> = Default::default();
        loop {
            let f = lab.m.recv(deadline).expect("M never got the barrier");
            match tag_of(&f) {
                Some(t) if t == barrier => break,
                Some(t) => *copies.entry(t).or_default() += 1,
                None => {}
            }
        }
        for (what, t) in [("A->B", a_to_b), ("B->A", b_to_a), ("broadcast", bcast)] {
            assert_eq!(
                copies.get(&t).copied().unwrap_or(0),
                1,
                "{what} should reach the monitor once: {copies:?}\n{}",
                filters_on(ns, "mptA") + &filters_on(ns, "mptB")
            );
        }
        for (s, d, _) in &wiring {
            rt.block_on(host.remove_mirror(s, d)).unwrap();
        }
        teardown(ns, rt, &host.nl);
    });
}
