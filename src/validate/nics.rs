//! Pass (per VM): nics. A known network, a unicast MAC unique in the
//! experiment (given or derived), a nic model megaplan supports and, when the
//! image says which it drives, one the guest can drive.

use std::collections::HashMap;
use std::path::Path;

use miette::SourceSpan;

use super::names::Known;
use super::values::parse_mac;
use super::vms::VmCheck;
use super::{NIC_MODEL_NAMES, Validator};
use crate::diag::{Code, Diag, did_you_mean};
use crate::identity;
use crate::lab::NicSpec;

impl Validator {
    pub(super) fn nics(
        &mut self,
        ename: &str,
        vc: &mut VmCheck,
        initrd: Option<&Path>,
        known: &Known,
        macs: &mut HashMap<String, SourceSpan>,
    ) -> Vec<NicSpec> {
        let vm = vc.vm;
        let mut nics = Vec::new();
        for (i, nic) in vm.nics.iter().enumerate() {
            if !known.network_set.contains(nic.network.value.as_str()) {
                self.once(
                    vc,
                    Diag::error(
                        Code::UnknownNetwork,
                        format!("there is no network '{}'", nic.network.value),
                    )
                    .label(nic.network.span, "unknown network")
                    .help(
                        did_you_mean(&nic.network.value, known.networks.iter().copied())
                            .unwrap_or_else(|| {
                                format!("define it with `network \"{}\"`", nic.network.value)
                            }),
                    ),
                    "nic",
                );
            }
            let naddr = format!("{}.nic[{i}]", vc.address);
            let mac = match &nic.mac {
                None => identity::mac(ename, &naddr),
                Some(m) => match parse_mac(&m.value) {
                    Ok(mac) => mac,
                    Err(e) => {
                        self.once(vc, Diag::error(Code::BadMac, format!("'{}' is not a valid MAC address", m.value))
                                .label(m.span, e)
                                .help("leave mac out and megaplan derives a stable, locally administered one"), "mac");
                        identity::mac(ename, &naddr)
                    }
                },
            };
            let mac_span = nic.mac.as_ref().map_or(nic.span, |m| m.span);
            if let Some(prev) = macs.insert(mac.clone(), mac_span) {
                self.err(
                    Diag::error(Code::DuplicateMac, format!("MAC {mac} is used by two nics"))
                        .label(mac_span, format!("{naddr} uses it again"))
                        .label(prev, "first used here")
                        .help("each nic needs its own MAC; leave mac out to get a derived one"),
                );
            }
            let driver = nic
                .driver
                .as_ref()
                .map_or_else(|| "virtio-net-pci".to_string(), |d| d.value.clone());
            if let Some(d) = &nic.driver
                && !NIC_MODEL_NAMES.contains(&d.value.as_str())
            {
                self.once(vc,
                        Diag::error(
                            Code::BadDriver,
                            format!("'{}' is not a nic model megaplan supports", d.value),
                        )
                        .label(d.span, format!("expected one of: {}", NIC_MODEL_NAMES.join(", ")))
                        .help(
                            did_you_mean(&d.value, NIC_MODEL_NAMES.iter().copied()).unwrap_or_else(|| {
                                "`megaplan image build` includes guest drivers for these models only".to_string()
                            }),
                        ),
                        "driver",
                    );
            }
            // An image megaplan built says which nic models its guest can
            // drive: a nic it cannot gets no interface, and every later
            // nic's ethN would silently be another one.
            if let Some(d) = &nic.driver
                && NIC_MODEL_NAMES.contains(&d.value.as_str())
                && let Some(initrd) = initrd
                && let Some(models) = self
                    .nic_manifest(initrd)
                    .filter(|m| !m.contains(&d.value))
                    .map(|m| {
                        if m.is_empty() {
                            "none".to_string()
                        } else {
                            m.join(", ")
                        }
                    })
            {
                self.once(vc,
                        Diag::warning(
                            Code::DriverNotInImage,
                            format!(
                                "the guest image has no driver for nic model '{}': this nic gets no interface in the guest, and the nics after it move down one ethN",
                                d.value
                            ),
                        )
                        .label(d.span, "no guest driver in the image")
                        .help(format!(
                            "the image's kernel drives: {} (see {}); use one of those, or build the image from a kernel with this driver",
                            models,
                            crate::diag::escape(
                                &crate::image::nic_manifest(initrd)
                                    .display()
                                    .to_string()
                            )
                        )),
                        "nicdriver",
                    );
            }
            nics.push(NicSpec {
                index: i,
                // The engine's to choose (Provider::assign_names).
                tap: None,
                address: naddr,
                network: nic.network.value.clone(),
                mac,
                driver,
            });
        }
        nics
    }
}
