//! Ctrl-C and SIGTERM during `orrery train`: say what was kept and what was
//! lost before the process ends. Checkpoints are written to a `.tmp` folder
//! and renamed when complete, so ending at any moment loses only the steps
//! after the newest checkpoint; this says which one that is and how to go on.
use std::path::{Path, PathBuf};

use signal_hook::consts::{SIGINT, SIGTERM};

/// Start a thread that waits for SIGINT or SIGTERM; on one, rank 0 prints
/// what was lost in `run_dir` and every rank exits with 128 + the signal.
pub fn report_interruptions(run_dir: &Path) {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    let run_dir = run_dir.to_path_buf();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let rank0 = orrery_dist::World::from_env().map_or(true, |w| w.rank == 0);
            if rank0 {
                eprintln!("{}", lost(&run_dir, sig));
            }
            std::process::exit(128 + sig);
        }
    });
}

/// The message for signal `sig` in `run_dir`.
fn lost(run_dir: &Path, sig: i32) -> String {
    let name = if sig == SIGINT {
        "Ctrl-C (SIGINT)"
    } else {
        "SIGTERM"
    };
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
