//! megaplan: declarative VM network experiments in the style of minimega.
//!
//! The data flows through the modules in this order (see docs/ARCHITECTURE.md):
//! `syntax` (KDL, TOML) -> `model` -> `validate` -> `lab` (the resolved, desired
//! experiment) -> `graph` -> `plan` (pure) -> `apply` (the executor) -> `host`
//! (the one seam to the machine) -> `drivers` (netlink, tc, qemu-img, QEMU/QMP,
//! agent) -> `state`.

pub mod adopt;
pub mod agent;
pub mod apply;
pub mod capture;
pub mod cc;
pub mod check;
pub mod cli;
pub mod console;
pub mod diag;
pub mod digest;
pub mod drivers;
pub mod graph;
pub mod host;
pub mod identity;
pub mod image;
pub mod lab;
pub mod minimega;
pub mod model;
pub mod observed;
pub mod owners;
pub mod plan;
pub mod provider;
pub mod safefs;
pub mod saved;
pub mod schema;
pub mod serve;
pub mod show;
pub mod state;
pub mod syntax;
pub mod validate;
