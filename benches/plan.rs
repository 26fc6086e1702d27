//! "Plan at scale": parse, validate and plan a generated experiment of 1,000
//! and 10,000 VMs (two nics each, a monitor mirroring a VM every 10 VMs, three
//! cc exec steps each) against an empty state and an empty host.
//!
//! `cargo bench --bench plan`; docs/PERFORMANCE.md records the figures.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use megaplan::diag::SourceFile;
use megaplan::observed::Observed;
use megaplan::plan::{Mode, plan};
use megaplan::state::State;

#[allow(dead_code)]
#[path = "../examples/gen_lab.rs"]
mod gen_lab;

fn source(n: usize) -> SourceFile {
    // A path in a folder that does not exist: the kernel/initrd warnings are the same every run.
    SourceFile::new(format!("/nonexistent/scale{n}.kdl"), gen_lab::generate(n))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan_at_scale");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for n in [1_000usize, 10_000] {
        let src = source(n);
        g.bench_with_input(BenchmarkId::new("parse", n), &src, |b, src| {
            b.iter(|| black_box(megaplan::syntax::parse(src)))
        });
        g.bench_with_input(BenchmarkId::new("parse_validate", n), &src, |b, src| {
            b.iter(|| black_box(megaplan::validate::check(src)))
        });
        let (lab, diags) = megaplan::validate::check(&src);
        let lab = lab.unwrap_or_else(|| panic!("generated lab is invalid: {diags:?}"));
        let state = State::new(&lab.name);
        let observed = Observed::default();
        g.bench_with_input(BenchmarkId::new("plan", n), &lab, |b, lab| {
            b.iter(|| black_box(plan(Some(lab), &state, Some(&observed), Mode::Apply)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
