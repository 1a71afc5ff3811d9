//! Noise-level (timestep) samplers for flow matching, t in (0, 1), t = 1 is noise.
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{DiffusionError, Result};

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
            _ => Ok(()),
        }
    }

    /// Draw one noise level.
    pub fn draw(&self, rng: &mut impl Rng) -> f64 {
        match *self {
            TimestepSampler::Uniform => rng.random::<f64>(),
            TimestepSampler::LogitNormal { m, s } => {
                let n: f64 = StandardNormal.sample(rng);
                // SD3 eq. 19: pi_ln(t; m, s), sampled as sigmoid(m + s n)
                1.0 / (1.0 + (-(m + s * n)).exp())
            }
        }
    }
}
