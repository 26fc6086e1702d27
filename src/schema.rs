//! The JSON Schema of the experiment model (stub: being written).
