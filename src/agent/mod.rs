//! The cc channel: the wire protocol shared by host and guest, the guest
//! agent (`megaplan-agent`), and the host-side client. See docs/protocol.md.
//!
//! The host connects to QEMU's chardev unix socket for the VM's
//! virtio-serial port named [`protocol::PORT_NAME`]; the agent inside the
//! guest opens that port, says [`protocol::Hello`], and serves requests.

pub mod client;
pub mod guest;
pub mod protocol;
mod steps;

pub use client::{AgentClient, AgentError, Transfer};
pub use protocol::{Command, ExecResult, Exit, Hello, Interface, Message, PROTOCOL_VERSION};
