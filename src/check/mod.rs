//! Checks: what must hold once a lab is up (`check NAME { ... }`), run by
//! `megaplan test` and `megaplan check` through the guest agent (ping, exec)
//! or on capture files (a pcap filter compiled by libpcap, run on each
//! frame). They never change the host and are not state: each run writes its
//! results to `.megaplan/EXP/checks.json` (docs/checks.md).

pub mod frame;
pub mod report;
pub mod run;
pub mod validate;
