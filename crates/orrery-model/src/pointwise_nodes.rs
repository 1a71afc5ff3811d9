//! The autodiff nodes of [`crate::pointwise`]'s ops: each op is one graph
//! node that keeps only what its backward reads (GELU: x; modulation: x
//! and scale; gated residual: gate and y) and calls the inner backend's
//! backward op, so a backend with a fused kernel uses it both ways.
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::ModelBackend;

/// A float tensor of the inner backend from its primitive.
fn wrap<B: ModelBackend, const D: usize>(p: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn prim<B: ModelBackend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

/// Hand each parent that is tracked its gradient (burn keeps the parents'
/// node type private, hence a macro).
macro_rules! register {
    ($parents:expr, $grads_in:expr, $grads:expr) => {
        for (parent, grad) in $parents.into_iter().zip($grads_in) {
            if let Some(node) = parent {
                $grads.register::<B>(node.id, prim(grad));
            }
        }
    };
}

#[derive(Debug)]
struct GeluBackward<const D: usize>;

impl<B: ModelBackend, const D: usize> Backward<B, 1> for GeluBackward<D> {
    type State = B::FloatTensorPrimitive;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = wrap::<B, D>(grads.consume::<B>(&ops.node));
        let dx = B::gelu_tanh_backward(wrap::<B, D>(ops.state), g);
        register!(ops.parents, [dx], grads);
    }
}

/// GELU (tanh) as one node.
pub(crate) fn gelu_tanh<B: ModelBackend, C: CheckpointStrategy, const D: usize>(
    x: Tensor<Autodiff<B, C>, D>,
) -> Tensor<Autodiff<B, C>, D> {
    let x = x.into_primitive().tensor();
    let y = prim(B::gelu_tanh(wrap::<B, D>(x.primitive.clone())));
    let node = match GeluBackward::<D>
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(x.primitive, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(node))
}

#[derive(Debug)]
struct ModulateBackward;

impl<B: ModelBackend> Backward<B, 3> for ModulateBackward {
    // (x, scale)
    type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = wrap::<B, 4>(grads.consume::<B>(&ops.node));
        let (x, scale) = ops.state;
        let d = B::modulate_backward(wrap(x), wrap(scale), g);
        register!(ops.parents, d, grads);
    }
}

/// adaLN's modulation as one node; parents x, shift, scale.
pub(crate) fn modulate<B: ModelBackend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<B, C>, 4>,
    shift: Tensor<Autodiff<B, C>, 4>,
    scale: Tensor<Autodiff<B, C>, 4>,
) -> Tensor<Autodiff<B, C>, 4> {
    let [x, shift, scale] = [x, shift, scale].map(|t| t.into_primitive().tensor());
    let y = prim(B::modulate(
        wrap(x.primitive.clone()),
        wrap(shift.primitive),
        wrap(scale.primitive.clone()),
    ));
    let node = match ModulateBackward
        .prepare::<C>([x.node.clone(), shift.node.clone(), scale.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, scale.primitive), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(node))
}

#[derive(Debug)]
struct GatedResidualBackward;

impl<B: ModelBackend> Backward<B, 3> for GatedResidualBackward {
    // (gate, y)
    type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = wrap::<B, 4>(grads.consume::<B>(&ops.node));
        let (gate, y) = ops.state;
        let [dgate, dy] = B::gated_residual_backward(wrap(gate), wrap(y), g.clone());
        register!(ops.parents, [g, dgate, dy], grads);
    }
}

/// adaLN-Zero's gated residual as one node; parents x, gate, y.
pub(crate) fn gated_residual<B: ModelBackend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<B, C>, 4>,
    gate: Tensor<Autodiff<B, C>, 4>,
    y: Tensor<Autodiff<B, C>, 4>,
) -> Tensor<Autodiff<B, C>, 4> {
    let [x, gate, y] = [x, gate, y].map(|t| t.into_primitive().tensor());
    let out = prim(B::gated_residual(
        wrap(x.primitive),
        wrap(gate.primitive.clone()),
        wrap(y.primitive.clone()),
    ));
    let node = match GatedResidualBackward
        .prepare::<C>([x.node.clone(), gate.node.clone(), y.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((gate.primitive, y.primitive), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(node))
}
