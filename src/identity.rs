//! Deterministic identities (stub).
