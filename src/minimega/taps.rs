//! A network's `host-address` on minimega: a host tap on the head node's
//! bridge, on the network's VLAN, with the address (`tap create ALIAS ip
//! ADDR NAME`, in the experiment's namespace), removed with `tap delete
//! NAME`. The tap is named as megaplan names the network's bridge on the
//! local engine (`mpb` + 12 hex digits of the experiment and address), so
//! it is found again from the state alone and never collides with another
//! experiment's.
//!
//! Invariants:
//! - Only a tap named as megaplan names one ([`tap_name`]) is created or
//!   deleted; a name from the state that is not one is refused.
//! - `tap` lists only the active namespace's host taps: refresh and delete
//!   never see another namespace's.

use std::collections::BTreeSet;

use super::client::{Command, Name, column};
use super::provider::{MinimegaError, MinimegaHost};
use crate::state::Attrs;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("'{0}' is not a host tap name megaplan makes")]
    BadName(String),
}

/// The computed attribute that records a network's host tap.
pub const HOST_TAP: &str = "host_tap";

/// The name of the host tap of network `network` (its validated name, as
/// the op's typed `name` carries it) in `experiment`: the name megaplan's
/// own engine gives that network's bridge (`identity::bridge_name` of the
/// network's identity `network.NAME`, built here from the name, never read
/// from an op's address), so one file names the same interface on both.
pub fn host_tap_of(experiment: &str, network: &str) -> String {
    crate::identity::bridge_name(experiment, &format!("network.{network}"))
}

/// The host tap of the network whose (local-engine) bridge is `bridge`.
pub fn tap_name(bridge: &str) -> Result<Name, MinimegaError> {
    let digits = bridge
        .strip_prefix(crate::identity::BRIDGE_PREFIX)
        .filter(|d| d.len() == 12 && d.bytes().all(|b| b.is_ascii_hexdigit()));
    if digits.is_none() {
        return Err(TapError::BadName(bridge.to_string()).into());
    }
    Ok(Name::new(bridge)?)
}

/// The namespace's host taps on the head node (`tap`).
pub(super) fn host_taps(h: &MinimegaHost) -> Result<BTreeSet<String>, MinimegaError> {
    let mut out = BTreeSet::new();
    for r in h.run_ok(Command::new("tap"))? {
        for row in r.rows() {
            if let Some(t) = column(&row, "tap") {
                out.insert(t.to_string());
            }
        }
    }
    Ok(out)
}

/// Give network `alias` (already a VLAN alias of the namespace) the host
/// address `addr` through a host tap: made again when it exists (its
/// address may have changed). Its name and node, as computed attributes.
pub(super) fn create(
    h: &MinimegaHost,
    alias: &str,
    bridge: &str,
    addr: &str,
) -> Result<Attrs, MinimegaError> {
    let tap = tap_name(bridge)?;
    if host_taps(h)?.contains(tap.as_str()) {
        h.run_ok(Command::new("tap").word("delete").name(&tap))?;
    }
    h.run_ok(
        Command::new("tap")
            .word("create")
            .arg(alias)?
            .word("ip")
            .arg(addr)?
            .name(&tap),
    )?;
    let mut computed = Attrs::new();
    computed.insert(HOST_TAP.into(), tap.as_str().into());
    computed.insert("node".into(), h.head()?.to_string().into());
    Ok(computed)
}

/// Remove host tap `recorded` (the network record's `host_tap`), if the
/// namespace has it and it is a name megaplan makes.
pub(super) fn delete(h: &MinimegaHost, recorded: &str) -> Result<(), MinimegaError> {
    let Ok(tap) = tap_name(recorded) else {
        // Not a name megaplan makes: nothing of ours to remove.
        return Ok(());
    };
    if host_taps(h)?.contains(tap.as_str()) {
        h.run_ok(Command::new("tap").word("delete").name(&tap))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_tap_is_named_as_the_local_bridge_of_the_network() {
        // From the network's name: the local engine's bridge of the same
        // network (names.rs hashes its address), and no other network's.
        assert_eq!(
            host_tap_of("x", "LAN"),
            crate::identity::bridge_name("x", "network.LAN")
        );
        assert_ne!(host_tap_of("x", "LAN"), host_tap_of("x", "WAN"));
        assert_ne!(host_tap_of("x", "LAN"), host_tap_of("y", "LAN"));
        assert!(tap_name(&host_tap_of("x", "LAN")).is_ok());
    }

    #[test]
    fn only_megaplans_names_are_host_taps() {
        let b = crate::identity::bridge_name("x", "network.LAN");
        assert_eq!(tap_name(&b).unwrap().as_str(), b);
        assert!(b.len() <= 15, "an interface name");
        for bad in [
            "mega_tap0",
            "mpb123",
            "mpbzzzzzzzzzzzz",
            "mpb0123456789ab;",
            "",
        ] {
            assert!(tap_name(bad).is_err(), "{bad}");
        }
    }
}
