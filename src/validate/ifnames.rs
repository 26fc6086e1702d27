//! Pass: interface names. Bridge and tap names are 48-bit hashes of the
//! experiment and the address: a collision is astronomically unlikely, but
//! checked (two objects would share one interface).

use std::collections::HashMap;

use super::Validator;
use crate::diag::{Code, Diag};
use crate::lab::{NetworkSpec, VmSpec};

impl Validator {
    pub(super) fn ifname_collisions(&mut self, networks: &[NetworkSpec], vms: &[VmSpec]) {
        let mut ifnames: HashMap<&str, &str> = HashMap::new();
        for n in networks {
            if let Some(prev) = ifnames.insert(&n.bridge, &n.address) {
                self.err(
                    Diag::error(
                        Code::IfnameCollision,
                        format!(
                            "{} and {prev} would share interface name {}",
                            n.address, n.bridge
                        ),
                    )
                    .at(self.whole_file)
                    .help("rename one of them"),
                );
            }
        }
        for v in vms {
            for n in &v.nics {
                if let Some(prev) = ifnames.insert(&n.tap, &n.address) {
                    self.err(
                        Diag::error(
                            Code::IfnameCollision,
                            format!(
                                "{} and {prev} would share interface name {}",
                                n.address, n.tap
                            ),
                        )
                        .at(self.whole_file)
                        .help("rename one of them"),
                    );
                }
            }
        }
    }
}
