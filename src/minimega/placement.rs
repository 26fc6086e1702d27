//! The `provider` of an experiment and where its VMs run on a minimega
//! cluster: checked by `validate` (one call, [`check`]), so a bad setting or
//! a mirror that placement makes impossible is an error before any plan.
//!
//! Invariants:
//! - Every `host` and the namespace are minimega [`Name`]s (minimega
//!   re-quotes them itself when it forwards commands to other nodes).
//! - A mirror copies frames between two taps of one node's bridge
//!   (minimega: "VMs must be colocated"): the VMs joined by mirrors form a
//!   group that must share one node. A group with one placed VM puts the
//!   others there; a group with none is colocated by minimega's scheduler
//!   with its first VM (`vm config colocate`); two different hosts in one
//!   group are an error naming both VMs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use miette::SourceSpan;

use super::client::Name;
use crate::diag::{Code, Diag, Diagnostics, did_you_mean};
use crate::lab::{MirrorSpec, ProviderSpec, VmSpec};
use crate::model::{ProviderNode, Vm};

/// minimega's own default `-base`.
pub const DEFAULT_BASE: &str = "/tmp/minimega";

/// The provider the file asks for, after checking it, every `host`, and
/// the placement of mirrored VMs (filling `host`/`colocate` of `vms`).
pub fn check(
    provider: Option<&ProviderNode>,
    experiment: &str,
    model_vms: &[Vm],
    vms: &mut [VmSpec],
    mirrors: &[MirrorSpec],
    d: &mut Diagnostics,
) -> ProviderSpec {
    let spec = provider_spec(provider, experiment, d);
    let span_of_host = |vm: &str, host: &str| -> SourceSpan {
        let exact = model_vms.iter().find(|m| m.name.value == vm);
        exact
            .or_else(|| {
                model_vms
                    .iter()
                    .find(|m| m.host.as_ref().is_some_and(|h| h.value == host))
            })
            .and_then(|m| m.host.as_ref().map(|h| h.span))
            .unwrap_or_else(|| SourceSpan::from(0..0))
    };
    for m in model_vms {
        if let Some(h) = &m.host
            && let Err(e) = Name::new(&h.value)
        {
            d.push(
                Diag::error(
                    Code::BadHost,
                    format!("'{}' is not a minimega node name", h.value),
                )
                .label(h.span, reason(&e))
                .help("write the node's hostname as minimega's `mesh status` lists it"),
            );
        }
    }
    place(vms, mirrors, d, span_of_host);
    spec
}

fn reason(e: &super::client::ClientError) -> String {
    match e {
        super::client::ClientError::BadValue { reason, .. } => (*reason).to_string(),
        e => e.to_string(),
    }
}

fn provider_spec(p: Option<&ProviderNode>, experiment: &str, d: &mut Diagnostics) -> ProviderSpec {
    let Some(p) = p else {
        return ProviderSpec::Local;
    };
    match p.kind.value.as_str() {
        "local" => {
            for (key, v) in [("base", &p.base), ("namespace", &p.namespace)] {
                if let Some(v) = v {
                    d.push(
                        Diag::error(
                            Code::ProviderSetting,
                            format!("`{key}` is a setting of the minimega provider"),
                        )
                        .label(v.span, "not used by the local provider")
                        .help("remove it, or write provider \"minimega\""),
                    );
                }
            }
            ProviderSpec::Local
        }
        "minimega" => {
            let base = match &p.base {
                None => PathBuf::from(DEFAULT_BASE),
                Some(b) => {
                    let path = PathBuf::from(&b.value);
                    let sock = path.join(super::client::SOCKET);
                    if !path.is_absolute() {
                        d.push(
                            Diag::error(
                                Code::ProviderBase,
                                format!("minimega's base '{}' is not an absolute path", b.value),
                            )
                            .label(b.span, "relative")
                            .help("write the folder minimega runs with (`minimega -base DIR`), e.g. \"/tmp/minimega\""),
                        );
                    } else if sock.as_os_str().len() >= 108 {
                        d.push(
                            Diag::error(
                                Code::ProviderBase,
                                "minimega's base is too long for its socket path",
                            )
                            .label(b.span, "BASE/minimega must fit in 107 bytes")
                            .help("run minimega with a shorter -base"),
                        );
                    }
                    path
                }
            };
            let namespace = match &p.namespace {
                Some(n) => {
                    if let Err(e) = Name::new(&n.value) {
                        d.push(
                            Diag::error(
                                Code::ProviderNamespace,
                                format!("'{}' is not a minimega namespace", n.value),
                            )
                            .label(n.span, reason(&e)),
                        );
                    }
                    n.value.clone()
                }
                None => {
                    if !experiment.is_empty()
                        && let Err(e) = Name::new(experiment)
                    {
                        d.push(
                            Diag::error(
                                Code::ProviderNamespace,
                                format!(
                                    "the experiment name '{experiment}' cannot be a minimega namespace: {}",
                                    reason(&e)
                                ),
                            )
                            .label(p.kind.span, "the namespace defaults to the experiment name")
                            .help("set one: namespace \"NAME\""),
                        );
                    }
                    experiment.to_string()
                }
            };
            ProviderSpec::Minimega { base, namespace }
        }
        other => {
            d.push(
                Diag::error(Code::BadProvider, format!("unknown provider '{other}'"))
                    .label(p.kind.span, "expected \"local\" or \"minimega\"")
                    .help_opt(did_you_mean(other, ["local", "minimega"])),
            );
            ProviderSpec::Local
        }
    }
}

/// Groups of VMs joined by mirrors share one node.
fn place(
    vms: &mut [VmSpec],
    mirrors: &[MirrorSpec],
    d: &mut Diagnostics,
    span_of_host: impl Fn(&str, &str) -> SourceSpan,
) {
    if mirrors.is_empty() {
        return;
    }
    let index: BTreeMap<&str, usize> = vms
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    // Union-find over VM indices, the root being the group's first VM.
    let mut parent: Vec<usize> = (0..vms.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    // Which VMs a mirror names (by index: one pass over the mirrors, not
    // one per VM, which was quadratic at 100k VMs).
    let mut mirrored = vec![false; vms.len()];
    for m in mirrors {
        for name in [&m.source_vm, &m.dest_vm] {
            if let Some(&i) = index.get(name.as_str()) {
                mirrored[i] = true;
            }
        }
        let (Some(&a), Some(&b)) = (
            index.get(m.source_vm.as_str()),
            index.get(m.dest_vm.as_str()),
        ) else {
            continue;
        };
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        let (lo, hi) = (ra.min(rb), ra.max(rb));
        parent[hi] = lo;
    }
    // Each group's host: the first placed VM's, checked against the others.
    let mut group_host: BTreeMap<usize, (String, String)> = BTreeMap::new();
    let mut reported = false;
    for (i, v) in vms.iter().enumerate() {
        let r = root(&mut parent, i);
        let Some(h) = v.host.clone() else {
            continue;
        };
        match group_host.get(&r) {
            None => {
                group_host.insert(r, (h, v.name.clone()));
            }
            Some((gh, first)) if *gh != h && !reported => {
                // Name the mirror that joins them when there is one.
                let (vm, other) = (v.name.clone(), first.clone());
                let direct = mirrors.iter().find(|m| {
                    (m.source_vm == vm && m.dest_vm == other)
                        || (m.source_vm == other && m.dest_vm == vm)
                });
                let via = direct.map_or_else(
                    || "mirrors join them (through other VMs)".to_string(),
                    |m| format!("{} joins them", m.address),
                );
                d.push(
                    Diag::error(
                        Code::MirrorPlacement,
                        format!(
                            "VM '{other}' (host {gh}) and VM '{vm}' (host {h}) must run on one node: {via}"
                        ),
                    )
                    .label(span_of_host(&other, gh), format!("'{other}' runs on {gh}"))
                    .label(span_of_host(&vm, &h), format!("'{vm}' runs on {h}"))
                    .help("minimega mirrors a tap only to a tap of the same node's bridge: put both VMs on one host, or drop `host` from one"),
                );
                reported = true;
            }
            Some(_) => {}
        }
    }
    for i in 0..vms.len() {
        let r = root(&mut parent, i);
        if !mirrored[i] {
            continue;
        }
        match group_host.get(&r) {
            Some((h, _)) if vms[i].host.is_none() => vms[i].host = Some(h.clone()),
            None if r != i => vms[i].colocate = Some(vms[r].name.clone()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::diag::{Code, SourceFile};

    fn check(text: &str) -> (Option<crate::lab::Lab>, String) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.kdl");
        std::fs::write(&p, text).unwrap();
        let src = SourceFile::read(&p).unwrap();
        let (lab, d) = crate::validate::check(&src);
        let text = d
            .items
            .iter()
            .filter(|d| d.code != Code::NothingToBoot && !d.code.as_str().contains("missing"))
            .map(|d| format!("{}: {}", d.code.as_str(), d.message))
            .collect::<Vec<_>>()
            .join("\n");
        (lab, text)
    }

    const SEED: &str = r#"
experiment "tap-mirror" {
    provider "minimega" {
        base "/tmp/mm-test"
    }
}
network "LAN"
network "mon"
vm "A" { host "mm1"; kernel "/k"; nic "LAN" }
vm "B" { host "mm2"; kernel "/k"; nic "LAN" }
vm "monitor" { kernel "/k"; nic "mon"; mirrors "A" }
"#;

    #[test]
    fn the_monitor_goes_to_its_sources_host() {
        let (lab, d) = check(SEED);
        let lab = lab.unwrap_or_else(|| panic!("{d}"));
        assert_eq!(
            lab.provider,
            crate::lab::ProviderSpec::Minimega {
                base: "/tmp/mm-test".into(),
                namespace: "tap-mirror".into()
            }
        );
        let host = |n: &str| lab.vm(n).unwrap().host.clone();
        assert_eq!(host("A").as_deref(), Some("mm1"));
        assert_eq!(host("B").as_deref(), Some("mm2"));
        assert_eq!(host("monitor").as_deref(), Some("mm1"));
        assert!(lab.vms.iter().all(|v| v.colocate.is_none()));
    }

    #[test]
    fn unplaced_mirrored_vms_are_colocated_with_the_first() {
        let text = SEED
            .replace("host \"mm1\"; ", "")
            .replace("host \"mm2\"; ", "");
        let (lab, d) = check(&text);
        let lab = lab.unwrap_or_else(|| panic!("{d}"));
        assert_eq!(lab.vm("A").unwrap().colocate, None);
        assert_eq!(lab.vm("monitor").unwrap().colocate.as_deref(), Some("A"));
        assert_eq!(lab.vm("B").unwrap().colocate, None);
        assert!(lab.vms.iter().all(|v| v.host.is_none()));
    }

    #[test]
    fn a_mirror_across_nodes_names_both_vms() {
        let text = SEED.replace(
            "vm \"monitor\" { kernel",
            "vm \"monitor\" { host \"mm2\"; kernel",
        );
        let (lab, d) = check(&text);
        assert!(lab.is_none());
        assert_eq!(
            d,
            "megaplan::mirror_placement: VM 'A' (host mm1) and VM 'monitor' (host mm2) must run on one node: mirror.A[0]->monitor[0] joins them"
        );
    }

    #[test]
    fn bad_settings_are_errors() {
        let (lab, d) =
            check("experiment \"x\" { provider \"minimgea\" }\nvm \"A\" { host \"mm 1\" }\n");
        assert!(lab.is_none());
        assert!(
            d.contains("megaplan::bad_provider: unknown provider 'minimgea'"),
            "{d}"
        );
        assert!(
            d.contains("megaplan::bad_host: 'mm 1' is not a minimega node name"),
            "{d}"
        );
        let (_, d) = check(
            "experiment \"x\" { provider \"minimega\" { base \"rel\"; namespace \"all\" } }\n",
        );
        assert!(d.contains(Code::ProviderBase.as_str()), "{d}");
        assert!(d.contains("megaplan::provider_namespace: 'all'"), "{d}");
        let (_, d) = check("experiment \"x\" { provider \"local\" { base \"/x\" } }\n");
        assert!(d.contains(Code::ProviderSetting.as_str()), "{d}");
        let (lab, d) = check("experiment \"x\" { provider \"local\" }\n");
        assert_eq!(
            lab.map(|l| l.provider),
            Some(crate::lab::ProviderSpec::Local),
            "{d}"
        );
    }

    #[test]
    fn toml_says_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.toml");
        std::fs::write(
            &p,
            "[experiment]\nname = \"x\"\n\n[experiment.provider]\nname = \"minimega\"\nnamespace = \"ns1\"\n\n[vm.A]\nkernel = \"/k\"\nhost = \"mm2\"\n",
        )
        .unwrap();
        let src = SourceFile::read(&p).unwrap();
        let (lab, d) = crate::validate::check(&src);
        let lab = lab.unwrap_or_else(|| panic!("{:?}", d.items));
        assert_eq!(
            lab.provider,
            crate::lab::ProviderSpec::Minimega {
                base: super::DEFAULT_BASE.into(),
                namespace: "ns1".into()
            }
        );
        assert_eq!(lab.vm("A").unwrap().host.as_deref(), Some("mm2"));
    }
}
