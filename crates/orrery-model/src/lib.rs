//! orrery-model: the video diffusion transformer.
//!
//! The principal type is [`Dit`], a DiT (Peebles & Xie 2023) over video latents
//! `[b, t, c, h, w]`: spatial patch embedding per frame, adaLN-Zero blocks
//! conditioned per frame on a timestep embedding plus an action embedding
//! (and per clip on a class label), attention over all tokens with a full,
//! frame-causal or sliding-window mask, learned, sin-cos or 3-D rotary
//! positions, optional QK-norm and SwiGLU, and a final adaLN layer that
//! unpatchifies back to `[b, t, c, h, w]`. DiT's S/B/L/XL sizes are
//! [`Preset`]s; [`DitConfig::num_params`] and
//! [`DitConfig::train_flops_per_sample`] size a model without building it. It is built from a serde [`DitConfig`]
//! and is generic over the burn backend. [`named`] turns any burn module into
//! stable dotted tensor names (`blocks.3.attn.qkv.weight`) and back, which is
//! what checkpoints are made of.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Int, Tensor};
//! use orrery_model::{DitConfig, DitInput};
//!
//! let cfg = DitConfig { frames: 2, height: 8, width: 8, patch_size: 2, hidden: 32, depth: 1, heads: 2, ..DitConfig::default() };
//! let device = Default::default();
//! let model = cfg.init::<Flex>(&device).unwrap();
//! let latents = Tensor::<Flex, 5>::zeros([1, 2, cfg.channels, 8, 8], &device);
//! let t = Tensor::<Flex, 2>::ones([1, 2], &device);
//! let actions = Tensor::<Flex, 2, Int>::zeros([1, 2], &device);
//! let v = model.forward(DitInput { latents, t, actions: Some(actions), labels: None, action_values: None, action_keep: None, context: None }).unwrap();
//! assert_eq!(v.dims(), [1, 2, cfg.channels, 8, 8]);
//! ```
#![deny(missing_docs)]

mod attention;
mod backend;
mod block;
pub mod blockwise;
mod cast;
mod config;
pub mod context;
mod count;
mod dit;
mod embed;
mod flex_ops;
pub mod frame_mask;
mod layers;
pub mod named;
pub mod pointwise;
mod pointwise_nodes;
pub mod rope;
mod tokens;

pub use attention::{naive_attention, AttnContext};
pub use backend::{ModelBackend, TrainBackend};
pub use block::DitBlock;
pub use cast::like;
pub use config::{AttentionImpl, AttentionMask, DitConfig, MlpKind, PosEmbed, Preset, QkNorm};
pub use context::{ContextGroup, ContextShard};
pub use dit::{Dit, DitInput};
pub use embed::{DitEmbed, Stem};
pub use layers::FinalLayer;

/// Errors from building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The configuration cannot describe a model.
    #[error("invalid model config: {0}")]
    Config(String),
    /// An input tensor has the wrong shape.
    #[error("model input {name} has shape {got:?}, expected {expected}")]
    Shape {
        /// Which input.
        name: &'static str,
        /// The shape that was passed.
        got: Vec<usize>,
        /// What was expected, in words.
        expected: String,
    },
    /// Loading named tensors into a module failed.
    #[error("loading weights: {0}")]
    Load(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_blockwise;
#[cfg(test)]
mod tests_options;
#[cfg(test)]
mod tests_pointwise;
