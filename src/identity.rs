//! Deterministic identities: every object megaplan creates gets its UUID, MAC
//! address and interface name from the experiment name and its address, so
//! `destroy` then `apply` reproduces them.
//!
//! Invariants:
//! - Pure functions of (experiment, address); no randomness, no clock.
//! - Interface names are at most 15 bytes (IFNAMSIZ - 1): a 3-byte kind prefix
//!   and 12 hex digits of a SHA-256.
//! - MACs are locally administered unicast (first octet 0x02).

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The namespace of megaplan's UUIDv5 identities.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x6d65_6761_706c_616e_8000_4b1d_0000_0001);

/// Prefix of a bridge name.
pub const BRIDGE_PREFIX: &str = "mpb";
/// Prefix of a tap name.
pub const TAP_PREFIX: &str = "mpt";

fn digest(experiment: &str, address: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(experiment.as_bytes());
    h.update([0]);
    h.update(address.as_bytes());
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default UUID of a VM: UUIDv5 of experiment and VM name.
pub fn vm_uuid(experiment: &str, vm: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{experiment}/{vm}").as_bytes())
}

/// `mpb` + 12 hex digits, for `network.NAME`.
pub fn bridge_name(experiment: &str, address: &str) -> String {
    format!(
        "{BRIDGE_PREFIX}{}",
        &hex(&digest(experiment, address))[..12]
    )
}

/// `mpt` + 12 hex digits, for `vm.NAME.nic[i]`.
pub fn tap_name(experiment: &str, address: &str) -> String {
    format!("{TAP_PREFIX}{}", &hex(&digest(experiment, address))[..12])
}

/// A locally administered unicast MAC for `vm.NAME.nic[i]`.
pub fn mac(experiment: &str, address: &str) -> String {
    let d = digest(experiment, address);
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        d[20], d[21], d[22], d[23], d[24]
    )
}

/// The ownership marker, the interface alias of every link we create.
pub fn marker(experiment: &str, address: &str) -> String {
    format!("megaplan:{experiment}:{address}")
}

/// The marker prefix shared by all objects of an experiment.
pub fn marker_prefix(experiment: &str) -> String {
    format!("megaplan:{experiment}:")
}

/// The address a marker names, if it belongs to `experiment`.
pub fn address_of_marker<'a>(experiment: &str, alias: &'a str) -> Option<&'a str> {
    alias.strip_prefix(&marker_prefix(experiment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_are_stable() {
        let t = tap_name("tap-mirror", "vm.A.nic[0]");
        assert_eq!(t.len(), 15);
        assert_eq!(t, tap_name("tap-mirror", "vm.A.nic[0]"));
        assert_ne!(t, tap_name("tap-mirror", "vm.B.nic[0]"));
        assert_ne!(t, tap_name("other", "vm.A.nic[0]"));
        assert!(bridge_name("x", "network.LAN").starts_with("mpb"));
    }

    #[test]
    fn macs_are_locally_administered_unicast() {
        let m = mac("e", "vm.A.nic[0]");
        let first = u8::from_str_radix(&m[..2], 16).unwrap();
        assert_eq!(first & 0x02, 0x02);
        assert_eq!(first & 0x01, 0);
        assert_eq!(m.len(), 17);
    }

    #[test]
    fn uuid_is_v5_and_reproducible() {
        let u = vm_uuid("e", "A");
        assert_eq!(u.get_version_num(), 5);
        assert_eq!(u, vm_uuid("e", "A"));
    }

    #[test]
    fn marker_round_trip() {
        let m = marker("tap-mirror", "vm.A.nic[0]");
        assert_eq!(m, "megaplan:tap-mirror:vm.A.nic[0]");
        assert_eq!(address_of_marker("tap-mirror", &m), Some("vm.A.nic[0]"));
        assert_eq!(address_of_marker("tap", &m), None);
    }
}
