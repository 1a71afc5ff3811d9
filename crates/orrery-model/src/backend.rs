//! [`ModelBackend`]: a burn backend plus the model's own differentiable
//! ops. On a plain backend the blockwise attention is its forward; under
//! autodiff it is one graph node whose backward recomputes tiles from q, k,
//! v, the output and the log-sum-exp, so autodiff keeps nothing n x n
//! (burn 0.21's autodiff would otherwise keep every tile's probabilities).
//! The block's element-wise ops ([`pointwise`]) are single nodes too, and
//! the CPU backend runs them as one-pass kernels ([`flex_ops`]).
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;

use crate::blockwise::{self, Blockwise};
use crate::context::{self, ContextShard};
use crate::{flex_ops, pointwise, pointwise_nodes};

/// A backend the model runs on. Implemented for Flex, every CubeCL
/// backend (CUDA, wgpu), fusion over them, and autodiff over any of these.
pub trait ModelBackend: Backend {
    /// softmax(q k^T * scale + mask) v computed tile by tile
    /// ([`blockwise::forward`]).
    ///
    /// # Shapes
    /// q, k, v: [b, h, n, e] -> [b, h, n, e]
    fn blockwise_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        spec: &Blockwise,
    ) -> Tensor<Self, 4> {
        blockwise::forward(q, k, v, spec).0
    }

    /// Context parallelism's swap of the sequence shard for a head shard
    /// ([`context::seq_to_heads`]); its backward is the swap back.
    ///
    /// # Shapes
    /// x: [p, b, k, n/C, e] -> [p, b, k/C, n, e]
    fn seq_to_heads(x: Tensor<Self, 5>, group: &ContextShard) -> Tensor<Self, 5> {
        context::seq_to_heads(x, group)
    }

    /// The swap back ([`context::heads_to_seq`]).
    ///
    /// # Shapes
    /// y: [p, b, k/C, n, e] -> [p, b, k, n/C, e]
    fn heads_to_seq(y: Tensor<Self, 5>, group: &ContextShard) -> Tensor<Self, 5> {
        context::heads_to_seq(y, group)
    }

    /// GELU, tanh approximation ([`pointwise::gelu_tanh`]).
    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        pointwise::gelu_tanh(x)
    }

    /// Its gradient times `grad` ([`pointwise::gelu_tanh_backward`]).
    fn gelu_tanh_backward<const D: usize>(
        x: Tensor<Self, D>,
        grad: Tensor<Self, D>,
    ) -> Tensor<Self, D> {
        pointwise::gelu_tanh_backward(x, grad)
    }

    /// `x * (1 + scale) + shift` ([`pointwise::modulate`]).
    ///
    /// # Shapes
    /// x: [b, t, s, d], shift, scale: [b, t, 1, d] -> [b, t, s, d]
    fn modulate(
        x: Tensor<Self, 4>,
        shift: Tensor<Self, 4>,
        scale: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        pointwise::modulate(x, shift, scale)
    }

    /// dx, dshift, dscale ([`pointwise::modulate_backward`]).
    fn modulate_backward(
        x: Tensor<Self, 4>,
        scale: Tensor<Self, 4>,
        g: Tensor<Self, 4>,
    ) -> [Tensor<Self, 4>; 3] {
        pointwise::modulate_backward(x, scale, g)
    }

    /// `x + gate * y` ([`pointwise::gated_residual`]).
    ///
    /// # Shapes
    /// x, y: [b, t, s, d], gate: [b, t, 1, d] -> [b, t, s, d]
    fn gated_residual(
        x: Tensor<Self, 4>,
        gate: Tensor<Self, 4>,
        y: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        pointwise::gated_residual(x, gate, y)
    }

    /// dgate, dy ([`pointwise::gated_residual_backward`]).
    fn gated_residual_backward(
        gate: Tensor<Self, 4>,
        y: Tensor<Self, 4>,
        g: Tensor<Self, 4>,
    ) -> [Tensor<Self, 4>; 2] {
        pointwise::gated_residual_backward(gate, y, g)
    }
}

/// A Flex tensor's primitive, and back.
fn flex<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

fn unflex<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The CPU runs [`flex_ops`]' one-pass kernels (f32; other types take the
/// generic path).
impl ModelBackend for Flex {
    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        unflex(flex_ops::gelu_tanh(flex(x)))
    }

    fn gelu_tanh_backward<const D: usize>(
        x: Tensor<Self, D>,
        grad: Tensor<Self, D>,
    ) -> Tensor<Self, D> {
        unflex(flex_ops::gelu_tanh_backward(flex(x), flex(grad)))
    }

    fn modulate(
        x: Tensor<Self, 4>,
        shift: Tensor<Self, 4>,
        scale: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        match flex_ops::modulate(flex(x.clone()), flex(shift.clone()), flex(scale.clone())) {
            Some(y) => unflex(y),
            None => pointwise::modulate(x, shift, scale),
        }
    }

    fn modulate_backward(
        x: Tensor<Self, 4>,
        scale: Tensor<Self, 4>,
        g: Tensor<Self, 4>,
    ) -> [Tensor<Self, 4>; 3] {
        match flex_ops::modulate_backward(flex(x.clone()), flex(scale.clone()), flex(g.clone())) {
            Some(d) => d.map(unflex),
            None => pointwise::modulate_backward(x, scale, g),
        }
    }

    fn gated_residual(
        x: Tensor<Self, 4>,
        gate: Tensor<Self, 4>,
        y: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        match flex_ops::gated_residual(flex(x.clone()), flex(gate.clone()), flex(y.clone())) {
            Some(out) => unflex(out),
            None => pointwise::gated_residual(x, gate, y),
        }
    }

    fn gated_residual_backward(
        gate: Tensor<Self, 4>,
        y: Tensor<Self, 4>,
        g: Tensor<Self, 4>,
    ) -> [Tensor<Self, 4>; 2] {
        match flex_ops::gated_residual_backward(
            flex(gate.clone()),
            flex(y.clone()),
            flex(g.clone()),
        ) {
            Some(d) => d.map(unflex),
            None => pointwise::gated_residual_backward(gate, y, g),
        }
    }
}

#[cfg(feature = "cubecl")]
impl<R, F, I, BT> ModelBackend for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    R::Server: burn_cubecl::cubecl::server::ComputeServer,
    R::Device: burn::tensor::backend::DeviceOps,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
}

#[cfg(feature = "fusion")]
impl<B: burn_fusion::FusionBackend> ModelBackend for burn_fusion::Fusion<B> {}

/// What the attention node keeps for backward: linear in n.
#[derive(Clone, Debug)]
struct AttentionState<B: Backend> {
    q: B::FloatTensorPrimitive,
    k: B::FloatTensorPrimitive,
    v: B::FloatTensorPrimitive,
    out: B::FloatTensorPrimitive,
    lse: B::FloatTensorPrimitive,
    spec: Blockwise,
}

#[derive(Debug)]
struct AttentionBackward;

/// A float tensor of the inner backend from its primitive.
fn wrap<B: Backend>(p: B::FloatTensorPrimitive) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

impl<B: Backend> Backward<B, 3> for AttentionBackward {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = grads.consume::<B>(&ops.node);
        let AttentionState {
            q,
            k,
            v,
            out,
            lse,
            spec,
        } = ops.state;
        let grads_qkv = blockwise::backward(
            [wrap::<B>(q), wrap(k), wrap(v)],
            wrap(out),
            wrap(lse),
            wrap(d_out),
            &spec,
        );
        for (parent, grad) in ops.parents.into_iter().zip(grads_qkv) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// Which way a context swap goes; its backward goes the other way.
#[derive(Clone, Copy, Debug)]
enum Swap {
    SeqToHeads,
    HeadsToSeq,
}

impl Swap {
    fn run<B: Backend>(self, x: Tensor<B, 5>, group: &ContextShard) -> Tensor<B, 5> {
        match self {
            Swap::SeqToHeads => context::seq_to_heads(x, group),
            Swap::HeadsToSeq => context::heads_to_seq(x, group),
        }
    }

    fn back(self) -> Self {
        match self {
            Swap::SeqToHeads => Swap::HeadsToSeq,
            Swap::HeadsToSeq => Swap::SeqToHeads,
        }
    }
}

#[derive(Debug)]
struct SwapBackward;

impl<B: Backend> Backward<B, 1> for SwapBackward {
    type State = (Swap, ContextShard);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (swap, group) = ops.state;
        let grad = swap.back().run(
            Tensor::<B, 5>::from_primitive(TensorPrimitive::Float(grad)),
            &group,
        );
        if let [Some(node)] = ops.parents {
            grads.register::<B>(node.id, grad.into_primitive().tensor());
        }
    }
}

/// A context swap as one autodiff node.
fn swap_tracked<B: ModelBackend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<B, C>, 5>,
    swap: Swap,
    group: &ContextShard,
) -> Tensor<Autodiff<B, C>, 5> {
    let x = x.into_primitive().tensor();
    let y = swap.run(
        Tensor::<B, 5>::from_primitive(TensorPrimitive::Float(x.primitive)),
        group,
    );
    let y = y.into_primitive().tensor();
    let node = match SwapBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((swap, group.clone()), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(node))
}

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        pointwise_nodes::gelu_tanh(x)
    }

    fn modulate(
        x: Tensor<Self, 4>,
        shift: Tensor<Self, 4>,
        scale: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        pointwise_nodes::modulate(x, shift, scale)
    }

    fn gated_residual(
        x: Tensor<Self, 4>,
        gate: Tensor<Self, 4>,
        y: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        pointwise_nodes::gated_residual(x, gate, y)
    }

    fn seq_to_heads(x: Tensor<Self, 5>, group: &ContextShard) -> Tensor<Self, 5> {
        swap_tracked(x, Swap::SeqToHeads, group)
    }

    fn heads_to_seq(y: Tensor<Self, 5>, group: &ContextShard) -> Tensor<Self, 5> {
        swap_tracked(y, Swap::HeadsToSeq, group)
    }

    fn blockwise_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        spec: &Blockwise,
    ) -> Tensor<Self, 4> {
        let [q, k, v] = [q, k, v].map(|x| x.into_primitive().tensor());
        let (out, lse) = blockwise::forward(
            wrap::<B>(q.primitive.clone()),
            wrap(k.primitive.clone()),
            wrap(v.primitive.clone()),
            spec,
        );
        let out = out.into_primitive().tensor();
        let node = match AttentionBackward
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = AttentionState {
                    q: q.primitive,
                    k: k.primitive,
                    v: v.primitive,
                    out: out.clone(),
                    lse: lse.into_primitive().tensor(),
                    spec: spec.clone(),
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive(TensorPrimitive::Float(node))
    }
}

/// A backend the model trains on: autodiff over a [`ModelBackend`], so
/// both the differentiated model and its inner (no-graph) copy run.
pub trait TrainBackend: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

impl<B> TrainBackend for B
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
}
