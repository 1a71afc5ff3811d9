//! Dtype helpers for mixed precision.
use burn::tensor::{backend::Backend, DType, Tensor};

/// `x` in `dtype` (a no-op when it already is). Mixed precision: the
/// weights set the compute type, and constants (position tables, masks,
/// timestep features) follow the activations they meet.
pub fn like<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}
