//! Closed-form checks of the objective and the samplers.
use burn::backend::Flex;
use burn::tensor::{backend::Backend, Distribution, Int, Tensor};

use crate::sample::{euler, rollout, RolloutConfig};
use crate::{sample_rng, FrameNoise, ObjectiveConfig, Result, TimestepSampler, TrainBatch};

type B = Flex;

/// The exact velocity field for x_0 ~ N(mu, s^2 I) under x_t = (1-t) x_0 + t ε:
/// v = E[ε | x_t] - E[x_0 | x_t], both linear in x_t.
fn gaussian_velocity(
    mu: f64,
    s: f64,
) -> impl Fn(Tensor<B, 5>, Tensor<B, 2>, Option<Tensor<B, 2, Int>>) -> Result<Tensor<B, 5>> {
    move |x_t, t, _| {
        let [b, f, ..] = x_t.dims();
        let t = t.reshape([b, f, 1, 1, 1]);
        let a = t.clone().neg() + 1.0; // 1 - t
        let var = a.clone().powi_scalar(2) * (s * s) + t.clone().powi_scalar(2);
        let centered = x_t - a.clone() * mu;
        let e_x0 = centered.clone() * a * (s * s) / var.clone() + mu;
        let e_eps = centered * t / var;
        Ok(e_eps - e_x0)
    }
}

fn moments(x: Tensor<B, 5>) -> (f64, f64) {
    let v: Vec<f32> = x.into_data().into_vec().unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

#[test]
fn euler_with_the_exact_velocity_lands_on_the_data_distribution() {
    let device = Default::default();
    B::seed(&device, 1);
    let (mu, s) = (1.5, 0.5);
    let noise = Tensor::<B, 5>::random([64, 2, 1, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let x = euler(&gaussian_velocity(mu, s), noise, None, 100).unwrap();
    let (mean, var) = moments(x);
    // 32768 samples: the standard error of the mean is 0.003, of the variance ~0.002.
    assert!((mean - mu).abs() < 0.02, "mean {mean}");
    assert!((var - s * s).abs() < 0.02, "variance {var}");
}

#[test]
fn rollout_generates_the_requested_frames_from_the_model() {
    let device = Default::default();
    B::seed(&device, 2);
    let (mu, s) = (-1.0, 0.3);
    let context = Tensor::<B, 5>::zeros([8, 2, 1, 8, 8], &device);
    let actions = Tensor::<B, 2, Int>::zeros([8, 5], &device);
    let cfg = RolloutConfig {
        window: 3,
        steps: 50,
        context_noise: 0.0,
    };
    let out = rollout(&gaussian_velocity(mu, s), context, actions, cfg).unwrap();
    assert_eq!(out.dims(), [8, 3, 1, 8, 8]);
    let (mean, var) = moments(out);
    assert!(
        (mean - mu).abs() < 0.05 && (var - s * s).abs() < 0.05,
        "{mean} {var}"
    );
}

#[test]
fn logit_normal_median_is_sigmoid_m_and_uniform_mean_is_half() {
    let m = 0.7;
    let ln = TimestepSampler::LogitNormal { m, s: 1.3 };
    let mut rng = sample_rng(3, 0, 0);
    let mut draws: Vec<f64> = (0..20000).map(|_| ln.draw(&mut rng)).collect();
    draws.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = draws[draws.len() / 2];
    assert!(
        (median - 1.0 / (1.0 + (-m).exp())).abs() < 0.01,
        "median {median}"
    );
    let u = TimestepSampler::Uniform;
    let mean = (0..20000).map(|_| u.draw(&mut rng)).sum::<f64>() / 20000.0;
    assert!((mean - 0.5).abs() < 0.01);
    assert!(TimestepSampler::LogitNormal { m: 0.0, s: 0.0 }
        .validate()
        .is_err());
}

#[test]
fn a_sample_draws_the_same_noise_in_any_batch() {
    let cfg = ObjectiveConfig::default();
    let dims = |b| [b, 4, 2, 3, 3];
    let whole = cfg.plan(9, 5, &[10, 11, 12, 13], dims(4));
    let part = cfg.plan(9, 5, &[12], dims(1));
    assert_eq!(&whole.t[8..12], &part.t[..]);
    assert_eq!(&whole.eps[2 * 72..3 * 72], &part.eps[..]);
    assert_eq!(whole.drop_actions[2], part.drop_actions[0]);
    let other_step = cfg.plan(9, 6, &[12], dims(1));
    assert_ne!(other_step.eps, part.eps);
}

#[test]
fn context_frames_are_clean_and_out_of_the_loss() {
    let cfg = ObjectiveConfig {
        context_prob: 1.0,
        context_noise: 0.0,
        ..Default::default()
    };
    let plan = cfg.plan(0, 0, &(0..64).collect::<Vec<_>>(), [64, 4, 1, 1, 1]);
    for row in 0..64 {
        let t = &plan.t[row * 4..row * 4 + 4];
        let m = &plan.loss_mask[row * 4..row * 4 + 4];
        let k = m.iter().filter(|&&x| x == 0.0).count();
        assert!((1..4).contains(&k), "row {row} has {k} context frames");
        assert!(t[..k].iter().all(|&x| x == 0.0) && m[..k].iter().all(|&x| x == 0.0));
        assert!(m[k..].iter().all(|&x| x == 1.0) && t[k..].iter().all(|&x| x > 0.0));
    }
    let shared = ObjectiveConfig {
        context_prob: 0.0,
        frame_noise: FrameNoise::Shared,
        ..Default::default()
    };
    let plan = shared.plan(0, 0, &[1], [1, 4, 1, 1, 1]);
    assert!(plan.t.iter().all(|&x| x == plan.t[0]));
}

#[test]
fn the_loss_of_the_exact_model_is_below_a_wrong_model() {
    let device = Default::default();
    B::seed(&device, 4);
    let (mu, s) = (0.5, 0.5);
    let x0 = Tensor::<B, 5>::random([32, 2, 1, 8, 8], Distribution::Normal(mu, s), &device);
    let batch = TrainBatch {
        latents: x0,
        actions: None,
        null_action: 0,
        sample_ids: (0..32).collect(),
    };
    let cfg = ObjectiveConfig {
        context_prob: 0.0,
        ..Default::default()
    };
    let exact = cfg
        .loss(&gaussian_velocity(mu, s), &batch, 0, 0)
        .unwrap()
        .into_scalar();
    let wrong = cfg
        .loss(&gaussian_velocity(-mu, s), &batch, 0, 0)
        .unwrap()
        .into_scalar();
    assert!(exact < wrong, "exact {exact} wrong {wrong}");
    let zero = |x: Tensor<B, 5>,
                _t: Tensor<B, 2>,
                _a: Option<Tensor<B, 2, Int>>|
     -> Result<Tensor<B, 5>> { Ok(x.zeros_like()) };
    // With v_pred = 0 the loss is E||ε - x_0||^2 / d = 1 + s^2 + mu^2.
    let zero_loss = cfg.loss(&zero, &batch, 0, 0).unwrap().into_scalar() as f64;
    assert!(
        (zero_loss - (1.0 + s * s + mu * mu)).abs() < 0.1,
        "{zero_loss}"
    );
}

#[test]
fn the_next_frame_plan_generates_only_the_last_frame() {
    let cfg = ObjectiveConfig {
        context_noise: 0.05,
        action_dropout: 1.0,
        ..Default::default()
    };
    let plan = cfg.next_frame_plan(1, 2, &[7, 8], [2, 3, 1, 2, 2]);
    assert_eq!(plan.loss_mask, vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
    assert_eq!(&plan.t[..2], &[0.05, 0.05]);
    assert!(plan.t[2] > 0.0 && plan.t[2] < 1.0 && plan.t[2] != 0.05);
    assert_eq!(plan.drop_actions, vec![false, false]);
    // The noise is the same as the training plan's for the same key.
    assert_eq!(plan.eps, cfg.plan(1, 2, &[7, 8], [2, 3, 1, 2, 2]).eps);
}
