//! The autoencoder's invariants: shapes, causality in time (of the encoder
//! and of the decoder), the first frame encoded on its own, the KL's closed
//! form, and that a few optimizer steps learn to reconstruct.
use burn::backend::{Autodiff, Flex};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{backend::Backend, Distribution, ElementConversion, Tensor};

use crate::{Posterior, VaeConfig, VideoVae};

type B = Flex;

/// burn's random generator is one per process, and tests run on parallel
/// threads: every seeded draw holds this lock, so a test's draws are its
/// own whatever else runs.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `f` after seeding burn's generator with `seed`, alone.
fn seeded<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let _alone = RNG.lock().unwrap_or_else(|p| p.into_inner());
    B::seed(&Default::default(), seed);
    f()
}

fn small(temporal_down: usize, spatial_down: usize) -> VaeConfig {
    VaeConfig {
        temporal_down,
        spatial_down,
        width: 8,
        width_cap: 16,
        groups: 4,
        ..VaeConfig::default()
    }
}

fn model(cfg: &VaeConfig) -> VideoVae<B> {
    seeded(3, || drawn(cfg.init::<B>(&Default::default()).unwrap()))
}

/// `vae` with every weight drawn now: burn draws a parameter when it is
/// first read, which would be outside the lock.
fn drawn<BB: Backend>(vae: VideoVae<BB>) -> VideoVae<BB> {
    let frame = Tensor::zeros([1, 1, 3, 16, 16], &Default::default());
    vae.decoder.forward(vae.encoder.forward(frame).mean);
    vae
}

fn clip(t: usize, hw: usize, seed: u64) -> Tensor<B, 5> {
    let device = Default::default();
    seeded(seed, || {
        Tensor::random([2, t, 3, hw, hw], Distribution::Normal(0.0, 1.0), &device)
    })
}

/// `x` with frame `f` replaced by noise.
fn change_frame(x: &Tensor<B, 5>, f: usize) -> Tensor<B, 5> {
    let [b, _, c, h, w] = x.dims();
    let noise = seeded(100 + f as u64, || {
        Tensor::random([b, 1, c, h, w], Distribution::Normal(0.0, 1.0), &x.device())
    });
    x.clone()
        .slice_assign([0..b, f..f + 1, 0..c, 0..h, 0..w], noise)
}

/// The largest change of each frame (axis 1) between `a` and `b`.
fn per_frame_change(a: &Tensor<B, 5>, b: &Tensor<B, 5>) -> Vec<f32> {
    (0..a.dims()[1])
        .map(|f| {
            let d = (a.clone().narrow(1, f, 1) - b.clone().narrow(1, f, 1))
                .abs()
                .max();
            d.into_scalar().elem::<f32>()
        })
        .collect()
}

#[test]
fn shapes_follow_the_compression_and_bad_settings_are_refused() {
    for (td, sd, t, want_t) in [(1, 4, 3, 3), (4, 4, 9, 3), (4, 8, 5, 2), (1, 8, 1, 1)] {
        let cfg = small(td, sd);
        let vae = model(&cfg);
        let x = clip(t, 16, 1);
        let q = vae.encoder.forward(x.clone());
        let latent = [2, want_t, 4, 16 / sd, 16 / sd];
        assert_eq!(q.mean.dims(), latent, "temporal {td} spatial {sd}");
        assert_eq!(q.logvar.dims(), latent);
        assert_eq!(cfg.latent_shape([t, 3, 16, 16]).unwrap()[..], latent[1..]);
        assert_eq!(vae.decoder.forward(q.mean).dims(), x.dims());
    }
    let cfg = small(4, 4);
    let e = cfg.latent_shape([8, 3, 16, 16]).unwrap_err().to_string();
    assert!(e.contains("1 + 4k frames"), "{e}");
    let e = cfg.latent_shape([9, 3, 18, 16]).unwrap_err().to_string();
    assert!(e.contains("multiple of 4"), "{e}");
    let e = cfg.latent_shape([9, 1, 16, 16]).unwrap_err().to_string();
    assert!(e.contains("vae.channels"), "{e}");
    for (bad, says) in [
        (
            VaeConfig {
                spatial_down: 2,
                ..small(1, 4)
            },
            "use 4 or 8",
        ),
        (
            VaeConfig {
                temporal_down: 2,
                ..small(1, 4)
            },
            "use 1 or 4",
        ),
        (
            VaeConfig {
                groups: 3,
                ..small(1, 4)
            },
            "must divide every level's width",
        ),
    ] {
        let e = bad.init::<B>(&Default::default()).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
}

/// A latent frame depends on its own frames and earlier ones only; a
/// decoded frame on its latent frame and earlier ones only.
#[test]
fn encoder_and_decoder_are_causal_in_time() {
    // Time by 4: frames 0 | 1..4 | 5..8 make latent frames 0, 1, 2.
    let vae = model(&small(4, 4));
    let x = clip(9, 16, 2);
    let mean = |x: Tensor<B, 5>| vae.encoder.forward(x).mean;
    let base = mean(x.clone());
    for (frame, first_changed) in [(5, 2), (4, 1), (1, 1), (0, 0)] {
        let d = per_frame_change(&base, &mean(change_frame(&x, frame)));
        assert!(
            d[..first_changed].iter().all(|&v| v == 0.0),
            "frame {frame} reached an earlier latent: {d:?}"
        );
        assert!(
            d[first_changed] > 1e-4,
            "frame {frame} changed nothing: {d:?}"
        );
    }
    // Decoding: latent frame j makes frames 4j - 3 ..= 4j (0 for j = 0).
    let z = base.clone();
    let decoded = vae.decoder.forward(z.clone());
    for (latent, first_frame) in [(2, 5), (1, 1), (0, 0)] {
        let d = per_frame_change(&decoded, &vae.decoder.forward(change_frame(&z, latent)));
        assert!(
            d[..first_frame].iter().all(|&v| v == 0.0),
            "latent {latent} reached an earlier frame: {d:?}"
        );
        assert!(
            d[first_frame] > 1e-5,
            "latent {latent} changed nothing: {d:?}"
        );
    }
    // No temporal compression: frame f reaches latent f on.
    let vae = model(&small(1, 4));
    let x = clip(4, 16, 3);
    let base = vae.encoder.forward(x.clone()).mean;
    let d = per_frame_change(&base, &vae.encoder.forward(change_frame(&x, 2)).mean);
    assert!(d[0] == 0.0 && d[1] == 0.0 && d[2] > 1e-4, "{d:?}");
}

/// The first frame is encoded on its own: encoding it alone gives the
/// clip's first latent frame (a world model's context can be encoded as
/// it arrives).
#[test]
fn the_first_frame_encodes_on_its_own() {
    let vae = model(&small(4, 4));
    let x = clip(9, 16, 4);
    let whole = vae.encoder.forward(x.clone()).mean.narrow(1, 0, 1);
    let alone = vae.encoder.forward(x.narrow(1, 0, 1)).mean;
    let d = (whole - alone).abs().max().into_scalar().elem::<f32>();
    assert!(d < 1e-5, "{d}");
}

#[test]
fn kl_is_the_closed_form() {
    let device = Default::default();
    let q = |mean: f32, logvar: f32| Posterior::<B> {
        mean: Tensor::full([1, 2, 1, 2, 2], mean, &device),
        logvar: Tensor::full([1, 2, 1, 2, 2], logvar, &device),
    };
    let kl = |p: Posterior<B>| p.kl().into_scalar().elem::<f32>();
    assert!(kl(q(0.0, 0.0)).abs() < 1e-7);
    // 0.5 (mu^2 + e^lv - 1 - lv) with mu = 1.5, lv = -1.
    let want = 0.5 * (2.25 + (-1.0f32).exp() - 1.0 + 1.0);
    assert!((kl(q(1.5, -1.0)) - want).abs() < 1e-6);
}

/// Forty Adam steps on two clips halve the reconstruction error: the
/// gradients reach every layer the right way.
#[test]
fn a_few_steps_learn_to_reconstruct() {
    type AB = Autodiff<Flex>;
    let device = Default::default();
    let cfg = small(4, 4);
    let mut vae = seeded(5, || drawn(cfg.init::<AB>(&device).unwrap()));
    // Smooth frames: a gradient that moves over time.
    let x = Tensor::<AB, 5>::from_inner(
        Tensor::<B, 1, burn::tensor::Int>::arange(0..(2 * 5 * 3 * 16 * 16) as i64, &device)
            .float()
            .reshape([2, 5, 3, 16, 16])
            .div_scalar(2000.0)
            .sin(),
    );
    let mut optim = AdamConfig::new().init::<AB, VideoVae<AB>>();
    let mut losses = Vec::new();
    for _ in 0..40 {
        let q = vae.encoder.forward(x.clone());
        let recon = vae.decoder.forward(q.mean.clone());
        let l1 = (recon - x.clone()).abs().mean();
        losses.push(l1.clone().into_scalar().elem::<f32>());
        let loss = l1 + q.kl() * 1e-4;
        let grads = GradientsParams::from_grads(loss.backward(), &vae);
        vae = optim.step(2e-3, vae, grads);
    }
    eprintln!("L1 {} -> {}", losses[0], losses[39]);
    assert!(
        losses[39] < 0.5 * losses[0],
        "L1 {} -> {}",
        losses[0],
        losses[39]
    );
}

/// The hinge loss's closed form, the generator's term, and the adaptive
/// weight's clamp.
#[test]
fn hinge_generator_and_adaptive_weight() {
    use crate::loss::{
        adaptive_weight, generator, hinge_discriminator, reconstruction, Reconstruction,
    };
    let d = Default::default();
    let t =
        |v: Vec<f32>| Tensor::<B, 4>::from_data(burn::tensor::TensorData::new(v, [1, 1, 1, 2]), &d);
    let v = |x: Tensor<B, 1>| x.into_scalar().elem::<f32>();
    // Real logits above 1 and fake below -1: nothing to learn.
    assert_eq!(
        v(hinge_discriminator(t(vec![1.5, 2.0]), t(vec![-1.0, -3.0]))),
        0.0
    );
    // 0.5 (mean(relu(1 - [0, 0.5])) + mean(relu(1 + [0, -2]))) = 0.5 (0.75 + 0.5)
    assert!((v(hinge_discriminator(t(vec![0.0, 0.5]), t(vec![0.0, -2.0]))) - 0.625).abs() < 1e-6);
    assert_eq!(v(generator(t(vec![1.0, 3.0]))), -2.0);
    assert_eq!(adaptive_weight(2.0, 0.0), 1e4);
    assert!((adaptive_weight(1.0, 0.5 - 1e-4) - 2.0).abs() < 1e-9);
    let a = Tensor::<B, 5>::from_data(
        burn::tensor::TensorData::new(vec![1.0f32, -1.0], [1, 1, 1, 1, 2]),
        &d,
    );
    let z = Tensor::<B, 5>::zeros([1, 1, 1, 1, 2], &d);
    assert_eq!(
        v(reconstruction(Reconstruction::L1, a.clone(), z.clone())),
        1.0
    );
    assert_eq!(v(reconstruction(Reconstruction::L2, a * 2.0, z)), 4.0);
}

/// One logit per patch, per frame: 2 strided layers make 16 x 16 frames
/// 4 x 4 patches; a frame's logits do not depend on the other frames.
#[test]
fn the_patch_discriminator_scores_each_frame_alone() {
    let cfg = crate::DiscConfig {
        width: 8,
        layers: 2,
        groups: 4,
    };
    let disc = seeded(4, || cfg.init::<B>(3, &Default::default()).unwrap());
    let x = clip(3, 16, 9);
    let logits = disc.forward(x.clone());
    assert_eq!(logits.dims(), [2 * 3, 1, 4, 4]);
    let changed = disc.forward(change_frame(&x, 2));
    let diff = (logits - changed)
        .abs()
        .reshape([6, 16])
        .sum_dim(1)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    assert!(
        diff[..2].iter().chain(&diff[3..5]).all(|&d| d == 0.0) && diff[2] > 0.0 && diff[5] > 0.0,
        "{diff:?}"
    );
    assert!(crate::DiscConfig { groups: 3, ..cfg }.validate().is_err());
}

/// A single frame takes the 2-D shortcut (the kernel summed over time): it
/// equals the 3-D convolution over the frame's kt copies, for strides 1 and
/// 2, in value and in the weights' gradient.
#[test]
fn one_frame_convolutions_equal_the_padded_3d_convolution() {
    use crate::layers::CausalConv;
    type AB = Autodiff<B>;
    for stride in [[1, 1], [2, 2], [1, 2]] {
        let conv = seeded(6, || {
            CausalConv::<AB>::new([3, 5], [3, 3], stride, &Default::default())
        });
        let x = clip(1, 8, 2);
        let x = Tensor::<AB, 5>::from_inner(x.swap_dims(1, 2)); // [2, 3, 1, 8, 8]
        let fast = conv.forward(x.clone());
        // The reference: the same frame three times (what the causal
        // padding makes of it), through a frame count that skips the shortcut.
        let three = Tensor::cat(vec![x.clone(), x.clone(), x.clone()], 2);
        let slow = conv.forward(three).narrow(2, 0, 1);
        assert_eq!(fast.dims(), slow.dims());
        let d: f32 = (fast.clone() - slow.clone())
            .abs()
            .max()
            .into_scalar()
            .elem();
        assert!(d < 1e-5, "stride {stride:?}: {d}");
        let (gf, gs) = (fast.sum().backward(), slow.sum().backward());
        let grad = |g| {
            let mut p = GradientsParams::from_grads(g, &conv);
            let mut out = Vec::new();
            for id in [conv.weight_id()] {
                out.extend(
                    p.remove::<B, 5>(id)
                        .unwrap()
                        .into_data()
                        .into_vec::<f32>()
                        .unwrap(),
                );
            }
            out
        };
        let (a, b) = (grad(gf), grad(gs));
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-4,
            "stride {stride:?}: weight gradients differ by {d}"
        );
    }
}

/// With `time_kernel = 1` every frame is encoded and decoded on its own.
#[test]
fn a_per_frame_autoencoder_keeps_frames_apart() {
    let cfg = VaeConfig {
        time_kernel: 1,
        ..small(1, 4)
    };
    let vae = model(&cfg);
    let x = clip(4, 16, 12);
    let y = change_frame(&x, 1);
    let (qx, qy) = (
        vae.encoder.forward(x.clone()).mean,
        vae.encoder.forward(y.clone()).mean,
    );
    let enc = per_frame_change(&qx, &qy);
    let dec = per_frame_change(&vae.decoder.forward(qx), &vae.decoder.forward(qy));
    for change in [enc, dec] {
        assert!(
            change[1] > 0.0 && [0, 2, 3].iter().all(|&f| change[f] == 0.0),
            "{change:?}"
        );
    }
    assert!(VaeConfig {
        time_kernel: 1,
        ..small(4, 4)
    }
    .validate()
    .is_err());
    assert!(VaeConfig {
        time_kernel: 2,
        ..small(1, 4)
    }
    .validate()
    .is_err());
}
