//! The rectified-flow training objective with per-frame noise levels.
//! Letters: b batch, t frames, c channels, h/w latent size.
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::prediction::{per_frame, Parameterization, Prediction};
use crate::timesteps::{shift, Shift};
use crate::{
    sample_rng, Actions, Cond, Denoiser, DiffusionError, Interpolant, LossWeighting, Result,
    TimestepSampler,
};

/// How noise levels relate across the frames of one clip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameNoise {
    /// One noise level for the whole clip (plain video diffusion).
    Shared,
    /// An independent level per frame (Diffusion Forcing, Chen et al. 2024).
    Independent,
}

/// The training objective: a Gaussian interpolant (rectified flow by
/// default) with per-frame noise, a prediction target, loss weighting,
/// optional clean context frames, and action dropout for classifier-free
/// guidance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    /// The path x_t = alpha_t x_0 + sigma_t ε.
    pub interpolant: Interpolant,
    /// What the network predicts.
    pub prediction: Prediction,
    /// Loss weight across noise levels.
    pub weighting: LossWeighting,
    /// How noise levels are drawn.
    pub timesteps: TimestepSampler,
    /// Resolution/duration shift of the drawn levels (and the sampler's grid).
    pub shift: Shift,
    /// Shared or per-frame noise levels.
    pub frame_noise: FrameNoise,
    /// Probability that a clip gets 1..t-1 leading context frames, kept at
    /// noise level `context_noise` and left out of the loss (the rollout regime).
    pub context_prob: f64,
    /// Noise level of context frames (GameNGen-style augmentation; 0 = clean).
    pub context_noise: f64,
    /// Probability of replacing a clip's actions by the null action (CFG dropout).
    pub action_dropout: f64,
    /// Probability of replacing a clip's class label by the null label,
    /// drawn independently of the action dropout.
    pub label_dropout: f64,
    /// Predict the first frame after the context frames as a change from
    /// the last context frame as the network sees it (x_last = x_t / alpha
    /// at `context_noise`: the clean frame at 0): the network's target
    /// becomes that of x_0 - x_last, and e_t x_last is added to its output
    /// (target = e_t x_0 + f_t ε). With `prediction = "x0"` a zero output
    /// copies the last context frame. Every frame of a rollout is such a
    /// frame; context noise teaches the network to correct the frame it
    /// starts from.
    pub residual: bool,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            interpolant: Interpolant::default(),
            prediction: Prediction::default(),
            weighting: LossWeighting::default(),
            timesteps: TimestepSampler::default(),
            shift: Shift::default(),
            frame_noise: FrameNoise::Independent,
            context_prob: 0.5,
            context_noise: 0.0,
            action_dropout: 0.1,
            label_dropout: 0.1,
            residual: false,
        }
    }
}

/// A clean training batch on the device.
#[derive(Debug, Clone)]
pub struct TrainBatch<B: Backend> {
    /// Clean latents x_0: [b, t, c, h, w].
    pub latents: Tensor<B, 5>,
    /// Actions per frame: ids [b, t] or vectors [b, t, A].
    pub actions: Option<Actions<B>>,
    /// The id that means "no action" (CFG's null condition) for ids.
    pub null_action: i64,
    /// Class labels: [b].
    pub labels: Option<Tensor<B, 1, Int>>,
    /// The id that means "no label".
    pub null_label: i64,
    /// Global sample index of each row (keys the per-sample RNG): [b].
    pub sample_ids: Vec<u64>,
}

/// The random draws for one batch, made on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisePlan {
    /// Noise level per frame: [b, t].
    pub t: Vec<f32>,
    /// Gaussian noise ε: [b, t, c, h, w].
    pub eps: Vec<f32>,
    /// 1 where a frame counts in the loss: [b, t].
    pub loss_mask: Vec<f32>,
    /// Whether each clip's actions are dropped: [b].
    pub drop_actions: Vec<bool>,
    /// Whether each clip's label is dropped: [b].
    pub drop_labels: Vec<bool>,
}

impl ObjectiveConfig {
    /// Check the values; the message names the key.
    pub fn validate(&self) -> Result<()> {
        self.interpolant.validate()?;
        self.weighting.validate()?;
        self.timesteps.validate()?;
        self.shift.validate()?;
        if self.prediction == Prediction::Epsilon && self.interpolant.coeffs(1.0).alpha < 1e-4 {
            return Err(DiffusionError::Config(format!(
                "objective.prediction = \"epsilon\" cannot be turned into x_0 at t = 1, where {:?} has alpha = 0, so sampling from pure noise is undefined: use \"velocity\", \"v\" or \"x0\", or interpolant vp_linear",
                self.interpolant
            )));
        }
        for (key, p) in [
            ("context_prob", self.context_prob),
            ("action_dropout", self.action_dropout),
            ("label_dropout", self.label_dropout),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(DiffusionError::Config(format!(
                    "objective.{key} = {p} must be in [0, 1]"
                )));
            }
        }
        if self.residual && self.context_prob == 0.0 {
            return Err(DiffusionError::Config(
                "objective.residual = true predicts the frame after the context frames as a change from the last of them, but objective.context_prob = 0 gives no clip context frames, so training would never use it while rollouts would: raise objective.context_prob (0.5 is the default)".into(),
            ));
        }
        if self.residual && self.prediction == Prediction::Epsilon {
            return Err(DiffusionError::Config(
                "objective.residual = true changes nothing with objective.prediction = \"epsilon\" (ε does not depend on x_0): use \"x0\" (where a zero output copies the last context frame), \"velocity\" or \"v\", or drop objective.residual".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.context_noise) {
            return Err(DiffusionError::Config(format!(
                "objective.context_noise = {} must be in [0, 1)",
                self.context_noise
            )));
        }
        Ok(())
    }

    /// The interpolant and prediction target.
    pub fn parameterization(&self) -> Parameterization {
        Parameterization {
            interpolant: self.interpolant,
            prediction: self.prediction,
        }
    }

    /// The shift factor for clips of `dims` ([b, t, c, h, w]).
    pub fn shift_alpha(&self, dims: [usize; 5]) -> f64 {
        self.shift.alpha(dims[1] * dims[3] * dims[4])
    }

    /// One drawn noise level, shifted.
    fn draw(&self, rng: &mut impl Rng, alpha: f64) -> f64 {
        shift(self.timesteps.draw_on(rng, &self.interpolant), alpha)
    }

    /// Draw the noise levels, noise, loss mask and action dropout for a batch.
    /// Each row depends only on (seed, step, its sample id).
    pub fn plan(&self, seed: u64, step: u64, sample_ids: &[u64], dims: [usize; 5]) -> NoisePlan {
        let [b, t, c, h, w] = dims;
        let alpha = self.shift_alpha(dims);
        let frame_len = c * h * w;
        let mut plan = NoisePlan {
            t: Vec::with_capacity(b * t),
            eps: Vec::with_capacity(b * t * frame_len),
            loss_mask: Vec::with_capacity(b * t),
            drop_actions: Vec::with_capacity(b),
            drop_labels: Vec::with_capacity(b),
        };
        assert_eq!(sample_ids.len(), b, "one sample id per batch row");
        for &id in sample_ids {
            let mut rng = sample_rng(seed, step, id);
            let shared = self.draw(&mut rng, alpha);
            let mut levels: Vec<f64> = (0..t)
                .map(|_| match self.frame_noise {
                    FrameNoise::Shared => shared,
                    FrameNoise::Independent => self.draw(&mut rng, alpha),
                })
                .collect();
            let context = if t > 1 && rng.random::<f64>() < self.context_prob {
                rng.random_range(1..t)
            } else {
                0
            };
            for (f, level) in levels.iter_mut().enumerate() {
                let is_context = f < context;
                if is_context {
                    *level = self.context_noise;
                }
                plan.t.push(*level as f32);
                plan.loss_mask.push(if is_context { 0.0 } else { 1.0 });
            }
            plan.drop_actions
                .push(rng.random::<f64>() < self.action_dropout);
            // Its own stream, so adding labels leaves the other draws alone.
            plan.drop_labels.push(
                sample_rng(seed, step ^ 0x1ABE_1ABE, id).random::<f64>() < self.label_dropout,
            );
            plan.eps.extend((0..t * frame_len).map(|_| {
                let n: f32 = StandardNormal.sample(&mut rng);
                n
            }));
        }
        plan
    }

    /// The rollout regime: every frame but the last is context (at
    /// `context_noise`, out of the loss), the last frame gets a drawn noise
    /// level, actions are kept. Each row depends only on (seed, step, id).
    pub fn next_frame_plan(
        &self,
        seed: u64,
        step: u64,
        sample_ids: &[u64],
        dims: [usize; 5],
    ) -> NoisePlan {
        let [b, t, ..] = dims;
        let alpha = self.shift_alpha(dims);
        let mut plan = self.plan(seed, step, sample_ids, dims);
        for row in 0..b {
            for f in 0..t {
                let i = row * t + f;
                if f + 1 < t {
                    plan.t[i] = self.context_noise as f32;
                    plan.loss_mask[i] = 0.0;
                } else {
                    plan.t[i] = self
                        .draw(&mut sample_rng(seed, step ^ 0x5EED, sample_ids[row]), alpha)
                        as f32;
                    plan.loss_mask[i] = 1.0;
                }
            }
            plan.drop_actions[row] = false;
            plan.drop_labels[row] = false;
        }
        plan
    }

    /// With `residual`, what is added to the network's output: on each
    /// frame right after the context frames (the frames out of the loss),
    /// e_t times the previous frame as the network sees it, x_t / alpha at
    /// its level (the clean frame when `context_noise` = 0); 0 elsewhere.
    /// `None` without `residual`.
    ///
    /// # Shapes
    /// x_t: [b, t, c, h, w] -> [b, t, c, h, w]
    pub fn residual_skip<B: Backend>(
        &self,
        x_t: &Tensor<B, 5>,
        plan: &NoisePlan,
    ) -> Option<Tensor<B, 5>> {
        let [b, t, c, h, w] = x_t.dims();
        if !self.residual || t < 2 {
            return None;
        }
        let param = self.parameterization();
        let coefs: Vec<f32> = (0..b * t)
            .map(|i| {
                let f = i % t;
                let after_context =
                    f > 0 && plan.loss_mask[i - 1] == 0.0 && plan.loss_mask[i] > 0.0;
                if after_context {
                    let coeffs = param.interpolant.coeffs(plan.t[i] as f64);
                    let alpha = param.interpolant.coeffs(plan.t[i - 1] as f64).alpha;
                    (param.prediction.target_coeffs(&coeffs).0 / alpha) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let device = x_t.device();
        let previous = Tensor::cat(
            vec![
                Tensor::zeros([b, 1, c, h, w], &device),
                x_t.clone().narrow(1, 0, t - 1),
            ],
            1,
        ); // [b, t, c, h, w]: frame f holds frame f - 1
        Some(previous * per_frame::<B>(coefs, b, t, &device))
    }

    /// The masked loss of one batch: the mean over generated frames of
    /// weight(t) ||out - target||^2 / (c h w).
    ///
    /// # Shapes
    /// returns [1]
    pub fn loss<B: Backend>(
        &self,
        model: &(impl Denoiser<B> + ?Sized),
        batch: &TrainBatch<B>,
        seed: u64,
        step: u64,
    ) -> Result<Tensor<B, 1>> {
        let plan = self.plan(seed, step, &batch.sample_ids, batch.latents.dims());
        self.loss_with_plan(model, batch, plan)
    }

    /// The loss of one batch under a given plan (see [`ObjectiveConfig::plan`]).
    ///
    /// # Shapes
    /// returns [1]
    pub fn loss_with_plan<B: Backend>(
        &self,
        model: &(impl Denoiser<B> + ?Sized),
        batch: &TrainBatch<B>,
        plan: NoisePlan,
    ) -> Result<Tensor<B, 1>> {
        let frames: f32 = plan.loss_mask.iter().sum();
        self.loss_part(model, batch, plan, frames)
    }

    /// This batch's part of a loss whose mean runs over `frames_in_loss`
    /// frames in all: with data parallelism each rank passes the global count,
    /// so the ranks' parts (and their gradients) sum to the loss of the whole
    /// global batch, whatever the split.
    ///
    /// # Shapes
    /// returns [1]
    pub fn loss_part<B: Backend>(
        &self,
        model: &(impl Denoiser<B> + ?Sized),
        batch: &TrainBatch<B>,
        mut plan: NoisePlan,
        frames_in_loss: f32,
    ) -> Result<Tensor<B, 1>> {
        let x_0 = batch.latents.clone();
        let dims = x_0.dims();
        let [b, t, c, h, w] = dims;
        let device = x_0.device();
        let param = self.parameterization();
        let t_levels = Tensor::<B, 2>::from_data(TensorData::new(plan.t.clone(), [b, t]), &device);
        // The plan's ε moves to the device; its levels and mask stay for the skip.
        let eps = std::mem::take(&mut plan.eps);
        let eps = Tensor::<B, 5>::from_data(TensorData::new(eps, dims), &device);
        // x_t = alpha_t x_0 + sigma_t ε (rectified flow: (1 - t) x_0 + t ε,
        // SD3 eq. 1) and the target e x_0 + f ε (rectified flow: ε - x_0).
        let x_t = param.noised(x_0.clone(), eps.clone(), &plan.t);
        let skip = self.residual_skip(&x_t, &plan);
        let target = param.target_masked(x_0, eps, &plan.t, &plan.loss_mask);
        let actions = batch.actions.clone().map(|a| {
            let drop: Vec<bool> = plan
                .drop_actions
                .iter()
                .flat_map(|&d| std::iter::repeat_n(d, t))
                .collect();
            let drop = Tensor::<B, 2, Bool>::from_data(TensorData::new(drop, [b, t]), &device);
            match a {
                Actions::Ids(ids) => Actions::Ids(ids.mask_fill(drop, batch.null_action)),
                Actions::Values { values, keep } => Actions::Values {
                    values,
                    keep: keep.mask_fill(drop, 0.0),
                },
            }
        });
        let labels = batch.labels.clone().map(|l| {
            let drop = Tensor::<B, 1, Bool>::from_data(
                TensorData::new(plan.drop_labels.clone(), [b]),
                &device,
            );
            l.mask_fill(drop, batch.null_label)
        });
        let out = model.predict(x_t, t_levels, Cond { actions, labels })?;
        let out = match skip {
            Some(skip) => out + skip,
            None => out,
        };
        let err = out - target;
        let frame_mse = (err.clone() * err)
            .reshape([b, t, c * h * w])
            .mean_dim(2)
            .reshape([b, t]);
        // Frames out of the loss get weight 0; the mean is over frames in it.
        let weights: Vec<f32> = plan
            .loss_mask
            .iter()
            .zip(&plan.t)
            .map(|(&m, &l)| {
                // Context frames (often at t = 0, where SNR is infinite) are
                // out of the loss: weight exactly 0, never 0 * inf.
                if m == 0.0 {
                    return 0.0;
                }
                m * self
                    .weighting
                    .factor(&self.interpolant.coeffs(l as f64), self.prediction)
                    as f32
            })
            .collect();
        let weights = per_frame::<B>(weights, b, t, &device).reshape([b, t]);
        Ok((frame_mse * weights).sum() / frames_in_loss.max(1.0))
    }
}
