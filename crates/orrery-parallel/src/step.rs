//! One optimizer step on one rank: the loss of its share of the global batch
//! (in micro-batches), gradients summed over ranks, clipping, AdamW and EMA.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use orrery_diffusion::{NoisePlan, TrainBatch};
use orrery_dist::Collective;
use orrery_model::named::{cast_params, map_named, named_grads, visit_named};
use orrery_model::{Dit, DitConfig, TrainBackend};

use crate::glue::denoiser;
use crate::optim::{global_norm, AdamW, Ema};
use crate::recompute;
use crate::update::{finite_step, update, Decay, ParamGrad};
use crate::{Error, Result};
use orrery_config::{ActivationCheckpoint, Precision, TrainConfig};

/// What one step reports.
#[derive(Debug, Clone, Copy)]
pub struct StepOut {
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
    /// The loss or gradient norm was not finite: nothing was updated.
    pub skipped: bool,
}

/// A rank's micro-batches, their noise plans, and the number of frames in
/// the loss over the whole global batch (summed over ranks), with the
/// seconds that sum took. The loss is a mean over the global batch's frames
/// in the loss: each rank's (and micro-batch's) part is normalised by the
/// global count, so the parts' gradients sum to the single-process gradient.
/// `copies` ranks hold each clip (a context group's C, else 1).
pub fn plan_step<B: Backend>(
    cfg: &TrainConfig,
    batch: &TrainBatch<B>,
    (step, copies): (u64, usize),
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
    // The ranks of a context group hold the same clips: each counted C times.
    let frames = frames[0] / copies as f32;
    Ok((micro, plans, frames, t_comm.elapsed().as_secs_f64()))
}

/// One step's loss and every parameter's gradient: micro-batches
/// accumulated, summed over ranks; what [`apply_step`] applies.
pub struct StepGrads<B: Backend> {
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
pub fn step_grads<B: TrainBackend>(
    cfg: &TrainConfig,
    model: &Dit<B>,
    batch: &TrainBatch<B>,
    step: u64,
    comm: &dyn Collective,
) -> Result<StepGrads<B::InnerBackend>> {
    let obj = &cfg.objective;
    let copies = model.context().map_or(1, |c| c.size());
    let (micro, plans, frames, mut comm_s) = plan_step(cfg, batch, (step, copies), comm)?;
    let mut loss_value = [0f32];
    let mut grads: BTreeMap<String, Tensor<B::InnerBackend, 1>> = BTreeMap::new();
    for (m, plan) in micro.iter().zip(plans) {
        // Mixed precision: a bf16 cast of the weights inside the graph, so
        // the gradients arrive on the f32 weights as f32. One cast per
        // micro-batch: a backward pass consumes the graph it runs through,
        // so a cast shared by two micro-batches passes on only the first's
        // gradient.
        let bf16 = cfg.run.precision == Precision::Bf16;
        if cfg.parallel.activation_checkpoint == ActivationCheckpoint::Block {
            let tape = RefCell::new(None);
            let loss = obj.loss_part(&recompute::denoiser(model, bf16, &tape), m, plan, frames)?;
            loss_value[0] += loss.clone().into_scalar().elem::<f32>();
            let grads_loss = loss.backward();
            let tape = tape
                .into_inner()
                .ok_or_else(|| Error::Internal("the objective did not run the model".into()))?;
            recompute::backward(model, bf16, tape, grads_loss, &mut grads)?;
            continue;
        }
        let half = bf16.then(|| cast_params(model.clone(), burn::tensor::DType::BF16));
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
        // Every rank of a context group computes its clips' whole loss.
        loss: loss_value[0] as f64 / copies as f64,
        grads,
        comm_s,
        comm_bytes,
    })
}

/// Clip `g`'s gradients, then AdamW and EMA: step `step` of `model`.
/// Nothing is changed when the loss or gradient is not finite (the step
/// is skipped).
pub fn apply_step<B: TrainBackend>(
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
                .ok_or_else(|| Error::Internal(format!("parameter {name} got no gradient")))?;
            let decay = if decays { Decay::Yes } else { Decay::No };
            Ok(ParamGrad {
                name,
                value,
                grad,
                decay,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut next, lr) = update(cfg.into(), step, (loss, norm), (optim, Some(ema)), params)?;
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
            skipped: !finite_step(loss, norm),
        },
    ))
}

/// One optimizer step: loss, backward, clip, AdamW, EMA. Nothing is changed
/// when the loss or gradient is not finite (the step is skipped).
pub fn train_step<B: TrainBackend>(
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
mod tests {
    use super::*;
    use crate::fixtures::*;
    use crate::glue::to_device;

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

    /// A batch whose loss overflows (finite latents of 1e30: the data
    /// plane refuses NaN) skips the step: the same weights come back, and
    /// neither AdamW nor the EMA counts it.
    #[test]
    fn a_non_finite_loss_skips_the_step() {
        let (cfg, model, shapes, mut batch) = setup();
        batch.latents[3] = 1e30;
        let batch = to_device::<AB>(&batch, &cfg.model, &Default::default());
        let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
        let before = flat_params(&model);
        let (model, out) = train_step(
            &cfg,
            model,
            &batch,
            7,
            (&mut optim, &mut ema),
            &shapes,
            &orrery_dist::SingleProcess,
        )
        .unwrap();
        assert!(out.skipped && !out.loss.is_finite(), "{out:?}");
        assert_eq!(flat_params(&model), before, "the weights moved");
        assert_eq!((optim.steps, ema.updates), (0, 0), "nothing was updated");
    }

    fn flat_params(model: &Dit<AB>) -> Vec<f32> {
        let mut all = Vec::new();
        visit_named(model, |_, _, _, t| {
            all.extend(t.clone().into_data().to_vec::<f32>().unwrap())
        });
        all
    }
}
