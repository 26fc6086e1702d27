//! The names an engine chooses for the lab's objects: a bridge per network,
//! a tap per nic. Validation leaves them unset; the CLI asks the provider
//! (`Provider::assign_names`) after validation and before planning.
//!
//! Invariants:
//! - [`local`] is pure and deterministic: the names are
//!   `identity::{bridge_name, tap_name}` of (experiment, address), so
//!   `destroy` then `apply` reproduces them and plans do not change.
//! - No two objects of a lab share an interface name: a collision of the
//!   48-bit hashes (astronomically unlikely, but checked) is refused and
//!   the lab is left unnamed.
//! - A capture's taps carry their nic's name, whatever the engine chose.

use std::collections::HashMap;

use miette::SourceSpan;

use crate::diag::{Code, Diag, Diagnostics, SourceFile};
use crate::identity;
use crate::lab::Lab;

/// Two objects of a lab would share one interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{first} and {second} would share interface name {name}")]
pub struct NameCollision {
    pub first: String,
    pub second: String,
    pub name: String,
}

/// The local engine's names (also the in-memory engine's): every bridge and
/// tap named from the experiment and its address. On a collision nothing
/// is named.
pub fn local(lab: &mut Lab) -> Result<(), NameCollision> {
    let bridges: Vec<String> = lab
        .networks
        .iter()
        .map(|n| identity::bridge_name(&lab.name, &n.address))
        .collect();
    let taps: Vec<Vec<String>> = lab
        .vms
        .iter()
        .map(|v| {
            v.nics
                .iter()
                .map(|n| identity::tap_name(&lab.name, &n.address))
                .collect()
        })
        .collect();
    let mut seen: HashMap<&str, &str> = HashMap::new();
    let named = lab
        .networks
        .iter()
        .map(|n| n.address.as_str())
        .zip(bridges.iter())
        .chain(
            lab.vms
                .iter()
                .flat_map(|v| v.nics.iter().map(|n| n.address.as_str()))
                .zip(taps.iter().flatten()),
        );
    for (address, name) in named {
        if let Some(prev) = seen.insert(name, address) {
            return Err(NameCollision {
                first: prev.to_string(),
                second: address.to_string(),
                name: name.clone(),
            });
        }
    }
    for (n, b) in lab.networks.iter_mut().zip(bridges) {
        n.bridge = Some(b);
    }
    for (v, names) in lab.vms.iter_mut().zip(taps) {
        for (n, t) in v.nics.iter_mut().zip(names) {
            n.tap = Some(t);
        }
    }
    fill_captures(lab);
    Ok(())
}

/// Validate a file and name it as the local engine does: what a pure
/// planning test, or a view that reaches no engine, starts from. A
/// collision is an error diagnostic (and no lab).
pub fn check_local(src: &SourceFile) -> (Option<Lab>, Diagnostics) {
    let (lab, mut diags) = crate::validate::check(src);
    let Some(mut lab) = lab else {
        return (None, diags);
    };
    match local(&mut lab) {
        Ok(()) => (Some(lab), diags),
        Err(e) => {
            diags.push(
                Diag::error(Code::IfnameCollision, e.to_string())
                    .at(SourceSpan::from(0..src.text.len().min(1)))
                    .help("rename one of them"),
            );
            (None, diags)
        }
    }
}

/// Give each capture's taps the names their nics have now.
pub fn fill_captures(lab: &mut Lab) {
    let tap_of: HashMap<(&str, usize), Option<String>> = lab
        .vms
        .iter()
        .flat_map(|v| {
            v.nics
                .iter()
                .map(move |n| ((v.name.as_str(), n.index), n.tap.clone()))
        })
        .collect();
    let mut fills = Vec::new();
    for (ci, c) in lab.captures.iter().enumerate() {
        for (ti, t) in c.taps.iter().enumerate() {
            if let Some(name) = tap_of.get(&(t.vm.as_str(), t.nic)) {
                fills.push((ci, ti, name.clone()));
            }
        }
    }
    for (ci, ti, name) in fills {
        lab.captures[ci].taps[ti].tap = name;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = r#"
experiment "names" { images "/img" }
network "LAN"
network "mon"
vm "A" { kernel "/img/k"; nic "LAN"; nic "mon" }
vm "B" { kernel "/img/k"; nic "LAN" }
capture "all" network="LAN"
"#;

    fn validated() -> Lab {
        let src = SourceFile::new("/lab/names.kdl", LAB);
        let (lab, d) = crate::validate::check(&src);
        assert!(!d.has_errors(), "{}", d.render_plain(&src));
        lab.unwrap()
    }

    #[test]
    fn validation_leaves_engine_names_unset() {
        let lab = validated();
        assert!(lab.networks.iter().all(|n| n.bridge.is_none()));
        assert!(
            lab.vms
                .iter()
                .flat_map(|v| &v.nics)
                .all(|n| n.tap.is_none())
        );
        assert!(lab.captures[0].taps.iter().all(|t| t.tap.is_none()));
        // megaplan's own identities are validation's.
        assert_eq!(
            lab.vms[0].nics[0].mac,
            identity::mac("names", "vm.A.nic[0]")
        );
    }

    #[test]
    fn local_names_are_the_identity_hashes() {
        let mut lab = validated();
        local(&mut lab).unwrap();
        assert_eq!(
            lab.networks[1].bridge.as_deref(),
            Some(identity::bridge_name("names", "network.mon").as_str())
        );
        assert_eq!(
            lab.vms[0].nics[1].tap.as_deref(),
            Some(identity::tap_name("names", "vm.A.nic[1]").as_str())
        );
        let want: Vec<Option<String>> = vec![
            lab.vms[0].nics[0].tap.clone(),
            lab.vms[1].nics[0].tap.clone(),
        ];
        let got: Vec<Option<String>> = lab.captures[0].taps.iter().map(|t| t.tap.clone()).collect();
        assert_eq!(got, want);
        // Deterministic: naming again changes nothing.
        let again = {
            let mut l = validated();
            local(&mut l).unwrap();
            l
        };
        assert_eq!(again, lab);
    }

    #[test]
    fn a_collision_is_refused_and_names_nothing() {
        let mut lab = validated();
        // Two networks at one address stand for two hashes that collide.
        lab.networks[1].address = lab.networks[0].address.clone();
        let e = local(&mut lab).unwrap_err();
        assert_eq!(e.first, "network.LAN");
        assert_eq!(e.second, "network.LAN");
        assert_eq!(e.name, identity::bridge_name("names", "network.LAN"));
        assert!(lab.networks.iter().all(|n| n.bridge.is_none()));
        assert!(
            lab.vms
                .iter()
                .flat_map(|v| &v.nics)
                .all(|n| n.tap.is_none())
        );
    }

    #[test]
    fn check_local_validates_then_names() {
        let src = SourceFile::new("/lab/names.kdl", LAB);
        let (lab, d) = check_local(&src);
        assert!(!d.has_errors(), "{}", d.render_plain(&src));
        let mut want = validated();
        local(&mut want).unwrap();
        assert_eq!(lab, Some(want));
        let bad = SourceFile::new(
            "/lab/bad.kdl",
            "experiment \"x\"\nvm \"A\" { nic \"nope\" }\n",
        );
        let (lab, d) = check_local(&bad);
        assert!(lab.is_none() && d.has_errors());
    }
}
