//! A run's checkpoints: orrery-checkpoint's files, and the trainer state
//! that goes with them (`trainer_state.json`).
use std::path::Path;

use orrery_data::Cursor;
use serde::{Deserialize, Serialize};

pub use orrery_checkpoint::{
    complete_checkpoints, expect_optimizer_layout, newest, newest_intact, point_latest,
    read_safetensors, resolve, step_dir_name, to_safetensors, verify, write_named, Pending,
    SavePoint, TensorFile, TensorSink, EMA_FILE, MODEL_FILE, OPTIM_FILE, STATE_FILE,
};

use crate::config::TrainConfig;
use crate::Result;

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Where the data loader stands.
    pub cursor: Cursor,
    /// EMA updates taken.
    pub ema_updates: u64,
    /// Steps skipped so far for a non-finite loss or gradient norm (AdamW
    /// has taken `step - skipped_steps`); absent in older checkpoints.
    #[serde(default)]
    pub skipped_steps: u64,
    /// The resolved config of the run.
    pub config: TrainConfig,
    /// World size that wrote the checkpoint.
    pub world_size: usize,
    /// orrery version that wrote it.
    pub version: String,
}

/// Read only the trainer state of a checkpoint directory.
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    Ok(orrery_checkpoint::read_state(dir)?)
}
