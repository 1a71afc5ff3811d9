//! Samplers: the Euler probability-flow ODE sampler for rectified flow and the
//! autoregressive world-model rollout built on it.
//! Letters: b batch, t frames, c channels, h/w latent size, k context frames.
use burn::tensor::{backend::Backend, Distribution, Int, Tensor};

use crate::{Denoiser, DiffusionError, Result};

/// Integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 with `steps` Euler
/// steps, for all frames at once.
///
/// # Shapes
/// noise: [b, t, c, h, w], actions: [b, t] -> [b, t, c, h, w]
pub fn euler<B: Backend>(
    model: &impl Denoiser<B>,
    noise: Tensor<B, 5>,
    actions: Option<Tensor<B, 2, Int>>,
    steps: usize,
) -> Result<Tensor<B, 5>> {
    let [b, t, ..] = noise.dims();
    let device = noise.device();
    let mut x = noise;
    for i in 0..steps {
        let (t_now, t_next) = (
            1.0 - i as f64 / steps as f64,
            1.0 - (i + 1) as f64 / steps as f64,
        );
        let level = Tensor::<B, 2>::full([b, t], t_now, &device);
        let v = model.velocity(x.clone(), level, actions.clone())?;
        // Euler step of the PF-ODE: x_{t'} = x_t + (t' - t) v
        x = x + v * (t_next - t_now);
    }
    Ok(x)
}

/// Settings of an autoregressive rollout.
#[derive(Debug, Clone, Copy)]
pub struct RolloutConfig {
    /// Frames the model sees at once (its training clip length).
    pub window: usize,
    /// Euler steps per generated frame.
    pub steps: usize,
    /// Noise level the context frames are shown at (as in training).
    pub context_noise: f64,
}

/// Generate frames one at a time: each new frame starts as noise and is
/// denoised with the last `window - 1` frames (real context, then generated)
/// as clean context, conditioned on its action.
///
/// # Shapes
/// context: [b, k, c, h, w]; actions: [b, k + m] for the context and the m new
/// frames -> the m generated frames [b, m, c, h, w]
pub fn rollout<B: Backend>(
    model: &impl Denoiser<B>,
    context: Tensor<B, 5>,
    actions: Tensor<B, 2, Int>,
    cfg: RolloutConfig,
) -> Result<Tensor<B, 5>> {
    let [b, k, c, h, w] = context.dims();
    let total = actions.dims()[1];
    if k == 0 || total <= k || cfg.window < 2 {
        return Err(DiffusionError::Shape(format!(
            "rollout needs at least one context frame, more actions ({total}) than context frames ({k}) and a window >= 2"
        )));
    }
    let device = context.device();
    let mut frames = context; // [b, k + generated, c, h, w]
    for f in k..total {
        let start = (f + 1).saturating_sub(cfg.window);
        let ctx_len = f - start;
        let ctx = frames.clone().narrow(1, start, ctx_len); // [b, ctx_len, c, h, w]
        let ctx_noise = Tensor::<B, 5>::random(ctx.dims(), Distribution::Normal(0.0, 1.0), &device);
        let tc = cfg.context_noise;
        let ctx = ctx * (1.0 - tc) + ctx_noise * tc;
        let acts = actions.clone().narrow(1, start, ctx_len + 1); // [b, ctx_len + 1]
        let mut x =
            Tensor::<B, 5>::random([b, 1, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        for i in 0..cfg.steps {
            let (t_now, t_next) = (
                1.0 - i as f64 / cfg.steps as f64,
                1.0 - (i + 1) as f64 / cfg.steps as f64,
            );
            let levels = Tensor::cat(
                vec![
                    Tensor::<B, 2>::full([b, ctx_len], tc, &device),
                    Tensor::<B, 2>::full([b, 1], t_now, &device),
                ],
                1,
            ); // [b, ctx_len + 1]
            let window = Tensor::cat(vec![ctx.clone(), x.clone()], 1);
            let v = model
                .velocity(window, levels, Some(acts.clone()))?
                .narrow(1, ctx_len, 1); // [b, 1, c, h, w]
            x = x + v * (t_next - t_now);
        }
        frames = Tensor::cat(vec![frames, x], 1);
    }
    Ok(frames.narrow(1, k, total - k))
}
