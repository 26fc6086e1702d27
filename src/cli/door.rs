//! The one door to the machine for a command: the provider chosen for the
//! experiment, built once, with the runtime its futures run on. Refresh,
//! guests (`cc exec`, `show`'s addresses), the console's socket and log,
//! step outputs, disk extract and the executor all go through
//! `Door::provider`; the CLI itself opens no socket, process or host file
//! (tests/tidy.rs keeps it so).

use crate::lab::Lab;
use crate::minimega::provider::Engine;
use crate::observed::Observed;
use crate::provider::Provider;
use crate::state::{State, StateDir};

use super::{CommandError, Problem};

pub struct Door {
    pub rt: tokio::runtime::Runtime,
    pub provider: Engine,
}

impl Door {
    /// The provider for `lab`: the local engine, or minimega when the file
    /// (or `--provider minimega`) says so. It names what it chooses the
    /// names of (`Provider::assign_names`: the local engine every bridge and
    /// tap; minimega none, they are known after apply) before anything plans.
    pub fn open(lab: &mut Lab) -> Result<Door, CommandError> {
        let rt = super::runtime()?;
        let provider = rt.block_on(async { Engine::connect(Some(lab), &lab.name) })?;
        provider.assign_names(lab)?;
        Ok(Door { rt, provider })
    }

    /// Run a provider future to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// What exists of the experiment, as the provider sees it.
    pub fn refresh(
        &self,
        experiment: &str,
        state: &State,
        sd: &StateDir,
    ) -> Result<Observed, CommandError> {
        Ok(self
            .block_on(self.provider.refresh(experiment, state, sd))
            .map_err(Problem::Refresh)?)
    }
}
