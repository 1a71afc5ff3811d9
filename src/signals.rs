//! Signals during `orrery train`: SIGTERM, SIGUSR1 (what Slurm sends before
//! a time limit or a preemption) and Ctrl-C (SIGINT) ask the run to finish
//! the step in flight, write a checkpoint and exit with
//! [`PREEMPTED_EXIT_CODE`]; a resume then continues as if nothing happened.
//! A second Ctrl-C stops at once: checkpoints are written to a `.tmp`
//! folder and renamed when complete, so that loses only the steps after
//! the newest checkpoint, and this says which one that is. Further SIGTERMs
//! or SIGUSR1s change nothing, so the checkpoint being written completes.
use std::path::{Path, PathBuf};

use orrery_train::{StopRequest, PREEMPTED_EXIT_CODE};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

/// The error `main` maps to [`PREEMPTED_EXIT_CODE`]: a run (or a launched
/// job) stopped on a signal after writing a checkpoint.
#[derive(Debug)]
pub struct Preempted(pub String);

impl std::fmt::Display for Preempted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Preempted {}

/// Start a thread that turns SIGTERM, SIGUSR1 and SIGINT into a stop
/// request for the run in `run_dir`, and a second SIGINT into an exit.
pub fn stop_on_signals(run_dir: &Path) -> StopRequest {
    let stop = StopRequest::new();
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1]) else {
        return stop;
    };
    let run_dir = run_dir.to_path_buf();
    let request = stop.clone();
    std::thread::spawn(move || {
        let rank0 = orrery_dist::World::from_env().map_or(true, |w| w.rank == 0);
        for sig in signals.forever() {
            if request.request(sig) {
                if rank0 {
                    eprintln!(
                        "{} received: finishing this step, then writing a checkpoint and exiting with code {PREEMPTED_EXIT_CODE} (Ctrl-C again to stop at once)",
                        name(sig)
                    );
                }
            } else if sig == SIGINT {
                if rank0 {
                    eprintln!("{}", lost(&run_dir, sig));
                }
                std::process::exit(128 + sig);
            } else if rank0 {
                eprintln!(
                    "{} received again: the checkpoint is being written; the run exits when it is complete",
                    name(sig)
                );
            }
        }
    });
    stop
}

/// The signal's name as the messages give it.
pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "Ctrl-C (SIGINT)",
        SIGTERM => "SIGTERM",
        SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

/// What a stop by `sig` keeps: the message for the run in `run_dir`.
fn lost(run_dir: &Path, sig: i32) -> String {
    let name = name(sig);
    let last_logged = last_step(&run_dir.join("metrics.jsonl"));
    let ckpt = newest_checkpoint(&run_dir.join("checkpoints"));
    let logged = last_logged.map_or(String::new(), |s| format!(" (last logged step: {s})"));
    match ckpt {
        Some((step, dir)) => format!(
            "stopped by {name}{logged}. Kept: the checkpoint of step {step} ({}); lost: the steps after it. Continue with `orrery train CONFIG --run-dir {}` (the default --resume auto, without --overwrite or --resume never).",
            dir.display(),
            run_dir.display()
        ),
        None => format!(
            "stopped by {name}{logged} before the first checkpoint of {}: every step of this run is lost (set checkpoint.every lower to keep more).",
            run_dir.display()
        ),
    }
}

fn last_step(metrics: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(metrics).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    serde_json::from_str::<serde_json::Value>(line).ok()?["step"].as_u64()
}

fn newest_checkpoint(dir: &Path) -> Option<(u64, PathBuf)> {
    let found = orrery_train::checkpoint::resolve(dir).ok()?;
    let state = orrery_train::checkpoint::load_state(&found).ok()?;
    Some((state.step, found))
}
