//! The optimizer update, written once for whole models (DDP, one process)
//! and FSDP shards alike: clip the gradient to `optim.grad_clip`, take the
//! scheduled learning rate, one AdamW step per parameter, then the EMA.
//! Callers hand over each parameter (a named tensor or a unit's flat shard)
//! with its gradient summed over ranks, and put the new values back.
use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::optim::{learning_rate, AdamW, Ema};
use crate::Result;
use orrery_config::{OptimConfig, TrainConfig};

/// What an update reads of a run's config: AdamW's settings, the run's
/// steps (for the schedule) and the EMA's decay. A DiT run's config gives
/// them (`cfg.into()`), and so does an autoencoder's.
#[derive(Clone, Copy)]
pub struct UpdateConfig<'a> {
    /// AdamW, its schedule and clipping.
    pub optim: &'a OptimConfig,
    /// Steps of the whole run.
    pub steps: u64,
    /// The EMA's decay.
    pub ema_decay: f64,
}

impl<'a> From<&'a TrainConfig> for UpdateConfig<'a> {
    fn from(cfg: &'a TrainConfig) -> Self {
        Self {
            optim: &cfg.optim,
            steps: cfg.run.steps,
            ema_decay: cfg.ema.decay,
        }
    }
}

/// Which elements of a parameter take weight decay.
pub enum Decay<B: Backend> {
    /// None (norms, biases, embeddings).
    No,
    /// All of them.
    Yes,
    /// Those where the mask is 1 (an FSDP shard mixes parameters).
    Mask(Tensor<B, 1>),
}

/// One parameter (or FSDP unit shard) to update.
///
/// # Shapes
/// value, grad, a decay mask: [k]
pub struct ParamGrad<B: Backend> {
    /// Its name (a parameter's, or a unit's prefix).
    pub name: String,
    /// Its current value, flat.
    pub value: Tensor<B, 1>,
    /// Its gradient, summed over ranks and not yet clipped.
    pub grad: Tensor<B, 1>,
    /// Its weight decay.
    pub decay: Decay<B>,
}

/// Whether a step's loss and global gradient norm are both finite: a step
/// that is not is skipped (nothing is updated).
pub fn finite_step(loss: f64, norm: f64) -> bool {
    loss.is_finite() && norm.is_finite()
}

/// The factor that clips the gradient of norm `norm` to `optim.grad_clip`
/// (1 when under it).
fn clip_factor(cfg: &OptimConfig, norm: f64) -> f64 {
    if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
        cfg.grad_clip / norm
    } else {
        1.0
    }
}

/// Step `step` of every parameter in `params`, given the step's loss and
/// global gradient norm: clip, AdamW at the scheduled learning rate, EMA.
/// Returns the new values by name and the learning rate. A step whose loss
/// or norm is not finite is skipped: the values come back unchanged, and
/// neither AdamW's step count nor the EMA moves. Without an EMA (an
/// autoencoder's discriminator) only AdamW steps.
pub fn update<B: Backend>(
    cfg: UpdateConfig,
    step: u64,
    (loss, norm): (f64, f64),
    (optim, ema): (&mut AdamW<B>, Option<&mut Ema<B>>),
    params: Vec<ParamGrad<B>>,
) -> Result<(BTreeMap<String, Tensor<B, 1>>, f64)> {
    let lr = learning_rate(cfg.optim, step, cfg.steps);
    if !finite_step(loss, norm) {
        let unchanged = params.into_iter().map(|p| (p.name, p.value)).collect();
        return Ok((unchanged, lr));
    }
    let clip = clip_factor(cfg.optim, norm);
    optim.begin_step();
    let mut next = BTreeMap::new();
    for p in params {
        let grad = p.grad * clip;
        let value = match p.decay {
            Decay::Mask(mask) => optim.update_masked(cfg.optim, lr, &p.name, p.value, grad, mask),
            Decay::Yes => optim.update(cfg.optim, lr, &p.name, p.value, grad, true),
            Decay::No => optim.update(cfg.optim, lr, &p.name, p.value, grad, false),
        };
        next.insert(p.name, value);
    }
    if let Some(ema) = ema {
        let d = ema.decay(cfg.ema_decay);
        for (name, value) in &next {
            ema.update(d, name, value.clone());
        }
        ema.updates += 1;
    }
    Ok((next, lr))
}
