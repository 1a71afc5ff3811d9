//! [`ModelBackend`]: a burn backend plus the model's own differentiable
//! ops. On a plain backend the blockwise attention is its forward; under
//! autodiff it is one graph node whose backward recomputes tiles from q, k,
//! v, the output and the log-sum-exp, so autodiff keeps nothing n x n
//! (burn 0.21's autodiff would otherwise keep every tile's probabilities).
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};

use crate::blockwise::{self, Blockwise};

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
}

impl ModelBackend for burn::backend::Flex {}

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

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
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
