//! The block's element-wise ops as single differentiable ops: GELU (tanh
//! approximation), adaLN's modulation and the gated residual. These are the
//! backend-generic definitions, written with burn tensor ops; flex_ops.rs
//! has one-pass CPU kernels for the same functions (and takes its
//! constants from here). Letters: b batch, t
//! frames, s tokens per frame, d hidden.
use burn::tensor::{backend::Backend, Tensor};

/// sqrt(2 / pi), GELU's tanh-approximation constant.
pub(crate) const SQRT_2_OVER_PI: f64 =
    core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
/// The cubic coefficient of GELU's tanh approximation.
pub(crate) const GELU_CUBIC: f64 = 0.044715;

/// GELU with the tanh approximation, `0.5 x (1 + tanh(c (x + a x^3)))`,
/// as burn's `gelu_approximate` computes it.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::gelu_approximate(x)
}

/// The gradient of [`gelu_tanh`] at x times `grad`:
/// `0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) c (1 + 3 a x^2)`, u = c (x + a x^3).
pub fn gelu_tanh_backward<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    grad: Tensor<B, D>,
) -> Tensor<B, D> {
    let x2 = x.clone() * x.clone();
    let u = (x2.clone() * GELU_CUBIC + 1.0) * x.clone() * SQRT_2_OVER_PI;
    let t = u.tanh();
    let slope = (x2 * (3.0 * GELU_CUBIC) + 1.0) * SQRT_2_OVER_PI;
    let d = (t.clone() + 1.0) * 0.5 + x * (t.clone() * t).neg().add_scalar(1.0) * slope * 0.5;
    grad * d
}

/// adaLN's modulation `x * (1 + scale) + shift`.
///
/// # Shapes
/// x: [b, t, s, d], shift, scale: [b, t, 1, d] -> [b, t, s, d]
pub fn modulate<B: Backend>(
    x: Tensor<B, 4>,
    shift: Tensor<B, 4>,
    scale: Tensor<B, 4>,
) -> Tensor<B, 4> {
    x * (scale + 1.0) + shift
}

/// The gradients of [`modulate`] given the output's gradient g:
/// `(g (1 + scale), sum_s g, sum_s g x)` for x, shift and scale.
///
/// # Shapes
/// x, g: [b, t, s, d], scale: [b, t, 1, d]
/// -> [dx [b, t, s, d], dshift [b, t, 1, d], dscale [b, t, 1, d]]
pub fn modulate_backward<B: Backend>(
    x: Tensor<B, 4>,
    scale: Tensor<B, 4>,
    g: Tensor<B, 4>,
) -> [Tensor<B, 4>; 3] {
    let dscale = (g.clone() * x).sum_dim(2);
    let dshift = g.clone().sum_dim(2);
    [g * (scale + 1.0), dshift, dscale]
}

/// adaLN-Zero's gated residual `x + gate * y`.
///
/// # Shapes
/// x, y: [b, t, s, d], gate: [b, t, 1, d] -> [b, t, s, d]
pub fn gated_residual<B: Backend>(
    x: Tensor<B, 4>,
    gate: Tensor<B, 4>,
    y: Tensor<B, 4>,
) -> Tensor<B, 4> {
    x + gate * y
}

/// The gradients of [`gated_residual`] for the gate and y given the
/// output's gradient g (x's is g itself): `(sum_s g y, g gate)`.
///
/// # Shapes
/// gate: [b, t, 1, d], y, g: [b, t, s, d] -> [dgate [b, t, 1, d], dy [b, t, s, d]]
pub fn gated_residual_backward<B: Backend>(
    gate: Tensor<B, 4>,
    y: Tensor<B, 4>,
    g: Tensor<B, 4>,
) -> [Tensor<B, 4>; 2] {
    [(g.clone() * y).sum_dim(2), g * gate]
}
