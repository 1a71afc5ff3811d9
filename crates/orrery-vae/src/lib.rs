//! orrery-vae: the video autoencoder of latent diffusion's first stage
//! (Rombach et al. 2022): frames to latents and back, so the DiT trains on
//! small latents.
//!
//! [`VaeConfig`] sets the compression: space by 4 or 8, time by 1 or 4, C
//! latent channels. [`VideoVae`] is causal in time: a latent frame depends
//! on its own frames and earlier ones only, and the first frame is encoded
//! on its own, so a world model's context frames can be encoded as they
//! arrive. The bottleneck is a diagonal Gaussian ([`Posterior`]) with a KL
//! term. [`loss`] holds the training losses and [`PatchDisc`] the patch
//! discriminator; orrery-train's `vae` module trains them.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::Tensor;
//! use orrery_vae::VaeConfig;
//!
//! let cfg = VaeConfig { temporal_down: 4, width: 8, width_cap: 16, groups: 4, ..VaeConfig::default() };
//! let vae = cfg.init::<Flex>(&Default::default()).unwrap();
//! let clip = Tensor::<Flex, 5>::zeros([1, 5, 3, 16, 16], &Default::default());
//! let q = vae.encoder.forward(clip);
//! assert_eq!(q.mean.dims(), [1, 2, 4, 4, 4]); // 1 + 4 frames -> 2 latent frames
//! assert_eq!(vae.decoder.forward(q.mean).dims(), [1, 5, 3, 16, 16]);
//! ```
#![deny(missing_docs)]

mod config;
mod disc;
pub mod layers;
pub mod loss;
mod model;

pub use config::VaeConfig;
pub use disc::{DiscConfig, PatchDisc};
pub use model::{Decoder, Encoder, Posterior, VideoVae};

/// Errors of the autoencoder: each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// A setting the architecture cannot build.
    #[error("{0}")]
    Config(String),
    /// Frames that do not fit the autoencoder.
    #[error("{0}")]
    Shape(String),
}

/// The autoencoder's results.
pub type Result<T> = std::result::Result<T, VaeError>;

#[cfg(test)]
mod tests;
