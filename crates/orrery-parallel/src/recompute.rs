//! Block-level activation checkpointing for a whole model (one process and
//! DDP; FSDP always runs this way, see fsdp_step.rs). burn has no backward
//! hooks, so one micro-batch runs as: the embedder and every block without
//! autodiff, keeping only each block's input; the final layer under
//! autodiff, so the loss's backward reaches its input; then block by block
//! in reverse, recompute the block under autodiff from its saved input and
//! take the vector-Jacobian product with the incoming gradient (backward of
//! sum(out * grad_out)); last the embedder. Peak activation memory: the
//! block inputs plus one block's graph, instead of every block's graph.
use std::cell::RefCell;
use std::collections::BTreeMap;

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use orrery_diffusion::{Cond, DiffusionError};
use orrery_model::named::{cast_params, named_grads};
use orrery_model::{like, AttnContext, ContextShard, Dit, DitBlock, DitInput, Stem, TrainBackend};

use crate::{Error, Result};

/// What the forward pass keeps for the backward pass.
pub struct Tape<B: TrainBackend> {
    /// The model input (untracked), to recompute the embedder.
    input: DitInput<B>,
    /// Condition and constants from the embedder.
    stem: Stem<B::InnerBackend>,
    /// The input of every block: depth x [b, g, s, d].
    xs: Vec<Tensor<B::InnerBackend, 4>>,
    /// The final layer's two input leaves.
    x_last: Tensor<B, 4>,
    c_last: Tensor<B, 3>,
}

/// The model input without autodiff.
pub(crate) fn inner_input<B: TrainBackend>(input: &DitInput<B>) -> DitInput<B::InnerBackend> {
    let i = input.clone();
    DitInput {
        latents: i.latents.inner(),
        t: i.t.inner(),
        actions: i.actions.map(|a| a.inner()),
        labels: i.labels.map(|l| l.inner()),
        action_values: i.action_values.map(|v| v.inner()),
        action_keep: i.action_keep.map(|k| k.inner()),
        context: i.context,
    }
}

/// `unit` in the compute type: a bf16 cast (under autodiff, inside the
/// graph, so gradients reach the f32 weights) or the unit itself.
fn compute<B2: Backend, M: Module<B2>>(unit: M, bf16: bool) -> M {
    if bf16 {
        cast_params(unit, DType::BF16)
    } else {
        unit
    }
}

/// The model as a denoiser that runs the trunk without autodiff and
/// records a [`Tape`] for [`backward`]. The objective must call it once.
pub fn denoiser<'a, B: TrainBackend>(
    model: &'a Dit<B>,
    bf16: bool,
    tape: &'a RefCell<Option<Tape<B>>>,
) -> impl orrery_diffusion::Denoiser<B> + 'a {
    move |x_t: Tensor<B, 5>, t: Tensor<B, 2>, cond: Cond<B>| {
        let input = crate::glue::dit_input(x_t, t, cond);
        let input = ContextShard::apply(model.context(), input, model.config());
        let dtype = input.latents.dtype();
        let (embed, blocks, head) = model.units();
        let stem = compute(embed.valid(), bf16)
            .forward(inner_input(&input))
            .map_err(|e| DiffusionError::Denoiser(e.to_string()))?;
        let mut xs = vec![stem.x.clone()];
        for block in blocks {
            let x = xs.last().expect("one").clone();
            xs.push(compute(block.valid(), bf16).forward(x, stem.cond.clone(), &stem.attn));
        }
        let x_last = Tensor::<B, 4>::from_inner(xs.pop().expect("one")).require_grad();
        let c_last = Tensor::<B, 3>::from_inner(stem.cond.clone()).require_grad();
        let out = compute(head.clone(), bf16).forward(x_last.clone(), c_last.clone());
        let out = like(stem.unpatchify(out, model.config()), dtype);
        *tape.borrow_mut() = Some(Tape {
            input,
            stem,
            xs,
            x_last,
            c_last,
        });
        Ok(out)
    }
}

/// Move the gradients in `grads` of `model`'s parameters into `acc`, by
/// name, adding to what is there.
fn take_grads<B: TrainBackend>(
    model: &Dit<B>,
    grads: B::Gradients,
    acc: &mut BTreeMap<String, Tensor<B::InnerBackend, 1>>,
) {
    let mut g = GradientsParams::from_grads(grads, model);
    for (name, g) in named_grads(model, &mut g) {
        let sum = match acc.remove(&name) {
            Some(a) => a + g,
            None => g,
        };
        acc.insert(name, sum);
    }
}

/// The gradients that reached the final layer's input leaves: the last
/// block's output, and the condition in f32 (its gradient sums over every
/// unit; under bf16 compute each part arrives in bf16).
///
/// # Shapes
/// -> ([b, g, s, d], [b, g, d])
#[allow(clippy::type_complexity)]
pub(crate) fn head_input_grads<B: TrainBackend>(
    x_last: &Tensor<B, 4>,
    c_last: &Tensor<B, 3>,
    grads: &B::Gradients,
    missing: &dyn Fn(&str) -> Error,
) -> Result<(Tensor<B::InnerBackend, 4>, Tensor<B::InnerBackend, 3>)> {
    let g_x = x_last
        .grad(grads)
        .ok_or_else(|| missing("the final layer's input"))?;
    let g_c = c_last.grad(grads).ok_or_else(|| missing("the condition"))?;
    Ok((g_x, like(g_c, DType::F32)))
}

/// One block's backward by recompute: `block` run under autodiff from its
/// saved input `x_in` and the condition, and the vector-Jacobian product
/// with `g_x` taken. Returns the graph's gradients (the block's parameters'
/// among them), the gradient for the block's input, and `g_c` with the
/// condition's part added (in f32).
///
/// # Shapes
/// x_in, g_x: [b, g, s, d]; cond, g_c: [b, g, d]
#[allow(clippy::type_complexity)]
pub(crate) fn block_vjp<B: TrainBackend>(
    block: &DitBlock<B>,
    x_in: Tensor<B::InnerBackend, 4>,
    cond: &Tensor<B::InnerBackend, 3>,
    attn: &AttnContext<B>,
    (g_x, g_c): (Tensor<B::InnerBackend, 4>, Tensor<B::InnerBackend, 3>),
    missing: &dyn Fn(&str) -> Error,
) -> Result<(
    B::Gradients,
    Tensor<B::InnerBackend, 4>,
    Tensor<B::InnerBackend, 3>,
)> {
    let x = Tensor::<B, 4>::from_inner(x_in).require_grad();
    let c = Tensor::<B, 3>::from_inner(cond.clone()).require_grad();
    let out = block.forward(x.clone(), c.clone(), attn);
    let grads = (out * Tensor::from_inner(g_x)).sum().backward();
    let g_x = x.grad(&grads).ok_or_else(|| missing("a block's input"))?;
    let part = c
        .grad(&grads)
        .ok_or_else(|| missing("a block's condition"))?;
    Ok((grads, g_x, g_c + like(part, DType::F32)))
}

/// The backward pass of one micro-batch from the loss's gradients: every
/// parameter's gradient added to `acc` by name.
pub fn backward<B: TrainBackend>(
    model: &Dit<B>,
    bf16: bool,
    tape: Tape<B>,
    grads: B::Gradients,
    acc: &mut BTreeMap<String, Tensor<B::InnerBackend, 1>>,
) -> Result<()> {
    let missing = |what: &str| {
        Error::Config(format!(
            "activation checkpointing: no gradient reached {what}; this is a bug"
        ))
    };
    let Tape {
        input,
        stem,
        xs,
        x_last,
        c_last,
    } = tape;
    let (mut g_x, mut g_c) = head_input_grads(&x_last, &c_last, &grads, &missing)?;
    take_grads(model, grads, acc);
    let (embed, blocks, _) = model.units();
    let attn = AttnContext::<B>::from_inner(stem.attn.clone());
    for (block, x_in) in blocks.iter().zip(xs).rev() {
        let block = compute(block.clone(), bf16);
        let grads;
        (grads, g_x, g_c) = block_vjp(&block, x_in, &stem.cond, &attn, (g_x, g_c), &missing)?;
        take_grads(model, grads, acc);
    }
    let again = compute(embed.clone(), bf16).forward(input)?;
    let g_c = like(g_c, again.cond.dtype());
    let grads = ((again.x * Tensor::from_inner(g_x)).sum()
        + (again.cond * Tensor::from_inner(g_c)).sum())
    .backward();
    take_grads(model, grads, acc);
    Ok(())
}

#[cfg(test)]
mod tests {
    use orrery_config::{ActivationCheckpoint, Precision};
    use orrery_dist::SingleProcess;
    use orrery_model::{AttentionImpl, AttentionMask, PosEmbed, QkNorm};

    use crate::fixtures::{setup_with, AB};
    use crate::glue::to_device;
    use crate::step::step_grads;

    /// Recomputing blocks gives the gradients of keeping every activation:
    /// two micro-batches, f32 and bf16 compute, the default model and one
    /// with RoPE, QK-norm, history frames and blockwise attention.
    #[test]
    fn block_checkpointing_gives_the_gradients_of_keeping_everything() {
        for (variant, precision) in [
            (0, Precision::F32),
            (1, Precision::F32),
            (1, Precision::Bf16),
        ] {
            let (mut cfg, model, _, batch) = setup_with(|cfg| {
                cfg.data.micro_batch = 4;
                cfg.run.precision = precision;
                if variant == 1 {
                    cfg.model.pos_embed = PosEmbed::Rope;
                    cfg.model.qk_norm = QkNorm::Rms;
                    cfg.model.attention = AttentionMask::FrameCausal;
                    cfg.model.history_frames = 1;
                    cfg.model.attention_impl = AttentionImpl::Blockwise;
                    cfg.model.attention_block = 24;
                }
            });
            let batch = to_device::<AB>(&batch, &cfg.model, &Default::default());
            let kept = step_grads(&cfg, &model, &batch, 3, &SingleProcess).unwrap();
            cfg.parallel.activation_checkpoint = ActivationCheckpoint::Block;
            let recomputed = step_grads(&cfg, &model, &batch, 3, &SingleProcess).unwrap();
            let tol = match precision {
                Precision::F32 => 1e-6,
                _ => 1e-2,
            };
            assert!(
                (kept.loss - recomputed.loss).abs() <= tol * kept.loss.abs(),
                "{} {}",
                kept.loss,
                recomputed.loss
            );
            assert_eq!(
                kept.grads.keys().collect::<Vec<_>>(),
                recomputed.grads.keys().collect::<Vec<_>>()
            );
            for (name, g) in &kept.grads {
                let r = &recomputed.grads[name];
                let scale = g.clone().abs().max().into_scalar().max(1e-12);
                let d = (g.clone() - r.clone()).abs().max().into_scalar() / scale;
                assert!(
                    d <= tol as f32,
                    "variant {variant} {precision:?}: {name} differs by {d:e} (relative)"
                );
            }
        }
    }
}
