//! Which engine built an experiment, recorded in its state: `plan`,
//! `destroy`, `show` and `serve` of a file that names no provider (and no
//! `--provider`/`--minimega-base`) use the engine the state records, so a
//! lab built with `apply --provider minimega --minimega-base DIR` is
//! destroyed by `megaplan destroy FILE`.
//!
//! Invariants:
//! - An empty state records nothing that matters: the next apply records
//!   its own engine.
//! - A file or flag that names an engine other than the one a non-empty
//!   state records is refused before anything changes ([`EngineError`]).
//! - The recorded settings are untrusted input: [`check`] holds them to the
//!   rules the file's are held to (an absolute base without `..`, a socket
//!   path that fits, a namespace minimega accepts).

use std::path::{Component, Path, PathBuf};

use crate::lab::{Lab, ProviderSpec};
use crate::state::State;

/// Who chose the lab's provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// Nobody: the file has no `provider` and no flag was given.
    #[default]
    Default,
    /// The file's `provider`.
    File,
    /// `--provider` or `--minimega-base`.
    Flags,
    /// The state's record (adopted by [`reconcile`]).
    State,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the state {} records that {recorded} built this experiment, but {by} asks for {asked}",
        state.display()
    )]
    Disagrees {
        state: PathBuf,
        recorded: String,
        by: &'static str,
        asked: String,
    },
    #[error(
        "the state {} records that {recorded} built this experiment, which cannot build all of the file: {}",
        state.display(),
        problems.join("; ")
    )]
    Unmapped {
        state: PathBuf,
        recorded: String,
        problems: Vec<String>,
    },
}

impl EngineError {
    /// What the user can do about it.
    pub fn hint(&self) -> String {
        match self {
            EngineError::Disagrees { .. } => "destroy it with the engine that built it first (`megaplan destroy FILE` without --provider uses the recorded one), or pass another --state-dir".into(),
            EngineError::Unmapped { .. } => "destroy it first (`megaplan destroy FILE`), then apply it with --provider local".into(),
        }
    }
}

/// The engine in words, for messages.
pub fn describe(p: &ProviderSpec) -> String {
    match p {
        ProviderSpec::Local => "megaplan's local engine".into(),
        ProviderSpec::Minimega { base, namespace } => format!(
            "minimega (base {}, namespace {})",
            crate::diag::escape(&base.display().to_string()),
            crate::diag::escape(namespace)
        ),
    }
}

/// Whether recorded provider settings are ones megaplan could have
/// written: `Err(why)` when not.
pub fn check(p: &ProviderSpec) -> Result<(), String> {
    let ProviderSpec::Minimega { base, namespace } = p else {
        return Ok(());
    };
    check_base(base)?;
    super::client::Name::new(namespace)
        .map_err(|e| format!("provider: namespace {namespace:?}: {e}"))?;
    Ok(())
}

fn check_base(base: &Path) -> Result<(), String> {
    let shown = format!("{:?}", base.display().to_string());
    if !base.is_absolute() {
        return Err(format!("provider: minimega's base {shown} is not absolute"));
    }
    if base
        .components()
        .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(format!(
            "provider: minimega's base {shown} has a `..` in it"
        ));
    }
    use std::os::unix::ffi::OsStrExt;
    if base.as_os_str().as_bytes().contains(&0) {
        return Err(format!(
            "provider: minimega's base {shown} holds a NUL byte"
        ));
    }
    if base.join(super::client::SOCKET).as_os_str().len() >= 108 {
        return Err(format!(
            "provider: minimega's base {shown} is too long for its socket path"
        ));
    }
    Ok(())
}

/// What decides the engine for a run: the file or flags when they say
/// something, else what `state` records (when it holds anything). `Ok`
/// leaves `lab.provider` the engine to use.
pub fn reconcile(lab: &mut Lab, state: &State, state_file: &Path) -> Result<(), EngineError> {
    if state.resources.is_empty() || lab.provider == state.provider {
        return Ok(());
    }
    let by = match lab.provider_origin {
        Origin::Default => {
            lab.provider = state.provider.clone();
            lab.provider_origin = Origin::State;
            if !lab.provider.is_local() {
                let problems = super::provider::unmapped(lab);
                if !problems.is_empty() {
                    return Err(EngineError::Unmapped {
                        state: state_file.to_path_buf(),
                        recorded: describe(&state.provider),
                        problems,
                    });
                }
            }
            return Ok(());
        }
        Origin::File => "the file",
        Origin::Flags => "the command line",
        Origin::State => "an earlier read of the state",
    };
    Err(EngineError::Disagrees {
        state: state_file.to_path_buf(),
        recorded: describe(&state.provider),
        by,
        asked: describe(&lab.provider),
    })
}

/// [`reconcile`] again, on the state read under the lock: the engine
/// chosen from an earlier read must still be the recorded one.
pub fn recheck(lab: &Lab, state: &State, state_file: &Path) -> Result<(), EngineError> {
    if state.resources.is_empty() || lab.provider == state.provider {
        return Ok(());
    }
    Err(EngineError::Disagrees {
        state: state_file.to_path_buf(),
        recorded: describe(&state.provider),
        by: match lab.provider_origin {
            Origin::Default => "the file (it names no provider)",
            Origin::File => "the file",
            Origin::Flags => "the command line",
            Origin::State => "an earlier read of the state",
        },
        asked: describe(&lab.provider),
    })
}

/// Before an apply writes the state: the engine that builds it.
pub fn record(lab: &Lab, state: &mut State) {
    state.provider = lab.provider.clone();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Kind, Record};

    fn lab(provider: ProviderSpec, origin: Origin) -> Lab {
        let src = crate::diag::SourceFile::new("x.kdl", "experiment \"x\"\n".to_string());
        let (lab, d) = crate::validate::check(&src);
        let mut lab = lab.unwrap_or_else(|| panic!("{d:?}"));
        lab.provider = provider;
        lab.provider_origin = origin;
        lab
    }

    fn mm(base: &str, ns: &str) -> ProviderSpec {
        ProviderSpec::Minimega {
            base: base.into(),
            namespace: ns.into(),
        }
    }

    fn built_by(p: ProviderSpec) -> State {
        let mut s = State::new("x");
        s.provider = p;
        s.resources.insert(
            "network.LAN".into(),
            Record::new(Kind::Network, Default::default()),
        );
        s
    }

    #[test]
    fn a_file_that_says_nothing_uses_the_recorded_engine() {
        let mut l = lab(ProviderSpec::Local, Origin::Default);
        reconcile(&mut l, &built_by(mm("/tmp/mm", "x")), Path::new("s")).unwrap();
        assert_eq!(l.provider, mm("/tmp/mm", "x"));
        assert_eq!(l.provider_origin, Origin::State);
        // An empty state decides nothing.
        let mut l = lab(ProviderSpec::Local, Origin::Default);
        let mut empty = State::new("x");
        empty.provider = mm("/tmp/mm", "x");
        reconcile(&mut l, &empty, Path::new("s")).unwrap();
        assert_eq!(l.provider, ProviderSpec::Local);
    }

    #[test]
    fn a_file_or_flag_that_disagrees_is_refused() {
        for (asked, origin, by) in [
            (ProviderSpec::Local, Origin::File, "the file"),
            (mm("/tmp/other", "x"), Origin::Flags, "the command line"),
            (mm("/tmp/mm", "y"), Origin::File, "the file"),
        ] {
            let mut l = lab(asked.clone(), origin);
            let e = reconcile(&mut l, &built_by(mm("/tmp/mm", "x")), Path::new("s")).unwrap_err();
            assert!(
                matches!(&e, EngineError::Disagrees { by: b, .. } if *b == by),
                "{e}"
            );
            assert_eq!(l.provider, asked, "nothing changed");
        }
        // A minimega file against a local state.
        let mut l = lab(mm("/tmp/mm", "x"), Origin::File);
        let e = reconcile(&mut l, &built_by(ProviderSpec::Local), Path::new("s")).unwrap_err();
        assert!(e.to_string().contains("megaplan's local engine"), "{e}");
        // The same engine, said again, is fine.
        let mut l = lab(mm("/tmp/mm", "x"), Origin::Flags);
        reconcile(&mut l, &built_by(mm("/tmp/mm", "x")), Path::new("s")).unwrap();
    }

    #[test]
    fn recorded_settings_are_checked_like_the_files() {
        assert!(check(&ProviderSpec::Local).is_ok());
        assert!(check(&mm("/tmp/mm", "ns-1")).is_ok());
        for (base, ns) in [
            ("tmp/mm", "x"),
            ("/tmp/../etc", "x"),
            ("/tmp/m\0m", "x"),
            (&*format!("/{}", "a".repeat(110)), "x"),
            ("/tmp/mm", "all"),
            ("/tmp/mm", "a b"),
            ("/tmp/mm", ""),
        ] {
            assert!(check(&mm(base, ns)).is_err(), "{base:?} {ns:?}");
            // A state holding it does not load.
            let mut s = State::new("x");
            s.provider = mm(base, ns);
            assert!(
                matches!(s.check(), Err((a, _)) if a == "provider"),
                "{base:?} {ns:?}"
            );
        }
    }

    #[test]
    fn the_state_records_the_engine_and_an_old_state_means_local() {
        let mut s = State::new("x");
        record(&lab(mm("/tmp/mm", "x"), Origin::File), &mut s);
        let text = serde_json::to_string(&s).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back.provider, mm("/tmp/mm", "x"));
        // Local is not written, and a state without the field is local.
        let old = serde_json::to_value(State::new("x")).unwrap();
        assert!(old.get("provider").is_none(), "{old}");
        let back: State = serde_json::from_value(old).unwrap();
        assert_eq!(back.provider, ProviderSpec::Local);
    }
}
