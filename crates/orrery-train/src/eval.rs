//! Held-out evaluation during training: the loss with fixed noise, and how
//! much the next-frame prediction depends on the context frames.
//! Letters: b batch, t frames.
use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;
use orrery_data::{Batch, Dataset};
use orrery_diffusion::{Denoiser, TrainBatch};

use crate::config::TrainConfig;
use crate::glue::to_device;
use crate::Result;

/// The first `frames` frames of up to `n` held-out clips, as one batch.
pub(crate) fn heldout_batch(data: &Dataset, frames: usize, n: usize) -> Batch {
    let clips: Vec<_> = data
        .holdout
        .iter()
        .filter(|c| c.shape[0] >= frames)
        .take(n)
        .collect();
    let [_, c, h, w] = clips.first().map(|c| c.shape).unwrap_or([0; 4]);
    let frame_len = c * h * w;
    Batch {
        dims: [clips.len(), frames, c, h, w],
        latents: clips
            .iter()
            .flat_map(|c| c.latents[..frames * frame_len].iter().copied())
            .collect(),
        action_values: clips
            .first()
            .and_then(|c| c.action_values.as_ref())
            .map(|_| {
                clips
                    .iter()
                    .flat_map(|c| {
                        let a = c.action_values.as_deref().unwrap_or_default();
                        let width = a.len() / c.shape[0];
                        a[..frames * width].to_vec()
                    })
                    .collect()
            }),
        actions: clips.first().and_then(|c| c.actions.as_ref()).map(|_| {
            clips
                .iter()
                .flat_map(|c| {
                    c.actions
                        .as_ref()
                        .map(|a| a[..frames].to_vec())
                        .unwrap_or_default()
                })
                .collect()
        }),
        labels: clips
            .first()
            .and_then(|c| c.label)
            .map(|_| clips.iter().map(|c| c.label.unwrap_or(0)).collect()),
        sample_ids: (0..clips.len() as u64).collect(),
        clip_ids: clips.iter().map(|c| c.id.clone()).collect(),
    }
}

/// The held-out loss with fixed noise (key step = u64::MAX), so values from
/// different steps compare.
pub(crate) fn heldout_loss<B: Backend>(
    cfg: &TrainConfig,
    model: &(impl Denoiser<B> + ?Sized),
    batch: &TrainBatch<B>,
) -> Result<f64> {
    let loss = cfg.objective.loss(model, batch, cfg.run.seed, u64::MAX)?;
    Ok(loss.into_scalar().elem::<f64>())
}

/// The noise levels of [`heldout_loss_by_level`]: the centres of 8 equal
/// bins of t in (0, 1).
pub(crate) const LEVELS: [f32; 8] = [
    0.0625, 0.1875, 0.3125, 0.4375, 0.5625, 0.6875, 0.8125, 0.9375,
];

/// The held-out loss at each noise level of [`LEVELS`]: every frame in the
/// loss at that one level, the rest of the noise fixed as in
/// [`heldout_loss`], and no loss weighting (the plain MSE of the
/// prediction target), so that runs with other weightings or timestep
/// samplers compare level by level.
pub(crate) fn heldout_loss_by_level<B: Backend>(
    cfg: &TrainConfig,
    model: &(impl Denoiser<B> + ?Sized),
    batch: &TrainBatch<B>,
) -> Result<Vec<f64>> {
    let mut objective = cfg.objective.clone();
    objective.weighting = orrery_diffusion::LossWeighting::None;
    let dims = batch.latents.dims();
    LEVELS
        .iter()
        .map(|&level| {
            let mut plan = objective.plan(cfg.run.seed, u64::MAX, &batch.sample_ids, dims);
            for (t, in_loss) in plan.t.iter_mut().zip(&plan.loss_mask) {
                if *in_loss > 0.0 {
                    *t = level;
                }
            }
            let loss = objective.loss_with_plan(model, batch, plan)?;
            Ok(loss.into_scalar().elem::<f64>())
        })
        .collect()
}

/// The same batch with every frame but the last taken from the next clip.
pub(crate) fn with_foreign_context(batch: &Batch) -> Batch {
    let [b, t, c, h, w] = batch.dims;
    let clip = t * c * h * w;
    let own_last = (t - 1) * c * h * w;
    let mut out = batch.clone();
    for i in 0..b {
        let j = (i + 1) % b;
        out.latents[i * clip..i * clip + own_last]
            .copy_from_slice(&batch.latents[j * clip..j * clip + own_last]);
    }
    out
}

/// The same batch with the last frame's action replaced by another one:
/// the next of the `num_actions` ids (never the null one), or for
/// continuous actions the negated vector (a zero vector becomes the first
/// unit vector).
pub(crate) fn with_other_last_action(batch: &Batch, num_actions: usize) -> Batch {
    let [b, t, ..] = batch.dims;
    let mut out = batch.clone();
    if let Some(actions) = &mut out.actions {
        for i in 0..b {
            let a = &mut actions[i * t + t - 1];
            *a = (*a + 1) % num_actions.max(1) as i64;
        }
    }
    if let Some(values) = &mut out.action_values {
        let width = values.len() / (b * t).max(1);
        for i in 0..b {
            let v = &mut values[(i * t + t - 1) * width..(i * t + t) * width];
            if v.iter().all(|&x| x == 0.0) {
                v[0] = 1.0;
            } else {
                v.iter_mut().for_each(|x| *x = -*x);
            }
        }
    }
    out
}

/// What the next-frame evaluation measures (fixed noise, so values from
/// different steps compare).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NextFrameEval {
    /// Loss of the last frame given the clip's own context and action.
    pub loss: f64,
    /// How much worse it gets with another clip's context (about 0: the
    /// model ignores its context).
    pub context_gain: f64,
    /// How much worse it gets with another action for the last frame (about
    /// 0: the model ignores its actions).
    pub action_gain: f64,
}

/// The held-out clips on the device, three ways: as they are, with
/// another clip's context, and with another action for the last frame.
pub(crate) struct HeldOut<B: Backend> {
    /// The first model.frames frames of up to a global batch of held-out clips.
    pub own: TrainBatch<B>,
    /// The same with each clip's context frames taken from another clip.
    pub foreign: TrainBatch<B>,
    /// The same with another action for the last frame.
    pub other_action: TrainBatch<B>,
}

impl<B: Backend> HeldOut<B> {
    /// The held-out batches of `data` for `cfg`'s model, on `device`.
    pub(crate) fn new(data: &Dataset, cfg: &TrainConfig, device: &B::Device) -> Self {
        let m = &cfg.model;
        let host = heldout_batch(data, m.frames, cfg.data.global_batch);
        HeldOut {
            own: to_device::<B>(&host, m, device),
            foreign: to_device::<B>(&with_foreign_context(&host), m, device),
            other_action: to_device::<B>(&with_other_last_action(&host, m.num_actions), m, device),
        }
    }
}

/// Next-frame loss with the true context and action, and with each replaced.
pub(crate) fn next_frame_eval<B: Backend>(
    cfg: &TrainConfig,
    model: &(impl Denoiser<B> + ?Sized),
    own: &TrainBatch<B>,
    foreign: &TrainBatch<B>,
    other_action: &TrainBatch<B>,
) -> Result<NextFrameEval> {
    let plan =
        cfg.objective
            .next_frame_plan(cfg.run.seed, u64::MAX, &own.sample_ids, own.latents.dims());
    let obj = &cfg.objective;
    let l_own: f64 = obj
        .loss_with_plan(model, own, plan.clone())?
        .into_scalar()
        .elem();
    let l_foreign: f64 = obj
        .loss_with_plan(model, foreign, plan.clone())?
        .into_scalar()
        .elem();
    let l_action: f64 = obj
        .loss_with_plan(model, other_action, plan)?
        .into_scalar()
        .elem();
    Ok(NextFrameEval {
        loss: l_own,
        context_gain: l_foreign - l_own,
        action_gain: l_action - l_own,
    })
}
