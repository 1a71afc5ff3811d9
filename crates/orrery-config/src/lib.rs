//! orrery-config: the one config tree of a run.
//!
//! [`TrainConfig`] holds every section (`run`, `model`, `objective`, `data`,
//! `parallel`, `optim`, `ema`, `checkpoint`, `logging`, `sample`), each with
//! defaults in place. [`TrainConfig::load`] reads a TOML file, applies
//! `--set key=value` overrides, resolves a model preset and validates, and
//! every error says what to change and where (the file's line, or the
//! override). docs/config.md documents every key (a test keeps it so).
//!
//! ```no_run
//! use orrery_config::TrainConfig;
//! let cfg = TrainConfig::load("configs/quickstart.toml".as_ref(), &["optim.lr=3e-4".into()]).unwrap();
//! assert_eq!(cfg.optim.lr, 3e-4);
//! ```
#![deny(missing_docs)]

mod config;
mod overrides;
mod parallel;
mod preset;
mod vae;

pub use config::*;
pub use parallel::*;
pub use vae::{VaeTrainConfig, VaeTrainingConfig};

/// A config problem, with what to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ConfigError>;
