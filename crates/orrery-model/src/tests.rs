//! Invariants of the DiT: shapes, the frame-causal mask, names, load/save.
use burn::backend::Flex;
use burn::tensor::{backend::Backend, Distribution, Int, Tensor, TensorData};

use crate::named::{load_host, map_named, to_host};
use crate::tokens::{patchify, unpatchify};
use crate::{AttentionMask, Dit, DitConfig, DitInput};

pub(super) type B = Flex;

pub(super) fn small(attention: AttentionMask) -> DitConfig {
    DitConfig {
        frames: 3,
        height: 8,
        width: 8,
        patch_size: 2,
        hidden: 32,
        depth: 2,
        heads: 2,
        attention,
        ..Default::default()
    }
}

/// The most a frame's output may change when the changed input is outside
/// its receptive field. Not 0: once, in CI, such a frame moved by 1.9e-6
/// (outputs of order 3), a few float roundings, so two forward passes on
/// flex are not always bit-identical in frames the change cannot reach.
/// Not reproduced here (200 inputs, runs under load: always 0), so the
/// cause is not pinned (candidates: flex's multithreaded or SIMD paths).
/// A frame that does see the change moves by more than 1e-3.
pub(super) const UNSEEN: f32 = 2e-5;

/// burn has one random generator per process, and tests run on parallel
/// threads: seeded draws hold this lock, so a test's weights and inputs are
/// the same whatever else runs.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `f` after seeding burn's generator with `seed`, alone.
pub(super) fn seeded<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let _alone = RNG.lock().unwrap_or_else(|p| p.into_inner());
    B::seed(&Default::default(), seed);
    f()
}

/// adaLN-Zero makes a fresh model output exactly zero; perturb every weight so
/// that tests see a model whose outputs depend on all of its inputs.
pub(super) fn perturbed(cfg: &DitConfig) -> Dit<B> {
    let device = Default::default();
    seeded(7, || {
        // Reading every weight draws it here, under the lock.
        map_named(cfg.init::<B>(&device).unwrap(), |_, _, t| {
            let n = t.dims()[0];
            t + Tensor::random([n], Distribution::Normal(0.0, 0.2), &device)
        })
    })
}

pub(super) fn input(cfg: &DitConfig, b: usize, seed: u64) -> DitInput<B> {
    seeded(seed, || input_drawn(cfg, b))
}

fn input_drawn(cfg: &DitConfig, b: usize) -> DitInput<B> {
    let device = Default::default();
    let t = cfg.frames;
    DitInput {
        latents: Tensor::random(
            [b, t, cfg.channels, cfg.height, cfg.width],
            Distribution::Normal(0.0, 1.0),
            &device,
        ),
        t: Tensor::random([b, t], Distribution::Uniform(0.0, 1.0), &device),
        actions: Some(Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                (0..b * t).map(|i| (i % 5) as i64).collect::<Vec<_>>(),
                [b, t],
            ),
            &device,
        )),
        labels: None,
        action_values: None,
        action_keep: None,
        context: None,
    }
}

pub(super) fn frame(x: &Tensor<B, 5>, f: usize) -> Vec<f32> {
    x.clone()
        .narrow(1, f, 1)
        .into_data()
        .into_vec::<f32>()
        .unwrap()
}

pub(super) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn output_has_input_shape_and_fresh_model_outputs_zero() {
    let cfg = small(AttentionMask::FrameCausal);
    let model = cfg.init::<B>(&Default::default()).unwrap();
    let out = model.forward(input(&cfg, 2, 1)).unwrap();
    assert_eq!(out.dims(), [2, 3, 3, 8, 8]);
    // adaLN-Zero: the final linear starts at zero.
    assert_eq!(out.abs().max().into_scalar(), 0.0);
}

#[test]
fn shorter_clips_run_and_wrong_shapes_are_errors() {
    let cfg = small(AttentionMask::FrameCausal);
    let model = perturbed(&cfg);
    let mut inp = input(&cfg, 1, 1);
    inp.latents = inp.latents.narrow(1, 0, 2);
    inp.t = inp.t.narrow(1, 0, 2);
    inp.actions = inp.actions.map(|a| a.narrow(1, 0, 2));
    assert_eq!(model.forward(inp).unwrap().dims(), [1, 2, 3, 8, 8]);
    let mut bad = input(&cfg, 1, 1);
    bad.latents = Tensor::zeros([1, 3, 3, 8, 4], &Default::default());
    let err = model.forward(bad).unwrap_err().to_string();
    assert!(
        err.contains("latents") && err.contains("[1, 3, 3, 8, 4]"),
        "{err}"
    );
}

#[test]
fn frame_causal_mask_hides_later_frames() {
    // Also with frame stacking: history only ever looks back.
    for history_frames in [0, 1, 2] {
        let cfg = DitConfig {
            history_frames,
            ..small(AttentionMask::FrameCausal)
        };
        let model = perturbed(&cfg);
        let a = input(&cfg, 1, 3);
        for changed in [1, 2] {
            let mut b = a.clone();
            let new = Tensor::random(
                [1, 1, 3, 8, 8],
                Distribution::Normal(0.0, 1.0),
                &Default::default(),
            );
            b.latents = b
                .latents
                .slice_assign([0..1, changed..changed + 1, 0..3, 0..8, 0..8], new);
            let (ya, yb) = (model.forward(a.clone()).unwrap(), model.forward(b).unwrap());
            for f in 0..3 {
                let diff = max_abs_diff(&frame(&ya, f), &frame(&yb, f));
                if f < changed {
                    assert!(
                        diff < UNSEEN,
                        "history {history_frames}: frame {f} saw frame {changed}"
                    );
                } else {
                    assert!(
                        diff > 1e-3,
                        "history {history_frames}: frame {f} did not see frame {changed}"
                    );
                }
            }
        }
    }
}

#[test]
fn stack_history_shifts_frames_back_with_zero_padding() {
    let device = Default::default();
    // Frame f, channel 0 holds the value f + 1.
    let x = Tensor::<B, 5>::from_data(
        TensorData::new(
            (0..4).map(|f| (f + 1) as f32).collect::<Vec<_>>(),
            [1, 4, 1, 1, 1],
        ),
        &device,
    );
    let y = crate::tokens::stack_history(x, 2); // [1, 4, 3, 1, 1]
    assert_eq!(y.dims(), [1, 4, 3, 1, 1]);
    let v = y.into_data().into_vec::<f32>().unwrap();
    // Per frame: (itself, previous, the one before).
    assert_eq!(v, vec![1., 0., 0., 2., 1., 0., 3., 2., 1., 4., 3., 2.]);
}

#[test]
fn full_attention_lets_earlier_frames_see_later_ones() {
    let cfg = small(AttentionMask::Full);
    let model = perturbed(&cfg);
    let a = input(&cfg, 1, 3);
    let mut b = a.clone();
    let last = Tensor::random(
        [1, 1, 3, 8, 8],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    b.latents = b.latents.slice_assign([0..1, 2..3, 0..3, 0..8, 0..8], last);
    let (ya, yb) = (model.forward(a).unwrap(), model.forward(b).unwrap());
    assert!(max_abs_diff(&frame(&ya, 0), &frame(&yb, 0)) > 1e-3);
}

#[test]
fn patchify_round_trips() {
    let device = Default::default();
    let x = Tensor::<B, 5>::random([2, 3, 4, 8, 12], Distribution::Normal(0.0, 1.0), &device);
    let p = patchify(x.clone(), 1, 4);
    assert_eq!(p.dims(), [2, 3, 6, 64]);
    // The first patch of frame 0 is the top-left 4x4 block of every channel.
    let first: Vec<f32> = p
        .clone()
        .narrow(2, 0, 1)
        .narrow(1, 0, 1)
        .narrow(0, 0, 1)
        .into_data()
        .into_vec()
        .unwrap();
    let block: Vec<f32> = x
        .clone()
        .narrow(0, 0, 1)
        .narrow(1, 0, 1)
        .narrow(3, 0, 4)
        .narrow(4, 0, 4)
        .into_data()
        .into_vec()
        .unwrap();
    assert_eq!(first, block);
    let back = unpatchify(p, 1, 4, 8, 12, 4);
    assert_eq!(
        back.into_data().into_vec::<f32>().unwrap(),
        x.clone().into_data().into_vec::<f32>().unwrap()
    );
    // Temporal patches: 4 frames in groups of 2; the first token holds the
    // top-left 2x2 block of frames 0 and 1, frame first.
    let x = x.narrow(1, 0, 2).narrow(0, 0, 1); // [1, 2, 4, 8, 12]
    let x = Tensor::cat(vec![x.clone(), x.clone().neg()], 1); // [1, 4, 4, 8, 12]
    let p = patchify(x.clone(), 2, 2);
    assert_eq!(p.dims(), [1, 2, 24, 2 * 4 * 2 * 2]);
    let first: Vec<f32> = p
        .clone()
        .narrow(2, 0, 1)
        .narrow(1, 0, 1)
        .into_data()
        .into_vec()
        .unwrap();
    let block: Vec<f32> = x
        .clone()
        .narrow(1, 0, 2)
        .narrow(3, 0, 2)
        .narrow(4, 0, 2)
        .into_data()
        .into_vec()
        .unwrap();
    assert_eq!(first, block);
    let back = unpatchify(p, 2, 4, 8, 12, 2);
    assert_eq!(
        back.into_data().into_vec::<f32>().unwrap(),
        x.into_data().into_vec::<f32>().unwrap()
    );
}

#[test]
fn names_are_stable_and_weights_round_trip() {
    let cfg = small(AttentionMask::FrameCausal);
    let model = perturbed(&cfg);
    let host = to_host(&model);
    for name in [
        "blocks.1.attn.qkv.weight",
        "blocks.0.ada_ln.bias",
        "embed.pos_spatial",
        "embed.action_embed.weight",
        "final_layer.linear.weight",
    ] {
        assert!(
            host.contains_key(name),
            "missing {name}; have {:?}",
            host.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(host["blocks.1.attn.qkv.weight"].shape, vec![32, 96]);
    let total: usize = host.values().map(|t| t.data.len()).sum();
    assert_eq!(total, model.param_count());

    let fresh = cfg.init::<B>(&Default::default()).unwrap();
    let loaded = load_host(fresh, &host, &Default::default()).unwrap();
    assert_eq!(to_host(&loaded), host);

    let mut wrong = host.clone();
    wrong.remove("embed.pos_spatial");
    let err = load_host(
        cfg.init::<B>(&Default::default()).unwrap(),
        &wrong,
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("missing tensor embed.pos_spatial"),
        "{err}"
    );
}

#[test]
fn invalid_configs_say_what_to_change() {
    let cfg = DitConfig {
        hidden: 30,
        heads: 4,
        ..Default::default()
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("model.heads"));
    let cfg = DitConfig {
        patch_size: 5,
        ..Default::default()
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("model.patch_size"));
    let cfg = DitConfig {
        patch_size: 8,
        hidden: 128,
        ..Default::default()
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("192 values but model.hidden = 128"));
}

/// Mixed precision: bf16 weights compute in bf16 (norms and softmax in f32)
/// and return the latents' type; the result is close to f32's, not equal.
#[test]
fn bf16_weights_compute_close_to_f32_and_return_f32() {
    use burn::tensor::DType;
    for cfg in [
        small(AttentionMask::FrameCausal),
        DitConfig {
            pos_embed: crate::PosEmbed::Rope,
            qk_norm: crate::QkNorm::Rms,
            mlp: crate::MlpKind::Swiglu,
            history_frames: 1,
            ..small(AttentionMask::FrameCausal)
        },
    ] {
        let model = perturbed(&cfg);
        let half = map_named(model.clone(), |_, _, t| t.cast(DType::BF16));
        let x = input(&cfg, 2, 3);
        let full = model.forward(x.clone()).unwrap();
        let mixed = half.forward(x).unwrap();
        assert_eq!(mixed.dtype(), DType::F32);
        let diff: f32 = (full.clone() - mixed)
            .powf_scalar(2.0)
            .sum()
            .sqrt()
            .into_scalar();
        let norm: f32 = full.powf_scalar(2.0).sum().sqrt().into_scalar();
        let rel = diff / norm;
        // Over 80 draws of weights and inputs (tests draw from the one RNG
        // of the process, in parallel, so the values vary run to run): at
        // most 0.034. A wrong cast or an f32 path would give about 1 or 0.
        assert!(
            rel > 1e-5 && rel < 6e-2,
            "bf16 vs f32 relative difference {rel}"
        );
    }
}
