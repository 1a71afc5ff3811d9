//! An autoencoder run's checkpoints: the DiT's layout (a `step_N/` folder
//! renamed into place, checksums, `latest`, the last `checkpoint.keep`) with
//! the autoencoder's tensors, the discriminator's, both AdamW states and
//! the EMA, and a state file that says it is an autoencoder's.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::{AutodiffBackend, Backend};
use orrery_checkpoint::{
    self as checkpoint, write_named, Pending, EMA_FILE, MODEL_FILE, OPTIM_FILE,
};
use orrery_data::Cursor;
use orrery_model::named::{layout, load_host, to_host};
use orrery_parallel::optim::{AdamW, Ema};
use orrery_vae::{VaeConfig, VideoVae};
use serde::{Deserialize, Serialize};

use super::step::VaeRun;
use crate::config::VaeTrainConfig;
use crate::{Result, TrainError};

/// What `kind` says in an autoencoder checkpoint's state file.
pub const KIND: &str = "orrery-vae";
/// The discriminator's weights.
pub const DISC_FILE: &str = "disc.safetensors";
/// The discriminator's AdamW moments.
pub const DISC_OPTIM_FILE: &str = "disc_optimizer.safetensors";

/// The state file of an autoencoder checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeState {
    /// Always [`KIND`].
    pub kind: String,
    /// Optimizer steps taken.
    pub step: u64,
    /// Where the data loader stands.
    pub cursor: Cursor,
    /// The autoencoder's AdamW updates.
    pub optim_steps: u64,
    /// The discriminator's AdamW updates.
    pub disc_optim_steps: u64,
    /// EMA updates.
    pub ema_updates: u64,
    /// Steps skipped for a non-finite loss or gradient norm.
    pub skipped_steps: u64,
    /// The run's resolved config.
    pub config: VaeTrainConfig,
    /// World size that wrote it.
    pub world_size: usize,
    /// orrery version that wrote it.
    pub version: String,
}

/// The shapes of a module's parameters by name.
pub(crate) fn shapes<B: Backend, M: burn::module::Module<B>>(
    m: &M,
) -> BTreeMap<String, Vec<usize>> {
    layout(m).into_iter().collect()
}

/// Write step `run.step`'s checkpoint under `dir` (rank 0 writes; every
/// rank calls it). Returns its directory.
pub(crate) fn save<B: AutodiffBackend>(
    run: &VaeRun<B>,
    cfg: &VaeTrainConfig,
    (cursor, skipped_steps, world_size): (Cursor, u64, usize),
    dir: &Path,
    main: bool,
) -> Result<PathBuf> {
    let pending = Pending::begin(dir, run.step, main)?;
    if main {
        let s = shapes(&run.vae);
        write_named(&pending, MODEL_FILE, &to_host(&run.vae))?;
        write_named(&pending, EMA_FILE, &run.ema.to_host(&s))?;
        write_named(&pending, OPTIM_FILE, &run.optim.to_host(&s))?;
        if let Some(disc) = &run.disc {
            write_named(&pending, DISC_FILE, &to_host(disc))?;
            write_named(
                &pending,
                DISC_OPTIM_FILE,
                &run.disc_optim.to_host(&shapes(disc)),
            )?;
        }
    }
    let state = VaeState {
        kind: KIND.into(),
        step: run.step,
        cursor,
        optim_steps: run.optim.steps,
        disc_optim_steps: run.disc_optim.steps,
        ema_updates: run.ema.updates,
        skipped_steps,
        config: cfg.clone(),
        world_size,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    Ok(pending.commit(&state, run.step, cfg.checkpoint.keep)?)
}

/// The state of the autoencoder checkpoint `path` names (a checkpoint, a
/// checkpoints/ folder or a run directory), and its folder; anything else
/// (a DiT's checkpoint, a folder without one) is refused with what it is.
pub fn read(path: &Path) -> Result<(PathBuf, VaeState)> {
    let dir = checkpoint::resolve(path)?;
    let text =
        std::fs::read_to_string(dir.join(checkpoint::STATE_FILE)).map_err(crate::io(&dir))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        TrainError::Checkpoint(format!(
            "{}: the state file is not JSON ({e})",
            dir.display()
        ))
    })?;
    if value.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
        return Err(TrainError::Checkpoint(format!(
            "{} is not an autoencoder checkpoint (its state file has no kind = \"{KIND}\"; a DiT's checkpoint?): name the run directory or checkpoint of `orrery vae train`",
            dir.display()
        )));
    }
    let state = serde_json::from_value(value).map_err(|e| {
        TrainError::Checkpoint(format!(
            "{}: the autoencoder state file does not parse ({e}); was it written by another orrery version?",
            dir.display()
        ))
    })?;
    Ok((dir, state))
}

fn tensors(dir: &Path, file: &str) -> Result<orrery_model::named::NamedTensors> {
    Ok(checkpoint::read_safetensors(&dir.join(file))?)
}

/// The autoencoder of checkpoint `path` with its EMA weights (`ema`) or its
/// online ones, for encoding and decoding; and its architecture.
pub fn load_vae<B: Backend>(
    path: &Path,
    ema: bool,
    device: &B::Device,
) -> Result<(VideoVae<B>, VaeConfig, PathBuf)> {
    let (dir, state) = read(path)?;
    let cfg = state.config.vae.clone();
    let vae = cfg
        .init::<B>(device)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let file = if ema { EMA_FILE } else { MODEL_FILE };
    let vae = load_host(vae, &tensors(&dir, file)?, device)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", dir.join(file).display())))?;
    Ok((vae, cfg, dir))
}

/// Put checkpoint `dir`'s weights, moments and EMA into a fresh `run`
/// (built from `cfg`, whose architecture must be the checkpoint's).
pub(crate) fn restore<B: AutodiffBackend>(
    run: &mut VaeRun<B>,
    cfg: &VaeTrainConfig,
    dir: &Path,
    device: &B::Device,
) -> Result<VaeState> {
    let (dir, state) = read(dir)?;
    if state.config.vae != cfg.vae
        || state.config.train.disc() != cfg.train.disc()
        || state.config.train.has_disc() != cfg.train.has_disc()
    {
        return Err(TrainError::Config(format!(
            "checkpoint {} was written with another architecture ([vae] or train.disc_*): resume with its config, or start a new run (--resume never)",
            dir.display()
        )));
    }
    let bad = |file: &'static str| {
        let path = dir.join(file);
        move |e: orrery_model::ModelError| {
            TrainError::Checkpoint(format!("{}: {e}", path.display()))
        }
    };
    run.vae =
        load_host(run.vae.clone(), &tensors(&dir, MODEL_FILE)?, device).map_err(bad(MODEL_FILE))?;
    let ema = tensors(&dir, EMA_FILE)?;
    run.ema = Ema::new(
        ema.iter()
            .map(|(n, t)| (n.clone(), t.to_flat(device)))
            .collect(),
    );
    run.ema.updates = state.ema_updates;
    run.optim = moments(&tensors(&dir, OPTIM_FILE)?, device);
    run.optim.steps = state.optim_steps;
    if let Some(disc) = run.disc.take() {
        run.disc =
            Some(load_host(disc, &tensors(&dir, DISC_FILE)?, device).map_err(bad(DISC_FILE))?);
        run.disc_optim = moments(&tensors(&dir, DISC_OPTIM_FILE)?, device);
        run.disc_optim.steps = state.disc_optim_steps;
    }
    run.step = state.step;
    Ok(state)
}

fn moments<B: Backend>(t: &orrery_model::named::NamedTensors, device: &B::Device) -> AdamW<B> {
    let mut a = AdamW::default();
    for (name, v) in t {
        a.insert(name, v.to_flat(device));
    }
    a
}
