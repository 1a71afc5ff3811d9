//! What the network predicts, and the conversions between the targets, the
//! clean data x_0, the noise ε and the score. Letters: b batch, t frames.
//!
//! Every target is linear in (x_0, ε) at a fixed noise level, and
//! x_t = alpha x_0 + sigma ε, so each conversion is a 2 x 2 linear solve with
//! per-frame coefficients computed on the host.
use burn::tensor::{backend::Backend, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::interpolant::{Coeffs, Interpolant};

/// The network's regression target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The interpolant's velocity dx_t/dt = alpha' x_0 + sigma' ε (flow
    /// matching; for rectified flow v = ε - x_0).
    Velocity,
    /// The noise ε (DDPM, Ho et al. 2020).
    Epsilon,
    /// v = alpha ε - sigma x_0 (Salimans & Ho 2022).
    V,
    /// The clean data x_0.
    X0,
}

impl Prediction {
    /// (e, f) with target = e x_0 + f ε.
    pub fn target_coeffs(self, c: &Coeffs) -> (f64, f64) {
        match self {
            Prediction::Velocity => (c.d_alpha, c.d_sigma),
            Prediction::Epsilon => (0.0, 1.0),
            Prediction::V => (-c.sigma, c.alpha),
            Prediction::X0 => (1.0, 0.0),
        }
    }

    /// [[a, b], [p, q]] with x_0 = a x_t + b out and ε = p x_t + q out, the
    /// inverse of (x_t, out) = (alpha x_0 + sigma ε, e x_0 + f ε). Singular
    /// where the target carries no information about x_0 beyond x_t (ε at
    /// alpha = 0, x_0 at sigma = 0); the determinant is kept away from zero.
    pub fn inverse(self, c: &Coeffs) -> [[f64; 2]; 2] {
        let (e, f) = self.target_coeffs(c);
        let mut det = c.alpha * f - c.sigma * e;
        if det.abs() < 1e-9 {
            det = 1e-9f64.copysign(det);
        }
        [[f / det, -c.sigma / det], [-e / det, c.alpha / det]]
    }

    /// lambda(t) with ||out - target||^2 = lambda ||x0_hat - x_0||^2 at a
    /// fixed x_t: the weight this target's MSE puts on x_0 errors
    /// (epsilon: SNR; v: (alpha^2 + sigma^2)^2 / sigma^2; x_0: 1; rectified-flow
    /// velocity: 1 / t^2).
    pub fn x0_weight(self, c: &Coeffs) -> f64 {
        let (e, f) = self.target_coeffs(c);
        // The x_0 target has f = 0: weight 1 even at sigma = 0.
        let k = if f == 0.0 {
            e
        } else {
            e - f * c.alpha / c.sigma
        };
        k * k
    }
}

/// An interpolant and a prediction target: everything needed to turn a
/// network output into (x_0, ε), a velocity or a score.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Parameterization {
    /// The path x_t.
    pub interpolant: Interpolant,
    /// The network's target.
    pub prediction: Prediction,
}

impl Default for Prediction {
    fn default() -> Self {
        Prediction::Velocity
    }
}

/// Per-frame scalars as a tensor that broadcasts over [b, t, c, h, w].
///
/// # Shapes
/// values: [b * t] -> [b, t, 1, 1, 1]
pub fn per_frame<B: Backend>(
    values: Vec<f32>,
    b: usize,
    t: usize,
    device: &B::Device,
) -> Tensor<B, 5> {
    Tensor::from_data(TensorData::new(values, [b, t, 1, 1, 1]), device)
}

impl Parameterization {
    /// x_0 and ε from the network output at per-frame noise levels.
    ///
    /// # Shapes
    /// x_t, out: [b, t, c, h, w]; levels: [b * t] -> 2 x [b, t, c, h, w]
    pub fn split<B: Backend>(
        &self,
        x_t: Tensor<B, 5>,
        out: Tensor<B, 5>,
        levels: &[f32],
    ) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let [b, t, ..] = x_t.dims();
        let device = x_t.device();
        let mut m = [const { Vec::new() }; 4];
        for &l in levels {
            let inv = self.prediction.inverse(&self.interpolant.coeffs(l as f64));
            for (k, v) in [inv[0][0], inv[0][1], inv[1][0], inv[1][1]]
                .into_iter()
                .enumerate()
            {
                m[k].push(v as f32);
            }
        }
        let [a, bb, p, q] = m.map(|v| per_frame::<B>(v, b, t, &device));
        (x_t.clone() * a + out.clone() * bb, x_t * p + out * q)
    }

    /// The target for clean data and noise at per-frame noise levels.
    ///
    /// # Shapes
    /// x_0, eps: [b, t, c, h, w]; levels: [b * t] -> [b, t, c, h, w]
    pub fn target<B: Backend>(
        &self,
        x_0: Tensor<B, 5>,
        eps: Tensor<B, 5>,
        levels: &[f32],
    ) -> Tensor<B, 5> {
        self.target_masked(x_0, eps, levels, &vec![1.0; levels.len()])
    }

    /// [`Parameterization::target`] with 0 for frames whose `mask` is 0 (out
    /// of the loss): context frames sit at t = 0, where some targets are
    /// infinite (VP velocity: sigma' = inf), and 0 * inf would poison the loss.
    ///
    /// # Shapes
    /// x_0, eps: [b, t, c, h, w]; levels, mask: [b * t] -> [b, t, c, h, w]
    pub fn target_masked<B: Backend>(
        &self,
        x_0: Tensor<B, 5>,
        eps: Tensor<B, 5>,
        levels: &[f32],
        mask: &[f32],
    ) -> Tensor<B, 5> {
        let coefs = levels.iter().zip(mask).map(|(&l, &m)| {
            if m == 0.0 {
                (0.0, 0.0)
            } else {
                self.prediction
                    .target_coeffs(&self.interpolant.coeffs(l as f64))
            }
        });
        mix(x_0, eps, coefs)
    }

    /// x_t = alpha x_0 + sigma ε at per-frame noise levels.
    ///
    /// # Shapes
    /// x_0, eps: [b, t, c, h, w]; levels: [b * t] -> [b, t, c, h, w]
    pub fn noised<B: Backend>(
        &self,
        x_0: Tensor<B, 5>,
        eps: Tensor<B, 5>,
        levels: &[f32],
    ) -> Tensor<B, 5> {
        let coefs = levels.iter().map(|&l| {
            let c = self.interpolant.coeffs(l as f64);
            (c.alpha, c.sigma)
        });
        mix(x_0, eps, coefs)
    }

    /// The score grad log p_t(x_t) = -E[ε | x_t] / sigma_t (Song et al. 2021).
    ///
    /// # Shapes
    /// eps: [b, t, c, h, w]; levels: [b * t] -> [b, t, c, h, w]
    pub fn score<B: Backend>(&self, eps: Tensor<B, 5>, levels: &[f32]) -> Tensor<B, 5> {
        let [b, t, ..] = eps.dims();
        let device = eps.device();
        let inv: Vec<f32> = levels
            .iter()
            .map(|&l| (-1.0 / self.interpolant.coeffs(l as f64).sigma) as f32)
            .collect();
        eps * per_frame::<B>(inv, b, t, &device)
    }
}

/// e x_0 + f ε with one (e, f) per frame.
///
/// # Shapes
/// x_0, eps: [b, t, c, h, w]; coefs: b * t pairs -> [b, t, c, h, w]
fn mix<B: Backend>(
    x_0: Tensor<B, 5>,
    eps: Tensor<B, 5>,
    coefs: impl Iterator<Item = (f64, f64)>,
) -> Tensor<B, 5> {
    let [b, t, ..] = x_0.dims();
    let device = x_0.device();
    let (e, f): (Vec<f32>, Vec<f32>) = coefs.map(|(e, f)| (e as f32, f as f32)).unzip();
    x_0 * per_frame::<B>(e, b, t, &device) + eps * per_frame::<B>(f, b, t, &device)
}
