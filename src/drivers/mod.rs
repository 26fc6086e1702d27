//! Drivers: one module per host mechanism (stub: being written).
