//! VM deletes carried out together (issue 14, speed): the executor hands
//! the minimega provider every VM delete that is ready at once
//! ([`crate::provider::Provider::execute_batch`]), and they become a fixed
//! number of round trips however many VMs there are (a delete of one VM is
//! a batch of one):
//!
//! 1. one `namespace` (no namespace: nothing to remove, and naming it
//!    would make it);
//! 2. one `vm info` of every node: each VM's marker is checked there; a VM
//!    without it is left alone ([`MinimegaError::NotOurs`]); a VM not seen
//!    is gone, unless a node that did not answer may have it
//!    ([`MinimegaError::NodeSilent`]);
//! 3. one `cc commands`, then `cc delete command` of megaplan's commands
//!    for these VMs' UUIDs (minimega would send a new client of that UUID
//!    every command it has not run);
//! 4. per VM, `clear tap mirror NAME all`: a mirror into it goes first, or
//!    minimega leaves the monitor's tap behind;
//! 5. one `vm kill A,B,…` of the live ones (minimega kills a target list's
//!    VMs in parallel and answers once they are dead);
//! 6. one poll loop on `vm info`: the dead ones go with one `vm flush
//!    A,B,…`, looked at again at once; a VM no longer listed is removed.
//!
//! Invariants:
//! - A target list holds only names step 2 saw with this experiment's
//!   marker: never `all`, never a number (minimega reads one as a VM id).
//! - Each VM's outcome is its own: one that is not ours is left alone, one
//!   that does not die or is not flushed fails alone, the others go on. An
//!   error of the whole batch (the connection, `vm info`) is each VM's.
//! - A crash anywhere converges: the executor drops the records only after
//!   the batch, so the next destroy asks again and finds each VM running
//!   (killed now), killed (flushed now) or gone (nothing to do).

use std::sync::Arc;

use super::*;

/// One VM of the batch that step 2 found, ours.
struct Target {
    /// Its index in the batch.
    at: usize,
    name: Name,
    /// Its node, when `vm info` was asked.
    host: String,
}

type Outcomes = Vec<Result<(), MinimegaError>>;

fn dead(v: &VmInfo) -> bool {
    matches!(v.state, VmState::Quit | VmState::Error)
}

/// The host errors of an answer, as [`ClientError::Host`] holds them.
fn host_errors(resps: &[HostResponse]) -> Vec<(String, String)> {
    resps
        .iter()
        .filter(|r| !r.error.is_empty())
        .map(|r| (r.host.clone(), r.error.clone()))
        .collect()
}

/// `vm VERB A,B,…`: a target list of checked names.
fn target_list(verb: &'static str, names: &[&Name]) -> Result<Command, MinimegaError> {
    let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    Ok(Command::new("vm").word(verb).arg(&list.join(","))?)
}

impl MinimegaHost {
    /// Kill and forget the VMs named `vms` (each one ours; nothing for one
    /// minimega does not have): one result per VM, in order.
    pub(super) async fn stop_many(&self, vms: &[&str]) -> Outcomes {
        match self.stop_all(vms).await {
            Ok(r) => r,
            // A batch of one reports its error as it is.
            Err(e) if vms.len() == 1 => vec![Err(e)],
            Err(e) => {
                let e = Arc::new(e);
                vms.iter()
                    .map(|_| Err(MinimegaError::Batch(e.clone())))
                    .collect()
            }
        }
    }

    /// [`MinimegaHost::stop_many`] of one VM.
    pub(super) async fn stop_one(&self, vm: &str) -> Result<(), MinimegaError> {
        self.stop_many(&[vm])
            .await
            .pop()
            .unwrap_or_else(|| Err(MinimegaError::NoVm(vm.to_string())))
    }

    /// Steps 1 to 6; an error returned is one of the whole batch.
    async fn stop_all(&self, vms: &[&str]) -> Result<Outcomes, MinimegaError> {
        let mut out: Vec<Option<Result<(), MinimegaError>>> = vms.iter().map(|_| None).collect();
        // 1.
        if !self.namespace_exists()? {
            return Ok(vms.iter().map(|_| Ok(())).collect());
        }
        // 2.
        let (infos, asked) = self.vm_info_nodes()?;
        let mut uuids: BTreeSet<String> = BTreeSet::new();
        let mut targets: Vec<Target> = Vec::new();
        for (at, vm) in vms.iter().enumerate() {
            let spec = self.vm_spec(vm).ok();
            // The lab's UUID is megaplan's: its commands go whatever is found.
            if let Some(s) = spec {
                uuids.insert(s.uuid.to_string());
            }
            let seen: Vec<&VmInfo> = infos.iter().filter(|v| v.name == *vm).collect();
            let Some(first) = seen.first() else {
                // Not seen: gone, unless a node that did not answer has it.
                let placed = spec.and_then(|s| s.host.as_deref());
                out[at] = Some(match asked.doubt(placed) {
                    Some(why) => Err(MinimegaError::NodeSilent {
                        vm: vm.to_string(),
                        errors: why,
                    }),
                    None => Ok(()),
                });
                continue;
            };
            if seen.iter().any(|v| self.ours(v).is_none()) {
                out[at] = Some(Err(MinimegaError::NotOurs {
                    name: vm.to_string(),
                    ns: self.ns.to_string(),
                    address: format!("vm.{vm}"),
                }));
                continue;
            }
            // minimega names no VM with a number (it would be an id).
            let name = match Name::new(vm) {
                Ok(n) if vm.parse::<u64>().is_err() => n,
                Ok(_) => {
                    out[at] = Some(Err(MinimegaError::NoVm(vm.to_string())));
                    continue;
                }
                Err(e) => {
                    out[at] = Some(Err(e.into()));
                    continue;
                }
            };
            uuids.extend(seen.iter().map(|v| v.uuid.clone()));
            targets.push(Target {
                at,
                name,
                host: first.host.clone(),
            });
        }
        // 3.
        if !uuids.is_empty() {
            self.forget_uuids(&uuids)?;
        }
        // 4.
        for t in &targets {
            let _ = self.run(
                Command::new("clear")
                    .word("tap")
                    .word("mirror")
                    .name(&t.name)
                    .word("all"),
            );
        }
        // 5.
        let live: Vec<&Name> = targets
            .iter()
            .filter(|t| infos.iter().any(|v| v.name == t.name.as_str() && !dead(v)))
            .map(|t| &t.name)
            .collect();
        let mut kill: Option<(String, Vec<(String, String)>)> = None;
        if !live.is_empty() {
            let cmd = target_list("kill", &live)?;
            let text = cmd.as_str().to_string();
            let errors = host_errors(&self.run(cmd)?);
            kill = Some((text, errors));
            for t in &targets {
                crate::apply::crash_point("KILLED", &format!("vm.{}", t.name));
            }
        }
        // 6.
        let end = Instant::now() + GONE_WAIT;
        let mut pending = targets;
        let mut flushed_once = false;
        let mut last_flush: Option<(String, Vec<(String, String)>)> = None;
        loop {
            let (now, asked) = self.vm_info_nodes()?;
            let mut to_flush: Vec<Target> = Vec::new();
            let mut waiting: Vec<Target> = Vec::new();
            for t in pending {
                let seen: Vec<&VmInfo> = now.iter().filter(|v| v.name == t.name.as_str()).collect();
                if seen.is_empty() {
                    // Gone, unless its node stopped answering.
                    out[t.at] = Some(if asked.answered.contains(&t.host) {
                        Ok(())
                    } else {
                        Err(MinimegaError::NodeSilent {
                            vm: t.name.to_string(),
                            errors: asked
                                .doubt(Some(&t.host))
                                .unwrap_or_else(|| format!("node {} did not answer", t.host)),
                        })
                    });
                } else if seen.iter().all(|v| dead(v)) {
                    to_flush.push(t);
                } else if let Some((command, errors)) = kill.as_ref().filter(|k| !k.1.is_empty()) {
                    // The kill failed there: no use waiting.
                    out[t.at] = Some(Err(ClientError::Host {
                        command: command.clone(),
                        errors: errors.clone(),
                    }
                    .into()));
                } else {
                    waiting.push(t);
                }
            }
            // A flush every node refused is not tried again.
            if let Some((command, errors)) = &last_flush
                && !errors.is_empty()
            {
                for t in to_flush.drain(..) {
                    out[t.at] = Some(Err(ClientError::Host {
                        command: command.clone(),
                        errors: errors.clone(),
                    }
                    .into()));
                }
            }
            let flushing = !to_flush.is_empty();
            if flushing {
                let names: Vec<&Name> = to_flush.iter().map(|t| &t.name).collect();
                let cmd = target_list("flush", &names)?;
                let text = cmd.as_str().to_string();
                let resps = self.run(cmd)?;
                // A node without the VM answers "not found": only a flush no
                // node took is a failure.
                let refused = resps.iter().all(|r| !r.error.is_empty());
                last_flush = Some((
                    text,
                    if refused {
                        host_errors(&resps)
                    } else {
                        Vec::new()
                    },
                ));
                waiting.extend(to_flush);
            }
            pending = waiting;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= end {
                for t in pending {
                    out[t.at] = Some(Err(MinimegaError::StillThere {
                        vm: t.name.to_string(),
                        ns: self.ns.to_string(),
                        after: GONE_WAIT,
                    }));
                }
                break;
            }
            // The first look after a flush comes at once: it is usually the
            // last.
            if flushing && !flushed_once {
                flushed_once = true;
            } else {
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(out
            .into_iter()
            .zip(vms)
            .map(|(r, vm)| r.unwrap_or_else(|| Err(MinimegaError::NoVm(vm.to_string()))))
            .collect())
    }

    /// Delete megaplan's cc commands (prefix `mp…`) whose filter names one
    /// of `uuids`: one `cc commands`, one `cc delete command` each.
    pub(super) fn forget_uuids(&self, uuids: &BTreeSet<String>) -> Result<(), MinimegaError> {
        let wanted: BTreeSet<String> = uuids.iter().map(|u| format!("uuid={u}")).collect();
        let mut prefixes = BTreeSet::new();
        for r in self.run(Command::new("cc").word("commands"))? {
            for row in r.rows() {
                if let (Some(p), Some(f)) = (column(&row, "prefix"), column(&row, "filter"))
                    && super::namespace::is_run_prefix(p)
                    && f.split_whitespace().any(|w| wanted.contains(w))
                {
                    prefixes.insert(p.to_string());
                }
            }
        }
        for p in prefixes {
            self.run(Command::new("cc").word("delete").word("command").arg(&p)?)?;
        }
        Ok(())
    }
}

/// What a VM delete's outcome is to the executor: one not ours is left
/// alone (its record dropped), any other error fails the delete.
pub(super) fn stop_outcome(r: Result<(), MinimegaError>) -> Result<OpOutcome, PError> {
    match r {
        Ok(()) => Ok(OpOutcome::done()),
        Err(MinimegaError::NotOurs { name, ns, .. }) => Err(PError::NotOurs {
            what: format!("VM {name} in minimega's namespace {ns}"),
        }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    use serde_json::{Value, json};

    /// A VM of the fake minimega.
    struct Fake {
        name: &'static str,
        host: &'static str,
        ours: bool,
        /// `vm kill` fails on it (minimega's "unleash the zombie VM").
        zombie: bool,
        state: i64,
    }

    fn answer(resps: Vec<Value>) -> String {
        format!(
            "{}\n",
            json!({"Resp": resps, "Rendered": "", "More": false, "Status": false})
        )
    }

    fn host(h: &str, error: &str) -> Value {
        json!({"Host": h, "Response": "", "Header": null, "Tabular": null, "Error": error, "Data": null})
    }

    /// A fake two-node minimega with `vms` in namespace `lab` (mm2 does not
    /// answer when `silent`): it kills, flushes and lists as minimega does
    /// for a target list, and hands back every command it was sent.
    fn fake(
        mut vms: Vec<Fake>,
        silent: bool,
    ) -> (tempfile::TempDir, std::thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join(crate::minimega::client::SOCKET)).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut seen = Vec::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                let v: Value = serde_json::from_str(&line).unwrap();
                let full = v["Command"].as_str().unwrap().to_owned();
                let cmd = full
                    .strip_prefix("namespace \"lab\" ")
                    .unwrap_or(&full)
                    .to_string();
                seen.push(cmd.clone());
                let list = |verb: &str| -> Vec<String> {
                    let rest = cmd.strip_prefix(&format!("vm {verb} ")).unwrap();
                    rest.trim_matches('"')
                        .split(',')
                        .map(str::to_owned)
                        .collect()
                };
                let nodes: &[&str] = if silent { &["mm1"] } else { &["mm1", "mm2"] };
                let resps = if cmd == "namespace" {
                    vec![
                        json!({"Host": "mm1", "Header": ["namespace", "vms"], "Tabular": [["lab", "5"]], "Error": ""}),
                    ]
                } else if cmd == "vm info summary" {
                    let mut out: Vec<Value> = nodes
                        .iter()
                        .map(|n| {
                            let data: Vec<Value> = vms
                                .iter()
                                .filter(|f| f.host == *n)
                                .enumerate()
                                .map(|(i, f)| {
                                    let tags = if f.ours {
                                        json!({"megaplan": format!("lab:vm.{}", f.name)})
                                    } else {
                                        json!({"owner": "someone"})
                                    };
                                    json!({"ID": i, "Name": f.name, "Namespace": "lab", "Host": f.host,
                                        "UUID": format!("u-{}", f.name), "State": f.state, "Pid": 7,
                                        "Networks": null, "Tags": tags})
                                })
                                .collect();
                            json!({"Host": n, "Error": "", "Data": data})
                        })
                        .collect();
                    if silent {
                        out.push(host("mm1", "no such client mm2"));
                    }
                    out
                } else if cmd.starts_with("vm kill ") {
                    let names = list("kill");
                    assert!(!names.iter().any(|n| n == "all"), "{cmd}");
                    let mut errors = Vec::new();
                    for f in vms.iter_mut().filter(|f| names.iter().any(|n| n == f.name)) {
                        if f.zombie {
                            errors.push(host(f.host, "unleash the zombie VM: boom"));
                        } else {
                            f.state = 8;
                        }
                    }
                    let mut out: Vec<Value> = nodes.iter().map(|n| host(n, "")).collect();
                    out.extend(errors);
                    out
                } else if cmd.starts_with("vm flush ") {
                    let names = list("flush");
                    vms.retain(|f| !(f.state == 8 && names.iter().any(|n| n == f.name)));
                    nodes.iter().map(|n| host(n, "")).collect()
                } else {
                    // `cc commands`, `clear tap mirror NAME all`.
                    nodes.iter().map(|n| host(n, "")).collect()
                };
                w.write_all(answer(resps).as_bytes()).unwrap();
            }
            seen
        });
        (dir, h)
    }

    fn vm(name: &'static str, host: &'static str) -> Fake {
        Fake {
            name,
            host,
            ours: true,
            zombie: false,
            state: 2,
        }
    }

    fn stop(dir: &Path, batch: &[&str]) -> Outcomes {
        let settings = Settings {
            base: dir.to_path_buf(),
            namespace: "lab".into(),
        };
        let h = MinimegaHost::connect(&settings, "lab", None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(h.stop_many(batch))
    }

    #[test]
    fn one_kill_and_one_flush_for_the_batch_and_each_vm_its_own_outcome() {
        let (dir, h) = fake(
            vec![
                vm("a", "mm1"),
                vm("b", "mm2"),
                Fake {
                    ours: false,
                    ..vm("c", "mm1")
                },
                Fake {
                    zombie: true,
                    ..vm("z", "mm2")
                },
                Fake {
                    state: 8,
                    ..vm("q", "mm1")
                },
            ],
            false,
        );
        let out = stop(dir.path(), &["a", "b", "c", "z", "gone", "q"]);
        let seen = h.join().unwrap();
        assert!(out[0].is_ok() && out[1].is_ok(), "{out:?}");
        assert!(
            matches!(&out[2], Err(MinimegaError::NotOurs { name, .. }) if name == "c"),
            "{out:?}"
        );
        match &out[3] {
            Err(MinimegaError::Client(ClientError::Host { command, errors })) => {
                assert!(command.contains("vm kill"), "{command}");
                assert_eq!(
                    errors,
                    &[("mm2".to_string(), "unleash the zombie VM: boom".to_string())]
                );
            }
            r => panic!("z does not die: {r:?}"),
        }
        // Not there: nothing to do; already quit: flushed, not killed.
        assert!(out[4].is_ok() && out[5].is_ok(), "{out:?}");
        let kills: Vec<&String> = seen.iter().filter(|c| c.starts_with("vm kill")).collect();
        assert_eq!(kills, [r#"vm kill "a,b,z""#], "{seen:?}");
        let flushes: Vec<&String> = seen.iter().filter(|c| c.starts_with("vm flush")).collect();
        assert_eq!(flushes, [r#"vm flush "a,b,q""#], "{seen:?}");
        // Nothing of c, the VM that is not ours, was named.
        assert!(
            !seen.iter().any(|c| c.contains("\"c\"") || c.contains(",c")),
            "{seen:?}"
        );
        assert_eq!(
            seen.iter().filter(|c| *c == "vm info summary").count(),
            3,
            "one look before, one after the kill, one after the flush: {seen:?}"
        );
    }

    #[test]
    fn a_vm_a_silent_node_may_have_is_not_called_gone() {
        let (dir, h) = fake(vec![vm("a", "mm1"), vm("b", "mm2")], true);
        let out = stop(dir.path(), &["a", "b"]);
        let seen = h.join().unwrap();
        assert!(
            out[0].is_ok(),
            "a, on the node that answered, goes: {out:?}"
        );
        assert!(
            matches!(&out[1], Err(MinimegaError::NodeSilent { vm, .. }) if vm == "b"),
            "{out:?}"
        );
        assert!(seen.contains(&r#"vm kill "a""#.to_string()), "{seen:?}");
    }

    #[test]
    fn a_target_list_is_the_checked_names_joined() {
        let a = Name::new("A").unwrap();
        let b = Name::new("v-1.x").unwrap();
        let cmd = target_list("kill", &[&a, &b]).unwrap();
        assert_eq!(cmd.as_str(), "vm kill \"A,v-1.x\"");
    }
}
