//! Pass: networks. Safe, unique names and a `host-address` a host can have.

use std::collections::HashMap;

use miette::SourceSpan;

use super::Validator;
use super::values::parse_cidr;
use crate::diag::{Code, Diag};
use crate::lab::NetworkSpec;
use crate::model::Document;

impl Validator {
    pub(super) fn networks(&mut self, doc: &Document) -> Vec<NetworkSpec> {
        let mut networks = Vec::new();
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for n in &doc.networks {
            self.check_name("network", &n.name);
            if let Some(prev) = seen.insert(n.name.value.clone(), n.name.span) {
                self.err(
                    Diag::error(
                        Code::DuplicateNetwork,
                        format!("network '{}' is defined twice", n.name.value),
                    )
                    .label(n.name.span, "defined again here")
                    .label(prev, "first defined here")
                    .help("give each network its own name"),
                );
                continue;
            }
            if let Some(h) = &n.host_address
                && let Err(e) = parse_cidr(&h.value)
            {
                self.err(
                    Diag::error(
                        Code::BadCidr,
                        format!("'{}' is not a valid host address", h.value),
                    )
                    .label(h.span, e)
                    .help("write an address with its prefix length, like \"10.0.0.254/24\""),
                );
            }
            let address = format!("network.{}", n.name.value);
            networks.push(NetworkSpec {
                name: n.name.value.clone(),
                // The engine's to choose (Provider::assign_names).
                bridge: None,
                address,
                host_address: n.host_address.as_ref().map(|h| h.value.clone()),
            });
        }
        networks
    }
}
