//! Whether a run directory holds a finished run, an interrupted one, or none.
//!
//! The layout is orrery-checkpoint's: `<run>/checkpoints/latest` names the
//! newest `step_XXXXXXXX/` folder (without `latest`, the newest complete
//! one, holding `trainer_state.json`), whose state file has the `step`.
use std::fmt;
use std::path::{Path, PathBuf};

/// The trainer's state file in a checkpoint folder.
const STATE_FILE: &str = "trainer_state.json";

/// How far a run has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// No checkpoint yet.
    NotStarted,
    /// Its newest checkpoint is of this step, before `run.steps`.
    Partial(u64),
    /// Its newest checkpoint is of step `run.steps` (or later).
    Finished,
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            RunState::NotStarted => f.write_str("not started"),
            RunState::Partial(step) => write!(f, "at step {step}"),
            RunState::Finished => f.write_str("finished"),
        }
    }
}

/// The state of the run in `run_dir` that trains for `steps` steps.
pub fn run_state(run_dir: &Path, steps: u64) -> RunState {
    match checkpoint_step(run_dir) {
        None => RunState::NotStarted,
        Some(step) if step >= steps => RunState::Finished,
        Some(step) => RunState::Partial(step),
    }
}

/// The step of a run directory's newest checkpoint, if it has a readable one.
pub fn checkpoint_step(run_dir: &Path) -> Option<u64> {
    let dir = run_dir.join("checkpoints");
    let latest = dir.join("latest");
    let newest = if latest.is_file() {
        let name = std::fs::read_to_string(&latest).ok()?;
        dir.join(name.trim())
    } else {
        newest_complete(&dir)?
    };
    let text = std::fs::read_to_string(newest.join(STATE_FILE)).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state.get("step")?.as_u64()
}

/// The complete `step_*` folder of the highest step (`.tmp` folders are
/// being written; `.old` ones are being replaced).
fn newest_complete(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step: u64 = name.strip_prefix("step_")?.parse().ok()?;
            e.path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .max_by_key(|(step, _)| *step)
        .map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(run: &Path, step: u64) {
        let dir = run.join(format!("checkpoints/step_{step:08}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(STATE_FILE),
            format!("{{\"step\": {step}, \"cursor\": {{}}}}"),
        )
        .unwrap();
    }

    #[test]
    fn finished_partial_and_not_started() {
        let run = std::env::temp_dir().join(format!("orrery-sweep-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        assert_eq!(run_state(&run, 10), RunState::NotStarted);
        std::fs::create_dir_all(run.join("checkpoints")).unwrap();
        assert_eq!(run_state(&run, 10), RunState::NotStarted);
        checkpoint(&run, 5);
        // Without `latest`: the newest complete folder.
        assert_eq!(run_state(&run, 10), RunState::Partial(5));
        checkpoint(&run, 10);
        std::fs::create_dir_all(run.join("checkpoints/step_00000015.tmp")).unwrap();
        assert_eq!(run_state(&run, 10), RunState::Finished);
        // `latest` wins over the folder names.
        std::fs::write(run.join("checkpoints/latest"), "step_00000005\n").unwrap();
        assert_eq!(run_state(&run, 10), RunState::Partial(5));
        assert_eq!(run_state(&run, 5), RunState::Finished);
        assert_eq!(run_state(&run, 10).to_string(), "at step 5");
        // A `latest` naming a missing folder is no checkpoint.
        std::fs::write(run.join("checkpoints/latest"), "step_00000099\n").unwrap();
        assert_eq!(run_state(&run, 10), RunState::NotStarted);
        std::fs::remove_dir_all(&run).unwrap();
    }
}
