//! orrery-diffusion: the math of training and sampling.
//!
//! The principal types are [`ObjectiveConfig`], which turns a clean batch into
//! a regression problem on an [`Interpolant`] x_t = alpha_t x_0 + sigma_t ε
//! (rectified flow by default: x_t = (1 - t) x_0 + t ε, target v = ε - x_0)
//! with one noise level per frame, a [`Prediction`] target, [`LossWeighting`]
//! and a [`TimestepSampler`]; and the samplers in [`sample`] (Euler, Heun,
//! DDIM, DDPM, Euler-Maruyama, guidance, the autoregressive world-model
//! rollout). Both talk to the network only through the [`Denoiser`] trait,
//! which any closure `(x_t, t, cond) -> output` implements.
//!
//! All randomness is drawn on the host from a stream keyed by
//! (seed, step, global sample index) ([`sample_rng`]), so a sample's noise does
//! not depend on which rank or batch position it lands on.
//!
//! ```
//! use orrery_diffusion::{TimestepSampler, sample_rng};
//! let ts = TimestepSampler::LogitNormal { m: 0.0, s: 1.0 };
//! let t = ts.draw(&mut sample_rng(0, 1, 2));
//! assert!(t > 0.0 && t < 1.0);
//! ```
#![deny(missing_docs)]

mod interpolant;
mod objective;
mod prediction;
pub mod sample;
mod timesteps;
mod weighting;

pub use interpolant::{Coeffs, Interpolant};
pub use objective::{FrameNoise, NoisePlan, ObjectiveConfig, TrainBatch};
pub use prediction::{per_frame, Parameterization, Prediction};
pub use sample::{Sampler, SamplerConfig};
pub use timesteps::{shift, Shift, TimestepSampler};
pub use weighting::{LossWeighting, WeightRow};

use burn::tensor::{backend::Backend, Int, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Errors from the diffusion math.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// A config value is out of range.
    #[error("invalid objective config: {0}")]
    Config(String),
    /// The denoiser failed.
    #[error("denoiser failed: {0}")]
    Denoiser(String),
    /// Inputs do not fit together.
    #[error("{0}")]
    Shape(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DiffusionError>;

/// Per-frame actions, discrete or continuous.
#[derive(Debug, Clone)]
pub enum Actions<B: Backend> {
    /// An action id per frame: [b, t]; the model's null id means none.
    Ids(Tensor<B, 2, Int>),
    /// An action vector per frame, [b, t, A], and 1 where the frame's
    /// action counts or 0 where it is the null action, [b, t].
    Values {
        /// The vectors: [b, t, A].
        values: Tensor<B, 3>,
        /// 1 = use the vector, 0 = null action: [b, t].
        keep: Tensor<B, 2>,
    },
}

impl<B: Backend> Actions<B> {
    /// Frames `start..start + len` of every row.
    pub fn narrow(&self, start: usize, len: usize) -> Self {
        match self {
            Actions::Ids(a) => Actions::Ids(a.clone().narrow(1, start, len)),
            Actions::Values { values, keep } => Actions::Values {
                values: values.clone().narrow(1, start, len),
                keep: keep.clone().narrow(1, start, len),
            },
        }
    }

    /// Rows `start..start + len`.
    pub fn rows(&self, start: usize, len: usize) -> Self {
        match self {
            Actions::Ids(a) => Actions::Ids(a.clone().narrow(0, start, len)),
            Actions::Values { values, keep } => Actions::Values {
                values: values.clone().narrow(0, start, len),
                keep: keep.clone().narrow(0, start, len),
            },
        }
    }

    /// [b, t].
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Actions::Ids(a) => a.dims(),
            Actions::Values { keep, .. } => keep.dims(),
        }
    }
}

/// The conditions of a batch. `None` is the null condition for every row;
/// a row is dropped (classifier-free guidance) by giving it the null id
/// (or a keep of 0 for continuous actions).
#[derive(Debug, Clone, Default)]
pub struct Cond<B: Backend> {
    /// Actions per frame: [b, t] (ids) or [b, t, A] (vectors).
    pub actions: Option<Actions<B>>,
    /// Class label per clip: [b].
    pub labels: Option<Tensor<B, 1, Int>>,
}

impl<B: Backend> Cond<B> {
    /// No condition at all: what guidance contrasts against.
    pub fn null() -> Self {
        Self {
            actions: None,
            labels: None,
        }
    }

    /// Only actions.
    pub fn actions(actions: Actions<B>) -> Self {
        Self {
            actions: Some(actions),
            labels: None,
        }
    }

    /// Whether any condition is set.
    pub fn is_null(&self) -> bool {
        self.actions.is_none() && self.labels.is_none()
    }
}

/// A network that predicts its target (velocity, ε, v or x_0; see
/// [`Prediction`]) from noisy latents under conditions [`Cond`].
pub trait Denoiser<B: Backend> {
    /// # Shapes
    /// x_t: [b, t, c, h, w], t: [b, t], cond: actions [b, t], labels [b]
    /// -> [b, t, c, h, w]
    fn predict(&self, x_t: Tensor<B, 5>, t: Tensor<B, 2>, cond: Cond<B>) -> Result<Tensor<B, 5>>;
}

impl<B, F> Denoiser<B> for F
where
    B: Backend,
    F: Fn(Tensor<B, 5>, Tensor<B, 2>, Cond<B>) -> Result<Tensor<B, 5>>,
{
    fn predict(&self, x_t: Tensor<B, 5>, t: Tensor<B, 2>, cond: Cond<B>) -> Result<Tensor<B, 5>> {
        self(x_t, t, cond)
    }
}

/// The RNG for one sample of one step: a pure function of its key, so the same
/// sample draws the same noise on any number of ranks.
pub fn sample_rng(seed: u64, step: u64, sample: u64) -> ChaCha8Rng {
    // splitmix64-style mixing of the three keys into one 64-bit seed.
    let mut z = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ sample.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cond;
#[cfg(test)]
mod tests_edm;
#[cfg(test)]
mod tests_residual;
