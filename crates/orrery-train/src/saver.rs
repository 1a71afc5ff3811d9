//! Writing checkpoints: on the training thread, or (`checkpoint.async`)
//! on a background thread from a host copy of the state taken at the step,
//! with at most one write in flight. Either way a checkpoint goes into a
//! `.tmp` folder that is renamed into place when complete, so a process
//! killed at any moment leaves the previous checkpoint as it was.
use orrery_model::TrainBackend;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use orrery_checkpoint::{SaveHook, SavePoint};
use orrery_dist::{Collective, World};
use orrery_parallel::snapshot::Snapshot;

use crate::checkpoint::{self, Pending, TrainerState};
use crate::config::TrainConfig;
use crate::feed::Feed;
use crate::start::Started;
use crate::{Result, TrainError};

/// A checkpoint being written in the background.
enum InFlight {
    /// On the writing rank: a thread that writes the files and commits.
    Commit(JoinHandle<Result<PathBuf>>),
    /// FSDP, on every rank: a thread writing this rank's shards into the
    /// preallocated files; once every rank's is done, rank 0 commits.
    Shards {
        /// None once joined.
        writer: Option<JoinHandle<Result<()>>>,
        pending: Arc<Pending>,
        state: Box<TrainerState>,
        keep: usize,
    },
}

/// The run's checkpoint writer.
pub(crate) struct Saver {
    in_flight: Option<InFlight>,
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

    /// Checkpoint step `run.step` into `run_dir`/checkpoints: finish the
    /// previous write, then write this one: in the background from a host
    /// snapshot when `checkpoint.async` (rank 0 writes a whole model; under
    /// FSDP every rank writes its shards in place), else on this thread
    /// (rank 0 writes, under FSDP with every rank's help to gather).
    /// Every rank calls this together. Returns the checkpoint's directory.
    pub fn save<B: TrainBackend>(
        &mut self,
        cfg: &TrainConfig,
        run: &Started<B>,
        loader: &Feed,
        (world, comm): (&World, &dyn Collective),
        run_dir: &Path,
    ) -> Result<PathBuf> {
        self.wait(comm)?;
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
        let done = dir.join(checkpoint::step_dir_name(run.step));
        let keep = cfg.checkpoint.keep;
        let writes = world.rank == 0;
        if !cfg.checkpoint.asynchronous {
            let pending = Pending::begin(&dir, run.step, writes)?.with_hook(self.hook.clone());
            run.replica
                .write_checkpoint(&pending, &run.optim, &run.ema, &run.shapes, comm)?;
            return Ok(pending.commit(&state, state.step, keep)?);
        }
        let mut snapshot = run
            .replica
            .snapshot(&run.optim, &run.ema, &run.shapes, comm);
        if cfg.run.device != crate::config::Device::Cpu {
            // On a GPU the copy to host is made now, on the training thread,
            // so that the writer never reads the device.
            snapshot.iter_mut().for_each(Snapshot::to_host);
        }
        match snapshot {
            None => {}
            Some(Snapshot::Whole(snapshot)) => {
                let hook = self.hook.clone();
                self.in_flight = Some(InFlight::Commit(std::thread::spawn(move || {
                    yield_to_training();
                    let pending = Pending::begin(&dir, state.step, true)?.with_hook(hook);
                    snapshot.write(&pending, false)?;
                    Ok(pending.commit(&state, state.step, keep)?)
                })));
            }
            Some(Snapshot::Shards(snapshot)) => {
                let pending = Pending::begin(&dir, run.step, writes)?.with_hook(self.hook.clone());
                snapshot.preallocate(&pending)?;
                // The files exist before any rank writes into them.
                comm.barrier()?;
                let pending = Arc::new(pending);
                let shared = pending.clone();
                let writer = std::thread::spawn(move || {
                    yield_to_training();
                    snapshot.write(&shared)
                });
                self.in_flight = Some(InFlight::Shards {
                    writer: Some(writer),
                    pending,
                    state: Box::new(state),
                    keep,
                });
            }
        }
        Ok(done)
    }

    /// After each step, on every rank: once every rank has written its
    /// shards of an FSDP checkpoint (agreed by a one-number all_reduce),
    /// rank 0 commits it in the background. Nothing for other writes.
    pub fn poll(&mut self, comm: &dyn Collective) -> Result<()> {
        let Some(InFlight::Shards { writer, .. }) = &self.in_flight else {
            return Ok(());
        };
        let finished = writer.as_ref().is_none_or(JoinHandle::is_finished);
        let mut done = [if finished { 1.0f32 } else { 0.0 }];
        comm.all_reduce_sum(&mut done)?;
        if done[0] as usize == comm.size() {
            self.commit_shards(comm, true)?;
        }
        Ok(())
    }

    /// Whether this rank still has a write in flight (unfinished).
    pub fn busy(&self) -> bool {
        match &self.in_flight {
            None => false,
            Some(InFlight::Commit(writer)) => !writer.is_finished(),
            Some(InFlight::Shards { .. }) => true,
        }
    }

    /// Finish the write in flight, if any, on every rank together.
    pub fn wait(&mut self, comm: &dyn Collective) -> Result<()> {
        if let Some(InFlight::Shards { .. }) = &self.in_flight {
            // Every rank's shards are on disk before rank 0 commits.
            self.join_shard_writer()?;
            comm.barrier()?;
            self.commit_shards(comm, false)?;
        }
        match self.in_flight.take() {
            Some(InFlight::Commit(writer)) => joined(writer).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Join this rank's shard writer and return its error.
    fn join_shard_writer(&mut self) -> Result<()> {
        if let Some(InFlight::Shards { writer, .. }) = &mut self.in_flight {
            if let Some(writer) = writer.take() {
                joined(writer)?;
            }
        }
        Ok(())
    }

    /// Every rank's shards are written: rank 0 records the checksums and
    /// commits (`background`: on a thread, as [`InFlight::Commit`]).
    fn commit_shards(&mut self, comm: &dyn Collective, background: bool) -> Result<()> {
        self.join_shard_writer()?;
        let Some(InFlight::Shards {
            pending,
            state,
            keep,
            ..
        }) = self.in_flight.take()
        else {
            return Ok(());
        };
        if comm.rank() != 0 {
            return Ok(());
        }
        let pending = Arc::try_unwrap(pending).map_err(|_| {
            TrainError::Internal("a checkpoint writer still holds its files".into())
        })?;
        let commit = move || -> Result<PathBuf> {
            pending.sum_written_files()?;
            Ok(pending.commit(&*state, state.step, keep)?)
        };
        if background {
            self.in_flight = Some(InFlight::Commit(std::thread::spawn(commit)));
        } else {
            commit()?;
        }
        Ok(())
    }
}

/// A writer thread's result.
fn joined<T>(writer: JoinHandle<Result<T>>) -> Result<T> {
    writer
        .join()
        .map_err(|_| TrainError::Internal("the checkpoint writer panicked".into()))?
}

impl Drop for Saver {
    /// A run that ends on an error still completes a whole model's write in
    /// flight; FSDP shards are left in the `.tmp` folder (the other ranks'
    /// cannot be waited for without collectives), which a later checkpoint
    /// of that step replaces.
    fn drop(&mut self) {
        let result = match self.in_flight.take() {
            Some(InFlight::Commit(writer)) => joined(writer).map(|_| ()),
            Some(InFlight::Shards {
                writer: Some(writer),
                ..
            }) => joined(writer),
            Some(InFlight::Shards { writer: None, .. }) => Ok(()),
            None => Ok(()),
        };
        if let Err(e) = result {
            eprintln!("error: writing the last checkpoint: {e}");
        }
    }
}

/// Lower this (writer) thread's scheduling priority (Linux: nice 10 for the
/// thread alone), so that it takes the cores the training leaves idle
/// rather than slowing the steps down.
fn yield_to_training() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id; a failure leaves it as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
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
