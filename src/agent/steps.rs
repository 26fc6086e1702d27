//! Exactly-once cc steps, guest side: the agent remembers the steps it ran
//! in this boot (this agent process) by their run id, with their outcomes,
//! so a host that lost track (killed mid-step, disconnected) asks again and
//! gets the outcome instead of a second run. See docs/protocol.md, `step_exec`.
//!
//! Invariants:
//! - A run id runs at most once per agent process; a request for an id that
//!   is running waits for that run and gets its outcome.
//! - Memory is bounded: at most [`STEP_MEMORY`] finished outcomes are kept
//!   (oldest forgotten first; outputs are capped by `OUTPUT_CAP`); running
//!   steps are always kept.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::guest::{Out, run_exec_result, spawn_background};
use super::protocol::{Command, Message, StepResult};

/// Finished step outcomes remembered per boot.
pub const STEP_MEMORY: usize = 64;

/// What a run produced, without the request ids.
#[derive(Clone, Debug)]
struct Outcome {
    result: Option<super::protocol::ExecResult>,
    pid: Option<u32>,
    error: Option<String>,
}

enum Entry {
    Running(watch::Receiver<Option<Outcome>>),
    Done(Outcome),
}

#[derive(Default)]
struct Book {
    entries: HashMap<String, Entry>,
    /// Finished ids, oldest first.
    finished: VecDeque<String>,
}

impl Book {
    fn finish(&mut self, step: &str, o: Outcome) {
        self.entries.insert(step.to_string(), Entry::Done(o));
        self.finished.push_back(step.to_string());
        while self.finished.len() > STEP_MEMORY {
            if let Some(old) = self.finished.pop_front() {
                self.entries.remove(&old);
            }
        }
    }
}

static BOOK: LazyLock<Mutex<Book>> = LazyLock::new(Mutex::default);

fn book() -> std::sync::MutexGuard<'static, Book> {
    BOOK.lock().unwrap_or_else(|e| e.into_inner())
}

fn answer(id: u64, step: String, replayed: bool, o: Outcome) -> Message {
    Message::StepResult(StepResult {
        id,
        step,
        replayed,
        result: o.result.map(|mut r| {
            r.id = id;
            r
        }),
        pid: o.pid,
        error: o.error,
    })
}

/// Serve one `step_exec`: run it, or answer with the run it already had.
pub(super) async fn dispatch(
    id: u64,
    step: String,
    command: Command,
    timeout: Option<Duration>,
    background: bool,
    tx: &mpsc::Sender<Out>,
) {
    let tx = tx.clone();
    // Look up and claim under the lock, never across an await.
    let claim = {
        let mut b = book();
        match b.entries.get(&step) {
            Some(Entry::Done(o)) => Err(Ok(o.clone())),
            Some(Entry::Running(rx)) => Err(Err(rx.clone())),
            None => {
                let (wtx, wrx) = watch::channel(None);
                b.entries.insert(step.clone(), Entry::Running(wrx));
                Ok(wtx)
            }
        }
    };
    match claim {
        Err(Ok(done)) => {
            let _ = tx.send(Out::Msg(answer(id, step, true, done))).await;
        }
        Err(Err(mut running)) => {
            tokio::spawn(async move {
                let o = running
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|v| v.clone());
                let o = o.unwrap_or(Outcome {
                    result: None,
                    pid: None,
                    error: Some("the step's run was lost".into()),
                });
                let _ = tx.send(Out::Msg(answer(id, step, true, o))).await;
            });
        }
        Ok(wtx) => {
            tokio::spawn(async move {
                let o = if background {
                    match spawn_background(&command) {
                        Ok(pid) => Outcome {
                            result: None,
                            pid: Some(pid),
                            error: None,
                        },
                        Err(e) => Outcome {
                            result: None,
                            pid: None,
                            error: Some(format!("cannot start {command}: {e}")),
                        },
                    }
                } else {
                    match run_exec_result(id, &command, timeout, super::protocol::OUTPUT_CAP).await
                    {
                        Ok(r) => Outcome {
                            result: Some(r),
                            pid: None,
                            error: None,
                        },
                        Err(e) => Outcome {
                            result: None,
                            pid: None,
                            error: Some(e),
                        },
                    }
                };
                // Recorded before anyone hears of it: a reconnecting host
                // that asks next finds it.
                book().finish(&step, o.clone());
                let _ = wtx.send(Some(o.clone()));
                let _ = tx.send(Out::Msg(answer(id, step, false, o))).await;
            });
        }
    }
}
