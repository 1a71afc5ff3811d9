//! Samplers for any interpolant and prediction target: Euler and Heun for the
//! probability-flow ODE, DDIM, DDPM ancestral, and Euler-Maruyama for the
//! reverse SDE; classifier-free guidance; and the autoregressive world-model
//! rollout built on them. Every sampler draws its noise from an explicit host
//! RNG, so a seed gives the same frames on any backend.
//! Letters: b batch, t frames, c channels, h/w latent size, k context frames,
//! g frames being generated.
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::prediction::Parameterization;
use crate::timesteps::shift;
use crate::{Cond, Denoiser, DiffusionError, Result};

/// Which integrator turns noise into data.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Sampler {
    /// Euler steps of the probability-flow ODE dx/dt = alpha' x_0 + sigma' ε
    /// (with the model's x_0 and ε).
    #[default]
    Euler,
    /// Heun's second-order method for the same ODE (EDM, Karras et al. 2022,
    /// Algorithm 1: the last step, to t = 0, is an Euler step).
    Heun,
    /// DDIM (Song et al. 2020): x_s = alpha_s x_0 + sqrt(sigma_s^2 - c^2) ε
    /// + c z with c = eta times the DDPM posterior std; eta = 0 is
    /// deterministic.
    Ddim {
        /// Stochasticity in [0, 1].
        #[serde(default)]
        eta: f64,
    },
    /// DDPM ancestral sampling (Ho et al. 2020): a draw from the Gaussian
    /// posterior q(x_s | x_t, x_0) with the model's x_0 (DDIM with eta = 1).
    Ddpm,
    /// Euler-Maruyama for the reverse SDE dx = [f x - g^2 score] dt + g dW
    /// (Song et al. 2021, eq. 6), where f and g come from the interpolant.
    /// A step is taken as an ODE step where g^2 h > 1/2 (rectified flow near
    /// t = 1, where g diverges) and the last step adds no noise.
    EulerMaruyama,
}

impl Sampler {
    /// Check the parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Sampler::Ddim { eta } if !(0.0..=1.0).contains(&eta) => Err(DiffusionError::Config(
                format!("sample.sampler: ddim needs 0 <= eta <= 1 (got {eta})"),
            )),
            _ => Ok(()),
        }
    }
}

/// Everything a sampler needs besides the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// The integrator.
    pub sampler: Sampler,
    /// Steps from t = 1 to t = 0.
    pub steps: usize,
    /// Classifier-free guidance scale w (Ho & Salimans 2021):
    /// out = out_null + w (out_cond - out_null); 1 = no guidance.
    pub guidance: f64,
    /// Resolution/duration shift factor of the time grid (1 = none).
    pub shift: f64,
    /// How the model's output relates to x_0 and ε.
    pub param: Parameterization,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            sampler: Sampler::Euler,
            steps: 10,
            guidance: 1.0,
            shift: 1.0,
            param: Parameterization::default(),
        }
    }
}

impl SamplerConfig {
    /// The noise levels visited: steps + 1 values from 1 down to 0, uniform
    /// before the shift.
    pub fn grid(&self) -> Vec<f64> {
        (0..=self.steps)
            .map(|i| shift(1.0 - i as f64 / self.steps as f64, self.shift))
            .collect()
    }
}

/// Standard normal noise drawn on the host.
///
/// # Shapes
/// -> dims
pub fn host_normal<B: Backend>(
    rng: &mut impl Rng,
    dims: [usize; 5],
    device: &B::Device,
) -> Tensor<B, 5> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_data(TensorData::new(v, dims), device)
}

/// The model's output at per-frame levels, with classifier-free guidance
/// (Ho & Salimans 2021: null + w (cond - null), all conditions dropped
/// together for the null pass) when a condition is given and w is not 1.
///
/// # Shapes
/// x: [b, t, c, h, w], levels: [b * t], cond: actions [b, t], labels [b]
/// -> [b, t, c, h, w]
fn guided<B: Backend>(
    model: &impl Denoiser<B>,
    x: Tensor<B, 5>,
    levels: &[f32],
    cond: &Cond<B>,
    guidance: f64,
) -> Result<Tensor<B, 5>> {
    let [b, t, ..] = x.dims();
    let level_t = Tensor::<B, 2>::from_data(TensorData::new(levels.to_vec(), [b, t]), &x.device());
    let with = model.predict(x.clone(), level_t.clone(), cond.clone())?;
    if cond.is_null() || guidance == 1.0 {
        return Ok(with);
    }
    let null = model.predict(x, level_t, Cond::null())?;
    Ok(null.clone() + (with - null) * guidance)
}

/// One step of `cfg.sampler` from level `t` to `s < t` for the frames being
/// generated. `eval(x, t)` returns the model's (x_0, ε) for them.
///
/// # Shapes
/// x: [b, g, c, h, w] -> [b, g, c, h, w]
fn step<B: Backend>(
    cfg: &SamplerConfig,
    eval: &mut impl FnMut(Tensor<B, 5>, f64) -> Result<(Tensor<B, 5>, Tensor<B, 5>)>,
    x: Tensor<B, 5>,
    t: f64,
    s: f64,
    rng: &mut impl Rng,
) -> Result<Tensor<B, 5>> {
    let interp = cfg.param.interpolant;
    let (ct, cs) = (interp.coeffs(t), interp.coeffs(s));
    let (x0, eps) = eval(x.clone(), t)?;
    let ode_velocity =
        |x0: Tensor<B, 5>, eps: Tensor<B, 5>, c: &crate::Coeffs| x0 * c.d_alpha + eps * c.d_sigma;
    let euler = |x: Tensor<B, 5>, x0, eps| x + ode_velocity(x0, eps, &ct) * (s - t);
    Ok(match cfg.sampler {
        Sampler::Euler => euler(x, x0, eps),
        Sampler::Heun => {
            let u = ode_velocity(x0, eps, &ct);
            let pred = x.clone() + u.clone() * (s - t);
            if s <= 0.0 {
                pred
            } else {
                let (x0s, epss) = eval(pred, s)?;
                x + (u + ode_velocity(x0s, epss, &cs)) * (0.5 * (s - t))
            }
        }
        Sampler::Ddim { eta } => ancestral(x0, eps, &ct, &cs, eta, rng),
        Sampler::Ddpm => ancestral(x0, eps, &ct, &cs, 1.0, rng),
        Sampler::EulerMaruyama => {
            let h = t - s;
            let g2 = ct.diffusion_sq();
            if s <= 0.0 || ct.alpha <= 0.0 || !(g2 * h <= 0.5) {
                euler(x, x0, eps)
            } else {
                // x_s = x_t - h (u + g^2 ε / (2 sigma)) + g sqrt(h) z, with
                // score = -ε / sigma and u the ODE velocity.
                let z = host_normal::<B>(rng, x.dims(), &x.device());
                x - (ode_velocity(x0, eps.clone(), &ct) + eps * (0.5 * g2 / ct.sigma)) * h
                    + z * (g2 * h).sqrt()
            }
        }
    })
}

/// DDIM / DDPM step for a Gaussian interpolant (Kingma et al. 2021, VDM
/// eq. 28 for the posterior): with a = alpha_t / alpha_s and
/// sigma_ts^2 = sigma_t^2 - a^2 sigma_s^2, the posterior std of x_s given
/// (x_t, x_0) is sigma_ts sigma_s / sigma_t.
fn ancestral<B: Backend>(
    x0: Tensor<B, 5>,
    eps: Tensor<B, 5>,
    ct: &crate::Coeffs,
    cs: &crate::Coeffs,
    eta: f64,
    rng: &mut impl Rng,
) -> Tensor<B, 5> {
    let a = ct.alpha / cs.alpha;
    let var_ts = (ct.sigma * ct.sigma - a * a * cs.sigma * cs.sigma).max(0.0);
    let post_std = if ct.sigma > 0.0 {
        (var_ts).sqrt() * cs.sigma / ct.sigma
    } else {
        0.0
    };
    let c = eta * post_std;
    let dir = (cs.sigma * cs.sigma - c * c).max(0.0).sqrt();
    let out = x0.clone() * cs.alpha + eps * dir;
    if c > 0.0 {
        let z = host_normal::<B>(rng, x0.dims(), &x0.device());
        out + z * c
    } else {
        out
    }
}

/// Generate whole clips (or images, t = 1) from noise, all frames at the
/// same level.
///
/// # Shapes
/// dims = [b, t, c, h, w]; cond: actions [b, t], labels [b] -> [b, t, c, h, w]
pub fn generate<B: Backend>(
    model: &impl Denoiser<B>,
    dims: [usize; 5],
    cond: Cond<B>,
    cfg: &SamplerConfig,
    rng: &mut impl Rng,
    device: &B::Device,
) -> Result<Tensor<B, 5>> {
    let x = host_normal::<B>(rng, dims, device);
    let frames = dims[0] * dims[1];
    let mut eval = |x: Tensor<B, 5>, t: f64| {
        let levels = vec![t as f32; frames];
        let out = guided(model, x.clone(), &levels, &cond, cfg.guidance)?;
        Ok(cfg.param.split(x, out, &levels))
    };
    solve(cfg, &mut eval, x, rng)
}

/// Run the time grid from t = 1 to 0.
fn solve<B: Backend>(
    cfg: &SamplerConfig,
    eval: &mut impl FnMut(Tensor<B, 5>, f64) -> Result<(Tensor<B, 5>, Tensor<B, 5>)>,
    mut x: Tensor<B, 5>,
    rng: &mut impl Rng,
) -> Result<Tensor<B, 5>> {
    if cfg.steps == 0 {
        return Err(DiffusionError::Config(
            "sampling needs at least one step".into(),
        ));
    }
    let grid = cfg.grid();
    for w in grid.windows(2) {
        x = step(cfg, eval, x, w[0], w[1], rng)?;
    }
    Ok(x)
}

/// Settings of an autoregressive rollout.
#[derive(Debug, Clone, Copy)]
pub struct RolloutConfig {
    /// Frames the model sees at once (its training clip length).
    pub window: usize,
    /// Noise level the context frames are shown at (as in training).
    pub context_noise: f64,
    /// Each new frame is predicted as a change from the frame before it
    /// (`objective.residual`): e_t times that frame as the network sees it
    /// (noised to `context_noise`, over alpha) is added to its output.
    pub residual: bool,
    /// How each frame is sampled.
    pub sampler: SamplerConfig,
}

/// Generate frames one at a time: each new frame starts as noise and is
/// denoised with the last `window - 1` frames (real context, then generated)
/// as context at `context_noise`, conditioned on its action.
///
/// # Shapes
/// context: [b, k, c, h, w]; cond: actions [b, k + m] (ids) or
/// [b, k + m, A] (vectors) for the context and the m new frames (required),
/// labels [b] (optional, kept for every frame) -> the m generated frames
/// [b, m, c, h, w]
pub fn rollout<B: Backend>(
    model: &impl Denoiser<B>,
    context: Tensor<B, 5>,
    cond: Cond<B>,
    cfg: &RolloutConfig,
    rng: &mut impl Rng,
) -> Result<Tensor<B, 5>> {
    let [b, k, c, h, w] = context.dims();
    let Some(actions) = cond.actions.clone() else {
        return Err(DiffusionError::Shape(
            "a rollout needs an action per frame".into(),
        ));
    };
    let total = actions.dims()[1];
    if k == 0 || total <= k || cfg.window < 2 {
        return Err(DiffusionError::Shape(format!(
            "rollout needs at least one context frame, more actions ({total}) than context frames ({k}) and a window >= 2"
        )));
    }
    let device = context.device();
    let param = cfg.sampler.param;
    let mut frames = context; // [b, k + generated, c, h, w]
    for f in k..total {
        let start = (f + 1).saturating_sub(cfg.window);
        let ctx_len = f - start;
        let ctx = frames.clone().narrow(1, start, ctx_len); // [b, ctx_len, c, h, w]
        let tc = cfg.context_noise as f32;
        let ctx_levels = vec![tc; b * ctx_len];
        let ctx = if tc > 0.0 {
            let z = host_normal::<B>(rng, ctx.dims(), &device);
            param.noised(ctx, z, &ctx_levels)
        } else {
            ctx
        };
        // With `residual`: the last context frame as the network sees it,
        // x_t / alpha, [b, 1, c, h, w].
        let previous = cfg.residual.then(|| {
            ctx.clone().narrow(1, ctx_len - 1, 1)
                / param.interpolant.coeffs(cfg.context_noise).alpha
        });
        let cond = Cond {
            actions: Some(actions.narrow(start, ctx_len + 1)), // [b, ctx_len + 1]
            labels: cond.labels.clone(),
        };
        let mut eval = |x: Tensor<B, 5>, t: f64| {
            let levels: Vec<f32> = (0..b)
                .flat_map(|_| std::iter::repeat_n(tc, ctx_len).chain([t as f32]))
                .collect(); // [b * (ctx_len + 1)]
            let window = Tensor::cat(vec![ctx.clone(), x.clone()], 1);
            let out =
                guided(model, window, &levels, &cond, cfg.sampler.guidance)?.narrow(1, ctx_len, 1); // [b, 1, c, h, w]
            let out = match &previous {
                // Guidance mixes outputs that share the skip, so it adds once.
                Some(previous) => {
                    let e = param
                        .prediction
                        .target_coeffs(&param.interpolant.coeffs(t))
                        .0;
                    out + previous.clone() * e
                }
                None => out,
            };
            Ok(param.split(x, out, &vec![t as f32; b]))
        };
        let x = host_normal::<B>(rng, [b, 1, c, h, w], &device);
        let x = solve(&cfg.sampler, &mut eval, x, rng)?;
        frames = Tensor::cat(vec![frames, x], 1);
    }
    Ok(frames.narrow(1, k, total - k))
}
