//! orrery-train: the config tree, the training loop and everything it writes.
//!
//! The principal entry points are [`TrainConfig`] (one TOML tree for a run,
//! with `--set` overrides and start-up validation), [`train`] (the loop:
//! AdamW with warm-up and clipping, EMA, safetensors checkpoints with exact
//! resume, TensorBoard and metrics.jsonl, on one process or as DDP or FSDP
//! ranks) and [`sample::sample`] (an
//! autoregressive rollout of a trained world model, written as GIF and PNG and
//! scored against the synthetic world's ground truth).
//!
//! ```no_run
//! use orrery_train::{train, RunOptions, Resume, TrainConfig};
//! let cfg = TrainConfig::load("configs/quickstart.toml".as_ref(), &["run.steps=10".into()]).unwrap();
//! let summary = train(cfg, RunOptions { run_dir: "runs/demo".into(), resume: Resume::Auto, stop_after: None, overwrite: false, stop: Default::default(), kill_at: None, hparams: vec![] }).unwrap();
//! println!("held-out loss {} -> {}", summary.heldout_loss_start, summary.heldout_loss_end);
//! ```
#![deny(missing_docs)]

pub mod agent_scores;
pub mod bench_ckpt;
pub mod checkpoint;
/// The config tree (orrery-config).
pub mod config {
    pub use orrery_config::*;
}
mod eval;
pub mod export;
mod feed;
pub mod generate;
mod geometry;
pub mod media;
pub mod metrics;
pub mod paths;
pub mod progress;
mod records;
mod rundir;
mod runlog;
pub mod sample;
mod saver;
pub mod scores;
mod start;
pub mod stop;
pub mod tensorboard;
mod trainer;
pub mod vae;

pub(crate) use orrery_parallel::io;
/// Errors of a run; each says what to change (orrery-parallel's error type).
pub use orrery_parallel::Error as TrainError;
/// Result alias for this crate.
pub use orrery_parallel::Result;
// orrery-parallel's pieces the loop uses, under their old paths.
/// NCCL sums on the device (orrery-parallel), for `orrery bench comm --nccl`.
#[cfg(feature = "cuda")]
pub use orrery_parallel::nccl;
pub(crate) use orrery_parallel::{fsdp, glue, optim, replica, step};

pub use config::TrainConfig;
pub use rundir::{Resume, RunOptions};
pub use stop::{StopRequest, PREEMPTED_EXIT_CODE};
pub use trainer::{train, train_on, TrainSummary};
