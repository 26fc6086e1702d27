//! Guest agent protocol shared by host and guest (stub: being written).
