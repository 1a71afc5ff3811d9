//! FSDP steps against the whole-model steps, sharded initialisation and
//! reads, bf16 compute and gathers.
use super::*;
use crate::fixtures::{run_steps, setup_with, AB};
use crate::glue::to_device;
use crate::step::train_step;
use burn::backend::Flex;
use burn::module::AutodiffModule;
use orrery_dist::SingleProcess;
use orrery_model::named::{to_host, NamedTensors};
use orrery_model::{AttentionMask, MlpKind, PosEmbed, QkNorm};
use std::collections::BTreeMap;

/// The largest difference between two sets of named tensors (same names and shapes).
pub fn max_diff(a: &NamedTensors, b: &NamedTensors) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(n, t)| {
            assert_eq!(t.shape, b[n].shape, "{n}");
            t.data.iter().zip(&b[n].data).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

/// FSDP on one rank (units run one at a time and recomputed in
/// backward, flat padded shards, per-element weight decay) takes the
/// same steps as the whole-model path, with clipping, weight decay and
/// two micro-batches on; for the default model and one with RoPE,
/// QK-norm, SwiGLU, a frame-causal mask and history frames.
#[test]
fn fsdp_on_one_rank_takes_the_same_steps_as_the_whole_model() {
    for variant in 0..2 {
        let (cfg, model, shapes, batch) = setup_with(|cfg| {
            cfg.optim.weight_decay = 0.1;
            cfg.optim.grad_clip = 0.05;
            cfg.data.micro_batch = 4;
            if variant == 1 {
                cfg.model.pos_embed = PosEmbed::Rope;
                cfg.model.qk_norm = QkNorm::Rms;
                cfg.model.mlp = MlpKind::Swiglu;
                cfg.model.attention = AttentionMask::FrameCausal;
                cfg.model.history_frames = 1;
            }
        });
        let device = Default::default();
        let batch = to_device::<AB>(&batch, &cfg.model, &device);
        let mut fsdp = Fsdp::new(&model.valid(), 0, 1, &device).unwrap();
        let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
        let (mut optim_s, mut ema_s) = (AdamW::default(), Ema::new(BTreeMap::new()));
        let mut model = model;
        for step in 0..3 {
            let (next, whole) = train_step(
                &cfg,
                model,
                &batch,
                step,
                (&mut optim, &mut ema),
                &shapes,
                &SingleProcess,
            )
            .unwrap();
            model = next;
            let sharded = fsdp_step(
                &cfg,
                &mut fsdp,
                &batch,
                step,
                (&mut optim_s, &mut ema_s),
                &SingleProcess,
            )
            .unwrap();
            assert!(whole.grad_norm > cfg.optim.grad_clip, "clipping is on");
            let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
            assert!(
                rel(whole.loss, sharded.loss) < 1e-6,
                "{whole:?} {sharded:?}"
            );
            assert!(
                rel(whole.grad_norm, sharded.grad_norm) < 1e-5,
                "{whole:?} {sharded:?}"
            );
        }
        let gather = |m: &FlatMap<Flex>, prefix: &str| {
            fsdp.gather_named(m, prefix, true, &SingleProcess).unwrap()
        };
        let mut moments = gather(&optim_s.exp_avg, "exp_avg.");
        moments.extend(gather(&optim_s.exp_avg_sq, "exp_avg_sq."));
        let ema_whole = ema.to_host(&shapes);
        let diffs = [
            max_diff(&to_host(&model), &gather(&fsdp.params, "")),
            max_diff(&ema_whole, &gather(&ema_s.weights, "")),
            max_diff(&optim.to_host(&shapes), &moments),
        ];
        eprintln!("variant {variant}: model, EMA, AdamW differ by {diffs:?}");
        assert!(
            diffs.iter().all(|&d| d < 1e-6),
            "variant {variant}: model, EMA, AdamW differ by {diffs:?}"
        );
    }
}

/// `run.precision = "bf16"` under FSDP: units cast to bf16 inside the
/// graph take the whole-model bf16 path's steps (to bf16 rounding), not
/// f32's, and every shard stays f32.
#[test]
fn fsdp_bf16_compute_takes_the_whole_model_bf16_steps() {
    let (mut cfg, model, shapes, batch) = setup_with(|cfg| cfg.data.micro_batch = 4);
    cfg.run.precision = orrery_config::Precision::Bf16;
    let device = Default::default();
    let batch = to_device::<AB>(&batch, &cfg.model, &device);
    let run_fsdp = |bf16: bool| {
        let mut fsdp = Fsdp::new(&model.valid(), 0, 1, &device).unwrap();
        fsdp.compute_bf16 = bf16;
        let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
        let outs: Vec<(f64, f64)> = (0..4)
            .map(|step| {
                let o = fsdp_step(
                    &cfg,
                    &mut fsdp,
                    &batch,
                    step,
                    (&mut optim, &mut ema),
                    &SingleProcess,
                )
                .unwrap();
                (o.loss, o.grad_norm)
            })
            .collect();
        for t in fsdp.params.values().chain(optim.exp_avg.values()) {
            assert_eq!(t.dtype(), burn::tensor::DType::F32);
        }
        let w = fsdp
            .gather_named(&fsdp.params, "", true, &SingleProcess)
            .unwrap();
        (outs, w)
    };
    let (whole, want, _, _) = run_steps(&cfg, model.clone(), &shapes, &batch, 0..4);
    let ((half, w_half), (full, w_full)) = (run_fsdp(true), run_fsdp(false));
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
    // A fresh adaLN-Zero model outputs 0 in any precision: from step 1 on.
    for k in 1..4 {
        let ((l, n), (l2, n2)) = (want[k], half[k]);
        eprintln!(
            "step {k}: whole bf16 {:?}, fsdp bf16 {:?}, fsdp f32 {:?}",
            want[k], half[k], full[k]
        );
        assert!(
            rel(l, l2) < 1e-3 && rel(n, n2) < 2e-2,
            "step {k}: {:?} vs {:?}",
            want[k],
            half[k]
        );
    }
    assert!(
        (1..4).any(|k| half[k].1 != full[k].1),
        "bf16 changes the arithmetic"
    );
    let (d_half, d_full) = (
        max_diff(&to_host(&whole), &w_half),
        max_diff(&to_host(&whole), &w_full),
    );
    eprintln!("weights after 4 steps differ from the whole-model bf16 run's by {d_half} (fsdp bf16), {d_full} (fsdp f32)");
    assert!(d_half < d_full, "{d_half} vs {d_full}");
}

/// bf16 gathers round each weight to bf16 for compute (packing two per
/// f32 slot loses nothing else) and train to nearly the same losses,
/// while the f32 shards keep full precision.
#[test]
fn bf16_gathers_round_weights_for_compute_only() {
    let v = [1.0f32, 1.0078125, std::f32::consts::PI, -2.5e-3, 7.0];
    let back: Vec<f32> =
        crate::fsdp_gather::unpack_bf16(&crate::fsdp_gather::pack_bf16(&v), v.len()).collect();
    assert_eq!(back[..2], [1.0, 1.0078125], "bf16 values pass exactly");
    assert_eq!((back[2], back[4]), (3.140625, 7.0), "nearest bf16");
    assert!((back[3] - v[3]).abs() <= v[3].abs() / 256.0, "{back:?}");

    let (cfg, model, _, batch) = setup_with(|_| {});
    let device = Default::default();
    let batch = to_device::<AB>(&batch, &cfg.model, &device);
    let inner = model.valid();
    let mut runs = Vec::new();
    for bf16 in [false, true] {
        let mut fsdp = Fsdp::new(&inner, 0, 1, &device).unwrap();
        fsdp.gather_bf16 = bf16;
        let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
        let losses: Vec<f64> = (0..3)
            .map(|step| {
                fsdp_step(
                    &cfg,
                    &mut fsdp,
                    &batch,
                    step,
                    (&mut optim, &mut ema),
                    &SingleProcess,
                )
                .unwrap()
                .loss
            })
            .collect();
        let weights = fsdp
            .gather_named(&fsdp.params, "", true, &SingleProcess)
            .unwrap();
        runs.push((losses, weights));
    }
    let ((l32, w32), (l16, w16)) = (&runs[0], &runs[1]);
    for (a, b) in l32.iter().zip(l16) {
        assert!((a - b).abs() / a < 1e-2, "losses {l32:?} vs {l16:?}");
    }
    assert_ne!(l32, l16, "bf16 compute changes the numbers");
    let d = max_diff(w32, w16);
    assert!(d > 0.0 && d < 1e-2, "weights differ by {d}");
}

/// Shards of every rank, put side by side, are the whole flat unit plus
/// zero padding, and each rank holds about 1/n of the state.
#[test]
fn shards_of_all_ranks_tile_each_unit() {
    let (_, model, _, _) = setup_with(|_| {});
    let device = Default::default();
    let inner = model.valid();
    let one = Fsdp::new(&inner, 0, 1, &device).unwrap();
    let n = 3;
    let ranks: Vec<_> = (0..n)
        .map(|r| Fsdp::new(&inner, r, n, &device).unwrap())
        .collect();
    for unit in &one.units {
        let whole = crate::optim::host(one.params[&unit.prefix].clone());
        let mut tiled: Vec<f32> = ranks
            .iter()
            .flat_map(|f| crate::optim::host(f.params[&unit.prefix].clone()))
            .collect();
        assert_eq!(tiled.len(), unit.len.div_ceil(n) * n, "{}", unit.prefix);
        assert!(
            tiled[unit.len..].iter().all(|&v| v == 0.0),
            "padding is zero"
        );
        tiled.truncate(unit.len);
        assert_eq!(tiled, whole, "{}", unit.prefix);
        // The weight-decay masks tile the one-rank mask the same way.
        let mask = |f: &Fsdp<Flex>| crate::optim::host(f.decay_mask(&unit.prefix));
        let mut masks: Vec<f32> = ranks.iter().flat_map(mask).collect();
        masks.truncate(unit.len);
        assert_eq!(masks, mask(&one)[..unit.len], "{}", unit.prefix);
        assert!(
            masks.contains(&1.0) && masks.contains(&0.0),
            "{}",
            unit.prefix
        );
    }
    let (state_1, unit_1) = one.state_bytes();
    let (state_n, unit_n) = ranks[1].state_bytes();
    assert_eq!(state_1, 16 * cfg_params(&inner));
    assert!(
        state_n <= state_1 / n + 16 * n * one.units.len(),
        "{state_n} vs {state_1} / {n}"
    );
    assert!(unit_n >= unit_1 && unit_n < unit_1 + 8 * n);
}

/// Initialising unit by unit, keeping only a shard, gives every rank the
/// shard it would cut from the whole model built from the same seed (the
/// equivalence with one process rests on it), for both model variants.
#[test]
fn sharded_init_equals_sharding_the_whole_model() {
    use burn::tensor::backend::Backend;
    for variant in 0..2 {
        let (cfg, _, _, _) = setup_with(|cfg| {
            if variant == 1 {
                cfg.model.pos_embed = PosEmbed::Learned;
                cfg.model.num_classes = 3;
                cfg.model.mlp = MlpKind::Swiglu;
                cfg.model.history_frames = 1;
            }
        });
        let device = Default::default();
        // The backend's RNG is one per process: no other test may draw
        // between a seed and the draws it is meant for.
        let _seeded = crate::fixtures::seeded();
        Flex::seed(&device, 7);
        let whole = cfg.model.init::<Flex>(&device).unwrap();
        for n in [1, 3] {
            let cut: Vec<_> = (0..n)
                .map(|r| Fsdp::new(&whole, r, n, &device).unwrap())
                .collect();
            for (r, cut) in cut.iter().enumerate() {
                Flex::seed(&device, 7);
                let mut fsdp = Fsdp::<Flex>::plan(&cfg.model, r, n, &device).unwrap();
                fsdp.init_params(&orrery_dist::SingleProcess).unwrap();
                for u in &fsdp.units {
                    let host = |f: &Fsdp<Flex>| crate::optim::host(f.params[&u.prefix].clone());
                    assert_eq!(
                        host(&fsdp),
                        host(cut),
                        "variant {variant}, {} of rank {r} of {n}",
                        u.prefix
                    );
                }
            }
        }
    }
}

/// Resuming, each rank reads its shards straight from the checkpoint's
/// file: the same shards as cutting the whole model; a missing tensor
/// gives zeros, one of the wrong size an error naming it.
#[test]
fn shards_read_from_a_checkpoint_file_equal_shards_of_the_whole() {
    use orrery_checkpoint::{write_named, Pending, TensorFile, MODEL_FILE};
    let (_, model, _, _) = setup_with(|_| {});
    let device = Default::default();
    let inner = model.valid();
    let dir = std::env::temp_dir().join(format!("orrery-shard-file-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pending = Pending::begin(&dir, 1, true).unwrap();
    let mut named = to_host(&inner);
    write_named(&pending, MODEL_FILE, &named).unwrap();
    let file = TensorFile::open(&dir.join("step_00000001.tmp").join(MODEL_FILE)).unwrap();
    for r in 0..3 {
        let fsdp = Fsdp::new(&inner, r, 3, &device).unwrap();
        let read = fsdp.shard_file(&file, "").unwrap();
        for (prefix, t) in &fsdp.params {
            let host = crate::optim::host;
            assert_eq!(
                host(read[prefix].clone()),
                host(t.clone()),
                "{prefix} of rank {r}"
            );
        }
        let none = fsdp.shard_file(&file, "exp_avg.").unwrap();
        assert!(none
            .values()
            .all(|t| crate::optim::host(t.clone()).iter().all(|&v| v == 0.0)));
    }
    let qkv = "blocks.1.attn.qkv.weight";
    named.get_mut(qkv).unwrap().data.pop();
    named.get_mut(qkv).unwrap().shape = vec![named[qkv].data.len()];
    write_named(&pending, MODEL_FILE, &named).unwrap();
    let file = TensorFile::open(&dir.join("step_00000001.tmp").join(MODEL_FILE)).unwrap();
    let fsdp = Fsdp::new(&inner, 1, 3, &device).unwrap();
    let err = fsdp.shard_file(&file, "").unwrap_err().to_string();
    assert!(
        err.contains(qkv) && err.contains("does not fit this model"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn cfg_params<B: burn::tensor::backend::Backend>(m: &orrery_model::Dit<B>) -> usize {
    m.config().num_params()
}
