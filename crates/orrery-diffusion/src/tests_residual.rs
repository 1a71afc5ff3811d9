//! `objective.residual`: the frame after the context frames predicted as a
//! change from the last of them, in the loss and in rollouts. Each check is
//! a closed form that fails if the skip is missing, misplaced or has the
//! wrong coefficient.
use burn::tensor::{Int, Tensor, TensorData};

use crate::sample::{rollout, RolloutConfig, Sampler};
use crate::tests::{sampler_cfg, B};
use crate::{
    sample_rng, Actions, Cond, LossWeighting, ObjectiveConfig, Parameterization, Prediction,
    Result, TrainBatch,
};

fn zero(x: Tensor<B, 5>, _t: Tensor<B, 2>, _c: Cond<B>) -> Result<Tensor<B, 5>> {
    Ok(x.zeros_like())
}

/// A clip whose frames differ: frame f of row r is filled with 0.1 (r + 1) (f + 1).
fn moving_batch(b: usize, t: usize, len: usize) -> (TrainBatch<B>, Vec<f32>) {
    let host: Vec<f32> = (0..b * t * len)
        .map(|i| 0.1 * ((i / (t * len)) as f32 + 1.0) * ((i / len % t) as f32 + 1.0))
        .collect();
    let latents = Tensor::<B, 5>::from_data(
        TensorData::new(host.clone(), [b, t, len, 1, 1]),
        &Default::default(),
    );
    let batch = TrainBatch {
        latents,
        actions: None,
        null_action: 0,
        labels: None,
        null_label: 0,
        sample_ids: (0..b as u64).collect(),
    };
    (batch, host)
}

/// The loss of the zero network, from the plan on the host: frame f's error
/// is its target e x_0 + f ε minus the skip e x_t / alpha of frame f - 1
/// (right after the context only), weighted 1, averaged over the frames in
/// the loss.
fn zero_network_loss_by_hand(cfg: &ObjectiveConfig, residual: bool) -> (f32, f32) {
    let (b, t, len) = (16, 4, 3);
    let (batch, x0) = moving_batch(b, t, len);
    let cfg = ObjectiveConfig {
        residual,
        ..cfg.clone()
    };
    let plan = cfg.plan(7, 3, &batch.sample_ids, [b, t, len, 1, 1]);
    let param = cfg.parameterization();
    let (mut sum, mut frames) = (0.0f64, 0.0f64);
    for i in 0..b * t {
        if plan.loss_mask[i] == 0.0 {
            continue;
        }
        let (e, f) = param
            .prediction
            .target_coeffs(&param.interpolant.coeffs(plan.t[i] as f64));
        let after_context = i % t > 0 && plan.loss_mask[i - 1] == 0.0;
        let mut sq = 0.0;
        for k in 0..len {
            let skip = if residual && after_context {
                // The previous frame as the network sees it: x_t / alpha.
                let c = param.interpolant.coeffs(plan.t[i - 1] as f64);
                let j = (i - 1) * len + k;
                e * (c.alpha * x0[j] as f64 + c.sigma * plan.eps[j] as f64) / c.alpha
            } else {
                0.0
            };
            let target = e * x0[i * len + k] as f64 + f * plan.eps[i * len + k] as f64;
            sq += (target - skip).powi(2);
        }
        sum += sq / len as f64;
        frames += 1.0;
    }
    let got = cfg
        .loss_with_plan(&zero, &batch, plan)
        .unwrap()
        .into_scalar();
    ((sum / frames) as f32, got)
}

#[test]
fn the_loss_skips_from_the_last_context_frame_for_every_target() {
    for prediction in [Prediction::X0, Prediction::Velocity, Prediction::V] {
        let cfg = ObjectiveConfig {
            prediction,
            weighting: LossWeighting::None,
            context_prob: 0.75,
            context_noise: 0.2,
            ..Default::default()
        };
        for residual in [false, true] {
            let (want, got) = zero_network_loss_by_hand(&cfg, residual);
            assert!(
                (want - got).abs() <= 1e-5 * want.max(1.0),
                "{prediction:?} residual {residual}: by hand {want}, loss {got}"
            );
        }
    }
}

#[test]
fn with_x0_a_zero_network_costs_nothing_on_a_static_frame_after_the_context() {
    // Every frame equal: the residual target after the context is exactly 0.
    let (b, t, len) = (8, 3, 4);
    let batch = TrainBatch {
        latents: Tensor::<B, 5>::full([b, t, len, 1, 1], 0.5, &Default::default()),
        actions: None,
        null_action: 0,
        labels: None,
        null_label: 0,
        sample_ids: (0..b as u64).collect(),
    };
    let cfg = ObjectiveConfig {
        prediction: Prediction::X0,
        weighting: LossWeighting::None,
        residual: true,
        ..Default::default()
    };
    // The rollout regime: every frame but the last is context.
    let plan = cfg.next_frame_plan(0, 0, &batch.sample_ids, [b, t, len, 1, 1]);
    let loss: f32 = cfg
        .loss_with_plan(&zero, &batch, plan.clone())
        .unwrap()
        .into_scalar();
    assert_eq!(loss, 0.0);
    let plain = ObjectiveConfig {
        residual: false,
        ..cfg
    };
    let loss: f32 = plain
        .loss_with_plan(&zero, &batch, plan)
        .unwrap()
        .into_scalar();
    assert!((loss - 0.25).abs() < 1e-6, "{loss}");
}

#[test]
fn a_rollout_of_the_zero_x0_network_copies_the_last_context_frame() {
    let device = Default::default();
    let param = Parameterization {
        prediction: Prediction::X0,
        ..Default::default()
    };
    let (b, k, m, len) = (2, 2, 3, 4);
    let context = Tensor::<B, 5>::from_data(
        TensorData::new(
            (0..b * k * len).map(|i| i as f32 * 0.1 - 0.5).collect(),
            [b, k, len, 1, 1],
        ),
        &device,
    );
    let last = context.clone().narrow(1, k - 1, 1); // [b, 1, c, h, w]
    let cond = Cond::actions(Actions::Ids(Tensor::<B, 2, Int>::zeros(
        [b, k + m],
        &device,
    )));
    for (residual, want) in [(true, last.clone()), (false, last.zeros_like())] {
        let cfg = RolloutConfig {
            window: 3,
            context_noise: 0.0,
            residual,
            sampler: crate::SamplerConfig {
                guidance: 2.0,
                ..sampler_cfg(Sampler::Euler, 3, param)
            },
        };
        let out = rollout(
            &zero,
            context.clone(),
            cond.clone(),
            &cfg,
            &mut sample_rng(0, 0, 0),
        )
        .unwrap(); // [b, m, c, h, w]
        let diff: f32 = (out - want.repeat_dim(1, m)).abs().max().into_scalar();
        assert!(diff < 1e-6, "residual {residual}: off by {diff}");
    }
}

#[test]
fn residual_is_refused_where_it_cannot_work() {
    let no_context = ObjectiveConfig {
        residual: true,
        context_prob: 0.0,
        ..Default::default()
    };
    let err = no_context.validate().unwrap_err().to_string();
    assert!(err.contains("objective.context_prob"), "{err}");
    let epsilon = ObjectiveConfig {
        residual: true,
        prediction: Prediction::Epsilon,
        interpolant: crate::Interpolant::VpLinear {
            beta_min: 0.1,
            beta_max: 20.0,
        },
        ..Default::default()
    };
    let err = epsilon.validate().unwrap_err().to_string();
    assert!(err.contains("\"epsilon\""), "{err}");
    assert!(ObjectiveConfig {
        residual: true,
        ..Default::default()
    }
    .validate()
    .is_ok());
}

#[test]
fn a_rollout_with_context_noise_starts_from_the_noised_frame_over_alpha() {
    // Zero x_0 network: the first new frame is the last context frame as the
    // network saw it, x_t / alpha = x + (sigma / alpha) ε at t = 0.2 (rectified
    // flow: 0.25 ε), not the clean frame.
    let device = Default::default();
    let param = Parameterization {
        prediction: Prediction::X0,
        ..Default::default()
    };
    let len = 4096;
    let context = Tensor::<B, 5>::full([1, 2, len, 1, 1], 0.3, &device);
    let cond = Cond::actions(Actions::Ids(Tensor::<B, 2, Int>::zeros([1, 3], &device)));
    let cfg = RolloutConfig {
        window: 3,
        context_noise: 0.2,
        residual: true,
        sampler: sampler_cfg(Sampler::Euler, 2, param),
    };
    let out = rollout(&zero, context, cond, &cfg, &mut sample_rng(0, 0, 0)).unwrap();
    let dev: Vec<f32> = (out - 0.3).into_data().into_vec().unwrap();
    let mean = dev.iter().sum::<f32>() / len as f32;
    let std = (dev.iter().map(|d| (d - mean).powi(2)).sum::<f32>() / len as f32).sqrt();
    assert!(mean.abs() < 0.02, "mean {mean}");
    assert!((std - 0.25).abs() < 0.02, "std {std}");
}
