//! The one config tree of a run: TOML file, `--set` overrides, validation.
use std::path::Path;

use orrery_diffusion::{ObjectiveConfig, Sampler};
use orrery_model::DitConfig;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, ParallelConfig, Result};

/// Everything a run needs, written resolved to `<run dir>/config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Run identity, length and device.
    pub run: RunConfig,
    /// The DiT.
    pub model: DitConfig,
    /// The training objective.
    pub objective: ObjectiveConfig,
    /// Where the clips come from and how they are batched.
    pub data: DataConfig,
    /// Parallelism.
    pub parallel: ParallelConfig,
    /// Optimizer and learning-rate schedule.
    pub optim: OptimConfig,
    /// Exponential moving average of the weights.
    pub ema: EmaConfig,
    /// Checkpointing.
    pub checkpoint: CheckpointConfig,
    /// Logging and evaluation.
    pub logging: LoggingConfig,
    /// World-model rollouts (end of training and `orrery sample`).
    pub sample: SampleConfig,
}

/// Compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// The CPU (burn's Flex backend).
    Cpu,
    /// One CUDA GPU (build with `--features cuda`).
    Cuda,
}

/// Run identity and length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Name; the default run directory is runs/<name>.
    pub name: String,
    /// Seed of weights, data order and noise.
    pub seed: u64,
    /// Optimizer steps to train for.
    pub steps: u64,
    /// Compute device.
    pub device: Device,
    /// Training compute precision: `f32`, or `bf16` (mixed precision: f32
    /// weights, gradients, AdamW and EMA; the forward and backward run on a
    /// bf16 cast of the weights, with norms, softmax and the loss in f32).
    pub precision: Precision,
    /// CUDA only: run burn's fused kernels (element-wise chains fused with
    /// each other, into reductions and into matmuls). Off by default, since
    /// burn 0.21's fused backward of attention was measured wrong on a GPU
    /// (BENCHMARKS.md, the GPU checks). Check a build with
    /// `orrery bench parity` before turning it on. Ignored on the CPU,
    /// which has no kernel fusion.
    pub fusion: bool,
    /// A step whose loss or gradient norm is not finite is skipped (no
    /// update, counted in metrics); this many in a row stop the run with an
    /// error, keeping its last checkpoint (at least 1; 1 stops at the first).
    pub max_skipped_steps: u64,
}

/// Training compute precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// bf16 compute on f32 master weights.
    Bf16,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            seed: 0,
            steps: 1000,
            device: Device::Cpu,
            precision: Precision::F32,
            fusion: false,
            max_skipped_steps: 5,
        }
    }
}

/// Data source and batching.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset URL: a directory of Parquet files (local path or file://).
    pub url: String,
    /// Clips per optimizer step, over all ranks.
    pub global_batch: usize,
    /// Clips held out for evaluation and rollouts (the last by clip id).
    pub holdout_clips: usize,
    /// Clips per forward/backward pass on a rank; the rank's share of the
    /// global batch is split into micro-batches of this size and their
    /// gradients accumulated (0 = the whole share at once).
    pub micro_batch: usize,
    /// Bad rows (NaN latents, wrong byte counts, out-of-range ids, ...) to
    /// skip and count before giving up; 0 = the first bad row is an error.
    pub max_bad_rows: usize,
    /// Stream row groups as they are needed (ranged reads planned from the
    /// footer index, prefetched) instead of reading every file at start:
    /// for datasets larger than memory. The held-out clips are then the
    /// index's last rows, and the order is the block + shuffle-buffer order.
    pub streaming: bool,
    /// Streaming: rows in the shuffle buffer of the global order (larger
    /// shuffles better and holds more rows in memory).
    pub shuffle_buffer: usize,
    /// Streaming: row groups read at once, ahead of the trainer.
    pub prefetch_blocks: usize,
    /// The autoencoder checkpoint that made these latents (from `orrery vae
    /// train`; "" = the data are pixels): `orrery sample` decodes rollouts
    /// with it into frames for the pictures and the scores.
    pub vae: String,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            url: "data/quickstart".into(),
            global_batch: 16,
            holdout_clips: 16,
            micro_batch: 0,
            max_bad_rows: 0,
            streaming: false,
            shuffle_buffer: 4096,
            prefetch_blocks: 8,
            vae: String::new(),
        }
    }
}

/// Learning-rate schedule after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant at `lr`.
    Constant,
    /// Cosine from `lr` to `lr * min_lr_ratio` at the last step.
    Cosine,
}

/// AdamW (Loshchilov & Hutter 2019) with linear warm-up and clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Adam beta1.
    pub beta1: f64,
    /// Adam beta2.
    pub beta2: f64,
    /// Adam epsilon.
    pub eps: f64,
    /// Decoupled weight decay, applied to weights of rank >= 2.
    pub weight_decay: f64,
    /// Steps of linear warm-up from 0.
    pub warmup_steps: u64,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// Final lr as a fraction of `lr` (cosine).
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 50,
            schedule: Schedule::Cosine,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
        }
    }
}

/// EMA of the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmaConfig {
    /// Decay; the effective decay warms up as min(decay, (1 + n) / (10 + n)).
    pub decay: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self { decay: 0.995 }
    }
}

/// Checkpointing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every this many steps (and at the end).
    pub every: u64,
    /// Keep the newest this many checkpoints.
    pub keep: usize,
    /// Write checkpoints on a background thread from a host copy of the
    /// state taken at the step (at most one in flight), while training
    /// goes on; under FSDP each rank writes its own shards in place.
    #[serde(rename = "async")]
    pub asynchronous: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every: 100,
            keep: 3,
            asynchronous: true,
        }
    }
}

/// Logging and evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Log scalars every this many steps.
    pub every: u64,
    /// Evaluate the held-out loss every this many steps (and at the start and end).
    pub eval_every: u64,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            every: 10,
            eval_every: 100,
        }
    }
}

/// World-model rollout settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// Real frames given as context.
    pub context: usize,
    /// Frames to generate after the context.
    pub frames: usize,
    /// Sampler steps per generated frame.
    pub steps: usize,
    /// Held-out clips to roll out and score.
    pub clips: usize,
    /// The sampler: euler, heun, ddim (eta), ddpm or euler_maruyama.
    pub sampler: Sampler,
    /// Classifier-free guidance scale on the actions and labels (1 = none;
    /// needs objective.action_dropout / label_dropout > 0 for each condition
    /// the model has, so the null condition was trained).
    pub guidance: f64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            context: 4,
            frames: 12,
            steps: 10,
            clips: 16,
            sampler: Sampler::default(),
            guidance: 1.0,
        }
    }
}

impl TrainConfig {
    /// Load a TOML file, apply `key=value` overrides, and validate.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        Self::from_toml(&read_text(path)?, &path.display().to_string(), overrides)
    }

    /// Parse TOML text (named `origin` in messages), apply overrides, validate.
    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let mut value = parse_table(text, origin)?;
        if value.contains_key("vae") || value.contains_key("train") {
            return Err(ConfigError(format!(
                "{origin} has [vae] or [train]: it configures an autoencoder; run it with `orrery vae train {origin}`"
            )));
        }
        let mut defaults =
            toml::Table::try_from(TrainConfig::default()).expect("defaults serialize");
        // Optional keys are absent from the serialized defaults; name them.
        if let Some(toml::Value::Table(m)) = defaults.get_mut("model") {
            m.insert("preset".into(), toml::Value::String(String::new()));
        }
        // Bare variant names become tables before and after the overrides,
        // so `--set objective.weighting.gamma=3` works on a file's
        // `weighting = "min_snr"`, and `--set objective.weighting=none` too.
        crate::overrides::bare_variants(&mut value, &defaults);
        for o in overrides {
            crate::overrides::apply(&mut value, &defaults, o)?;
        }
        crate::overrides::bare_variants(&mut value, &defaults);
        let cli_keys: Vec<String> = overrides
            .iter()
            .filter_map(|o| o.split_once('=').map(|(k, _)| k.trim().to_string()))
            .collect();
        let preset_from_cli = cli_keys.iter().any(|k| k == "model.preset");
        crate::preset::resolve_preset(&mut value, preset_from_cli, &cli_keys)?;
        let from = crate::overrides::Origin {
            name: origin,
            text,
            overrides,
        };
        let cfg: TrainConfig = crate::overrides::deserialize(value, &from)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every section; messages name the key to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ConfigError(m));
        self.model
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        self.objective
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        if self.run.steps == 0 {
            return bad("run.steps must be at least 1".into());
        }
        if self.run.max_skipped_steps == 0 {
            return bad("run.max_skipped_steps = 0: set it to at least 1 (1 stops the run at the first step with a non-finite loss or gradient norm)".into());
        }
        if self.data.global_batch == 0 {
            return bad("data.global_batch must be at least 1".into());
        }
        self.validate_training()?;
        self.validate_sample()?;
        self.validate_model_use()?;
        self.validate_parallel()
    }

    /// The optimizer, EMA, checkpoint and logging sections.
    fn validate_training(&self) -> Result<()> {
        validate_training(&self.optim, &self.ema, &self.checkpoint, &self.logging)
    }

    /// The sample section, and guidance against what the model was trained with.
    fn validate_sample(&self) -> Result<()> {
        let bad = |m: String| Err(ConfigError(m));
        let s = &self.sample;
        if s.context == 0 || s.frames == 0 || s.steps == 0 {
            return bad("sample.context, sample.frames and sample.steps must be at least 1".into());
        }
        s.sampler
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        if !(s.guidance.is_finite() && s.guidance >= 0.0) {
            return bad(format!(
                "sample.guidance = {} must be >= 0 (1 = no guidance)",
                s.guidance
            ));
        }
        if s.guidance != 1.0 {
            let m = &self.model;
            if !m.has_actions() && m.num_classes == 0 {
                return bad(format!(
                    "sample.guidance = {} needs a condition to guide on: the model has neither actions (model.num_actions, model.action_dim) nor labels (model.num_classes); set sample.guidance = 1",
                    s.guidance
                ));
            }
            for (has, key, p) in [
                (
                    m.has_actions(),
                    "action_dropout",
                    self.objective.action_dropout,
                ),
                (
                    m.num_classes > 0,
                    "label_dropout",
                    self.objective.label_dropout,
                ),
            ] {
                if has && p == 0.0 {
                    return bad(format!(
                        "sample.guidance = {} needs the null condition trained: set objective.{key} > 0 (0.1 is usual) or sample.guidance = 1",
                        s.guidance
                    ));
                }
            }
        }
        Ok(())
    }

    /// The model against the objective: tokens of several frames, world models.
    fn validate_model_use(&self) -> Result<()> {
        let bad = |m: String| Err(ConfigError(m));
        if self.model.patch_t > 1
            && (self.objective.frame_noise != orrery_diffusion::FrameNoise::Shared
                || self.objective.context_prob > 0.0)
        {
            return bad(format!(
                "model.patch_t = {} puts several frames in one token, which sees one (averaged) noise level: set objective.frame_noise = \"shared\" and objective.context_prob = 0",
                self.model.patch_t
            ));
        }
        if self.model.frames < 2 && self.model.has_actions() {
            return bad("an action-conditioned world model needs model.frames >= 2 (a context frame and a new one); image models set model.num_actions = 0".into());
        }
        Ok(())
    }
}

/// A config file's text.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))
}

/// A config's text (named `origin` in messages) as a TOML table.
pub(crate) fn parse_table(text: &str, origin: &str) -> Result<toml::Table> {
    toml::from_str(text).map_err(|e| ConfigError(format!("{origin} is not valid TOML: {e}")))
}

/// The optimizer, EMA, checkpoint and logging sections (of a DiT's or an
/// autoencoder's run).
pub(crate) fn validate_training(
    o: &OptimConfig,
    ema: &EmaConfig,
    checkpoint: &CheckpointConfig,
    logging: &LoggingConfig,
) -> Result<()> {
    let bad = |m: String| Err(ConfigError(m));

    if !(o.lr > 0.0 && o.lr.is_finite()) {
        return bad(format!("optim.lr = {} must be positive", o.lr));
    }
    for (k, b) in [("beta1", o.beta1), ("beta2", o.beta2)] {
        if !(0.0..1.0).contains(&b) {
            return bad(format!("optim.{k} = {b} must be in [0, 1)"));
        }
    }
    if o.eps <= 0.0
        || o.weight_decay < 0.0
        || o.grad_clip < 0.0
        || !(0.0..=1.0).contains(&o.min_lr_ratio)
    {
        return bad("optim.eps must be > 0, optim.weight_decay and optim.grad_clip >= 0, optim.min_lr_ratio in [0, 1]".into());
    }
    if !(0.0..1.0).contains(&ema.decay) {
        return bad(format!("ema.decay = {} must be in [0, 1)", ema.decay));
    }
    if checkpoint.every == 0 || checkpoint.keep == 0 {
        return bad("checkpoint.every and checkpoint.keep must be at least 1".into());
    }
    if logging.every == 0 || logging.eval_every == 0 {
        return bad("logging.every and logging.eval_every must be at least 1".into());
    }
    Ok(())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
