//! Checkpoints: `checkpoints/step_XXXXXXXX/` holding model, EMA and optimizer
//! tensors as safetensors plus `trainer_state.json`; written to a `.tmp`
//! directory and renamed when complete; `checkpoints/latest` names the newest
//! and is replaced atomically; the newest `keep` are kept.
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use orrery_data::Cursor;
use orrery_model::named::{HostTensor, NamedTensors};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::{Result, TrainError};

/// File of the model weights.
pub const MODEL_FILE: &str = "model.safetensors";
/// File of the EMA weights.
pub const EMA_FILE: &str = "ema.safetensors";
/// File of the optimizer moments.
pub const OPTIM_FILE: &str = "optimizer.safetensors";
/// File of the trainer state.
pub const STATE_FILE: &str = "trainer_state.json";

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Where the data loader stands.
    pub cursor: Cursor,
    /// EMA updates taken.
    pub ema_updates: u64,
    /// The resolved config of the run.
    pub config: TrainConfig,
    /// World size that wrote the checkpoint.
    pub world_size: usize,
    /// orrery version that wrote it.
    pub version: String,
}

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Trainer state.
    pub state: TrainerState,
    /// Model weights by name.
    pub model: NamedTensors,
    /// EMA weights by name.
    pub ema: NamedTensors,
    /// Optimizer moments by name.
    pub optimizer: NamedTensors,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint(format!("{}: {e}", path.display()))
}

/// Encode named tensors as safetensors bytes, with string metadata.
pub fn to_safetensors(
    tensors: &NamedTensors,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.shape.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TrainError::Checkpoint(format!("encoding tensors: {e}")))?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| TrainError::Checkpoint(format!("encoding tensors: {e}")))
}

/// Decode a safetensors file (f32 tensors).
pub fn read_safetensors(path: &Path) -> Result<NamedTensors> {
    let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| io_err(path, format!("not a valid safetensors file ({e})")))?;
    let mut out = NamedTensors::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(io_err(
                path,
                format!("tensor {name} is {:?}, expected F32", view.dtype()),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| io_err(path, e))?;
    f.write_all(bytes).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

/// Name of a step's directory.
pub fn step_dir_name(step: u64) -> String {
    format!("step_{step:08}")
}

/// Write `ckpt` under `dir` (the run's checkpoints/), point `latest` at it and
/// prune old ones. Returns the new directory.
pub fn save(dir: &Path, ckpt: &Checkpoint, keep: usize) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let name = step_dir_name(ckpt.state.step);
    let tmp = dir.join(format!("{name}.tmp"));
    let done = dir.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    // One metadata key: safetensors writes metadata in hash-map order, and
    // checkpoints should be byte-for-byte reproducible. The step is in the state file.
    let meta = HashMap::from([("format".to_string(), "orrery".to_string())]);
    write_synced(
        &tmp.join(MODEL_FILE),
        &to_safetensors(&ckpt.model, meta.clone())?,
    )?;
    write_synced(
        &tmp.join(EMA_FILE),
        &to_safetensors(&ckpt.ema, meta.clone())?,
    )?;
    write_synced(
        &tmp.join(OPTIM_FILE),
        &to_safetensors(&ckpt.optimizer, meta)?,
    )?;
    let state = serde_json::to_vec_pretty(&ckpt.state).expect("state serializes");
    write_synced(&tmp.join(STATE_FILE), &state)?;
    if done.exists() {
        fs::remove_dir_all(&done).map_err(|e| io_err(&done, e))?;
    }
    fs::rename(&tmp, &done).map_err(|e| io_err(&done, e))?;
    let latest_tmp = dir.join("latest.tmp");
    write_synced(&latest_tmp, format!("{name}\n").as_bytes())?;
    fs::rename(&latest_tmp, dir.join("latest")).map_err(|e| io_err(&dir.join("latest"), e))?;
    prune(dir, keep)?;
    Ok(done)
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step_") && !n.ends_with(".tmp"))
        })
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for old in &steps[..excess] {
        fs::remove_dir_all(old).map_err(|e| io_err(old, e))?;
    }
    Ok(())
}

/// Find the checkpoint a path names: a checkpoint directory, a run's
/// checkpoints/ directory or a run directory (both via `latest`).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    for dir in [path.join("checkpoints"), path.to_path_buf()] {
        let latest = dir.join("latest");
        if latest.is_file() {
            let name = fs::read_to_string(&latest).map_err(|e| io_err(&latest, e))?;
            let ckpt = dir.join(name.trim());
            if ckpt.join(STATE_FILE).is_file() {
                return Ok(ckpt);
            }
            return Err(io_err(
                &latest,
                format!("points at {}, which holds no checkpoint", ckpt.display()),
            ));
        }
    }
    Err(TrainError::Checkpoint(format!(
        "{} is not a checkpoint, a checkpoints/ directory or a run directory with checkpoints",
        path.display()
    )))
}

/// Read only the trainer state of a checkpoint directory.
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| io_err(&path, format!("not a valid trainer state ({e})")))
}

/// Read a whole checkpoint directory.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    Ok(Checkpoint {
        state: load_state(dir)?,
        model: read_safetensors(&dir.join(MODEL_FILE))?,
        ema: read_safetensors(&dir.join(EMA_FILE))?,
        optimizer: read_safetensors(&dir.join(OPTIM_FILE))?,
    })
}
