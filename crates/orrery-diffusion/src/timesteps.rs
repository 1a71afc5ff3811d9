//! Noise-level (timestep) samplers, t in (0, 1), t = 1 is noise, and the
//! resolution/duration shift.
use std::f64::consts::{FRAC_PI_2, PI};

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{DiffusionError, Interpolant, Result};

/// How training noise levels are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimestepSampler {
    /// t ~ U(0, 1).
    Uniform,
    /// t = sigmoid(m + s n), n ~ N(0, 1) (SD3, Esser et al. 2024, section 3.1).
    LogitNormal {
        /// Location m.
        m: f64,
        /// Scale s > 0.
        s: f64,
    },
    /// Mode sampling with heavy tails (SD3 eq. 20):
    /// t = 1 - u - s (cos^2(pi u / 2) - 1 + u), u ~ U(0, 1). s > 0 puts more
    /// mass in the middle, s < 0 at the ends; monotone for -1 <= s <= 2 / (pi - 2).
    Mode {
        /// Scale s.
        s: f64,
    },
    /// CosMap (SD3 eq. 21-22): t = 1 - 1 / (tan(pi u / 2) + 1), with density
    /// 2 / (pi (1 - 2 t + 2 t^2)).
    CosMap,
    /// EDM's noise levels (Karras et al. 2022, table 1): the level where
    /// sigma_t / alpha_t = exp(p_mean + p_std n), n ~ N(0, 1), on the
    /// configured interpolant. With interpolant vp_cosine, prediction v and
    /// weighting none this is EDM's preconditioning at sigma_data = 1
    /// (docs/config.md, "EDM").
    EdmLogNormal {
        /// Mean of ln sigma; EDM uses -1.2.
        p_mean: f64,
        /// Spread of ln sigma, > 0; EDM uses 1.2.
        p_std: f64,
    },
}

/// The resolution/duration shift t' = a t / (1 + (a - 1) t) (SD3 section
/// 5.3.2): a > 1 moves noise levels towards noise, as larger latents need.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Shift {
    /// No shift (a = 1).
    #[default]
    None,
    /// A fixed a.
    Fixed {
        /// The factor a > 0.
        alpha: f64,
    },
    /// a = sqrt(n / base) with n = frames x height x width latent positions
    /// per clip: the token-count ratio at a fixed patch size (SD3 scales by
    /// the pixel-count ratio).
    Latents {
        /// The latent positions per clip at which a = 1.
        base: usize,
    },
}

impl Shift {
    /// Check the parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Shift::Fixed { alpha } if !(alpha > 0.0 && alpha.is_finite()) => {
                Err(DiffusionError::Config(format!(
                    "objective.shift: fixed needs alpha > 0 (got {alpha})"
                )))
            }
            Shift::Latents { base: 0 } => Err(DiffusionError::Config(
                "objective.shift: latents needs base > 0".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The factor a for clips of `positions` = t h w latent positions.
    pub fn alpha(&self, positions: usize) -> f64 {
        match *self {
            Shift::None => 1.0,
            Shift::Fixed { alpha } => alpha,
            Shift::Latents { base } => (positions as f64 / base as f64).sqrt(),
        }
    }
}

/// t' = a t / (1 + (a - 1) t): maps 0 to 0, 1 to 1 and 1/2 to a / (1 + a).
pub fn shift(t: f64, alpha: f64) -> f64 {
    alpha * t / (1.0 + (alpha - 1.0) * t)
}

impl Default for TimestepSampler {
    fn default() -> Self {
        TimestepSampler::LogitNormal { m: 0.0, s: 1.0 }
    }
}

impl TimestepSampler {
    /// Check the parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            TimestepSampler::LogitNormal { m, s } if !(s > 0.0 && s.is_finite() && m.is_finite()) => {
                Err(DiffusionError::Config(format!(
                    "objective.timesteps: logit_normal needs s > 0 and a finite m (got m = {m}, s = {s})"
                )))
            }
            TimestepSampler::EdmLogNormal { p_mean, p_std }
                if !(p_std > 0.0 && p_std.is_finite() && p_mean.is_finite()) =>
            {
                Err(DiffusionError::Config(format!(
                    "objective.timesteps: edm_log_normal needs p_std > 0 and a finite p_mean (got p_mean = {p_mean}, p_std = {p_std})"
                )))
            }
            TimestepSampler::Mode { s } if !(-1.0..=2.0 / (PI - 2.0)).contains(&s) => {
                Err(DiffusionError::Config(format!(
                    "objective.timesteps: mode needs -1 <= s <= 2 / (pi - 2) = 1.75 so the map stays monotone (got s = {s})"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Draw one noise level (EDM's levels on the rectified-flow path; see
    /// [`TimestepSampler::draw_on`]).
    pub fn draw(&self, rng: &mut impl Rng) -> f64 {
        self.draw_on(rng, &Interpolant::RectifiedFlow)
    }

    /// Draw one noise level for `interpolant` (only EDM's levels depend on it).
    pub fn draw_on(&self, rng: &mut impl Rng, interpolant: &Interpolant) -> f64 {
        match *self {
            TimestepSampler::EdmLogNormal { p_mean, p_std } => {
                let n: f64 = StandardNormal.sample(rng);
                interpolant.t_at_ratio((p_mean + p_std * n).exp())
            }
            TimestepSampler::Uniform => rng.random::<f64>(),
            TimestepSampler::LogitNormal { m, s } => {
                let n: f64 = StandardNormal.sample(rng);
                // SD3 eq. 19: pi_ln(t; m, s), sampled as sigmoid(m + s n)
                1.0 / (1.0 + (-(m + s * n)).exp())
            }
            TimestepSampler::Mode { s } => {
                let u = rng.random::<f64>();
                let c = (FRAC_PI_2 * u).cos();
                1.0 - u - s * (c * c - 1.0 + u)
            }
            TimestepSampler::CosMap => {
                let u = rng.random::<f64>();
                1.0 - 1.0 / ((FRAC_PI_2 * u).tan() + 1.0)
            }
        }
    }
}
