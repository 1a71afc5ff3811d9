//! Writing checkpoints: on the training thread, or (`checkpoint.async`)
//! on a background thread from a host copy of the state taken at the step,
//! with at most one write in flight. Either way a checkpoint goes into a
//! `.tmp` folder that is renamed into place when complete, so a process
//! killed at any moment leaves the previous checkpoint as it was.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use burn::tensor::backend::AutodiffBackend;
use orrery_checkpoint::{SaveHook, SavePoint};
use orrery_dist::{Collective, World};

use crate::checkpoint::{self, Pending, TrainerState};
use crate::config::TrainConfig;
use crate::feed::Feed;
use crate::start::Started;
use crate::{Result, TrainError};

/// The run's checkpoint writer.
pub(crate) struct Saver {
    in_flight: Option<JoinHandle<Result<PathBuf>>>,
    hook: Option<SaveHook>,
}

impl Saver {
    /// A writer that (for tests) kills this process with SIGKILL when a
    /// write reaches `kill_at`.
    pub fn new(kill_at: Option<SavePoint>) -> Self {
        let hook = kill_at.map(|at| -> SaveHook {
            Arc::new(move |point| {
                if point == at {
                    kill_self();
                }
            })
        });
        Saver {
            in_flight: None,
            hook,
        }
    }

    /// Checkpoint step `run.step` into `run_dir`/checkpoints: wait for the
    /// previous write, then write this one (rank 0 writes, under FSDP with
    /// every rank's help), in the background when `checkpoint.async` and
    /// the model is whole. Returns the checkpoint's directory.
    pub fn save<B: AutodiffBackend>(
        &mut self,
        cfg: &TrainConfig,
        run: &Started<B>,
        loader: &Feed,
        (world, comm): (&World, &dyn Collective),
        run_dir: &Path,
    ) -> Result<PathBuf> {
        self.wait()?;
        let state = TrainerState {
            step: run.step,
            cursor: loader.cursor(),
            ema_updates: run.ema.updates,
            skipped_steps: run.skipped_steps,
            config: cfg.clone(),
            world_size: world.size,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let dir = run_dir.join("checkpoints");
        let keep = cfg.checkpoint.keep;
        if cfg.checkpoint.asynchronous {
            if let Ok(snapshot) = run
                .replica
                .snapshot(&run.optim, &run.ema, &run.shapes, comm)
            {
                let done = dir.join(checkpoint::step_dir_name(run.step));
                if let Some(snapshot) = snapshot {
                    let hook = self.hook.clone();
                    self.in_flight = Some(std::thread::spawn(move || {
                        let pending = Pending::begin(&dir, state.step, true)?.with_hook(hook);
                        snapshot.write(&pending)?;
                        Ok(pending.commit(&state, state.step, keep)?)
                    }));
                }
                return Ok(done);
            }
        }
        let pending = Pending::begin(&dir, run.step, world.rank == 0)?.with_hook(self.hook.clone());
        run.replica
            .write_checkpoint(&pending, &run.optim, &run.ema, &run.shapes, comm)?;
        Ok(pending.commit(&state, state.step, keep)?)
    }

    /// Wait for the write in flight, if any, and return its error.
    pub fn wait(&mut self) -> Result<()> {
        match self.in_flight.take() {
            Some(writer) => writer
                .join()
                .map_err(|_| TrainError::Internal("the checkpoint writer panicked".into()))?
                .map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for Saver {
    /// A run that ends on an error still completes the write in flight.
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("error: writing the last checkpoint: {e}");
        }
    }
}

/// End this process as `kill -9` would (no destructors, no flushing).
fn kill_self() {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    // SIGKILL is on its way; never go on.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
