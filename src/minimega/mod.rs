//! minimega: driving a minimega cluster.

pub mod client;
