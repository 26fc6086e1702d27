//! Pass: the experiment node. Exactly one; its name, `images` folder (which
//! `$images` resolves against), accelerator and default boot timeout.

use std::path::Path;

use super::Validator;
use super::values::parse_duration_ms;
use crate::diag::{Code, Diag, did_you_mean};
use crate::lab::Accel;
use crate::model::{Document, Sp};

/// What the experiment node decides for the rest of the file.
pub(super) struct Experiment {
    /// None without an experiment node (an error: no lab is made).
    pub name: Option<String>,
    pub accel: Accel,
    pub default_boot_timeout: u64,
}

impl Validator {
    pub(super) fn experiment(&mut self, doc: &Document) -> Experiment {
        let exp = match doc.experiments.as_slice() {
            [] => {
                let first = doc
                    .networks
                    .iter()
                    .map(|n| n.span)
                    .chain(doc.disks.iter().map(|d| d.span))
                    .chain(doc.vms.iter().map(|v| v.span))
                    .min_by_key(|s| s.offset())
                    .unwrap_or(self.whole_file);
                self.err(
                Diag::error(Code::NoExperiment, "there is no experiment node")
                    .label(first, "the experiment node belongs before this")
                    .help("add `experiment \"NAME\"` (TOML: `[experiment]` with `name = \"NAME\"`): the name scopes everything megaplan creates"),
            );
                None
            }
            [first, rest @ ..] => {
                for other in rest {
                    self.err(
                        Diag::error(
                            Code::SecondExperiment,
                            "a file describes exactly one experiment",
                        )
                        .label(other.span, "second experiment node")
                        .label(first.span, "the first one is here")
                        .help("remove one of them, or split the file in two"),
                    );
                }
                Some(first)
            }
        };
        let exp_name = exp.map(|e| {
            self.check_name("experiment", &e.name);
            e.name.value.clone()
        });
        if let Some(images) = exp.and_then(|e| e.images.as_ref()) {
            let p = Path::new(&images.value);
            self.images = Some(if p.is_absolute() {
                p.to_path_buf()
            } else {
                self.base.join(p)
            });
        }
        let accel = match exp.and_then(|e| e.accel.as_ref()) {
            None => Accel::Auto,
            Some(a) => match a.value.as_str() {
                "auto" => Accel::Auto,
                "kvm" => Accel::Kvm,
                "tcg" => Accel::Tcg,
                other => {
                    self.err(
                        Diag::error(Code::BadAccel, format!("unknown accelerator '{other}'"))
                            .label(a.span, "expected \"auto\", \"kvm\" or \"tcg\"")
                            .help_opt(did_you_mean(other, ["auto", "kvm", "tcg"])),
                    );
                    Accel::Auto
                }
            },
        };
        let default_boot_timeout = exp
            .and_then(|e| e.boot_timeout.as_ref())
            .and_then(|t| self.boot_timeout(t))
            .unwrap_or(crate::lab::DEFAULT_BOOT_TIMEOUT_MS);
        Experiment {
            name: exp_name,
            accel,
            default_boot_timeout,
        }
    }

    /// A `boot-timeout` in ms; an error (and None) unless it is a duration > 0.
    pub(super) fn boot_timeout(&mut self, t: &Sp<String>) -> Option<u64> {
        let ms = parse_duration_ms(&t.value).filter(|&ms| ms > 0);
        if ms.is_none() {
            self.err(
                Diag::error(
                    Code::BadDuration,
                    format!("'{}' is not a duration", t.value),
                )
                .label(t.span, "not a duration")
                .help("write how long to wait for the guest's agent: \"60s\", \"5m\" (default \"120s\")"),
            );
        }
        ms
    }
}
