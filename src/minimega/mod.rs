//! minimega: megaplan's client for a minimega cluster's command socket
//! (`client`), and minimega scripts: `megaplan import minimega` (a script as an experiment)
//! and `megaplan export minimega` (an experiment as a script). See
//! docs/minimega.md for the mapping.
//!
//! Invariants:
//! - Pure: nothing here runs minimega or touches the machine; import reads
//!   no file the script names.
//! - The lexer is minicli's (`lex`): `export` quotes every word so that
//!   `lex` reads it back unchanged, and for the mapped subset
//!   `import(export(lab))` validates to the same lab.
//! - Import never panics; every problem is a diagnostic located in the script.

pub mod captures;
pub mod cc;
pub mod cli;
pub mod client;
pub mod config;
pub mod disks;
pub mod export;
pub mod guest;
pub mod import;
pub mod lex;
pub mod placement;
pub mod provider;
pub mod recorded;
pub mod taps;

pub use export::{export, export_with};
pub use import::{Imported, Options, import};

/// The VM tag export writes as megaplan's ownership marker
/// (`vm config tags megaplan EXPERIMENT:ADDRESS`); import drops it again.
pub const MARKER_TAG: &str = "megaplan";

/// Where miniccc puts a file sent with `cc send NAME` (its default `-path`).
pub const MINICCC_FILES: &str = "/tmp/miniccc/files";

/// The host folder an imported `cc recv` writes to (minimega keeps received
/// files under its own `miniccc_responses`).
pub const RECV_DIR: &str = "miniccc_responses";

#[cfg(test)]
mod tests;
