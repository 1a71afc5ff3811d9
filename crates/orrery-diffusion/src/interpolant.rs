//! Interpolants x_t = alpha_t x_0 + sigma_t ε between data (t = 0) and noise
//! (t = 1), with their derivatives and signal-to-noise ratio.
//!
//! Everything here is a host-side function of one noise level t: coefficients
//! are computed per frame on the host and sent to the device as [b, t] tables.
use std::f64::consts::FRAC_PI_2;

use serde::{Deserialize, Serialize};

use crate::{DiffusionError, Result};

/// The path from data to noise.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Interpolant {
    /// alpha = 1 - t, sigma = t (rectified flow, Liu et al. 2022; SD3).
    RectifiedFlow,
    /// Variance preserving with DDPM's linear betas (Ho et al. 2020) in
    /// continuous time (Song et al. 2021, eq. 33): beta(t) = beta_min +
    /// t (beta_max - beta_min), alpha = exp(-t^2 (beta_max - beta_min) / 4
    /// - t beta_min / 2), sigma = sqrt(1 - alpha^2). The defaults 0.1 and 20
    /// are DDPM's 1e-4..0.02 over 1000 steps.
    VpLinear {
        /// beta at t = 0.
        #[serde(default = "beta_min")]
        beta_min: f64,
        /// beta at t = 1.
        #[serde(default = "beta_max")]
        beta_max: f64,
    },
    /// Variance preserving with the cosine schedule (Nichol & Dhariwal 2021,
    /// eq. 17): alpha^2 = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) pi / 2).
    VpCosine {
        /// Offset s that keeps beta small near t = 0.
        #[serde(default = "cosine_s")]
        s: f64,
    },
}

fn beta_min() -> f64 {
    0.1
}
fn beta_max() -> f64 {
    20.0
}
fn cosine_s() -> f64 {
    0.008
}

impl Default for Interpolant {
    fn default() -> Self {
        Interpolant::RectifiedFlow
    }
}

/// The interpolant's coefficients at one noise level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coeffs {
    /// alpha_t, the data coefficient.
    pub alpha: f64,
    /// sigma_t, the noise coefficient.
    pub sigma: f64,
    /// d alpha_t / dt.
    pub d_alpha: f64,
    /// d sigma_t / dt.
    pub d_sigma: f64,
}

impl Coeffs {
    /// Signal-to-noise ratio alpha^2 / sigma^2 (infinite at sigma = 0).
    pub fn snr(&self) -> f64 {
        (self.alpha * self.alpha) / (self.sigma * self.sigma)
    }

    /// Drift f(t) = alpha' / alpha of the forward SDE dx = f x dt + g dW that
    /// has this interpolant's marginals (Song et al. 2021, section 3.4).
    pub fn drift(&self) -> f64 {
        self.d_alpha / self.alpha
    }

    /// g(t)^2 = d sigma^2 / dt - 2 f sigma^2 of that forward SDE.
    pub fn diffusion_sq(&self) -> f64 {
        2.0 * self.sigma * self.d_sigma - 2.0 * self.drift() * self.sigma * self.sigma
    }
}

impl Interpolant {
    /// Check the parameters; the message names the key.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Interpolant::RectifiedFlow => Ok(()),
            Interpolant::VpLinear { beta_min, beta_max }
                if !(beta_min > 0.0 && beta_max > beta_min && beta_max.is_finite()) =>
            {
                Err(DiffusionError::Config(format!(
                    "objective.interpolant: vp_linear needs 0 < beta_min < beta_max (got {beta_min}, {beta_max})"
                )))
            }
            Interpolant::VpCosine { s } if !(s > 0.0 && s < 1.0) => Err(DiffusionError::Config(
                format!("objective.interpolant: vp_cosine needs 0 < s < 1 (got {s})"),
            )),
            _ => Ok(()),
        }
    }

    /// alpha, sigma and their derivatives at t in [0, 1].
    pub fn coeffs(&self, t: f64) -> Coeffs {
        match *self {
            Interpolant::RectifiedFlow => Coeffs {
                alpha: 1.0 - t,
                sigma: t,
                d_alpha: -1.0,
                d_sigma: 1.0,
            },
            Interpolant::VpLinear { beta_min, beta_max } => {
                let beta = beta_min + t * (beta_max - beta_min);
                let alpha = (-0.25 * t * t * (beta_max - beta_min) - 0.5 * t * beta_min).exp();
                vp(alpha, -0.5 * beta * alpha)
            }
            Interpolant::VpCosine { s } => {
                let k = FRAC_PI_2 / (1.0 + s);
                let (u, u0) = ((t + s) * k, s * k);
                // alpha = cos(u) / cos(u0), clamped at 0 past t = 1.
                let alpha = (u.cos() / u0.cos()).max(0.0);
                vp(alpha, -u.sin() * k / u0.cos())
            }
        }
    }

    /// alpha_t^2 / sigma_t^2.
    pub fn snr(&self, t: f64) -> f64 {
        self.coeffs(t).snr()
    }

    /// The level t where sigma_t / alpha_t = `ratio` (EDM's noise level
    /// sigma: x_t / alpha_t = x_0 + sigma ε), in closed form, clamped to
    /// [0, 1].
    pub fn t_at_ratio(&self, ratio: f64) -> f64 {
        // alpha = 1 / sqrt(1 + ratio^2) on the variance-preserving paths.
        let half_log = 0.5 * ratio.mul_add(ratio, 1.0).ln(); // -ln alpha
        let t = match *self {
            // sigma / alpha = t / (1 - t).
            Interpolant::RectifiedFlow => ratio / (1.0 + ratio),
            // -ln alpha = (beta_max - beta_min) t^2 / 4 + beta_min t / 2.
            Interpolant::VpLinear { beta_min, beta_max } => {
                let (a, b) = (0.25 * (beta_max - beta_min), 0.5 * beta_min);
                (-b + (b * b + 4.0 * a * half_log).sqrt()) / (2.0 * a)
            }
            // alpha = cos(u) / cos(u0), u = (t + s) k.
            Interpolant::VpCosine { s } => {
                let k = FRAC_PI_2 / (1.0 + s);
                let u = ((s * k).cos() * (-half_log).exp()).acos();
                u / k - s
            }
        };
        if t.is_nan() {
            1.0 // an infinite ratio: pure noise
        } else {
            t.clamp(0.0, 1.0)
        }
    }
}

/// Coefficients of a variance-preserving path from alpha and its derivative:
/// sigma = sqrt(1 - alpha^2), sigma' = -alpha alpha' / sigma.
fn vp(alpha: f64, d_alpha: f64) -> Coeffs {
    let sigma = (1.0 - alpha * alpha).max(0.0).sqrt();
    Coeffs {
        alpha,
        sigma,
        d_alpha,
        d_sigma: if sigma > 0.0 {
            -alpha * d_alpha / sigma
        } else {
            f64::INFINITY
        },
    }
}
