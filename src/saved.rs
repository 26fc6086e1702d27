//! Saved plans (`plan --out`): a plan plus what it was made from, so `apply`
//! can refuse it once the state or the file moved on.
//!
//! Invariant: a saved plan applies only if the state's lineage and serial and
//! the experiment file's content hash are what they were when it was saved.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plan::Plan;
use crate::state::State;

pub const SAVED_FORMAT: &str = "megaplan-plan/1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format: String,
    /// The experiment file, absolute.
    pub file: PathBuf,
    /// SHA-256 of the file's content when planned.
    pub file_sha256: String,
    pub plan: Plan,
}

pub fn file_hash(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl SavedPlan {
    pub fn new(file: &Path, plan: Plan) -> Self {
        let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        SavedPlan {
            format: SAVED_FORMAT.into(),
            file_sha256: file_hash(file).unwrap_or_default(),
            file: abs,
            plan,
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(self).expect("plan serialises"),
        )
    }

    /// Read a saved plan; `None` when the file is not one (an experiment file).
    pub fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let saved: SavedPlan = serde_json::from_str(&text).ok()?;
        (saved.format == SAVED_FORMAT).then_some(saved)
    }

    /// Why this plan may no longer be applied, if it may not.
    pub fn stale_because(&self, state: &State) -> Option<String> {
        let lineage = (state.serial > 0).then_some(state.lineage);
        if lineage != self.plan.lineage || state.serial != self.plan.serial {
            return Some(format!(
                "the state changed since the plan was made (serial {} then, {} now)",
                self.plan.serial, state.serial
            ));
        }
        match file_hash(&self.file) {
            Ok(h) if h == self.file_sha256 => None,
            Ok(_) => Some(format!(
                "{} changed since the plan was made",
                self.file.display()
            )),
            Err(e) => Some(format!("cannot read {}: {e}", self.file.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Mode;

    #[test]
    fn a_saved_plan_goes_stale_when_the_state_or_the_file_moves() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.kdl");
        std::fs::write(&file, "experiment \"x\"\n").unwrap();
        let state = State::new("x");
        let plan = crate::plan::plan(None, &state, None, Mode::Apply);
        let saved = SavedPlan::new(&file, plan);
        let path = dir.path().join("x.plan");
        saved.write(&path).unwrap();
        let back = SavedPlan::read(&path).expect("a saved plan");
        assert_eq!(back.stale_because(&state), None);
        let mut moved = state.clone();
        moved.serial = 3;
        assert!(
            back.stale_because(&moved)
                .unwrap()
                .contains("state changed")
        );
        std::fs::write(&file, "experiment \"x\"\nnetwork \"LAN\"\n").unwrap();
        assert!(
            back.stale_because(&state)
                .unwrap()
                .contains("changed since")
        );
        assert!(
            SavedPlan::read(&file).is_none(),
            "an experiment file is not a saved plan"
        );
    }
}
