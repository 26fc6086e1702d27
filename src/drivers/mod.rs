//! Drivers: one module per host mechanism (stub: being written).
pub mod netlink;
pub mod qemu;
pub mod qemu_img;
pub mod qmp;
pub mod tc;
