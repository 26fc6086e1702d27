//! The resolved experiment (stub).
