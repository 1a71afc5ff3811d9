//! The autoencoder's losses (Esser et al. 2021, Rombach et al. 2022):
//! reconstruction (L1 or L2), the KL of the posterior, and the patch
//! discriminator's hinge loss, its adversarial term weighted adaptively so
//! that its gradient at the decoder's last layer is as large as the
//! reconstruction's. No perceptual (LPIPS) term: it needs pretrained
//! network weights that orrery does not ship.
use burn::tensor::activation::relu;
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// The reconstruction loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reconstruction {
    /// Mean absolute error.
    L1,
    /// Mean squared error.
    L2,
}

/// The reconstruction loss of `x_hat` against `x`, the mean over every value.
///
/// # Shapes
/// x_hat, x: [b, t, c, h, w] -> [1]
pub fn reconstruction<B: Backend>(
    kind: Reconstruction,
    x_hat: Tensor<B, 5>,
    x: Tensor<B, 5>,
) -> Tensor<B, 1> {
    let d = x_hat - x;
    match kind {
        Reconstruction::L1 => d.abs().mean(),
        Reconstruction::L2 => d.powi_scalar(2).mean(),
    }
}

/// The discriminator's hinge loss: 0.5 (mean relu(1 - real) + mean
/// relu(1 + fake)). It is 0 once every real logit is above 1 and every
/// fake one below -1.
///
/// # Shapes
/// real, fake: [n, 1, h', w'] -> [1]
pub fn hinge_discriminator<B: Backend>(real: Tensor<B, 4>, fake: Tensor<B, 4>) -> Tensor<B, 1> {
    (relu(real.neg() + 1.0).mean() + relu(fake + 1.0).mean()) * 0.5
}

/// The generator's adversarial loss: -mean(fake logits).
///
/// # Shapes
/// fake: [n, 1, h', w'] -> [1]
pub fn generator<B: Backend>(fake: Tensor<B, 4>) -> Tensor<B, 1> {
    fake.mean().neg()
}

/// Esser et al.'s adaptive weight: the norm of the reconstruction loss's
/// gradient at the decoder's last layer over the adversarial loss's,
/// clamped to [0, 1e4] (their eq. 7; 1e-4 keeps it finite).
pub fn adaptive_weight(reconstruction_norm: f64, adversarial_norm: f64) -> f64 {
    (reconstruction_norm / (adversarial_norm + 1e-4)).clamp(0.0, 1e4)
}
