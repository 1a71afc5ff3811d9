//! The optimizer update, written once for whole models (DDP, one process)
//! and FSDP shards alike: clip the gradient to `optim.grad_clip`, take the
//! scheduled learning rate, one AdamW step per parameter, then the EMA.
//! Callers hand over each parameter (a named tensor or a unit's flat shard)
//! with its gradient summed over ranks, and put the new values back.
use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::optim::{learning_rate, AdamW, Ema};
use crate::{Error, Result};
use orrery_config::TrainConfig;

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

/// The factor that clips the gradient to `optim.grad_clip` (1 when under
/// it); an error, before anything is updated, when the loss or the global
/// gradient norm is not finite.
pub fn clip_factor(cfg: &TrainConfig, step: u64, loss: f64, norm: f64) -> Result<f64> {
    if !loss.is_finite() || !norm.is_finite() {
        return Err(Error::NonFinite {
            step,
            what: format!("loss ({loss}) or gradient norm ({norm})"),
        });
    }
    Ok(if cfg.optim.grad_clip > 0.0 && norm > cfg.optim.grad_clip {
        cfg.optim.grad_clip / norm
    } else {
        1.0
    })
}

/// Step `step` of every parameter in `params`, given the step's loss and
/// global gradient norm: clip, AdamW at the scheduled learning rate, EMA.
/// Returns the new values by name and the learning rate. Nothing is
/// changed when the loss or the norm is not finite.
pub fn update<B: Backend>(
    cfg: &TrainConfig,
    step: u64,
    (loss, norm): (f64, f64),
    (optim, ema): (&mut AdamW<B>, &mut Ema<B>),
    params: Vec<ParamGrad<B>>,
) -> Result<(BTreeMap<String, Tensor<B, 1>>, f64)> {
    let clip = clip_factor(cfg, step, loss, norm)?;
    let lr = learning_rate(&cfg.optim, step, cfg.run.steps);
    optim.begin_step();
    let mut next = BTreeMap::new();
    for p in params {
        let grad = p.grad * clip;
        let value = match p.decay {
            Decay::Mask(mask) => optim.update_masked(&cfg.optim, lr, &p.name, p.value, grad, mask),
            Decay::Yes => optim.update(&cfg.optim, lr, &p.name, p.value, grad, true),
            Decay::No => optim.update(&cfg.optim, lr, &p.name, p.value, grad, false),
        };
        next.insert(p.name, value);
    }
    let d = ema.decay(cfg.ema.decay);
    for (name, value) in &next {
        ema.update(d, name, value.clone());
    }
    ema.updates += 1;
    Ok((next, lr))
}
