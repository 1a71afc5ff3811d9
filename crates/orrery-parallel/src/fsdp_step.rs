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
use burn::tensor::{ElementConversion, Tensor};
use orrery_diffusion::{Cond, DiffusionError, TrainBatch};
use orrery_dist::Collective;
use orrery_model::like;
use orrery_model::named::load_flat;
use orrery_model::{AttnContext, DitBlock, DitEmbed, DitInput, FinalLayer, Stem, TrainBackend};

use crate::fsdp::{unit_grads, Fsdp};
use crate::optim::{AdamW, Ema, FlatMap};
use crate::recompute::inner_input;
use crate::step::StepOut;
use crate::update::{finite_step, update, Decay, ParamGrad};
use crate::{Error, Result};
use orrery_config::TrainConfig;

/// What the forward pass keeps for the backward pass.
struct Tape<B: TrainBackend> {
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
fn leaf<B: TrainBackend, M: Module<B>>(
    fsdp: &Fsdp<B::InnerBackend>,
    skeleton: M,
    u: usize,
    comm: &dyn Collective,
) -> Result<M> {
    let full = fsdp.gather_compute(&fsdp.params, u, comm)?;
    Ok(load_flat(skeleton, Tensor::from_inner(full), true))
}

/// The forward pass of one micro-batch: trunk without autodiff, final layer
/// with it. Fills `tape`.
fn forward<B: TrainBackend>(
    fsdp: &Fsdp<B::InnerBackend>,
    input: DitInput<B>,
    comm: &dyn Collective,
    device: &B::Device,
    tape: &RefCell<Option<Tape<B>>>,
) -> Result<Tensor<B, 5>> {
    let dtype = input.latents.dtype();
    // The embedder's recompute in backward must see the same shard.
    let input = orrery_model::ContextShard::apply(fsdp.context.as_ref(), input, &fsdp.cfg);
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
fn backward<B: TrainBackend>(
    fsdp: &Fsdp<B::InnerBackend>,
    tape: Tape<B>,
    grads: B::Gradients,
    acc: &mut FlatMap<B::InnerBackend>,
    comm: &dyn Collective,
    device: &B::Device,
) -> Result<()> {
    let missing =
        |what: &str| Error::Config(format!("fsdp: no gradient reached {what}; this is a bug"));
    let Tape {
        input,
        stem,
        xs,
        head,
        x_last,
        c_last,
    } = tape;
    let (mut g_x, mut g_c) =
        crate::recompute::head_input_grads(&x_last, &c_last, &grads, &missing)?;
    let u = fsdp.final_unit();
    let unit = &fsdp.units[u];
    let g = unit_grads(unit, &head, grads, &fsdp.device);
    drop(head);
    fsdp.scatter_add(u, g, acc.get_mut(&unit.prefix).expect("unit"), comm)?;
    let attn = AttnContext::<B>::from_inner(stem.attn.clone());
    let (mut xs, mut input) = (xs, Some(input));
    // Each block in reverse, then the embedder; gathered ahead under
    // parallel.prefetch. The parameters become autodiff leaves.
    let order: Vec<usize> = (0..=fsdp.cfg.depth).rev().collect();
    fsdp.each_unit(&fsdp.params, &order, comm, |u, full| {
        let unit = &fsdp.units[u];
        let acc = acc.get_mut(&unit.prefix).expect("unit");
        if u == 0 {
            let embed = load_flat(
                DitEmbed::new(&fsdp.cfg, device),
                Tensor::from_inner(full),
                true,
            );
            let again = fsdp
                .compute(embed.clone(), true)
                .forward(input.take().expect("one input"))?;
            let g_c = like(g_c.clone(), again.cond.dtype());
            let grads = ((again.x * Tensor::from_inner(g_x.clone())).sum()
                + (again.cond * Tensor::from_inner(g_c)).sum())
            .backward();
            let g = unit_grads(unit, &embed, grads, &fsdp.device);
            return fsdp.scatter_add(0, g, acc, comm);
        }
        let x_in = xs.pop().expect("the input of every block");
        let block = load_flat(
            DitBlock::new(&fsdp.cfg, device),
            Tensor::from_inner(full),
            true,
        );
        let grads;
        (grads, g_x, g_c) = crate::recompute::block_vjp(
            &fsdp.compute(block.clone(), true),
            x_in,
            &stem.cond,
            &attn,
            (g_x.clone(), g_c.clone()),
            &missing,
        )?;
        let g = unit_grads(unit, &block, grads, &fsdp.device);
        drop(block);
        fsdp.scatter_add(u, g, acc, comm)
    })?;
    Ok(())
}

/// One optimizer step on this rank's shards: the loss of its share of the
/// global batch (in micro-batches), sharded gradients, global-norm clipping,
/// AdamW and EMA on the shards. Nothing changes when the loss or gradient
/// is not finite.
pub fn fsdp_step<B: TrainBackend>(
    cfg: &TrainConfig,
    fsdp: &mut Fsdp<B::InnerBackend>,
    batch: &TrainBatch<B>,
    step: u64,
    (optim, ema): (&mut AdamW<B::InnerBackend>, &mut Ema<B::InnerBackend>),
    comm: &dyn Collective,
) -> Result<StepOut> {
    let obj = &cfg.objective;
    let device = batch.latents.device();
    let copies = fsdp.context.as_ref().map_or(1, |c| c.size());
    let (micro, plans, frames, mut comm_s) =
        crate::step::plan_step(cfg, batch, (step, copies), comm)?;
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
                crate::glue::dit_input(x_t, t, cond),
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
            Error::Config("fsdp: the objective did not run the model; this is a bug".into())
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
    // Every rank of a context group computes its clips' whole loss.
    let loss_value = totals[0] as f64 / copies as f64;
    let norm = (totals[1] as f64).sqrt();
    let keys: Vec<String> = fsdp.units.iter().map(|u| u.prefix.clone()).collect();
    let mut params = Vec::with_capacity(keys.len());
    for key in keys {
        let decay = if cfg.optim.weight_decay > 0.0 {
            Decay::Mask(fsdp.decay_mask(&key))
        } else {
            Decay::No
        };
        let (Some(value), Some(grad)) = (fsdp.params.remove(&key), acc.remove(&key)) else {
            return Err(Error::Internal(format!(
                "fsdp unit {key} has no shard or no gradient"
            )));
        };
        params.push(ParamGrad {
            name: key,
            value,
            grad,
            decay,
        });
    }
    let (next, lr) = update(
        cfg.into(),
        step,
        (loss_value, norm),
        (optim, Some(ema)),
        params,
    )?;
    fsdp.params.extend(next);
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
        skipped: !finite_step(loss_value, norm),
    })
}

#[cfg(test)]
#[path = "fsdp_step_tests.rs"]
pub mod tests;
