//! Planner tests: insta snapshots of text, JSON and markdown plans over many
//! scenarios, and a property test that applying a plan converges.

use proptest::prelude::*;

use super::render;
use super::*;
use crate::diag::SourceFile;
use crate::observed::{ObservedLink, ObservedMirror, ObservedVm};
use crate::state::Record;

const SEED: &str = r#"
experiment "tap-mirror" { images "images" }
network "LAN"
network "mon"
vm "A" {
    uuid "11111111-1111-1111-1111-111111111111"
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "256M"
    nic "LAN"
    cc {
        exec "ip addr add 10.0.0.1/24 dev eth0"
        exec "ip link set eth0 up"
    }
}
vm "B" {
    uuid "22222222-2222-2222-2222-222222222222"
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "256M"
    nic "LAN"
    cc {
        exec "ip addr add 10.0.0.2/24 dev eth0"
        exec "ip link set eth0 up"
    }
}
vm "monitor" {
    uuid "33333333-3333-3333-3333-333333333333"
    kernel "$images/miniccc.kernel"
    initrd "$images/miniccc.initrd"
    memory "256M"
    nic "mon"
    mirrors "A"
}
"#;

/// A lab validated and named as the local engine names it.
pub(crate) fn lab(text: &str) -> Lab {
    let src = SourceFile::new("/lab/exp.kdl", text);
    let (lab, diags) = crate::provider::names::check_local(&src);
    assert!(!diags.has_errors(), "{}", diags.render_plain(&src));
    lab.expect("valid")
}

fn empty_state(name: &str) -> State {
    let mut s = State::new(name);
    s.lineage = Uuid::from_u128(0x1234);
    s
}

/// Apply `text` from nothing: the real executor on the strict in-memory
/// provider (src/provider/memory.rs), then what its refresh sees. The
/// state's lineage and serial are pinned (the executor saves once per op,
/// and a new state draws a random lineage) so the snapshots show the plan,
/// not how many saves it took.
fn seeded(text: &str) -> (State, Observed) {
    use crate::provider::Provider;
    let l = lab(text);
    let dir = tempfile::tempdir().expect("a temp folder");
    let sd = crate::state::StateDir {
        root: dir.path().join("state"),
        experiment: l.name.clone(),
    };
    let mem = crate::provider::memory::MemoryProvider::new(&l.name);
    for vm in &l.vms {
        for f in vm.kernel.iter().chain(vm.initrd.iter()) {
            mem.add_file(f.clone());
        }
        for d in &vm.disks {
            if let crate::lab::DiskSource::Path(p) = &d.source {
                mem.add_file(p.clone());
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let (mut state, obs) = rt.block_on(async {
        let s = sd.load().expect("the state loads");
        let o = mem.refresh(&l.name, &s, &sd).await.expect("refresh");
        let p = plan(Some(&l), &s, Some(&o), Mode::Apply);
        let r = apply_in_memory(&mem, &sd, &l, &p).await;
        assert!(r.ok(), "{r:?}");
        let s = sd.load().expect("the state loads");
        let o = mem.refresh(&l.name, &s, &sd).await.expect("refresh");
        (s, o)
    });
    assert!(
        !plan(Some(&l), &state, Some(&obs), Mode::Apply).has_changes(),
        "the seed converged"
    );
    state.lineage = Uuid::from_u128(0x1234);
    state.serial = 1;
    (state, obs)
}

fn snap(name: &str, p: &Plan) {
    let text = render::text(p);
    let md = render::markdown(p);
    insta::assert_snapshot!(name, format!("{text}\n---- markdown ----\n{md}"));
    insta::assert_json_snapshot!(format!("{name}.json"), render::json(p));
    assert_streams_match(name, p);
}

/// The streamed renderings (what `plan` and `plan --json` write) are the
/// very bytes of the in-memory ones the snapshots pin.
fn assert_streams_match(name: &str, p: &Plan) {
    let mut json = Vec::new();
    render::write_json(p, &mut json).expect("write to a Vec");
    let tree = serde_json::to_string_pretty(&render::json(p)).expect("json") + "\n";
    assert_eq!(
        String::from_utf8(json).expect("utf-8"),
        tree,
        "{name}: streamed JSON"
    );
    let mut text = Vec::new();
    render::write_text(p, &mut text).expect("write to a Vec");
    assert_eq!(
        String::from_utf8(text).expect("utf-8"),
        render::text(p),
        "{name}: streamed text"
    );
}

fn replan(text: &str, state: &State, obs: &Observed) -> Plan {
    plan(Some(&lab(text)), state, Some(obs), Mode::Apply)
}

#[test]
fn s01_seed_from_nothing() {
    let l = lab(SEED);
    let p = plan(
        Some(&l),
        &empty_state(&l.name),
        Some(&Observed::default()),
        Mode::Apply,
    );
    assert_eq!(
        p.summary(),
        Summary {
            add: 9,
            change: 0,
            replace: 0,
            destroy: 0,
            steps: 4
        }
    );
    snap("s01_seed_from_nothing", &p);
}

#[test]
fn s02_seed_again_no_changes() {
    let (s, o) = seeded(SEED);
    let p = replan(SEED, &s, &o);
    assert!(!p.has_changes());
    snap("s02_seed_again_no_changes", &p);
}

#[test]
fn s03_memory_change_replaces_vm_and_reruns_its_steps() {
    let (s, o) = seeded(SEED);
    let text = SEED.replacen("memory \"256M\"", "memory \"512M\"", 1);
    let p = replan(&text, &s, &o);
    let vm = p.change("vm.A").unwrap();
    assert_eq!(vm.action, Action::Replace);
    assert_eq!(
        vm.reasons,
        [Reason::AttributeChanged {
            key: "memory".into(),
            values: Some(("256M".into(), "512M".into()))
        }]
    );
    assert_eq!(vm.reasons[0].to_string(), "memory changed: 256M -> 512M");
    assert_eq!(vm.replace_paths, ["memory"]);
    assert_eq!(p.change("vm.A.cc[0]").unwrap().action, Action::Replace);
    assert_eq!(
        p.change("mirror.A[0]->monitor[0]").unwrap().action,
        Action::Replace
    );
    assert_eq!(p.change("vm.B").unwrap().action, Action::NoOp);
    snap("s03_memory_change", &p);
}

#[test]
fn s04_mirror_added_is_created_without_touching_vms() {
    let (s, o) = seeded(SEED);
    let text = SEED.replace(
        "mirrors \"A\"",
        "mirrors \"A\"\n    mirrors \"B\" direction=\"ingress\"",
    );
    let p = replan(&text, &s, &o);
    assert_eq!(
        p.change("mirror.B[0]->monitor[0]").unwrap().action,
        Action::Create
    );
    assert_eq!(p.change("vm.monitor").unwrap().action, Action::NoOp);
    snap("s04_mirror_added", &p);
}

#[test]
fn s05_vm_removed() {
    let (s, o) = seeded(SEED);
    let start = SEED.find("vm \"B\"").unwrap();
    let end = SEED.find("vm \"monitor\"").unwrap();
    let text = format!("{}{}", &SEED[..start], &SEED[end..]);
    let p = replan(&text, &s, &o);
    assert_eq!(p.change("vm.B").unwrap().action, Action::Delete);
    assert_eq!(p.change("vm.B.nic[0]").unwrap().action, Action::Delete);
    assert_eq!(p.summary().destroy, 2);
    snap("s05_vm_removed", &p);
}

#[test]
fn s06_vm_renamed_is_destroy_and_create() {
    let (s, o) = seeded(SEED);
    let text = SEED.replace("vm \"B\"", "vm \"C\"");
    let p = replan(&text, &s, &o);
    assert_eq!(p.change("vm.B").unwrap().action, Action::Delete);
    assert_eq!(p.change("vm.C").unwrap().action, Action::Create);
    snap("s06_vm_renamed", &p);
}

#[test]
fn s07_qemu_dead() {
    let (s, mut o) = seeded(SEED);
    o.vms.get_mut("vm.monitor").unwrap().alive = false;
    let p = replan(SEED, &s, &o);
    let vm = p.change("vm.monitor").unwrap();
    assert_eq!(vm.action, Action::Replace);
    assert_eq!(vm.reasons, [Reason::VmNotRunning { status: None }]);
    assert_eq!(
        p.change("mirror.A[0]->monitor[0]").unwrap().action,
        Action::Replace
    );
    snap("s07_qemu_dead", &p);
}

#[test]
fn s08_tap_missing() {
    let (s, mut o) = seeded(SEED);
    o.links.remove("vm.A.nic[0]");
    let p = replan(SEED, &s, &o);
    assert_eq!(
        p.change("vm.A.nic[0]").unwrap().reasons,
        [Reason::MissingOnHost {
            what: reason::Missing::Tap
        }]
    );
    assert_eq!(p.change("vm.A").unwrap().action, Action::Replace);
    snap("s08_tap_missing", &p);
}

const RANGE: &str = r#"
experiment "farm" { images "/img" }
network "dmz"
vm "web[1-3]" {
    kernel "/img/k"
    memory "128M"
    nic "dmz"
    cc { exec "hostname" }
}
"#;

#[test]
fn s09_range_grown_from_3_to_5() {
    let (s, o) = seeded(RANGE);
    let p = replan(&RANGE.replace("web[1-3]", "web[1-5]"), &s, &o);
    assert_eq!(
        p.summary(),
        Summary {
            add: 4,
            change: 0,
            replace: 0,
            destroy: 0,
            steps: 2
        }
    );
    assert_eq!(p.change("vm.web3").unwrap().action, Action::NoOp);
    snap("s09_range_grown", &p);
}

#[test]
fn s10_cc_step_added() {
    let (s, o) = seeded(SEED);
    let text = SEED.replacen(
        "exec \"ip link set eth0 up\"",
        "exec \"ip link set eth0 up\"\n        exec \"ping -c 1 10.0.0.2\"",
        1,
    );
    let p = replan(&text, &s, &o);
    assert_eq!(p.change("vm.A.cc[2]").unwrap().action, Action::Create);
    assert_eq!(
        p.summary(),
        Summary {
            steps: 1,
            ..Summary::default()
        }
    );
    snap("s10_cc_step_added", &p);
}

#[test]
fn s11_cc_step_changed_runs_again_on_the_live_vm() {
    let (s, o) = seeded(SEED);
    let p = replan(&SEED.replace("10.0.0.2/24", "10.0.0.3/24"), &s, &o);
    let c = p.change("vm.B.cc[0]").unwrap();
    assert_eq!(c.action, Action::Replace);
    assert_eq!(c.reasons, [Reason::StepChanged]);
    assert_eq!(p.change("vm.B").unwrap().action, Action::NoOp);
    snap("s11_cc_step_changed", &p);
}

const BRO: &str = r#"
experiment "bro" { images "/img" }
network "LAN"
network "mon"
disk "bro" size="10G" format="qcow2" filesystem="ext4" keep=#true
vm "A" { kernel "/img/k"; nic "LAN" }
vm "monitor" {
    kernel "/img/k"
    snapshot #false
    disk "bro" mount="/bro"
    nic "mon"
    mirrors "A"
    cc { background "tcpdump -i eth0 -w /bro/capture.pcap" }
}
"#;

#[test]
fn s12_keep_disk_at_destroy() {
    let (s, o) = seeded(BRO);
    let p = plan(None, &s, Some(&o), Mode::Destroy);
    assert_eq!(p.change("disk.bro").unwrap().action, Action::NoOp);
    assert_eq!(p.change("vm.monitor").unwrap().action, Action::Delete);
    snap("s12_keep_disk_at_destroy", &p);
    let all = plan(None, &s, Some(&o), Mode::DestroyAll);
    assert_eq!(all.change("disk.bro").unwrap().action, Action::Delete);
    insta::assert_snapshot!("s12_destroy_all", render::text(&all));
}

#[test]
fn s13_orphan_present() {
    let (s, mut o) = seeded(SEED);
    o.links.insert(
        "vm.Z.nic[0]".into(),
        ObservedLink {
            name: "mpt0123456789ab".into(),
            kind: crate::observed::ObservedKind::Tun,
            up: true,
            controller: None,
            mac: None,
        },
    );
    o.vms.insert(
        "vm.Z".into(),
        ObservedVm {
            name: "Z".into(),
            pid: Some(4242),
            alive: true,
            status: Some("running".into()),
            cc: crate::observed::CcClient::NotAsked,
        },
    );
    let p = replan(SEED, &s, &o);
    assert_eq!(p.change("vm.Z").unwrap().action, Action::Delete);
    assert_eq!(p.change("vm.Z.nic[0]").unwrap().action, Action::Delete);
    snap("s13_orphan_present", &p);
}

#[test]
fn s14_tags_change_in_place() {
    let (s, o) = seeded(SEED);
    let text = SEED.replacen(
        "memory \"256M\"",
        "memory \"256M\"\n    tags { role \"client\" }",
        1,
    );
    let p = replan(&text, &s, &o);
    assert_eq!(p.change("vm.A").unwrap().action, Action::Update);
    assert_eq!(p.change("vm.A.cc[0]").unwrap().action, Action::NoOp);
    snap("s14_tags_change_in_place", &p);
}

#[test]
fn s15_mirror_missing() {
    let (s, mut o) = seeded(SEED);
    o.mirrors.clear();
    let p = replan(SEED, &s, &o);
    let m = p.change("mirror.A[0]->monitor[0]").unwrap();
    assert_eq!(
        (m.action, m.reasons.clone()),
        (
            Action::Replace,
            vec![Reason::MissingOnHost {
                what: reason::Missing::Mirror
            }]
        )
    );
    snap("s15_mirror_missing", &p);
}

#[test]
fn s16_host_address_changes_in_place() {
    let (s, o) = seeded(SEED);
    let p = replan(
        &SEED.replace(
            "network \"mon\"",
            "network \"mon\" { host-address \"10.9.0.254/24\"; }",
        ),
        &s,
        &o,
    );
    assert_eq!(p.change("network.mon").unwrap().action, Action::Update);
    snap("s16_host_address_in_place", &p);
}

#[test]
fn s17_interrupted_creation_is_replaced() {
    let (mut s, o) = seeded(SEED);
    s.resources.get_mut("vm.B").unwrap().status = crate::state::Status::Creating;
    let p = replan(SEED, &s, &o);
    assert_eq!(
        p.change("vm.B").unwrap().reasons,
        [Reason::CreationInterrupted]
    );
    snap("s17_interrupted_creation", &p);
}

#[test]
fn s18_failed_step_runs_again() {
    let (mut s, o) = seeded(SEED);
    s.resources.get_mut("vm.A.cc[1]").unwrap().exit = Some(2);
    let p = replan(SEED, &s, &o);
    assert_eq!(
        p.change("vm.A.cc[1]").unwrap().reasons,
        [Reason::StepExited { exit: 2 }]
    );
    snap("s18_failed_step", &p);
}

#[test]
fn s19_disk_size_change_replaces_disk_and_vm() {
    let (s, o) = seeded(BRO);
    let p = replan(&BRO.replace("10G", "20G"), &s, &o);
    assert_eq!(
        p.change("disk.bro").unwrap().reasons,
        [Reason::AttributeChanged {
            key: "size".into(),
            values: Some(("10G".into(), "20G".into()))
        }]
    );
    assert_eq!(p.change("vm.monitor").unwrap().action, Action::Replace);
    snap("s19_disk_size_change", &p);
}

#[test]
fn s20_destroy_after_partial_apply() {
    let (mut s, o) = seeded(SEED);
    s.resources.retain(|a, _| !a.starts_with("vm.B"));
    let p = plan(None, &s, Some(&o), Mode::Destroy);
    // vm.B's objects are orphans now: still destroyed.
    assert_eq!(p.change("vm.B").unwrap().action, Action::Delete);
    snap("s20_destroy_after_partial_apply", &p);
}

#[test]
fn deletes_come_in_reverse_dependency_order() {
    let (s, o) = seeded(SEED);
    let p = plan(None, &s, Some(&o), Mode::Destroy);
    let pos = |a: &str| p.changes.iter().position(|c| c.address == a).unwrap();
    assert!(pos("vm.A.cc[0]") < pos("vm.A"));
    assert!(pos("mirror.A[0]->monitor[0]") < pos("vm.A"));
    assert!(pos("vm.A") < pos("vm.A.nic[0]"));
    assert!(pos("vm.A.nic[0]") < pos("network.LAN"));
}

#[test]
fn plan_is_deterministic() {
    let (s, o) = seeded(SEED);
    let t = SEED.replace("256M", "1G");
    assert_eq!(
        render::text(&replan(&t, &s, &o)),
        render::text(&replan(&t, &s, &o))
    );
}

/// A random lab: `n` VMs over `nets` networks, mirrors and steps.
pub(crate) fn gen_lab(
    n: usize,
    nets: usize,
    mem: &[u16],
    mirror_every: usize,
    steps: &[u8],
) -> String {
    let mut t = String::from("experiment \"p\" { images \"/img\" }\n");
    for i in 0..nets {
        t += &format!("network \"n{i}\"\n");
    }
    t += "network \"mon\"\nvm \"mon\" { kernel \"/img/k\"; nic \"mon\" }\n";
    for i in 0..n {
        t += &format!(
            "vm \"v{i}\" {{\n  kernel \"/img/k\"\n  memory \"{}M\"\n  nic \"n{}\"\n",
            mem[i % mem.len()].max(1),
            i % nets
        );
        let k = steps[i % steps.len()];
        if k > 0 {
            t += "  cc {\n";
            for j in 0..k {
                t += &format!("    exec \"echo {i} {j}\"\n");
            }
            t += "  }\n";
        }
        t += "}\n";
    }
    if mirror_every > 0 {
        let mut m = String::new();
        for i in (0..n).step_by(mirror_every) {
            m += &format!("  mirrors \"v{i}\"\n");
        }
        t = t.replace("nic \"mon\" }", &format!("nic \"mon\"\n{m}}}"));
    }
    t
}

/// Carry `plan` out with the real executor on the strict in-memory provider.
async fn apply_in_memory(
    mem: &crate::provider::memory::MemoryProvider,
    sd: &crate::state::StateDir,
    lab: &Lab,
    plan: &Plan,
) -> crate::apply::Report {
    let mut state = sd.load().expect("the state loads");
    let ex = crate::apply::Executor {
        provider: mem,
        lab: Some(lab),
        sd,
        experiment: lab.name.clone(),
        parallelism: 3,
        progress: &|_| {},
    };
    ex.run(plan, &mut state).await
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Apply one random lab, maybe let a QEMU die, plan another and apply
    /// it (the real executor on the strict in-memory provider): the plan
    /// after that is empty.
    #[test]
    fn applying_a_plan_converges(
        n1 in 0usize..6, n2 in 0usize..6, nets1 in 1usize..3, nets2 in 1usize..3,
        mem1 in proptest::collection::vec(64u16..512, 1..4), mem2 in proptest::collection::vec(64u16..512, 1..4),
        m1 in 0usize..3, m2 in 0usize..3,
        st1 in proptest::collection::vec(0u8..3, 1..4), st2 in proptest::collection::vec(0u8..3, 1..4),
        kill in proptest::option::of(0usize..6),
    ) {
        use crate::provider::Provider;
        let dir = tempfile::tempdir().unwrap();
        let sd = crate::state::StateDir { root: dir.path().join("state"), experiment: "p".into() };
        let mem = crate::provider::memory::MemoryProvider::new("p");
        mem.add_file("/img/k");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let left = rt.block_on(async {
            let first = lab(&gen_lab(n1, nets1, &mem1, m1, &st1));
            let s = sd.load().unwrap();
            let o = mem.refresh("p", &s, &sd).await.unwrap();
            let p = plan(Some(&first), &s, Some(&o), Mode::Apply);
            let r = apply_in_memory(&mem, &sd, &first, &p).await;
            assert!(r.ok(), "{r:?}");
            if let Some(k) = kill
                && let Some(v) = mem.world_mut().vms.get_mut(&format!("v{k}"))
            {
                v.alive = false;
            }
            let second = lab(&gen_lab(n2, nets2, &mem2, m2, &st2));
            let s = sd.load().unwrap();
            let o = mem.refresh("p", &s, &sd).await.unwrap();
            let p = plan(Some(&second), &s, Some(&o), Mode::Apply);
            let r = apply_in_memory(&mem, &sd, &second, &p).await;
            assert!(r.ok(), "{r:?}");
            let s = sd.load().unwrap();
            let o = mem.refresh("p", &s, &sd).await.unwrap();
            let again = plan(Some(&second), &s, Some(&o), Mode::Apply);
            again.changes.iter().filter(|c| c.action != Action::NoOp).map(|c| (c.address.clone(), c.reasons.clone())).collect::<Vec<_>>()
        });
        prop_assert!(left.is_empty(), "not converged: {left:?}");
    }
}

/// Names with dots are names, not addresses: a disk `data.v1` is named
/// whole in the cascade reason (it was cut to `v1`).
#[test]
fn cascade_reasons_name_dotted_disks_whole() {
    let text = r#"
experiment "d" { images "/img" }
network "LAN"
disk "data.v1" size="1G"
vm "a.b" { kernel "/img/k"; nic "LAN"; disk "data.v1" }
"#;
    let (s, o) = seeded(text);
    let p = replan(&text.replace("1G", "2G"), &s, &o);
    let vm = p.change("vm.a.b").unwrap();
    assert_eq!(vm.action, Action::Replace);
    assert_eq!(
        vm.reasons,
        [Reason::DiskRecreated {
            disk: "data.v1".into()
        }]
    );
    assert_eq!(vm.reasons[0].to_string(), "its disk data.v1 is recreated");
    assert_eq!(vm.target, Some(Target::Vm { name: "a.b".into() }));
}

/// A plan is plain data: a saved plan (`plan --out`) reads back equal,
/// typed specs and reasons included.
#[test]
fn a_plan_round_trips_through_json() {
    let (s, mut o) = seeded(SEED);
    o.vms.clear();
    let p = replan(SEED, &s, &o);
    assert!(p.changes.iter().any(|c| c.spec.is_some()));
    assert!(p.changes.iter().any(|c| !c.reasons.is_empty()));
    let text = serde_json::to_string(&p).unwrap();
    let back: Plan = serde_json::from_str(&text).unwrap();
    assert_eq!(back, p);
}

/// Each change's attributes are derived from its typed spec, and the spec
/// says what the attributes say.
#[test]
fn attributes_are_derived_from_the_spec() {
    let l = lab(SEED);
    let p = plan(Some(&l), &empty_state("tap-mirror"), None, Mode::Apply);
    for c in &p.changes {
        let spec = c.spec.as_ref().expect("a create has a spec");
        assert_eq!(spec.kind(), c.kind, "{}", c.address);
        let after = c.after().unwrap();
        match spec {
            Spec::Tap(t) => {
                assert_eq!(after["name"], t.name.as_deref().unwrap());
                assert_eq!(after["mac"], t.mac.as_str());
                assert_eq!(after["bridge"], t.bridge.as_deref().unwrap());
            }
            Spec::Vm(v) => {
                assert_eq!(after["memory"], "256M");
                assert_eq!(after["uuid"], v.uuid.to_string());
                assert_eq!(after["nics"].as_array().unwrap().len(), v.nics.len());
            }
            Spec::Mirror(m) => {
                assert_eq!(after["source_tap"], m.source_tap.as_deref().unwrap());
                assert_eq!(after["direction"], "both");
            }
            Spec::Step(st) => {
                assert_eq!(after["hash"], st.hash.as_str());
                assert!(after.contains_key("exec"));
                assert!(!after.contains_key("allow_failure"));
            }
            Spec::Network(n) => assert_eq!(after["bridge"], n.bridge.as_deref().unwrap()),
            Spec::Disk(_) => unreachable!("the seed has no disk"),
            Spec::Capture(k) => {
                assert_eq!(after["file"], k.file.as_str());
                assert_eq!(
                    after["taps"].as_array().unwrap().len(),
                    k.taps.iter().filter(|t| t.tap.is_some()).count()
                );
            }
        }
    }
}

/// A VM whose node did not answer refresh (minimega): its own reason,
/// with the node and what the engine said, not "QEMU not running".
#[test]
fn a_vm_on_an_unreachable_node_is_replaced_with_its_own_reason() {
    let (s, mut o) = seeded(SEED);
    o.vms.remove("vm.B");
    o.unreachable.insert(
        "vm.B".into(),
        crate::observed::Unreachable {
            node: "mm2".into(),
            error: "no such client mm2".into(),
        },
    );
    let p = replan(SEED, &s, &o);
    let vm = p.change("vm.B").unwrap();
    assert_eq!(vm.action, Action::Replace);
    assert_eq!(
        vm.reasons[0],
        Reason::NodeUnreachable {
            node: "mm2".into(),
            error: "no such client mm2".into()
        }
    );
    assert_eq!(vm.reasons[0].code(), "node_unreachable");
    assert_eq!(
        vm.reasons[0].to_string(),
        "its node mm2 did not answer (no such client mm2)"
    );
    assert_eq!(p.change("vm.A").unwrap().action, Action::NoOp);
}

/// A running VM whose cc client the engine no longer lists, after its
/// steps ran on this boot: replaced with its own reason, its steps run
/// again. The same VM while it boots (no step run on this boot), a VM
/// without steps, and a client refresh did not ask about are left alone.
#[test]
fn a_vm_whose_cc_client_is_gone_after_its_steps_ran_is_replaced() {
    use crate::observed::CcClient;
    let (s, mut o) = seeded(SEED);
    for v in o.vms.values_mut() {
        v.cc = CcClient::Connected;
    }
    assert!(!replan(SEED, &s, &o).has_changes(), "connected: converged");
    o.vms.get_mut("vm.B").unwrap().cc = CcClient::Absent;
    o.vms.get_mut("vm.monitor").unwrap().cc = CcClient::Absent;
    let p = replan(SEED, &s, &o);
    let vm = p.change("vm.B").unwrap();
    assert_eq!(vm.action, Action::Replace);
    assert_eq!(vm.reasons, [Reason::CcClientLost]);
    assert_eq!(vm.reasons[0].code(), "cc_client_lost");
    for step in ["vm.B.cc[0]", "vm.B.cc[1]"] {
        let c = p.change(step).unwrap();
        assert_eq!(c.action, Action::Replace, "{step}");
        assert!(c.reasons.contains(&Reason::VmReplaced), "{step}: {c:?}");
    }
    // The monitor has no step: nothing needs its client.
    assert_eq!(p.change("vm.monitor").unwrap().action, Action::NoOp);
    assert_eq!(p.change("vm.A").unwrap().action, Action::NoOp);
    // B rebooted since its steps ran (its record's generation moved on, its
    // steps' did not): still booting, not lost.
    let mut booting = s.clone();
    let b = booting.resources.get_mut("vm.B").unwrap();
    b.generation = Some(b.generation.unwrap_or(0) + 1);
    let p = replan(SEED, &booting, &o);
    assert!(
        !p.change("vm.B")
            .unwrap()
            .reasons
            .contains(&Reason::CcClientLost),
        "{:?}",
        p.change("vm.B")
    );
    // Not asked (megaplan's own engine): nothing.
    o.vms.get_mut("vm.B").unwrap().cc = CcClient::NotAsked;
    assert!(!replan(SEED, &s, &o).has_changes());
}

/// An engine that names its own taps and bridges (minimega): the plan
/// holds none of those names, the mirror's ops name its nics, and a mirror
/// its refresh reports by address is found although its taps are the
/// engine's names.
#[test]
fn engine_chosen_names_are_known_after_apply() {
    use crate::provider::ops::{Context, NicRef, Op, Phase, for_change};
    let text = r#"
experiment "mm" { images "/img" }
network "LAN"
network "mon"
vm "A" { kernel "/img/k"; nic "LAN" }
vm "monitor" { kernel "/img/k"; nic "mon"; mirrors "A" }
"#;
    let src = SourceFile::new("/lab/mm.kdl", text);
    // minimega's `assign_names` names nothing: validation leaves every
    // bridge and tap unset.
    let l = crate::validate::check(&src).0.expect("valid");
    let opts = Options {
        rules: crate::minimega::provider::RULES,
        ..Default::default()
    };
    let s = empty_state("mm");
    let p = plan_with(Some(&l), &s, Some(&Observed::default()), Mode::Apply, &opts);
    for c in &p.changes {
        let a = c.after().expect("a create");
        for k in ["bridge", "name", "source_tap", "dest_tap"] {
            assert!(!a.contains_key(k), "{}: {k} planned", c.address);
        }
        if let Some(nics) = a.get("nics") {
            assert!(
                nics.as_array()
                    .unwrap()
                    .iter()
                    .all(|n| n.get("tap").is_none())
            );
        }
    }
    let m = p.change("mirror.A[0]->monitor[0]").unwrap();
    let cx = Context {
        experiment: "mm",
        lab: Some(&l),
        record: None,
    };
    let ops = for_change(m, Phase::Create, &cx).unwrap().ops;
    let nic = |vm: &str| {
        Some(NicRef {
            vm: vm.into(),
            nic: 0,
        })
    };
    assert!(
        matches!(&ops[..], [Op::AddMirror { source, dest, .. }] if *source == nic("A") && *dest == nic("monitor")),
        "{ops:?}"
    );

    // Applied: the records are the plan's, refresh sees the engine's names.
    let mut applied = s.clone();
    let mut obs = Observed::default();
    for c in &p.changes {
        let mut rec = Record::new(c.kind, c.after().unwrap());
        rec.deps = c.deps.clone();
        applied.resources.insert(c.address.clone(), rec);
        let link = |name: &str, kind: &str| ObservedLink {
            name: name.into(),
            kind: crate::observed::ObservedKind::from(kind.to_string()),
            up: true,
            controller: None,
            mac: None,
        };
        match c.kind {
            Kind::Network => drop(obs.links.insert(c.address.clone(), link("LAN", "vlan"))),
            Kind::Tap => drop(
                obs.links
                    .insert(c.address.clone(), link("mega_tap0", "tun")),
            ),
            Kind::Vm => drop(obs.vms.insert(
                c.address.clone(),
                ObservedVm {
                    name: String::new(),
                    pid: Some(7),
                    alive: true,
                    status: Some("running".into()),
                    cc: crate::observed::CcClient::NotAsked,
                },
            )),
            _ => {}
        }
    }
    let mirror = |address: Option<&str>| ObservedMirror {
        address: address.map(str::to_string),
        source_tap: "mega_tap0".into(),
        dest_tap: "mega_tap1".into(),
        ingress: true,
        egress: true,
    };
    obs.mirrors.insert(mirror(Some("mirror.A[0]->monitor[0]")));
    let again = plan_with(Some(&l), &applied, Some(&obs), Mode::Apply, &opts);
    assert!(!again.has_changes(), "{}", render::text(&again));
    // Another mirror's report is not this one's.
    obs.mirrors.clear();
    obs.mirrors.insert(mirror(Some("mirror.B[0]->monitor[0]")));
    let p = plan_with(Some(&l), &applied, Some(&obs), Mode::Apply, &opts);
    let m = p.change("mirror.A[0]->monitor[0]").unwrap();
    assert_eq!(m.action, Action::Replace);
    assert_eq!(
        m.reasons,
        [Reason::MissingOnHost {
            what: Missing::Mirror
        }]
    );
}
