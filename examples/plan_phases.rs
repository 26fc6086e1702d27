//! Where `megaplan plan FILE` spends time and memory, phase by phase:
//! read -> parse -> validate -> graph::resources -> plan -> render (text and
//! JSON, into a sink), in the order and with the ownership the CLI has. Heap figures come from a counting allocator around
//! mimalloc (the CLI's allocator): the peak of live heap bytes during each
//! phase, and what is still live after it.
//!
//! `cargo run --release --example plan_phases -- FILE`
//! (`examples/gen_lab.rs` makes FILE; docs/PERFORMANCE.md records figures).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use megaplan::diag::SourceFile;
use megaplan::observed::Observed;
use megaplan::plan::{Mode, render};
use megaplan::state::State;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to mimalloc unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { mimalloc::MiMalloc.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Relaxed) + new - l.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MB: f64 = 1e6;

/// Runs `f` as one phase and prints its wall time, its peak live heap and
/// the heap still live after it.
fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
    let t = Instant::now();
    let out = f();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{name:<24} {secs:>8.3} s {:>10.1} MB {:>10.1} MB",
        PEAK.load(Relaxed) as f64 / MB,
        LIVE.load(Relaxed) as f64 / MB
    );
    out
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: plan_phases FILE");
        std::process::exit(2);
    };
    println!(
        "{:<24} {:>10} {:>13} {:>13}",
        "phase", "wall", "peak heap", "live after"
    );
    let src = phase("read", || {
        SourceFile::read(path.as_ref()).expect("readable")
    });
    let (doc, diags) = phase("parse", || megaplan::syntax::parse(&src));
    assert!(!diags.has_errors(), "{diags:?}");
    let (lab, diags) = phase("validate", || megaplan::validate::validate(&doc, &src));
    let lab = lab.unwrap_or_else(|| panic!("invalid: {diags:?}"));
    phase("drop document", || drop(doc));
    let resources = phase("graph::resources", || megaplan::graph::resources(&lab));
    phase("drop resources", || drop(resources));
    let state = State::new(&lab.name);
    let observed = Observed::default();
    // As `megaplan plan` does: the lab goes into the planner, which drops it
    // once its resources are listed.
    let opts = megaplan::plan::Options::default();
    let plan = phase("plan::plan_owned", || {
        megaplan::plan::plan_owned(lab, &state, Some(&observed), Mode::Apply, &opts)
    });
    phase("render::write_text", || {
        render::write_text(&plan, &mut std::io::sink()).expect("sink")
    });
    phase("render::write_json", || {
        render::write_json(&plan, &mut std::io::sink()).expect("sink")
    });
    println!(
        "{} changes; peak RSS {} MB",
        plan.changes.len(),
        peak_rss_kb() / 1000
    );
}

/// VmHWM of this process, in kB.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
