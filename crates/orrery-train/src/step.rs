//! One optimizer step on one rank: the loss of its share of the global batch
//! (in micro-batches), gradients summed over ranks, clipping, AdamW and EMA.
use std::collections::BTreeMap;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use orrery_diffusion::{NoisePlan, TrainBatch};
use orrery_dist::Collective;
use orrery_model::named::{cast_params, map_named, named_grads, visit_named};
use orrery_model::{Dit, DitConfig};

use crate::config::{Precision, TrainConfig};
use crate::glue::denoiser;
use crate::optim::{global_norm, AdamW, Ema};
use crate::update::{update, Decay, ParamGrad};
use crate::{Result, TrainError};

/// What one step reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepOut {
    /// Loss of the batch.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Seconds spent in collectives.
    pub comm_s: f64,
    /// Bytes each rank sent into all_reduce (0 for one process).
    pub comm_bytes: usize,
}

/// A rank's micro-batches, their noise plans, and the number of frames in
/// the loss over the whole global batch (summed over ranks), with the
/// seconds that sum took. The loss is a mean over the global batch's frames
/// in the loss: each rank's (and micro-batch's) part is normalised by the
/// global count, so the parts' gradients sum to the single-process gradient.
pub(crate) fn plan_step<B: Backend>(
    cfg: &TrainConfig,
    batch: &TrainBatch<B>,
    step: u64,
    comm: &dyn Collective,
) -> Result<(Vec<TrainBatch<B>>, Vec<NoisePlan>, f32, f64)> {
    let micro = crate::ddp::micro_batches(batch, cfg.data.micro_batch);
    let plans: Vec<_> = micro
        .iter()
        .map(|m| {
            cfg.objective
                .plan(cfg.run.seed, step, &m.sample_ids, m.latents.dims())
        })
        .collect();
    let mut frames = [plans
        .iter()
        .map(|p| p.loss_mask.iter().sum::<f32>())
        .sum::<f32>()];
    let t_comm = Instant::now();
    comm.all_reduce_sum(&mut frames)?;
    Ok((micro, plans, frames[0], t_comm.elapsed().as_secs_f64()))
}

/// One step's loss and every parameter's gradient: micro-batches
/// accumulated, summed over ranks; what [`apply_step`] applies.
pub(crate) struct StepGrads<B: Backend> {
    /// The loss over the global batch.
    pub loss: f64,
    /// Each parameter's flat gradient, by name.
    pub grads: BTreeMap<String, Tensor<B, 1>>,
    /// Seconds spent in collectives.
    pub comm_s: f64,
    /// Bytes each rank sent into all_reduce (0 for one process).
    pub comm_bytes: usize,
}

/// The loss and gradients of step `step` of `model` on `batch`.
pub(crate) fn step_grads<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: &Dit<B>,
    batch: &TrainBatch<B>,
    step: u64,
    comm: &dyn Collective,
) -> Result<StepGrads<B::InnerBackend>> {
    let obj = &cfg.objective;
    let (micro, plans, frames, mut comm_s) = plan_step(cfg, batch, step, comm)?;
    let mut loss_value = [0f32];
    let mut grads: BTreeMap<String, Tensor<B::InnerBackend, 1>> = BTreeMap::new();
    for (m, plan) in micro.iter().zip(plans) {
        // Mixed precision: a bf16 cast of the weights inside the graph, so
        // the gradients arrive on the f32 weights as f32. One cast per
        // micro-batch: a backward pass consumes the graph it runs through,
        // so a cast shared by two micro-batches passes on only the first's
        // gradient.
        let half = (cfg.run.precision == Precision::Bf16)
            .then(|| cast_params(model.clone(), burn::tensor::DType::BF16));
        let net = half.as_ref().unwrap_or(model);
        let loss = obj.loss_part(&denoiser(net), m, plan, frames)?;
        loss_value[0] += loss.clone().into_scalar().elem::<f32>();
        let mut g = GradientsParams::from_grads(loss.backward(), model);
        for (name, g) in named_grads(model, &mut g) {
            let sum = match grads.remove(&name) {
                Some(acc) => acc + g,
                None => g,
            };
            grads.insert(name, sum);
        }
    }
    let t_comm = Instant::now();
    crate::ddp::sum_over_ranks(
        comm,
        &mut grads,
        &mut loss_value,
        cfg.parallel.bucket_elems(),
    )?;
    comm_s += t_comm.elapsed().as_secs_f64();
    let comm_bytes = if comm.size() > 1 {
        4 * (1 + loss_value.len() + grads.values().map(|g| g.dims()[0]).sum::<usize>())
    } else {
        0
    };
    Ok(StepGrads {
        loss: loss_value[0] as f64,
        grads,
        comm_s,
        comm_bytes,
    })
}

/// Clip `g`'s gradients, then AdamW and EMA: step `step` of `model`.
/// Nothing is changed when the loss or gradient is not finite.
pub(crate) fn apply_step<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: Dit<B>,
    g: StepGrads<B::InnerBackend>,
    step: u64,
    (optim, ema): (&mut AdamW<B::InnerBackend>, &mut Ema<B::InnerBackend>),
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<(Dit<B>, StepOut)> {
    let StepGrads {
        loss,
        mut grads,
        comm_s,
        comm_bytes,
    } = g;
    let norm = global_norm(&grads);
    let mut params = Vec::new();
    visit_named(&model, |name, _, _, flat| {
        let decays = shapes.get(name).is_some_and(|s| DitConfig::decays(name, s));
        params.push((name.to_string(), flat.inner(), decays));
    });
    let params = params
        .into_iter()
        .map(|(name, value, decays)| {
            let grad = grads
                .remove(&name)
                .ok_or_else(|| TrainError::Internal(format!("parameter {name} got no gradient")))?;
            let decay = if decays { Decay::Yes } else { Decay::No };
            Ok(ParamGrad {
                name,
                value,
                grad,
                decay,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut next, lr) = update(cfg, step, (loss, norm), (optim, ema), params)?;
    let model = map_named(model, |name, _, _| {
        Tensor::from_inner(next.remove(name).expect("every parameter was updated"))
    });
    Ok((
        model,
        StepOut {
            loss,
            grad_norm: norm,
            lr,
            comm_s,
            comm_bytes,
        },
    ))
}

/// One optimizer step: loss, backward, clip, AdamW, EMA. Nothing is changed
/// when the loss or gradient is not finite.
pub(crate) fn train_step<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: Dit<B>,
    batch: &TrainBatch<B>,
    step: u64,
    state: (&mut AdamW<B::InnerBackend>, &mut Ema<B::InnerBackend>),
    shapes: &BTreeMap<String, Vec<usize>>,
    comm: &dyn Collective,
) -> Result<(Dit<B>, StepOut)> {
    let g = step_grads(cfg, &model, batch, step, comm)?;
    apply_step(cfg, model, g, step, state, shapes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Schedule;
    use crate::glue::{param_shapes, to_device};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::backend::Backend;
    use orrery_data::synth::{render_clips, SynthConfig};
    use orrery_data::{Batch, Cursor, Loader};
    use orrery_model::DitConfig;

    pub(crate) type AB = Autodiff<Flex>;

    /// Whole-model steps on `batch` with fresh AdamW and EMA, step i with
    /// step key `keys[i]` (one key throughout: the same noise, so a fixed
    /// batch can be fit). Returns the model, each step's (loss, gradient
    /// norm), and the AdamW and EMA state.
    pub(crate) fn run_steps(
        cfg: &TrainConfig,
        mut model: Dit<AB>,
        shapes: &BTreeMap<String, Vec<usize>>,
        batch: &TrainBatch<AB>,
        keys: impl IntoIterator<Item = u64>,
    ) -> (Dit<AB>, Vec<(f64, f64)>, AdamW<Flex>, Ema<Flex>) {
        let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
        let mut outs = Vec::new();
        for key in keys {
            let (next, out) = train_step(
                cfg,
                model,
                batch,
                key,
                (&mut optim, &mut ema),
                shapes,
                &orrery_dist::SingleProcess,
            )
            .unwrap();
            model = next;
            outs.push((out.loss, out.grad_norm));
        }
        (model, outs, optim, ema)
    }

    pub(crate) fn setup() -> (TrainConfig, Dit<AB>, BTreeMap<String, Vec<usize>>, Batch) {
        setup_with(|_| {})
    }

    /// Held from seeding the backend's RNG (one per process) until the
    /// draws it is meant for are done, so parallel tests do not interleave.
    pub(crate) fn seeded() -> std::sync::MutexGuard<'static, ()> {
        static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());
        SEEDED.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rank `rank` of `n`'s share of the global batch of 8 clips that
    /// [`setup_with`] trains on (the whole batch for rank 0 of 1).
    pub(crate) fn rank_batch(rank: usize, n: usize) -> Batch {
        let clips = render_clips(&SynthConfig {
            clips: 8,
            frames: 4,
            height: 16,
            width: 16,
            seed: 1,
            continuous_actions: false,
        });
        Loader::new(&clips, 0, 8, 4, (rank, n), Cursor::default())
            .unwrap()
            .next_batch()
    }

    /// A small world model, its config changed by `edit`, and one batch of 8 clips.
    pub(crate) fn setup_with(
        edit: impl FnOnce(&mut TrainConfig),
    ) -> (TrainConfig, Dit<AB>, BTreeMap<String, Vec<usize>>, Batch) {
        let mut cfg = TrainConfig::default();
        cfg.model = DitConfig {
            frames: 4,
            height: 16,
            width: 16,
            hidden: 64,
            depth: 2,
            heads: 2,
            ..Default::default()
        };
        cfg.optim.warmup_steps = 0;
        cfg.optim.schedule = Schedule::Constant;
        cfg.optim.lr = 3e-3;
        edit(&mut cfg);
        let batch = rank_batch(0, 1);
        let device = Default::default();
        let seeded = seeded();
        AB::seed(&device, 0);
        let model: Dit<AB> = cfg.model.init(&device).unwrap();
        // Draw every weight now, in module order: a lazy parameter is drawn
        // when first read, and copies made before that draw their own.
        orrery_model::named::visit_named(&model, |_, _, _, _| {});
        drop(seeded);
        let shapes = param_shapes(&model);
        (cfg, model, shapes, batch)
    }

    #[test]
    fn loss_decreases_on_a_fixed_batch() {
        let (cfg, model, shapes, batch) = setup();
        let batch = to_device::<AB>(&batch, &cfg.model, &Default::default());
        // The same step key every time: the same noise, so the model can fit it.
        let (_, outs, optim, ema) = run_steps(&cfg, model, &shapes, &batch, [0; 40]);
        let losses: Vec<f64> = outs.iter().map(|o| o.0).collect();
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        assert!(
            last < 0.5 * first,
            "loss went {first} -> {last}: {losses:?}"
        );
        assert_eq!(optim.steps, 40);
        assert_eq!(ema.updates, 40);
    }

    /// Mixed precision: the bf16 step's loss and gradient norm are within a
    /// few percent of f32's (not equal), the weights stay f32, and training
    /// on a fixed batch still fits it.
    #[test]
    fn bf16_steps_track_f32_and_keep_f32_weights() {
        let run = |precision| {
            let (mut cfg, model, shapes, batch) = setup();
            cfg.run.precision = precision;
            let batch = to_device::<AB>(&batch, &cfg.model, &Default::default());
            let (model, outs, _, _) = run_steps(&cfg, model, &shapes, &batch, [0; 30]);
            visit_named(&model, |name, _, _, t| {
                assert_eq!(t.dtype(), burn::tensor::DType::F32, "{name}")
            });
            outs
        };
        let (full, half) = (run(Precision::F32), run(Precision::Bf16));
        let rel = |a: f64, b: f64| (a - b).abs() / a.abs();
        // A fresh adaLN-Zero model outputs 0 in any precision: compare from step 1 on.
        for k in 1..5 {
            let ((l, n), (l2, n2)) = (full[k], half[k]);
            assert!(
                rel(l, l2) < 0.03 && rel(n, n2) < 0.1,
                "step {k}: {:?} vs {:?}",
                full[k],
                half[k]
            );
        }
        assert!(
            (1..5).any(|k| full[k].0 != half[k].0),
            "bf16 must change the arithmetic: {full:?}"
        );
        assert!(half[29].0 < 0.5 * half[0].0, "bf16 loss {:?}", half);
    }

    /// A model whose weights are not drawn yet (parameters are lazy) takes
    /// DDP steps in bf16, as training and `bench step` give it: a bf16 copy of an undrawn
    /// weight would draw values of its own, and the gradients would be
    /// looked for on weights the step never used.
    #[test]
    fn an_undrawn_model_takes_ddp_steps_in_bf16() {
        use crate::replica::{Replica, StartState};
        use orrery_dist::SingleProcess;
        let (mut cfg, _, shapes, batch) = setup();
        cfg.run.precision = Precision::Bf16;
        let device = Default::default();
        let model: Dit<AB> = cfg.model.init(&device).unwrap();
        let world = orrery_dist::World::single();
        let (replica, mut optim, mut ema) = Replica::new(
            &cfg,
            model,
            &world,
            &SingleProcess,
            &device,
            StartState::Fresh,
        )
        .unwrap();
        let batch = to_device::<AB>(&batch, &cfg.model, &device);
        let state = (&mut optim, &mut ema);
        let (_, out) = replica
            .step(&cfg, &batch, 0, state, &shapes, &SingleProcess)
            .unwrap();
        assert!(out.loss.is_finite() && out.grad_norm > 0.0, "{out:?}");
    }

    /// Under bf16, two micro-batches of 4 give the gradient of one of 8:
    /// each micro-batch's backward reaches the f32 weights.
    #[test]
    fn bf16_micro_batches_add_up_to_the_whole_batch() {
        let norms: Vec<f64> = [8, 4]
            .into_iter()
            .map(|micro| {
                let (cfg, model, shapes, batch) = setup_with(|cfg| {
                    cfg.run.precision = Precision::Bf16;
                    cfg.data.micro_batch = micro;
                });
                let batch = to_device::<AB>(&batch, &cfg.model, &Default::default());
                // Step 0 of a fresh adaLN-Zero model reaches few weights: take step 1's.
                run_steps(&cfg, model, &shapes, &batch, 0..2).1[1].1
            })
            .collect();
        let rel = (norms[0] - norms[1]).abs() / norms[0];
        assert!(rel < 1e-2, "gradient norms {norms:?}");
    }

    #[test]
    fn a_non_finite_batch_stops_the_step() {
        let (cfg, model, shapes, mut batch) = setup();
        batch.latents[3] = f32::NAN;
        let batch = to_device::<AB>(&batch, &cfg.model, &Default::default());
        let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
        let err = train_step(
            &cfg,
            model,
            &batch,
            7,
            (&mut optim, &mut ema),
            &shapes,
            &orrery_dist::SingleProcess,
        )
        .err()
        .expect("must fail");
        assert!(err.to_string().starts_with("non-finite loss"), "{err}");
        assert!(err.to_string().contains("step 7"));
        assert_eq!((optim.steps, ema.updates), (0, 0), "nothing was updated");
    }
}
