//! Checks: what must hold once a lab is up (`check NAME { ... }`), run by
//! `megaplan test` and `megaplan check` through the guest agent (ping, exec)
//! or on capture files (a pcap filter compiled by libpcap, run on each
//! frame). They never change the host and are not state: each run writes its
//! results to `.megaplan/EXP/checks.json` (docs/checks.md).

pub mod cli;
pub mod frame;
pub mod report;
pub mod run;
pub mod validate;

/// The plan's lines for checks: they run on `megaplan test`/`check`, never
/// change the host and are not state, so they are listed, not planned.
pub fn plan_lines(lab: &crate::lab::Lab) -> String {
    let mut s = String::new();
    for c in &lab.checks {
        s.push_str(&format!(
            "  ? check \"{}\" will run ({})\n",
            crate::diag::escape(&c.name),
            crate::diag::escape(&run::describe(c))
        ));
    }
    if !lab.checks.is_empty() {
        s.push_str(&format!(
            "{} on `megaplan test` or `megaplan check` (checks change nothing).\n",
            crate::diag::plural(lab.checks.len(), "check")
        ));
    }
    s
}
