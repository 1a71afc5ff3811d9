//! The config of an autoencoder run (`orrery vae train`): the DiT run's
//! `run`, `data`, `parallel`, `optim`, `ema`, `checkpoint` and `logging`
//! sections, the architecture (`[vae]`) and the losses (`[train]`).
use std::path::Path;

use orrery_vae::loss::Reconstruction;
use orrery_vae::{DiscConfig, VaeConfig};
use serde::{Deserialize, Serialize};

use crate::{
    CheckpointConfig, ConfigError, DataConfig, EmaConfig, LoggingConfig, OptimConfig,
    ParallelConfig, Result, RunConfig, Strategy,
};

/// The losses and clips of autoencoder training (`[train]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaeTrainingConfig {
    /// Frames of each training clip, cropped from the data's clips (1 + 4k
    /// with `vae.temporal_down = 4`).
    pub frames: usize,
    /// Reconstruction loss: "l1" or "l2".
    pub reconstruction: Reconstruction,
    /// Weight of the KL term (per latent value, against the reconstruction's
    /// mean per pixel value; LDM's is 1e-6).
    pub kl_weight: f64,
    /// Weight of the patch discriminator's adversarial term, times the
    /// adaptive weight; 0 = no discriminator.
    pub disc_weight: f64,
    /// The step from which the discriminator trains and its term counts.
    pub disc_start: u64,
    /// The discriminator's first width.
    pub disc_width: usize,
    /// The discriminator's strided layers.
    pub disc_layers: usize,
    /// Groups of the discriminator's group norms.
    pub disc_groups: usize,
    /// Held-out clips in the TensorBoard reconstruction strips.
    pub strip_clips: usize,
}

impl Default for VaeTrainingConfig {
    fn default() -> Self {
        Self {
            frames: 1,
            reconstruction: Reconstruction::L1,
            kl_weight: 1e-6,
            disc_weight: 0.0,
            disc_start: 0,
            disc_width: 32,
            disc_layers: 2,
            disc_groups: 8,
            strip_clips: 4,
        }
    }
}

impl VaeTrainingConfig {
    /// The discriminator's shape.
    pub fn disc(&self) -> DiscConfig {
        DiscConfig {
            width: self.disc_width,
            layers: self.disc_layers,
            groups: self.disc_groups,
        }
    }

    /// Whether there is a discriminator.
    pub fn has_disc(&self) -> bool {
        self.disc_weight > 0.0
    }
}

/// Every section of an autoencoder run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VaeTrainConfig {
    /// Name, seed, steps, device.
    pub run: RunConfig,
    /// The pixel clips (Parquet with `channels` channels) and batching.
    pub data: DataConfig,
    /// DDP only (the autoencoder is small); the collectives' timeout.
    pub parallel: ParallelConfig,
    /// The architecture.
    pub vae: VaeConfig,
    /// The losses and clips.
    pub train: VaeTrainingConfig,
    /// AdamW and its schedule (the discriminator's too).
    pub optim: OptimConfig,
    /// EMA of the autoencoder's weights.
    pub ema: EmaConfig,
    /// Checkpoints.
    pub checkpoint: CheckpointConfig,
    /// Console, TensorBoard and metrics.jsonl.
    pub logging: LoggingConfig,
}

impl VaeTrainConfig {
    /// Load a TOML file, apply `key=value` overrides, and validate.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = crate::config::read_text(path)?;
        Self::from_toml(&text, &path.display().to_string(), overrides)
    }

    /// Parse TOML text (named `origin` in messages), apply overrides, validate.
    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let mut value = crate::config::parse_table(text, origin)?;
        if value.contains_key("model") || value.contains_key("objective") {
            return Err(ConfigError(format!(
                "{origin} has [model] or [objective]: it configures a DiT; run it with `orrery train {origin}`"
            )));
        }
        let defaults = toml::Table::try_from(Self::default()).expect("defaults serialize");
        for o in overrides {
            crate::overrides::apply(&mut value, &defaults, o)?;
        }
        let from = crate::overrides::Origin {
            name: origin,
            text,
            overrides,
        };
        let cfg: Self = crate::overrides::deserialize(value, &from)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every section; messages name the key to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ConfigError(m));
        self.vae
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        if self.train.has_disc() {
            self.train
                .disc()
                .validate()
                .map_err(|e| ConfigError(e.to_string()))?;
        }
        if self.vae.latent_frames(self.train.frames).is_none() {
            return bad(format!(
                "train.frames = {} does not fit vae.temporal_down = {}: use 1 + {1}k frames (1, 5, 9, ...)",
                self.train.frames, self.vae.temporal_down
            ));
        }
        let t = &self.train;
        if !(t.kl_weight >= 0.0
            && t.disc_weight >= 0.0
            && t.kl_weight.is_finite()
            && t.disc_weight.is_finite())
        {
            return bad("train.kl_weight and train.disc_weight must be finite and >= 0".into());
        }
        if self.run.steps == 0 || self.data.global_batch == 0 {
            return bad("run.steps and data.global_batch must be at least 1".into());
        }
        if self.parallel.strategy != Strategy::Ddp || self.parallel.context > 1 {
            return bad("an autoencoder trains with parallel.strategy = \"ddp\" and parallel.context = 1 (it is small enough for every rank to hold)".into());
        }
        if self.data.streaming {
            return bad("data.streaming: an autoencoder run reads its clips at start; set data.streaming = false".into());
        }
        crate::config::validate_training(&self.optim, &self.ema, &self.checkpoint, &self.logging)
    }
}
