//! The walker's invariants that need events ordered by the test: ops held
//! on the memory provider's gates, opened when the test has seen what it
//! waits for; a state folder that stops taking writes in the middle of a run.

use std::sync::Mutex;

use super::*;

/// Yield to the run until `cond` holds. A bound on polls, not on time: the
/// run advances on every poll, so a condition still false after this many
/// is one the walker will not reach (the test fails instead of hanging).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..20_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what} (the walker stopped short of it)");
}

fn saw(lines: &Mutex<Vec<String>>, line: &str) -> bool {
    lines.lock().unwrap().iter().any(|l| l.starts_with(line))
}

fn by_reason(r: &Report, why: Skip) -> BTreeSet<&str> {
    r.skipped
        .iter()
        .filter(|(_, w)| *w == why)
        .map(|(a, _)| a.as_str())
        .collect()
}

/// The save after a finished task fails (the state folder stops taking
/// writes while both taps are being created): nothing new starts, the tap
/// still running finishes and is recorded in memory, the final save (the
/// folder takes writes again) writes it, and every task not started is
/// reported skipped because the state was not saved.
#[tokio::test]
async fn after_a_failed_save_nothing_new_starts() {
    let rig = Rig::new();
    let p = rig.plan(Some(LAB), Mode::Apply, &Options::default()).await;
    let (a, b) = (
        rig.host.gate("tap vm.A.nic[0]"),
        rig.host.gate("tap vm.B.nic[0]"),
    );
    let lines = Mutex::new(Vec::new());
    let driver = async {
        until("both taps started", || a.reached() == 1 && b.reached() == 1).await;
        rig.block_saves();
        a.open();
        // Printed before the save that fails; the walker does not await
        // between the two, nor before it picks what to start next.
        until("tap A finished", || saw(&lines, "vm.A.nic[0]: created")).await;
        rig.unblock_saves();
        b.open();
    };
    let r = rig.run_driven(Some(LAB), &p, 2, &lines, driver).await;
    let mut calls = rig.host.calls();
    calls.sort();
    assert_eq!(
        calls,
        ["bridge network.LAN", "tap vm.A.nic[0]", "tap vm.B.nic[0]"],
        "a task started after the failed save"
    );
    assert!(
        matches!(&r.errors[..], [(a, ApplyError::State(_))] if a == "state"),
        "{r:?}"
    );
    assert_eq!(
        r.done.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            &"network.LAN".to_string(),
            &"vm.A.nic[0]".to_string(),
            &"vm.B.nic[0]".to_string()
        ])
    );
    let mirror = p
        .changes
        .iter()
        .find(|c| c.kind == Kind::Mirror)
        .unwrap()
        .address
        .as_str();
    assert_eq!(
        by_reason(&r, Skip::StateUnsaved),
        BTreeSet::from([
            "vm.A",
            "vm.B",
            "vm.A.cc[0]",
            "vm.A.cc[1]",
            "vm.B.cc[0]",
            mirror
        ])
    );
    assert_eq!(r.skipped.len(), 6, "{r:?}");
    // The tap that finished after the failure was saved by the final save.
    let state = rig.state();
    assert_eq!(state.resources["vm.B.nic[0]"].status, Status::Ready);
    assert!(!state.resources.contains_key("vm.A"), "{state:?}");
    // The next apply converges.
    assert!(rig.apply(LAB).await.1.ok());
    assert_eq!(rig.changes(LAB).await, vec![]);
}

/// Deletes have no save before their effect, so only the stop rule keeps a
/// destroy from going on past a failed save: after the mirror's delete (the
/// first effect) cannot be saved, no VM is stopped and no link deleted.
#[tokio::test]
async fn a_destroy_stops_at_a_failed_save() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    let mirror = rig
        .host
        .calls()
        .into_iter()
        .find(|c| c.starts_with("mirror "))
        .unwrap();
    let unmirror = rig.host.gate(&format!("un{mirror}"));
    let before = rig.host.calls().len();
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    let lines = Mutex::new(Vec::new());
    let driver = async {
        until("the mirror's delete started", || unmirror.reached() == 1).await;
        rig.block_saves();
        unmirror.open();
    };
    let r = rig.run_driven(None, &p, 1, &lines, driver).await;
    let calls = rig.host.calls()[before..].to_vec();
    assert_eq!(
        calls,
        [format!("un{mirror}")],
        "went on after a failed save"
    );
    assert!(
        matches!(r.errors.first(), Some((a, ApplyError::State(_))) if a == "state"),
        "{r:?}"
    );
    let unsaved = by_reason(&r, Skip::StateUnsaved);
    for a in ["vm.A", "vm.B", "vm.A.nic[0]", "vm.B.nic[0]", "network.LAN"] {
        assert!(unsaved.contains(a), "{a} not skipped: {r:?}");
    }
    // The final save failed as well (the folder still refuses writes): the
    // state on disk is the one before the run, and the next destroy
    // converges from it.
    assert_eq!(r.errors.len(), 2, "{r:?}");
    rig.unblock_saves();
    assert!(rig.state().resources.contains_key("vm.A"));
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    let r = rig.run(None, &p, 1).await;
    assert!(r.ok(), "{r:?}");
    assert!(rig.state().resources.is_empty());
    assert!(rig.host.is_empty());
}

/// Effects run up to `parallelism` at once; cc steps do not count. Two
/// steps hang (cap 2), and an effect that becomes ready only once both
/// run (vm.C waits for a disk held until then) still starts and finishes
/// while they hang. Counting steps in the cap fails this test.
#[tokio::test]
async fn cc_steps_do_not_count_in_the_cap() {
    let text = r#"
experiment "fx"
network "LAN"
disk "d" size="1M"
vm "A" { kernel "KERNEL"; memory "64M"; nic "LAN"; cc { exec "A0"; }; }
vm "B" { kernel "KERNEL"; memory "64M"; nic "LAN"; cc { exec "B0"; }; }
vm "C" { kernel "KERNEL"; memory "64M"; nic "LAN"; disk "d"; }
"#;
    let rig = Rig::new();
    let p = rig.plan(Some(text), Mode::Apply, &Options::default()).await;
    let (a0, b0) = (rig.host.gate("step A:A0"), rig.host.gate("step B:B0"));
    let disk = rig.host.gate("disk d");
    let lines = Mutex::new(Vec::new());
    let driver = async {
        until("both steps running", || {
            a0.reached() == 1 && b0.reached() == 1
        })
        .await;
        assert_eq!(disk.reached(), 1, "the disk is being created");
        assert!(
            rig.host.call("launch C").is_none(),
            "vm.C waits for its disk"
        );
        disk.open();
        until("vm.C created", || saw(&lines, "vm.C: created")).await;
        assert!(rig.host.world().vms.contains_key("C"));
        // The steps are still held: neither has finished.
        assert!(!a0.is_open() && !b0.is_open());
        assert!(!saw(&lines, "vm.A.cc[0]: ran") && !saw(&lines, "vm.B.cc[0]: ran"));
        a0.open();
        b0.open();
    };
    let r = rig.run_driven(Some(text), &p, 2, &lines, driver).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls();
    assert!(
        pos(&calls, "step A:A0") < pos(&calls, "launch C"),
        "{calls:#?}"
    );
    assert!(
        pos(&calls, "step B:B0") < pos(&calls, "launch C"),
        "{calls:#?}"
    );
    assert_eq!(rig.changes(text).await, vec![]);
}

/// The state is saved after every task, not only before each create: in a
/// destroy (deletes save nothing before their effect), when the VMs are
/// stopped the mirror deleted before them is already gone from the saved
/// state.
#[tokio::test]
async fn the_state_is_saved_after_every_task() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    let mirror = rig
        .state()
        .resources
        .keys()
        .find(|a| a.starts_with("mirror."))
        .cloned()
        .unwrap();
    let (a, b) = (rig.host.gate("stop A"), rig.host.gate("stop B"));
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    let lines = Mutex::new(Vec::new());
    let driver = async {
        until("a VM is being stopped", || a.reached() + b.reached() == 1).await;
        let saved = rig.state();
        assert!(!saved.resources.contains_key(&mirror), "{saved:?}");
        assert!(saved.resources.contains_key("vm.A") && saved.resources.contains_key("vm.B"));
        a.open();
        b.open();
    };
    let r = rig.run_driven(None, &p, 1, &lines, driver).await;
    assert!(r.ok(), "{r:?}");
    assert!(rig.state().resources.is_empty());
}

/// Independent failures are each reported with their typed error, and the
/// rest (not depending on either) finishes.
#[tokio::test]
async fn every_failure_is_reported() {
    let mut rig = Rig::new();
    rig.host.fail.insert("tap vm.A.nic[0]".into());
    rig.host.exits.insert("B0".into(), 5);
    let (_, r) = rig.apply(LAB).await;
    assert_eq!(r.errors.len(), 2, "{r:?}");
    assert!(
        r.errors.iter().any(|(a, e)| a == "vm.A.nic[0]"
            && matches!(e, ApplyError::Provider(ProviderError::Injected(_)))),
        "{r:?}"
    );
    assert!(
        r.errors
            .iter()
            .any(|(a, e)| a == "vm.B.cc[0]" && matches!(e, ApplyError::StepFailed { exit: 5, .. })),
        "{r:?}"
    );
    assert!(r.done.iter().any(|a| a == "vm.B"), "{r:?}");
    assert!(by_reason(&r, Skip::StateUnsaved).is_empty(), "{r:?}");
}

/// A failed save before an effect stops the walk as well: the independent
/// create beside it is not started (it is skipped, not failed one by one).
#[tokio::test]
async fn a_failed_intent_save_stops_the_walk_too() {
    let text = "experiment \"fx\"\nnetwork \"LAN\"\nnetwork \"WAN\"\n";
    let rig = Rig::new();
    let p = rig.plan(Some(text), Mode::Apply, &Options::default()).await;
    rig.block_saves();
    let r = rig.run(Some(text), &p, 4).await;
    rig.unblock_saves();
    assert!(rig.host.calls().is_empty(), "{:?}", rig.host.calls());
    assert!(
        matches!(&r.errors[..], [(n, ApplyError::State(_)), (s, ApplyError::State(_))]
            if n.starts_with("network.") && s == "state"),
        "{r:?}"
    );
    let unsaved = by_reason(&r, Skip::StateUnsaved);
    assert_eq!(unsaved.len(), 1, "{r:?}");
    assert!(!unsaved.contains(r.errors[0].0.as_str()), "{r:?}");
    assert!(rig.apply(text).await.1.ok());
    assert_eq!(rig.changes(text).await, vec![]);
}
