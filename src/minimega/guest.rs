//! A guest of the minimega provider, reached through minimega's cc (the
//! guest runs miniccc, not megaplan's agent): `megaplan cc exec FILE
//! --filter name=B -- CMD` on a minimega VM.
//!
//! `exec` is what a cc step's exec is (cc.rs): `cc filter uuid=U` and a
//! prefix of its own, `cc exec`, the exit code from `cc exitcode` of the
//! node whose miniccc answered, the streams from its `cc responses`. The
//! command and its responses are deleted afterwards (`cc delete command`,
//! `cc delete response`, by that prefix): minimega would send an unfinished
//! command again to a later client of the same UUID, and keeps responses
//! until told. `background`, `send`, `recv` and `info` are not offered
//! here (docs/minimega.md, "Not mapped yet").
//!
//! Invariants: the guest shares the provider's one connection, so the
//! namespace's cc filter and prefix are set, used and cleared while no one
//! else sends a command; every word goes through [`Command`] (quoted).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{Client, Command, Name};
use super::provider::MinimegaError;
use crate::agent::{Command as AgentCommand, ExecResult, Exit, Hello, Transfer};
use crate::provider::{Guest, ProviderError};

/// One VM's cc, through minimega.
pub struct MinimegaGuest {
    pub(super) client: Arc<Mutex<Client>>,
    pub(super) ns: Name,
    pub(super) vm: String,
    pub(super) uuid: String,
}

/// A guest of either engine (`Engine`'s guest).
pub enum EngineGuest {
    Local(crate::host::local::LocalGuest),
    Minimega(MinimegaGuest),
}

impl MinimegaGuest {
    fn unsupported(&self, what: &str) -> ProviderError {
        ProviderError::Unsupported {
            provider: "minimega",
            what: format!(
                "{what} in {} through minimega's cc (only `cc exec` is mapped)",
                self.vm
            ),
        }
    }

    /// A cc prefix of this exec alone (`mp`: megaplan's, so a replaced
    /// VM's leftovers are deleted with its steps' commands).
    fn prefix(&self) -> String {
        use sha2::{Digest, Sha256};
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seed = format!("exec {} {} {now}", self.uuid, std::process::id());
        let h = Sha256::digest(seed.as_bytes());
        let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("mp{hex}")
    }

    async fn exec_cc(
        &self,
        command: AgentCommand,
        timeout: Option<Duration>,
        max_output: Option<u64>,
    ) -> Result<ExecResult, MinimegaError> {
        let words = match command {
            AgentCommand::Shell(s) => vec!["sh".to_string(), "-c".to_string(), s],
            AgentCommand::Argv(v) => v,
        };
        if words.is_empty()
            || ["stdin=", "stdout=", "stderr="]
                .iter()
                .any(|p| words[0].starts_with(p))
        {
            return Err(MinimegaError::Unsupported {
                what: "a command whose first word is stdin=/stdout=/stderr= (or none)".into(),
                why: "minimega reads it as plumbing",
            });
        }
        let mut cmd = Command::new("cc").word("exec");
        for w in &words {
            cmd = cmd.arg(w)?;
        }
        let prefix = self.prefix();
        let started = std::time::Instant::now();
        let ids = super::cc::under_filter(&self.client, &self.ns, &self.uuid, &prefix, &[cmd])?;
        let done = super::cc::wait_exit(&self.client, &self.ns, &ids, &self.uuid, timeout).await;
        let result = match done {
            Ok(Some((node, id, exit))) => {
                super::cc::exec_output(&self.client, &self.ns, &node, id, &self.uuid)
                    .map(|out| Some((exit, out)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        self.forget(&prefix);
        let cap = max_output
            .map_or(crate::agent::protocol::OUTPUT_CAP, |m| {
                usize::try_from(m).unwrap_or(usize::MAX)
            })
            .min(crate::agent::protocol::MAX_OUTPUT_LIMIT);
        let (exit, (stdout, stderr), timed_out) = match result? {
            Some((exit, out)) => (exit, out, false),
            None => (-1, (String::new(), String::new()), true),
        };
        let (stdout, stdout_truncated) = cut(stdout, cap);
        let (stderr, stderr_truncated) = cut(stderr, cap);
        Ok(ExecResult {
            id: 0,
            exit: Exit::Code(exit),
            timed_out,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Delete the exec's command and responses on every node (best effort:
    /// a node that does not answer keeps them; a replaced VM's are deleted
    /// with its steps' commands).
    fn forget(&self, prefix: &str) {
        let mut c = self.client.lock().expect("the client lock");
        for what in ["command", "response"] {
            if let Ok(cmd) = Command::new("cc").word("delete").word(what).arg(prefix) {
                let _ = c.run(&cmd.in_namespace(&self.ns));
            }
        }
    }
}

/// At most `cap` bytes of `s` (on a character boundary), and whether more was there.
fn cut(mut s: String, cap: usize) -> (String, bool) {
    if s.len() <= cap {
        return (s, false);
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    (s, true)
}

impl Guest for MinimegaGuest {
    async fn exec(
        &self,
        command: AgentCommand,
        timeout: Option<Duration>,
        max_output: Option<u64>,
    ) -> Result<ExecResult, ProviderError> {
        Ok(self.exec_cc(command, timeout, max_output).await?)
    }

    async fn background(&self, _command: AgentCommand) -> Result<u32, ProviderError> {
        Err(self.unsupported("a background command with a pid"))
    }

    async fn send(&self, _src: &Path, _to: &str) -> Result<Transfer, ProviderError> {
        Err(self.unsupported("send a file"))
    }

    async fn recv(
        &self,
        _src: &str,
        _to: &Path,
        _idle_timeout: Duration,
        _max_size: u64,
    ) -> Result<Transfer, ProviderError> {
        Err(self.unsupported("receive a file"))
    }

    async fn info(&self, _timeout: Duration) -> Result<Hello, ProviderError> {
        Err(self.unsupported("describe the guest (megaplan's agent hello)"))
    }
}

macro_rules! either {
    ($self:ident, $g:ident => $e:expr) => {
        match $self {
            EngineGuest::Local($g) => $e,
            EngineGuest::Minimega($g) => $e,
        }
    };
}

impl Guest for EngineGuest {
    async fn exec(
        &self,
        command: AgentCommand,
        timeout: Option<Duration>,
        max_output: Option<u64>,
    ) -> Result<ExecResult, ProviderError> {
        either!(self, g => g.exec(command, timeout, max_output).await)
    }

    async fn background(&self, command: AgentCommand) -> Result<u32, ProviderError> {
        either!(self, g => g.background(command).await)
    }

    async fn send(&self, src: &Path, to: &str) -> Result<Transfer, ProviderError> {
        either!(self, g => g.send(src, to).await)
    }

    async fn recv(
        &self,
        src: &str,
        to: &Path,
        idle_timeout: Duration,
        max_size: u64,
    ) -> Result<Transfer, ProviderError> {
        either!(self, g => g.recv(src, to, idle_timeout, max_size).await)
    }

    async fn info(&self, timeout: Duration) -> Result<Hello, ProviderError> {
        either!(self, g => g.info(timeout).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_on_a_character_boundary() {
        assert_eq!(cut("abc".into(), 3), ("abc".to_string(), false));
        assert_eq!(cut("abcd".into(), 3), ("abc".to_string(), true));
        // "é" is two bytes: a cut inside it keeps the character out.
        assert_eq!(cut("aé".into(), 2), ("a".to_string(), true));
    }
}
