//! The model options: positions (RoPE), masks (sliding window), temporal
//! patches, labels and continuous actions, presets, parameter and FLOP counts.
use burn::tensor::{backend::Backend, Distribution, Int, Tensor, TensorData};

use crate::tests::{frame, input, max_abs_diff, perturbed, small, B, UNSEEN};
use crate::{AttentionMask, Dit, DitConfig, DitInput, MlpKind, PosEmbed, Preset, QkNorm};

/// Change frame `changed` of `a` and return, per frame, the largest change
/// of the model's output.
fn output_change(model: &Dit<B>, a: &DitInput<B>, changed: usize) -> Vec<f32> {
    let [_, t, c, h, w] = a.latents.dims();
    let mut b = a.clone();
    let new = crate::tests::seeded(100 + changed as u64, || {
        Tensor::random(
            [1, 1, c, h, w],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        )
    });
    b.latents = b
        .latents
        .slice_assign([0..1, changed..changed + 1, 0..c, 0..h, 0..w], new);
    let (ya, yb) = (model.forward(a.clone()).unwrap(), model.forward(b).unwrap());
    (0..t)
        .map(|f| max_abs_diff(&frame(&ya, f), &frame(&yb, f)))
        .collect()
}

#[test]
fn frame_causal_holds_for_every_position_norm_and_mlp_option() {
    for (pos_embed, qk_norm, mlp) in [
        (PosEmbed::Rope, QkNorm::Rms, MlpKind::Swiglu),
        (PosEmbed::Sincos, QkNorm::Layer, MlpKind::Gelu),
    ] {
        let cfg = DitConfig {
            pos_embed,
            qk_norm,
            mlp,
            hidden: 48,
            heads: 2,
            ..small(AttentionMask::FrameCausal)
        };
        let model = perturbed(&cfg);
        let diffs = output_change(&model, &input(&cfg, 1, 3), 1);
        assert!(
            diffs[0] < UNSEEN,
            "{pos_embed:?}: frame 0 saw frame 1: {diffs:?}"
        );
        assert!(
            diffs[1] > 1e-3 && diffs[2] > 1e-3,
            "{pos_embed:?}: {diffs:?}"
        );
    }
}

#[test]
fn sliding_window_hides_frames_beyond_the_receptive_field() {
    // Window 2, depth 2: frame f sees frames >= f - 2 through two blocks.
    let cfg = DitConfig {
        frames: 4,
        window_frames: 2,
        ..small(AttentionMask::SlidingWindow)
    };
    let model = perturbed(&cfg);
    let a = input(&cfg, 1, 5);
    let diffs = output_change(&model, &a, 0);
    assert!(diffs[3] < UNSEEN, "frame 3 saw frame 0: {diffs:?}");
    assert!(diffs[..3].iter().all(|&d| d > 1e-3), "{diffs:?}");
    let diffs = output_change(&model, &a, 1);
    assert!(
        diffs[0] < UNSEEN && diffs[1..].iter().all(|&d| d > 1e-3),
        "{diffs:?}"
    );
    // One block: frame 3 sees frames 2 and 3 only.
    let one = perturbed(&DitConfig {
        depth: 1,
        ..cfg.clone()
    });
    let diffs = output_change(&one, &a, 1);
    assert!(diffs[3] < UNSEEN && diffs[2] > 1e-3, "{diffs:?}");
}

#[test]
fn rope_logits_depend_only_on_relative_positions() {
    let device = Default::default();
    let (t, hp, wp, e) = (3, 2, 3, 16);
    let n = t * hp * wp;
    B::seed(&device, 11);
    let q = Tensor::<B, 4>::random([1, 1, n, e], Distribution::Normal(0.0, 1.0), &device);
    let k = Tensor::<B, 4>::random([1, 1, n, e], Distribution::Normal(0.0, 1.0), &device);
    let logits = |t0: usize| {
        let a = crate::rope::angles(t0, t, hp, wp, e);
        let table = |f: fn(f32) -> f32| {
            Tensor::<B, 2>::from_data(
                TensorData::new(a.iter().map(|&x| f(x)).collect::<Vec<_>>(), [n, e / 2]),
                &device,
            )
        };
        let (cos, sin) = (table(f32::cos), table(f32::sin));
        let (qr, kr) = (
            crate::rope::apply(q.clone(), &cos, &sin),
            crate::rope::apply(k.clone(), &cos, &sin),
        );
        // A rotation keeps every vector's length.
        let norm = |x: Tensor<B, 4>| {
            (x.clone() * x)
                .sum_dim(3)
                .into_data()
                .into_vec::<f32>()
                .unwrap()
        };
        assert!(max_abs_diff(&norm(qr.clone()), &norm(q.clone())) < 1e-3);
        qr.matmul(kr.swap_dims(2, 3))
            .into_data()
            .into_vec::<f32>()
            .unwrap()
    };
    let (at0, at5) = (logits(0), logits(5));
    assert!(
        max_abs_diff(&at0, &at5) < 1e-3,
        "shifting all frames changed the logits"
    );
    let plain = q
        .matmul(k.swap_dims(2, 3))
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    assert!(max_abs_diff(&at0, &plain) > 0.1, "rope did nothing");
    assert_eq!(crate::rope::axis_pairs(72), [12, 12, 12]);
    assert_eq!(crate::rope::axis_pairs(16), [4, 2, 2]);
}

#[test]
fn labels_condition_the_output_and_null_is_the_default() {
    let cfg = DitConfig {
        num_classes: 10,
        ..small(AttentionMask::FrameCausal)
    };
    let model = perturbed(&cfg);
    let labels = |v: Vec<i64>| {
        Some(Tensor::<B, 1, Int>::from_data(
            TensorData::new(v, [2]),
            &Default::default(),
        ))
    };
    let base = input(&cfg, 2, 4);
    let out = |l| {
        let mut inp = base.clone();
        inp.labels = l;
        model
            .forward(inp)
            .unwrap()
            .into_data()
            .into_vec::<f32>()
            .unwrap()
    };
    assert!(max_abs_diff(&out(labels(vec![3, 3])), &out(labels(vec![4, 4]))) > 1e-3);
    assert!(max_abs_diff(&out(None), &out(labels(vec![10, 10]))) < UNSEEN);
    let mut bad = input(&cfg, 2, 4);
    bad.labels = labels(vec![1, 2]).map(|l| l.narrow(0, 0, 1));
    let err = model.forward(bad).unwrap_err().to_string();
    assert!(err.contains("labels") && err.contains("[2]"), "{err}");
}

#[test]
fn param_count_formula_matches_the_built_module() {
    for cfg in [
        small(AttentionMask::FrameCausal),
        DitConfig {
            pos_embed: PosEmbed::Sincos,
            qk_norm: QkNorm::Rms,
            mlp: MlpKind::Swiglu,
            num_classes: 10,
            hidden: 48,
            ..small(AttentionMask::Full)
        },
        DitConfig {
            pos_embed: PosEmbed::Rope,
            qk_norm: QkNorm::Layer,
            num_actions: 0,
            num_classes: 3,
            history_frames: 1,
            ..small(AttentionMask::FrameCausal)
        },
    ] {
        let model = cfg.init::<B>(&Default::default()).unwrap();
        assert_eq!(cfg.num_params(), model.param_count(), "{cfg:?}");
    }
}

#[test]
fn dit_xl2_counts_match_the_paper_and_the_hand_formula() {
    // DiT-XL/2 on 256x256 images: 32x32x4 latents, 1000 classes, fixed
    // sin-cos positions (Peebles & Xie 2023, Table 1: 675M params, 118.6 Gflops).
    let p = Preset::named("DiT-XL/2").unwrap();
    let cfg = DitConfig {
        channels: 4,
        frames: 1,
        height: 32,
        width: 32,
        patch_size: p.patch_size.unwrap(),
        hidden: p.hidden,
        depth: p.depth,
        heads: p.heads,
        num_actions: 0,
        num_classes: 1000,
        pos_embed: PosEmbed::Sincos,
        attention: AttentionMask::Full,
        ..Default::default()
    };
    cfg.validate().unwrap();
    // By hand: d = 1152, n = 256 tokens, MLP 4608, 28 blocks.
    let (d, n, m, l) = (1152u64, 256u64, 4608u64, 28u64);
    let block_params =
        (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + (d * 6 * d + 6 * d);
    let hand_params = l * block_params
        + (16 * d + d) // patch embed 2x2x4 -> d
        + (128 * d + d) + (d * d + d) // timestep MLP (128 frequencies)
        + 1001 * d // class table with the null row
        + (d * 2 * d + 2 * d) + (d * 16 + 16); // final adaLN and linear
    assert_eq!(cfg.num_params() as u64, hand_params);
    // DiT counts 256 timestep frequencies and learns sigma (8 output
    // channels); that is 147 k params more than ours, 0.02%.
    let paper = 675.13e6;
    assert!(
        (cfg.num_params() as f64 / paper - 1.0).abs() < 1e-3,
        "{}",
        cfg.num_params()
    );
    let block_macs = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * m + d * 6 * d;
    let hand_macs = l * block_macs + n * 16 * d + (128 * d + d * d) + d * 2 * d + n * d * 16;
    assert_eq!(cfg.forward_macs(1), hand_macs);
    assert!(
        (hand_macs as f64 / 118.6e9 - 1.0).abs() < 2e-3,
        "{hand_macs}"
    );
    assert_eq!(cfg.train_flops_per_sample(1), 6.0 * hand_macs as f64);
}

#[test]
fn presets_parse_and_bad_names_say_what_exists() {
    let p = Preset::named("XL/2").unwrap();
    assert_eq!(
        (p.hidden, p.depth, p.heads, p.patch_size),
        (1152, 28, 16, Some(2))
    );
    let p = Preset::named("dit-b/4").unwrap();
    assert_eq!(
        (p.hidden, p.depth, p.heads, p.patch_size),
        (768, 12, 12, Some(4))
    );
    assert_eq!(Preset::named("S").unwrap().patch_size, None);
    let err = Preset::named("M/2").unwrap_err().to_string();
    assert!(err.contains("S, B, L or XL"), "{err}");
    assert!(Preset::named("L/x").is_err());
    let swiglu = DitConfig {
        hidden: 384,
        mlp: MlpKind::Swiglu,
        ..Default::default()
    };
    assert_eq!(swiglu.mlp_hidden(), 1024);
}

#[test]
fn mask_and_rope_options_are_validated() {
    let err = |cfg: DitConfig| cfg.validate().unwrap_err().to_string();
    let e = err(DitConfig {
        attention: AttentionMask::SlidingWindow,
        ..Default::default()
    });
    assert!(e.contains("model.window_frames >= 1"), "{e}");
    let e = err(DitConfig {
        window_frames: 2,
        ..Default::default()
    });
    assert!(e.contains("only used with model.attention"), "{e}");
    let e = err(DitConfig {
        pos_embed: PosEmbed::Rope,
        hidden: 64,
        heads: 16,
        ..Default::default()
    });
    assert!(e.contains("at least 6"), "{e}");
    let e = err(DitConfig {
        preset: Some("huge".into()),
        ..Default::default()
    });
    assert!(e.contains("not a preset"), "{e}");
}

#[test]
fn continuous_actions_condition_the_output_and_keep_0_is_the_null_action() {
    let cfg = DitConfig {
        num_actions: 0,
        action_dim: 2,
        ..small(AttentionMask::FrameCausal)
    };
    let model = perturbed(&cfg);
    let device = Default::default();
    let mut base = input(&cfg, 2, 8);
    base.actions = None;
    let values = |v: f32| Some(Tensor::<B, 3>::full([2, 3, 2], v, &device));
    let out = |values: Option<Tensor<B, 3>>, keep: Option<Tensor<B, 2>>| {
        let mut inp = base.clone();
        inp.action_values = values;
        inp.action_keep = keep;
        model
            .forward(inp)
            .unwrap()
            .into_data()
            .into_vec::<f32>()
            .unwrap()
    };
    assert!(max_abs_diff(&out(values(1.0), None), &out(values(-1.0), None)) > 1e-3);
    // keep = 0 everywhere is exactly the null action, whatever the values.
    let zeros = || Some(Tensor::<B, 2>::zeros([2, 3], &device));
    assert_eq!(
        max_abs_diff(&out(values(1.0), zeros()), &out(None, None)),
        0.0
    );
    assert_eq!(
        max_abs_diff(&out(values(5.0), zeros()), &out(values(-1.0), zeros())),
        0.0
    );
    assert_eq!(cfg.num_params(), model.param_count());
    let mut bad = base.clone();
    bad.action_values = Some(Tensor::zeros([2, 3, 5], &device));
    let err = model.forward(bad).unwrap_err().to_string();
    assert!(
        err.contains("action_values") && err.contains("[2, 3, 2]"),
        "{err}"
    );
    let both = DitConfig {
        num_actions: 5,
        ..cfg.clone()
    };
    assert!(both
        .validate()
        .unwrap_err()
        .to_string()
        .contains("one kind of action"));
}

#[test]
fn temporal_patches_group_frames_for_masks_counts_and_validation() {
    let cfg = DitConfig {
        frames: 4,
        patch_t: 2,
        num_actions: 0,
        ..small(AttentionMask::FrameCausal)
    };
    let model = perturbed(&cfg);
    assert_eq!(cfg.num_params(), model.param_count());
    let mut a = input(&cfg, 1, 6);
    a.actions = None;
    assert_eq!(model.forward(a.clone()).unwrap().dims(), [1, 4, 3, 8, 8]);
    // Frame-causal over groups {0, 1}, {2, 3}: frame 1 changes frame 0's
    // output (same token), frame 2 does not.
    let diffs = output_change(&model, &a, 1);
    assert!(diffs[0] > 1e-3 && diffs[3] > 1e-3, "{diffs:?}");
    let diffs = output_change(&model, &a, 2);
    assert!(
        diffs[0] < UNSEEN && diffs[1] < UNSEEN && diffs[2] > 1e-3,
        "{diffs:?}"
    );
    // Odd clip lengths cannot be grouped.
    let mut odd = a.clone();
    odd.latents = odd.latents.narrow(1, 0, 3);
    odd.t = odd.t.narrow(1, 0, 3);
    assert!(model
        .forward(odd)
        .unwrap_err()
        .to_string()
        .contains("model.patch_t = 2"));
    // Half the tokens of patch_t = 1: the block matmuls halve.
    let single = DitConfig {
        patch_t: 1,
        ..cfg.clone()
    };
    assert!(cfg.forward_macs(4) < single.forward_macs(4) * 6 / 10);
    let err = |c: DitConfig| c.validate().unwrap_err().to_string();
    assert!(err(DitConfig {
        patch_t: 3,
        ..cfg.clone()
    })
    .contains("does not divide"));
    assert!(err(DitConfig {
        num_actions: 5,
        ..cfg.clone()
    })
    .contains("world model"));
}
