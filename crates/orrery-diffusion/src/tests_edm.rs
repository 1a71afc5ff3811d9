//! EDM's noise levels and preconditioning (Karras et al. 2022) in this
//! crate's terms: the level for a noise ratio sigma / alpha, the log-normal
//! sampler, and the identity that makes vp_cosine + v + no weighting EDM's
//! preconditioned objective at sigma_data = 1.
use crate::tests::INTERPOLANTS;
use crate::{sample_rng, Interpolant, LossWeighting, Prediction, TimestepSampler};

#[test]
fn the_level_of_a_noise_ratio_inverts_every_interpolant() {
    for interpolant in INTERPOLANTS {
        for ratio in [1e-3, 0.1, 0.5, 1.0, 5.0, 80.0] {
            let t = interpolant.t_at_ratio(ratio);
            let c = interpolant.coeffs(t);
            let got = c.sigma / c.alpha;
            assert!(
                (got - ratio).abs() <= 1e-9 * ratio,
                "{interpolant:?}: ratio {ratio} -> t {t} -> {got}"
            );
        }
        assert_eq!(interpolant.t_at_ratio(0.0), 0.0);
        assert_eq!(interpolant.t_at_ratio(f64::INFINITY), 1.0);
    }
}

#[test]
fn edm_levels_are_log_normal_in_the_noise_ratio() {
    let (p_mean, p_std) = (-1.2, 1.2);
    let ts = TimestepSampler::EdmLogNormal { p_mean, p_std };
    for interpolant in INTERPOLANTS {
        let mut rng = sample_rng(4, 5, 6);
        let logs: Vec<f64> = (0..20_000)
            .map(|_| {
                let c = interpolant.coeffs(ts.draw_on(&mut rng, &interpolant));
                (c.sigma / c.alpha).ln()
            })
            .collect();
        let mean = logs.iter().sum::<f64>() / logs.len() as f64;
        let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / logs.len() as f64;
        assert!(
            (mean - p_mean).abs() < 0.03 && (var.sqrt() - p_std).abs() < 0.03,
            "{interpolant:?}: ln sigma has mean {mean}, std {}",
            var.sqrt()
        );
    }
    assert!(TimestepSampler::EdmLogNormal {
        p_mean: 0.0,
        p_std: 0.0
    }
    .validate()
    .is_err());
}

/// EDM's denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) on
/// x = x_0 + sigma ε trains F towards (x_0 - c_skip x) / c_out with loss
/// weight lambda c_out^2 = 1. At sigma_data = 1 on vp_cosine: the network
/// input x_t = alpha (x_0 + sigma ε) is c_in x, F's target is minus the v
/// target, and weighting none puts the same weight 1 on it.
#[test]
fn vp_cosine_v_and_no_weighting_is_edm_preconditioning() {
    let interpolant = Interpolant::VpCosine { s: 0.008 };
    for sigma in [0.002, 0.05, 0.5, 1.0, 3.0, 80.0] {
        let c = interpolant.coeffs(interpolant.t_at_ratio(sigma));
        let s2 = sigma * sigma;
        let (c_in, c_skip, c_out) = (
            1.0 / (s2 + 1.0).sqrt(),
            1.0 / (s2 + 1.0),
            sigma / (s2 + 1.0).sqrt(),
        );
        assert!(
            (c.alpha - c_in).abs() < 1e-9 && (c.sigma - c_in * sigma).abs() < 1e-9,
            "{sigma}"
        );
        // F's target e x_0 + f ε, from x = x_0 + sigma ε.
        let (e_f, f_f) = ((1.0 - c_skip) / c_out, -c_skip * sigma / c_out);
        let (e_v, f_v) = Prediction::V.target_coeffs(&c);
        assert!(
            (e_v + e_f).abs() < 1e-9 && (f_v + f_f).abs() < 1e-9,
            "{sigma}: v ({e_v}, {f_v}), F ({e_f}, {f_f})"
        );
        let weight = LossWeighting::None.factor(&c, Prediction::V);
        assert!((weight - 1.0).abs() < 1e-12, "{sigma}: weight {weight}");
    }
}
