//! Closed-form checks of the objective and the samplers.
use burn::backend::Flex;
use burn::tensor::{backend::Backend, Distribution, Int, Tensor};

use crate::sample::{generate, rollout, RolloutConfig, Sampler, SamplerConfig};
use crate::{
    sample_rng, Actions, Cond, FrameNoise, Interpolant, ObjectiveConfig, Parameterization,
    Prediction, Result, TimestepSampler, TrainBatch,
};

pub(super) type B = Flex;

pub(super) const INTERPOLANTS: [Interpolant; 3] = [
    Interpolant::RectifiedFlow,
    Interpolant::VpLinear {
        beta_min: 0.1,
        beta_max: 20.0,
    },
    Interpolant::VpCosine { s: 0.008 },
];
const PREDICTIONS: [Prediction; 4] = [
    Prediction::Velocity,
    Prediction::Epsilon,
    Prediction::V,
    Prediction::X0,
];

/// The exact model output for x_0 ~ N(mu, s^2 I) under x_t = alpha x_0 +
/// sigma ε: E[x_0 | x_t] and E[ε | x_t] are linear in x_t, and every target
/// is linear in (x_0, ε).
fn gaussian_model(
    mu: f64,
    s: f64,
    param: Parameterization,
) -> impl Fn(Tensor<B, 5>, Tensor<B, 2>, Cond<B>) -> Result<Tensor<B, 5>> {
    move |x_t, t, _| {
        let [b, f, ..] = x_t.dims();
        let levels: Vec<f32> = t.into_data().into_vec().unwrap();
        let (mut k_x, mut k_1) = (Vec::new(), Vec::new());
        for &l in &levels {
            let c = param.interpolant.coeffs(l as f64);
            let var = c.alpha * c.alpha * s * s + c.sigma * c.sigma;
            // E[x_0 | x] = mu + alpha s^2 (x - alpha mu) / var
            // E[ε | x]   = sigma (x - alpha mu) / var
            let (e, g) = param.prediction.target_coeffs(&c);
            let slope = (e * c.alpha * s * s + g * c.sigma) / var;
            k_x.push(slope as f32);
            k_1.push((e * mu - slope * c.alpha * mu) as f32);
        }
        let device = x_t.device();
        Ok(x_t * crate::per_frame::<B>(k_x, b, f, &device)
            + crate::per_frame::<B>(k_1, b, f, &device))
    }
}

fn rf_velocity(
    mu: f64,
    s: f64,
) -> impl Fn(Tensor<B, 5>, Tensor<B, 2>, Cond<B>) -> Result<Tensor<B, 5>> {
    gaussian_model(mu, s, Parameterization::default())
}

pub(super) fn moments(x: Tensor<B, 5>) -> (f64, f64) {
    let v: Vec<f32> = x.into_data().into_vec().unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

pub(super) fn sampler_cfg(
    sampler: Sampler,
    steps: usize,
    param: Parameterization,
) -> SamplerConfig {
    SamplerConfig {
        sampler,
        steps,
        param,
        ..Default::default()
    }
}

#[test]
fn every_sampler_with_the_exact_model_lands_on_the_data_distribution() {
    let device = Default::default();
    let (mu, s) = (1.5, 0.5);
    // 16384 values: the standard error of the mean is ~0.004, of the variance ~0.003.
    let dims = [32, 2, 1, 16, 16];
    let samplers = [
        (Sampler::Euler, 200),
        (Sampler::Heun, 50),
        (Sampler::Ddim { eta: 0.0 }, 200),
        (Sampler::Ddim { eta: 0.5 }, 200),
        (Sampler::Ddpm, 400),
        (Sampler::EulerMaruyama, 400),
    ];
    // Epsilon cannot give x_0 at t = 1 where alpha = 0 (rectified flow, cosine).
    let params = [
        (Interpolant::RectifiedFlow, Prediction::Velocity),
        (INTERPOLANTS[1], Prediction::Epsilon),
        (INTERPOLANTS[2], Prediction::V),
        (INTERPOLANTS[2], Prediction::X0),
    ];
    for (interpolant, prediction) in params {
        let param = Parameterization {
            interpolant,
            prediction,
        };
        for (sampler, steps) in samplers {
            let cfg = sampler_cfg(sampler, steps, param);
            let mut rng = sample_rng(1, 2, 3);
            let x = generate(
                &gaussian_model(mu, s, param),
                dims,
                Cond::null(),
                &cfg,
                &mut rng,
                &device,
            )
            .unwrap();
            let (mean, var) = moments(x);
            assert!(
                (mean - mu).abs() < 0.03 && (var - s * s).abs() < 0.03,
                "{sampler:?} with {param:?}: mean {mean} (want {mu}), variance {var} (want {})",
                s * s
            );
        }
    }
}

#[test]
fn heun_converges_at_second_order_and_euler_at_first() {
    // For Gaussian data the rectified-flow ODE maps noise z to mu + s z exactly.
    let device = Default::default();
    let (mu, s) = (0.7, 0.4);
    let model = rf_velocity(mu, s);
    let error = |sampler, steps| {
        let mut rng = sample_rng(5, 0, 0);
        let cfg = sampler_cfg(sampler, steps, Parameterization::default());
        let dims = [4, 1, 1, 4, 4];
        let mut noise_rng = sample_rng(5, 0, 0);
        let z = crate::sample::host_normal::<B>(&mut noise_rng, dims, &device);
        let x = generate(&model, dims, Cond::null(), &cfg, &mut rng, &device).unwrap();
        let exact = z * s + mu;
        (x - exact).abs().max().into_scalar() as f64
    };
    for (sampler, order) in [(Sampler::Euler, 1), (Sampler::Heun, 2)] {
        let errs: Vec<f64> = [8, 16, 32].iter().map(|&n| error(sampler, n)).collect();
        for w in errs.windows(2) {
            let ratio = w[0] / w[1];
            let want = 2f64.powi(order);
            assert!(
                (ratio / want - 1.0).abs() < 0.25,
                "{sampler:?}: errors {errs:?}, halving the step divided the error by {ratio}, want ~{want}"
            );
        }
    }
}

#[test]
fn predictions_convert_to_x0_noise_and_score_and_back() {
    let device = Default::default();
    let dims = [2, 3, 1, 2, 2];
    let mut rng = sample_rng(7, 0, 0);
    let x0 = crate::sample::host_normal::<B>(&mut rng, dims, &device);
    let eps = crate::sample::host_normal::<B>(&mut rng, dims, &device);
    let levels: Vec<f32> = vec![0.02, 0.1, 0.3, 0.5, 0.8, 0.97];
    for interpolant in INTERPOLANTS {
        for prediction in PREDICTIONS {
            let p = Parameterization {
                interpolant,
                prediction,
            };
            let x_t = p.noised(x0.clone(), eps.clone(), &levels);
            let out = p.target(x0.clone(), eps.clone(), &levels);
            let (x0_back, eps_back) = p.split(x_t.clone(), out, &levels);
            let err = |a: Tensor<B, 5>, b: Tensor<B, 5>| (a - b).abs().max().into_scalar();
            assert!(err(x0_back, x0.clone()) < 1e-3, "{p:?}: x_0");
            assert!(err(eps_back, eps.clone()) < 1e-3, "{p:?}: ε");
            // The score of x_t given x_0 is -(x_t - alpha x_0) / sigma^2 = -ε / sigma.
            let score = p.score(eps.clone(), &levels);
            let direct: Vec<f32> = levels
                .iter()
                .map(|&l| {
                    let c = interpolant.coeffs(l as f64);
                    (-1.0 / (c.sigma * c.sigma)) as f32
                })
                .collect();
            let alphas: Vec<f32> = levels
                .iter()
                .map(|&l| interpolant.coeffs(l as f64).alpha as f32)
                .collect();
            let want = (x_t - x0.clone() * crate::per_frame::<B>(alphas, 2, 3, &device))
                * crate::per_frame::<B>(direct, 2, 3, &device);
            let rel =
                (score - want.clone()).abs().max().into_scalar() / want.abs().max().into_scalar();
            assert!(rel < 1e-4, "{p:?}: score off by {rel}");
        }
    }
}

#[test]
fn interpolant_derivatives_match_finite_differences() {
    for interpolant in INTERPOLANTS {
        for t in [0.05, 0.3, 0.5, 0.9] {
            let h = 1e-6;
            let (c, up, down) = (
                interpolant.coeffs(t),
                interpolant.coeffs(t + h),
                interpolant.coeffs(t - h),
            );
            let fd_a = (up.alpha - down.alpha) / (2.0 * h);
            let fd_s = (up.sigma - down.sigma) / (2.0 * h);
            assert!(
                (fd_a - c.d_alpha).abs() < 1e-5,
                "{interpolant:?} alpha' at {t}"
            );
            assert!(
                (fd_s - c.d_sigma).abs() < 1e-5,
                "{interpolant:?} sigma' at {t}"
            );
            if interpolant != Interpolant::RectifiedFlow {
                assert!((c.alpha.powi(2) + c.sigma.powi(2) - 1.0).abs() < 1e-12);
            }
        }
        // The ends: data at t = 0; (almost) pure noise at t = 1.
        let (c0, c1) = (interpolant.coeffs(0.0), interpolant.coeffs(1.0));
        assert!((c0.alpha - 1.0).abs() < 1e-12 && c0.sigma.abs() < 1e-6);
        assert!(
            c1.alpha < 0.01 && (c1.sigma - 1.0).abs() < 1e-4,
            "{interpolant:?} at 1"
        );
    }
    // DDPM's discrete linear betas (1e-4..0.02 over 1000 steps) give
    // alpha_bar_T = prod(1 - beta_i); the continuous form matches it.
    let prod: f64 = (0..1000)
        .map(|i| 1.0 - (1e-4 + (0.02 - 1e-4) * i as f64 / 999.0))
        .product();
    let cont = INTERPOLANTS[1].coeffs(1.0).alpha.powi(2);
    assert!(
        (prod.ln() / cont.ln() - 1.0).abs() < 0.01,
        "{prod} vs {cont}"
    );
}

#[test]
fn rollout_generates_the_requested_frames_from_the_model() {
    let device = Default::default();
    let (mu, s) = (-1.0, 0.3);
    let context = Tensor::<B, 5>::zeros([8, 2, 1, 8, 8], &device);
    let actions = Tensor::<B, 2, Int>::zeros([8, 5], &device);
    let cfg = RolloutConfig {
        window: 3,
        context_noise: 0.1,
        residual: false,
        sampler: sampler_cfg(Sampler::Euler, 50, Parameterization::default()),
    };
    let out = rollout(
        &rf_velocity(mu, s),
        context,
        Cond::actions(Actions::Ids(actions)),
        &cfg,
        &mut sample_rng(2, 0, 0),
    )
    .unwrap();
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
        labels: None,
        null_label: 0,
        sample_ids: (0..32).collect(),
    };
    let cfg = ObjectiveConfig {
        context_prob: 0.0,
        ..Default::default()
    };
    let exact = cfg
        .loss(&rf_velocity(mu, s), &batch, 0, 0)
        .unwrap()
        .into_scalar();
    let wrong = cfg
        .loss(&rf_velocity(-mu, s), &batch, 0, 0)
        .unwrap()
        .into_scalar();
    assert!(exact < wrong, "exact {exact} wrong {wrong}");
    let zero = |x: Tensor<B, 5>, _t: Tensor<B, 2>, _a: Cond<B>| -> Result<Tensor<B, 5>> {
        Ok(x.zeros_like())
    };
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

/// Mean and variance of a density on (0, 1) by the midpoint rule.
fn density_moments(pdf: impl Fn(f64) -> f64) -> (f64, f64) {
    let n = 200_000;
    let (mut m0, mut m1, mut m2) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let t = (i as f64 + 0.5) / n as f64;
        let p = pdf(t) / n as f64;
        (m0, m1, m2) = (m0 + p, m1 + p * t, m2 + p * t * t);
    }
    let mean = m1 / m0;
    (mean, m2 / m0 - mean * mean)
}

fn draw_moments(ts: TimestepSampler, n: usize) -> (f64, f64, f64) {
    let mut rng = sample_rng(11, 0, 0);
    let mut v: Vec<f64> = (0..n).map(|_| ts.draw(&mut rng)).collect();
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (mean, var, v[n / 2])
}

#[test]
fn timestep_samplers_match_their_densities() {
    use std::f64::consts::PI;
    let n = 200_000;
    // Logit-normal density (SD3 eq. 19).
    let (m, s) = (0.4, 0.8);
    let ln_pdf = |t: f64| {
        let l = (t / (1.0 - t)).ln();
        (-(l - m).powi(2) / (2.0 * s * s)).exp() / (s * (2.0 * PI).sqrt() * t * (1.0 - t))
    };
    // CosMap density (SD3 eq. 22).
    let cos_pdf = |t: f64| 2.0 / (PI - 2.0 * PI * t + 2.0 * PI * t * t);
    for (ts, pdf) in [
        (
            TimestepSampler::LogitNormal { m, s },
            &ln_pdf as &dyn Fn(f64) -> f64,
        ),
        (TimestepSampler::CosMap, &cos_pdf),
        (TimestepSampler::Uniform, &|_| 1.0),
    ] {
        let (want_mean, want_var) = density_moments(pdf);
        let (mean, var, _) = draw_moments(ts, n);
        assert!(
            (mean - want_mean).abs() < 0.003 && (var - want_var).abs() < 0.003,
            "{ts:?}: drew mean {mean} var {var}, density gives {want_mean} {want_var}"
        );
    }
    // Mode sampling: E[t] = 1/2 for any s; E[t^2] = int_0^1 f_mode(u)^2 du.
    for s in [-0.5, 0.0, 0.81, 1.29] {
        let f = |u: f64| 1.0 - u - s * ((PI / 2.0 * u).cos().powi(2) - 1.0 + u);
        let k = 200_000;
        let m2: f64 = (0..k)
            .map(|i| f((i as f64 + 0.5) / k as f64).powi(2))
            .sum::<f64>()
            / k as f64;
        let (mean, var, _) = draw_moments(TimestepSampler::Mode { s }, n);
        assert!((mean - 0.5).abs() < 0.003, "mode s={s}: mean {mean}");
        assert!(
            (var - (m2 - 0.25)).abs() < 0.003,
            "mode s={s}: var {var} want {}",
            m2 - 0.25
        );
    }
    // Larger s concentrates the mode sampler in the middle.
    let spread = |s| draw_moments(TimestepSampler::Mode { s }, 20_000).1;
    assert!(spread(1.29) < spread(0.0) && spread(0.0) < spread(-0.5));
    assert!(TimestepSampler::Mode { s: 3.0 }.validate().is_err());
}

#[test]
fn the_shift_maps_the_median_as_documented() {
    use crate::{shift, Shift};
    for alpha in [0.5, 1.0, 3.0] {
        assert_eq!(shift(0.0, alpha), 0.0);
        assert!((shift(1.0, alpha) - 1.0).abs() < 1e-12);
        // Logit-normal(0, s) has median 1/2, which the shift maps to a / (1 + a).
        let cfg = ObjectiveConfig {
            timesteps: TimestepSampler::LogitNormal { m: 0.0, s: 1.0 },
            shift: Shift::Fixed { alpha },
            frame_noise: FrameNoise::Shared,
            context_prob: 0.0,
            ..Default::default()
        };
        let ids: Vec<u64> = (0..20_000).collect();
        let mut t = cfg.plan(0, 0, &ids, [ids.len(), 1, 1, 1, 1]).t;
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = t[t.len() / 2] as f64;
        assert!(
            (median - alpha / (1.0 + alpha)).abs() < 0.01,
            "alpha {alpha}: median {median}"
        );
    }
    // From the clip size: 4x the latent positions doubles a.
    let s = Shift::Latents { base: 256 };
    assert!((s.alpha(1024) - 2.0).abs() < 1e-12);
    assert!(Shift::Latents { base: 0 }.validate().is_err());
}

#[test]
fn loss_weights_give_the_documented_effective_weight() {
    use crate::LossWeighting;
    for interpolant in INTERPOLANTS {
        for prediction in PREDICTIONS {
            for t in [0.1, 0.5, 0.9] {
                let c = interpolant.coeffs(t);
                let snr = c.snr();
                for (w, want) in [
                    (LossWeighting::MinSnr { gamma: 5.0 }, snr.min(5.0)),
                    (LossWeighting::Snr, snr),
                    (LossWeighting::TruncatedSnr, snr.max(1.0)),
                    (LossWeighting::None, prediction.x0_weight(&c)),
                ] {
                    let eff = w.factor(&c, prediction) * prediction.x0_weight(&c);
                    assert!(
                        (eff / want - 1.0).abs() < 1e-9,
                        "{w:?} {prediction:?} {interpolant:?} t={t}: {eff} vs {want}"
                    );
                }
            }
        }
    }
    // Known special cases: min-SNR for epsilon is min(SNR, gamma) / SNR, for
    // rectified-flow velocity x_0 errors weigh 1 / t^2.
    let c = Interpolant::RectifiedFlow.coeffs(0.25);
    assert!((Prediction::Velocity.x0_weight(&c) - 16.0).abs() < 1e-9);
    let f = LossWeighting::MinSnr { gamma: 5.0 }.factor(&c, Prediction::Epsilon);
    assert!((f - 5.0 / c.snr()).abs() < 1e-9);
}

#[test]
fn weighted_losses_stay_finite_with_clean_context_frames() {
    use crate::LossWeighting;
    let device = Default::default();
    let x0 = crate::sample::host_normal::<B>(&mut sample_rng(1, 0, 0), [8, 3, 1, 4, 4], &device);
    let batch = TrainBatch {
        latents: x0,
        actions: None,
        null_action: 0,
        labels: None,
        null_label: 0,
        sample_ids: (0..8).collect(),
    };
    let zero = |x: Tensor<B, 5>, _t: Tensor<B, 2>, _a: Cond<B>| -> Result<Tensor<B, 5>> {
        Ok(x.zeros_like())
    };
    for prediction in PREDICTIONS {
        for weighting in [
            LossWeighting::None,
            LossWeighting::MinSnr { gamma: 5.0 },
            LossWeighting::Snr,
            LossWeighting::TruncatedSnr,
        ] {
            let cfg = ObjectiveConfig {
                prediction,
                weighting,
                interpolant: INTERPOLANTS[1],
                context_prob: 1.0,
                context_noise: 0.0,
                ..Default::default()
            };
            let loss = cfg.loss(&zero, &batch, 0, 0).unwrap().into_scalar();
            assert!(
                loss.is_finite() && loss > 0.0,
                "{prediction:?} {weighting:?}: {loss}"
            );
        }
    }
}
