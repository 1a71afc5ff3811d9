//! Loss weighting over noise levels.
//!
//! Each choice is defined by the weight it puts on x_0 errors (the
//! "effective weight"): whatever the prediction target, the per-frame weight
//! applied to its MSE is effective(t) / lambda(t), where lambda is the
//! target's own x_0 weight ([`Prediction::x0_weight`]). `orrery weights`
//! prints the table for a config.
use serde::{Deserialize, Serialize};

use crate::interpolant::Coeffs;
use crate::prediction::Prediction;
use crate::{DiffusionError, Result};

/// How the loss is weighted across noise levels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LossWeighting {
    /// The plain MSE of the prediction target (effective weight = lambda).
    #[default]
    None,
    /// Min-SNR-gamma (Hang et al. 2023): effective weight min(SNR, gamma),
    /// the epsilon loss with high-SNR levels capped at gamma.
    MinSnr {
        /// The cap; the paper uses 5.
        gamma: f64,
    },
    /// Effective weight SNR: DDPM's L_simple (the epsilon MSE) under any target.
    Snr,
    /// Effective weight max(SNR, 1): "truncated SNR" (Salimans & Ho 2022),
    /// the x_0 MSE at low SNR and the epsilon MSE at high SNR.
    TruncatedSnr,
}

impl LossWeighting {
    /// Check the parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LossWeighting::MinSnr { gamma } if !(gamma > 0.0 && gamma.is_finite()) => {
                Err(DiffusionError::Config(format!(
                    "objective.weighting: min_snr needs gamma > 0 (got {gamma})"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The weight on x_0 errors at these coefficients.
    pub fn effective(&self, c: &Coeffs, prediction: Prediction) -> f64 {
        let snr = c.snr();
        match *self {
            LossWeighting::None => prediction.x0_weight(c),
            LossWeighting::MinSnr { gamma } => snr.min(gamma),
            LossWeighting::Snr => snr,
            LossWeighting::TruncatedSnr => snr.max(1.0),
        }
    }

    /// The factor applied to the prediction target's MSE.
    pub fn factor(&self, c: &Coeffs, prediction: Prediction) -> f64 {
        match self {
            LossWeighting::None => 1.0,
            _ => self.effective(c, prediction) / prediction.x0_weight(c),
        }
    }
}

/// One row of the weight table (`orrery weights`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightRow {
    /// Noise level (bin centre).
    pub t: f64,
    /// alpha_t.
    pub alpha: f64,
    /// sigma_t.
    pub sigma: f64,
    /// alpha^2 / sigma^2.
    pub snr: f64,
    /// Density of the (shifted) timestep sampler in this bin, from draws.
    pub density: f64,
    /// The factor applied to the target's MSE.
    pub factor: f64,
    /// Weight on x_0 errors (see [`LossWeighting`]).
    pub effective: f64,
}

impl crate::ObjectiveConfig {
    /// The effective weight per noise level, at the centres of `bins` equal
    /// bins of (0, 1), with the sampler's density for clips of `dims`.
    pub fn weight_table(&self, dims: [usize; 5], bins: usize) -> Vec<WeightRow> {
        let alpha = self.shift_alpha(dims);
        let draws = 200_000;
        let mut counts = vec![0usize; bins];
        let mut rng = crate::sample_rng(0, 0, 0);
        for _ in 0..draws {
            let t = crate::shift(self.timesteps.draw_on(&mut rng, &self.interpolant), alpha);
            counts[((t * bins as f64) as usize).min(bins - 1)] += 1;
        }
        (0..bins)
            .map(|i| {
                let t = (i as f64 + 0.5) / bins as f64;
                let c = self.interpolant.coeffs(t);
                WeightRow {
                    t,
                    alpha: c.alpha,
                    sigma: c.sigma,
                    snr: c.snr(),
                    density: counts[i] as f64 * bins as f64 / draws as f64,
                    factor: self.weighting.factor(&c, self.prediction),
                    effective: self.weighting.effective(&c, self.prediction),
                }
            })
            .collect()
    }
}
