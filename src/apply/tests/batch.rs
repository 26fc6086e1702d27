//! The walker with an engine that takes VM creates in batches
//! ([`Provider::batches`], as the minimega provider does): ready VM creates
//! go together once no other effect is ready or running, each VM is
//! recorded `Creating` before the batch and `Ready` after it, and a crash
//! in the middle of a batch converges.

use std::cell::RefCell;

use super::*;
use crate::provider::memory::MemoryGuest;
use crate::provider::{GuestWait, Op, OpOutcome, ProviderError, execute_in_order};

/// The memory provider, taking VM creates in batches and noting, for each
/// batch, its VMs and their status in the saved state when it began.
struct Batching<'a> {
    inner: &'a MemoryProvider,
    batches: RefCell<Vec<Vec<(String, Status)>>>,
}

impl Provider for Batching<'_> {
    type Guest = MemoryGuest;
    fn name(&self) -> &'static str {
        "memory, batching"
    }
    fn rules(&self) -> crate::provider::Rules {
        self.inner.rules()
    }
    fn assign_names(&self, lab: &mut Lab) -> Result<(), ProviderError> {
        self.inner.assign_names(lab)
    }
    async fn preflight(&self, needs: &crate::provider::Requirements) -> Result<(), ProviderError> {
        self.inner.preflight(needs).await
    }
    async fn refresh(
        &self,
        e: &str,
        state: &State,
        sd: &StateDir,
    ) -> Result<crate::observed::Observed, ProviderError> {
        self.inner.refresh(e, state, sd).await
    }
    async fn execute(&self, sd: &StateDir, op: &Op) -> Result<OpOutcome, ProviderError> {
        self.inner.execute(sd, op).await
    }
    fn sweep(&self, sd: &StateDir) -> Vec<std::path::PathBuf> {
        self.inner.sweep(sd)
    }
    async fn guest(&self, e: &str, vm: &str, w: GuestWait) -> Result<MemoryGuest, ProviderError> {
        self.inner.guest(e, vm, w).await
    }
    fn store_step_output(
        &self,
        sd: &StateDir,
        vm: &str,
        index: usize,
        out: &crate::provider::StepOutcome,
    ) -> Result<(), ProviderError> {
        self.inner.store_step_output(sd, vm, index, out)
    }
    fn serial_log(&self, sd: &StateDir, vm: &str) -> Option<std::path::PathBuf> {
        self.inner.serial_log(sd, vm)
    }
    fn console_socket(&self, e: &str, vm: &str) -> Option<std::path::PathBuf> {
        self.inner.console_socket(e, vm)
    }
    fn disk_file(&self, sd: &StateDir, file: &str) -> Result<std::path::PathBuf, ProviderError> {
        self.inner.disk_file(sd, file)
    }
    fn batches(&self, kind: Kind, phase: Phase) -> bool {
        kind == Kind::Vm && phase == Phase::Create
    }
    async fn execute_batch(
        &self,
        sd: &StateDir,
        tasks: &[Vec<Op>],
    ) -> Vec<Vec<Result<OpOutcome, ProviderError>>> {
        let state = sd.load().unwrap();
        let seen = tasks
            .iter()
            .map(|ops| {
                let a = ops.last().map(|o| o.address().to_string()).unwrap();
                let s = state.resources[&a].status;
                (a, s)
            })
            .collect();
        self.batches.borrow_mut().push(seen);
        let mut out = Vec::new();
        for ops in tasks {
            out.push(execute_in_order(self.inner, sd, ops).await);
        }
        out
    }
}

const FOUR: &str = r#"
experiment "fx"
network "LAN"
network "WAN"
vm "A" { kernel "KERNEL"; memory "64M"; nic "LAN"; cc { exec "A0"; } }
vm "B" { kernel "KERNEL"; memory "64M"; nic "LAN"; nic "WAN"; }
vm "C" { kernel "KERNEL"; memory "64M"; nic "WAN"; }
vm "D" { kernel "KERNEL"; memory "64M"; nic "LAN"; mirrors "A"; }
"#;

impl Rig {
    async fn run_batching(&self, text: &str, plan: &Plan, b: &Batching<'_>) -> Report {
        let lab = self.lab(text);
        let mut state = self.state();
        let ex = Executor {
            provider: b,
            lab: Some(&lab),
            sd: &self.sd,
            experiment: "fx".into(),
            // Below the number of VMs: a batch is one effect.
            parallelism: 2,
            progress: &|_| {},
        };
        ex.run(plan, &mut state).await
    }
}

#[tokio::test]
async fn ready_vm_creates_go_as_one_batch_recorded_creating_then_ready() {
    let mut rig = Rig::new();
    // Links take a few polls, so they finish at different times.
    rig.host.delay_polls = 2;
    rig.host.delays.insert("tap vm.C.nic[0]".into(), 6);
    let b = Batching {
        inner: &rig.host,
        batches: RefCell::new(Vec::new()),
    };
    let p = rig.plan(Some(FOUR), Mode::Apply, &Options::default()).await;
    let serial = rig.state().serial;
    let r = rig.run_batching(FOUR, &p, &b).await;
    assert!(r.ok(), "{r:?}");
    // Every save bumps the serial: two per other create (intent, outcome),
    // two for the batch (once before, once after all its VMs), not two per VM.
    let others = p
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp && c.kind != Kind::Vm)
        .count() as u64;
    assert_eq!(rig.state().serial - serial, 2 * others + 2);
    let batches = b.batches.into_inner();
    let names = |bt: &Vec<(String, Status)>| bt.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        batches.iter().map(names).collect::<Vec<_>>(),
        vec![vec!["vm.A", "vm.B", "vm.C", "vm.D"]],
        "every VM create in one batch, after every link"
    );
    assert!(
        batches[0].iter().all(|(_, s)| *s == Status::Creating),
        "recorded Creating before the batch: {batches:?}"
    );
    let state = rig.state();
    for vm in ["A", "B", "C", "D"] {
        let rec = &state.resources[&format!("vm.{vm}")];
        assert_eq!(rec.status, Status::Ready, "vm.{vm}");
        assert!(rec.pid.is_some(), "vm.{vm}");
    }
    let calls = rig.host.calls();
    for tap in ["vm.A.nic[0]", "vm.B.nic[1]", "vm.C.nic[0]", "vm.D.nic[0]"] {
        assert!(pos(&calls, &format!("tap {tap}")) < pos(&calls, "launch A"));
    }
    assert!(pos(&calls, "launch D") < pos(&calls, "step A:A0"));
    assert_eq!(rig.changes(FOUR).await, vec![], "a second plan is empty");
}

/// A crash in the middle of a batch (the third VM's launch never returns:
/// two VMs launched, one not, none recorded as launched) converges: the
/// next apply launches what is missing, replaces what was left running,
/// and its next plan is empty.
#[tokio::test]
async fn a_crash_in_the_middle_of_a_batch_converges() {
    let mut rig = Rig::new();
    rig.host.hang.insert("launch C".into(), Hang::BeforeEffect);
    let p = rig.plan(Some(FOUR), Mode::Apply, &Options::default()).await;
    {
        let b = Batching {
            inner: &rig.host,
            batches: RefCell::new(Vec::new()),
        };
        let run = std::pin::pin!(rig.run_batching(FOUR, &p, &b));
        let stop = std::pin::pin!(rig.host.hung(1));
        match futures::future::select(run, stop).await {
            futures::future::Either::Left((r, _)) => panic!("the run ended: {r:?}"),
            futures::future::Either::Right(_) => {}
        }
    }
    let state = rig.state();
    for vm in ["A", "B", "C", "D"] {
        assert_eq!(
            state.resources[&format!("vm.{vm}")].status,
            Status::Creating
        );
    }
    {
        let w = rig.host.world();
        assert!(w.vms.contains_key("A") && w.vms.contains_key("B"));
        assert!(!w.vms.contains_key("C") && !w.vms.contains_key("D"));
    }
    rig.host.hang.clear();
    let b = Batching {
        inner: &rig.host,
        batches: RefCell::new(Vec::new()),
    };
    let p = rig.plan(Some(FOUR), Mode::Apply, &Options::default()).await;
    let before = rig.host.calls().len();
    let r = rig.run_batching(FOUR, &p, &b).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls()[before..].to_vec();
    assert!(
        pos(&calls, "stop A") < pos(&calls, "launch A"),
        "{calls:#?}"
    );
    assert_eq!(calls.iter().filter(|c| *c == "launch C").count(), 1);
    assert_eq!(rig.host.world().vms.len(), 4);
    assert_eq!(rig.changes(FOUR).await, vec![]);
    assert_eq!(
        rig.host
            .calls()
            .iter()
            .filter(|c| *c == "step A:A0")
            .count(),
        1
    );
}

/// An engine without batches (the local one) sees no batch call: the
/// default of `batches` keeps every task on `execute`, under the cap.
#[tokio::test]
async fn without_batches_every_task_goes_through_execute() {
    let rig = Rig::new();
    let (_, r) = rig.apply(FOUR).await;
    assert!(r.ok(), "{r:?}");
    assert!(!rig.host.batches(Kind::Vm, Phase::Create));
    assert_eq!(rig.changes(FOUR).await, vec![]);
}
