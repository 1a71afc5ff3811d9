//! One FSDP optimizer step. burn has no backward hooks, so the model runs as
//! units (DESIGN.md, "Parallelism"): forward without autodiff keeping each
//! block's input; the final layer under autodiff, so the loss's backward
//! reaches its input; then backward unit by unit in reverse: gather the
//! unit, recompute it under autodiff from its saved input, take the
//! vector-Jacobian product with the incoming gradient (backward of
//! sum(out * grad_out)), reduce_scatter its parameter gradient and drop it.
//! Peak memory: the shards, one unit whole, and the saved block inputs (this
//! is also block-level activation checkpointing).
use std::cell::RefCell;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, ElementConversion, Tensor};
use orrery_diffusion::{Cond, DiffusionError, TrainBatch};
use orrery_dist::Collective;
use orrery_model::like;
use orrery_model::named::load_flat;
use orrery_model::{DitBlock, DitEmbed, DitInput, FinalLayer, Stem};

use crate::config::TrainConfig;
use crate::fsdp::{unit_grads, Fsdp};
use crate::optim::{learning_rate, AdamW, Ema, FlatMap};
use crate::step::StepOut;
use crate::{Result, TrainError};

/// What the forward pass keeps for the backward pass.
struct Tape<B: AutodiffBackend> {
    /// The model input (untracked), to recompute the embedder.
    input: DitInput<B>,
    /// Condition and constants from the embedder.
    stem: Stem<B::InnerBackend>,
    /// The input of every block: depth x [b, g, s, d].
    xs: Vec<Tensor<B::InnerBackend, 4>>,
    /// The final layer (gathered, with grad) and its two input leaves.
    head: FinalLayer<B>,
    x_last: Tensor<B, 4>,
    c_last: Tensor<B, 3>,
}

/// Unit `u` gathered into `skeleton` with its parameters as autodiff leaves.
fn leaf<B: AutodiffBackend, M: Module<B>>(
    fsdp: &Fsdp<B::InnerBackend>,
    skeleton: M,
    u: usize,
    comm: &dyn Collective,
) -> Result<M> {
    let full = fsdp.gather_compute(&fsdp.params, u, comm)?;
    Ok(load_flat(skeleton, Tensor::from_inner(full), true))
}

fn inner_input<B: AutodiffBackend>(input: &DitInput<B>) -> DitInput<B::InnerBackend> {
    let i = input.clone();
    DitInput {
        latents: i.latents.inner(),
        t: i.t.inner(),
        actions: i.actions.map(|a| a.inner()),
        labels: i.labels.map(|l| l.inner()),
        action_values: i.action_values.map(|v| v.inner()),
        action_keep: i.action_keep.map(|k| k.inner()),
    }
}

/// The forward pass of one micro-batch: trunk without autodiff, final layer
/// with it. Fills `tape`.
fn forward<B: AutodiffBackend>(
    fsdp: &Fsdp<B::InnerBackend>,
    input: DitInput<B>,
    comm: &dyn Collective,
    device: &B::Device,
    tape: &RefCell<Option<Tape<B>>>,
) -> Result<Tensor<B, 5>> {
    let dtype = input.latents.dtype();
    let (stem, mut xs) = fsdp.trunk(&fsdp.params, inner_input(&input), (true, true), comm)?;
    let last = xs.pop().expect("final layer input");
    let head = leaf(fsdp, fsdp.cfg.final_layer(device), fsdp.final_unit(), comm)?;
    let x_last = Tensor::<B, 4>::from_inner(last).require_grad();
    let c_last = Tensor::<B, 3>::from_inner(stem.cond.clone()).require_grad();
    let out = fsdp
        .compute(head.clone(), true)
        .forward(x_last.clone(), c_last.clone());
    let out = like(stem.unpatchify(out, &fsdp.cfg), dtype);
    *tape.borrow_mut() = Some(Tape {
        input,
        stem,
        xs,
        head,
        x_last,
        c_last,
    });
    Ok(out)
}

/// The backward pass of one micro-batch from the loss's gradients: adds each
/// unit's gradient shard to `acc` (by unit prefix).
fn backward<B: AutodiffBackend>(
    fsdp: &Fsdp<B::InnerBackend>,
    tape: Tape<B>,
    grads: B::Gradients,
    acc: &mut FlatMap<B::InnerBackend>,
    comm: &dyn Collective,
    device: &B::Device,
) -> Result<()> {
    let missing =
        |what: &str| TrainError::Config(format!("fsdp: no gradient reached {what}; this is a bug"));
    let Tape {
        input,
        stem,
        xs,
        head,
        x_last,
        c_last,
    } = tape;
    let mut g_x = x_last
        .grad(&grads)
        .ok_or_else(|| missing("the final layer's input"))?;
    // The condition's gradient sums over every unit: in f32 (under bf16
    // compute each part arrives in bf16).
    let mut g_c = like(
        c_last
            .grad(&grads)
            .ok_or_else(|| missing("the condition"))?,
        DType::F32,
    );
    let u = fsdp.final_unit();
    let unit = &fsdp.units[u];
    let g = unit_grads(unit, &head, grads, &fsdp.device);
    drop(head);
    fsdp.scatter_add(u, g, acc.get_mut(&unit.prefix).expect("unit"), comm)?;
    let bias = stem.bias.clone().map(Tensor::<B, 2>::from_inner);
    let rope = stem
        .rope
        .clone()
        .map(|(c, s)| (Tensor::<B, 2>::from_inner(c), Tensor::<B, 2>::from_inner(s)));
    for (i, x_in) in xs.into_iter().enumerate().rev() {
        let u = 1 + i;
        let block = leaf(fsdp, DitBlock::new(&fsdp.cfg, device), u, comm)?;
        let x = Tensor::<B, 4>::from_inner(x_in).require_grad();
        let c = Tensor::<B, 3>::from_inner(stem.cond.clone()).require_grad();
        let out = fsdp.compute(block.clone(), true).forward(
            x.clone(),
            c.clone(),
            bias.clone(),
            rope.as_ref(),
        );
        let grads = (out * Tensor::from_inner(g_x)).sum().backward();
        g_x = x.grad(&grads).ok_or_else(|| missing("a block's input"))?;
        let part = c
            .grad(&grads)
            .ok_or_else(|| missing("a block's condition"))?;
        g_c = g_c + like(part, DType::F32);
        let unit = &fsdp.units[u];
        let g = unit_grads(unit, &block, grads, &fsdp.device);
        drop(block);
        fsdp.scatter_add(u, g, acc.get_mut(&unit.prefix).expect("unit"), comm)?;
    }
    let embed = leaf(fsdp, DitEmbed::new(&fsdp.cfg, device), 0, comm)?;
    let again = fsdp.compute(embed.clone(), true).forward(input)?;
    let g_c = like(g_c, again.cond.dtype());
    let grads = ((again.x * Tensor::from_inner(g_x)).sum()
        + (again.cond * Tensor::from_inner(g_c)).sum())
    .backward();
    let unit = &fsdp.units[0];
    let g = unit_grads(unit, &embed, grads, &fsdp.device);
    fsdp.scatter_add(0, g, acc.get_mut(&unit.prefix).expect("unit"), comm)?;
    Ok(())
}

/// One optimizer step on this rank's shards: the loss of its share of the
/// global batch (in micro-batches), sharded gradients, global-norm clipping,
/// AdamW and EMA on the shards. Nothing changes when the loss or gradient
/// is not finite.
pub(crate) fn fsdp_step<B: AutodiffBackend>(
    cfg: &TrainConfig,
    fsdp: &mut Fsdp<B::InnerBackend>,
    batch: &TrainBatch<B>,
    step: u64,
    (optim, ema): (&mut AdamW<B::InnerBackend>, &mut Ema<B::InnerBackend>),
    comm: &dyn Collective,
) -> Result<StepOut> {
    let obj = &cfg.objective;
    let device = batch.latents.device();
    let (micro, plans, frames, mut comm_s) = crate::step::plan_step(cfg, batch, step, comm)?;
    let mut acc: FlatMap<B::InnerBackend> = fsdp
        .params
        .iter()
        .map(|(k, p)| (k.clone(), p.zeros_like()))
        .collect();
    let mut loss_part = 0f32;
    for (m, plan) in micro.iter().zip(plans) {
        let tape = RefCell::new(None);
        let model = |x_t: Tensor<B, 5>, t: Tensor<B, 2>, cond: Cond<B>| {
            forward(
                fsdp,
                crate::trainer::dit_input(x_t, t, cond),
                comm,
                &device,
                &tape,
            )
            .map_err(|e| DiffusionError::Denoiser(e.to_string()))
        };
        let loss = obj.loss_part(&model, m, plan, frames)?;
        loss_part += loss.clone().into_scalar().elem::<f32>();
        let grads = loss.backward();
        let tape = tape.into_inner().ok_or_else(|| {
            TrainError::Config("fsdp: the objective did not run the model; this is a bug".into())
        })?;
        backward(fsdp, tape, grads, &mut acc, comm, &device)?;
    }
    // The loss and the squared gradient norm (padding is zero) over ranks.
    let sq: f32 = acc
        .values()
        .map(|g| (g.clone() * g.clone()).sum().into_scalar().elem::<f32>())
        .sum();
    let mut totals = [loss_part, sq];
    let t_comm = Instant::now();
    comm.all_reduce_sum(&mut totals)?;
    comm_s += t_comm.elapsed().as_secs_f64();
    let (unit_s, unit_bytes) = fsdp.take_comm();
    let loss_value = totals[0] as f64;
    let norm = (totals[1] as f64).sqrt();
    let clip = crate::step::clip_factor(cfg, step, loss_value, norm)?;
    let lr = learning_rate(&cfg.optim, step, cfg.run.steps);
    optim.begin_step();
    for unit in &fsdp.units {
        let key = &unit.prefix;
        let p = fsdp.params.remove(key).expect("unit");
        let g = acc.remove(key).expect("unit") * clip;
        let next = if cfg.optim.weight_decay > 0.0 {
            optim.update_masked(&cfg.optim, lr, key, p, g, fsdp.decay_mask(key))
        } else {
            optim.update(&cfg.optim, lr, key, p, g, false)
        };
        fsdp.params.insert(key.clone(), next);
    }
    let d = ema.decay(cfg.ema.decay);
    for (key, p) in &fsdp.params {
        ema.update(d, key, p.clone());
    }
    ema.updates += 1;
    Ok(StepOut {
        loss: loss_value,
        grad_norm: norm,
        lr,
        comm_s: comm_s + unit_s,
        comm_bytes: if comm.size() > 1 {
            unit_bytes + 4 * (1 + totals.len())
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::tests::{run_steps, setup_with, AB};
    use crate::step::train_step;
    use crate::trainer::to_device;
    use burn::backend::Flex;
    use burn::module::AutodiffModule;
    use orrery_dist::SingleProcess;
    use orrery_model::named::{to_host, HostTensor, NamedTensors};
    use orrery_model::{AttentionMask, MlpKind, PosEmbed, QkNorm};
    use std::collections::BTreeMap;

    fn max_diff(a: &NamedTensors, b: &NamedTensors) -> f32 {
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
            let ema_whole: NamedTensors = ema
                .weights
                .iter()
                .map(|(n, t)| {
                    (
                        n.clone(),
                        HostTensor::from_flat(t.clone(), shapes[n].clone()),
                    )
                })
                .collect();
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
        cfg.run.precision = crate::config::Precision::Bf16;
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
            crate::fsdp::unpack_bf16(&crate::fsdp::pack_bf16(&v), v.len()).collect();
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
            let _seeded = crate::step::tests::seeded();
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
        use crate::checkpoint::{write_named, Pending, TensorFile, MODEL_FILE};
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
}
