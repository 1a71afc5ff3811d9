//! One-pass CPU kernels for burn-flex of the ops in [`crate::pointwise`].
//!
//! burn-flex runs a broadcast such as `x [b, t, s, d] * scale [b, t, 1, d]`
//! through a scalar strided loop, and GELU's tanh approximation as eight
//! tensor passes with libm's `tanhf` and `powf`; on the 4.17M-parameter
//! video DiT these were a third of a CPU training step. Each kernel here
//! reads its inputs once and writes each output once. They cover f32
//! (the CPU's type); other types return `None` and take the generic path.
//! Written by hand because burn 0.21 has no fused element-wise ops on the
//! CPU.
use burn::backend::flex::ops::{binary::binary_op, unary::unary_op};
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};

use crate::pointwise::{GELU_CUBIC, SQRT_2_OVER_PI};

/// `0.5 (1 + tanh u)` is `1 / (1 + e^(-2u))`: one `exp`, exact in exact
/// arithmetic; +-inf in the exponent gives 0 or 1, never NaN.
macro_rules! gelu_fns {
    ($t:ty, $gelu:ident, $grad:ident) => {
        fn $gelu(x: $t) -> $t {
            let u = SQRT_2_OVER_PI as $t * x * (1.0 + GELU_CUBIC as $t * x * x);
            x / (1.0 + (-2.0 * u).exp())
        }

        fn $grad(x: $t, g: $t) -> $t {
            let (c, a) = (SQRT_2_OVER_PI as $t, GELU_CUBIC as $t);
            let x2 = x * x;
            let e = (-2.0 * c * x * (1.0 + a * x2)).exp();
            let s = 1.0 / (1.0 + e);
            // 0.5 x (1 - tanh^2 u) = 2 x s (1 - s), and s (1 - s) =
            // 1 / (2 + e + 1/e) keeps its digits where s is near 1. Where
            // e is 0 or infinite that term's limit is 0 (inf/inf otherwise).
            let tail = if e == 0.0 || e.is_infinite() {
                0.0
            } else {
                2.0 * x * c * (1.0 + 3.0 * a * x2) / (2.0 + e + 1.0 / e)
            };
            g * (s + tail)
        }
    };
}
gelu_fns!(f32, gelu_f32, gelu_grad_f32);
gelu_fns!(f64, gelu_f64, gelu_grad_f64);

/// [`crate::pointwise::gelu_tanh`] in one pass (every float type).
pub fn gelu_tanh(x: FlexTensor) -> FlexTensor {
    unary_op(x, gelu_f32, gelu_f64)
}

/// [`crate::pointwise::gelu_tanh_backward`] in one pass (every float type).
pub fn gelu_tanh_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
    binary_op(x, grad, gelu_grad_f32, gelu_grad_f64, None)
}

/// A row-broadcast problem: `r = b * t` groups of `s` rows of `d`, and
/// per-group vectors of `d`.
struct Rows {
    dims: [usize; 4],
    s: usize,
    d: usize,
}

impl Rows {
    /// The layout of x [b, t, s, d] against per-frame vectors [b, t, 1, d];
    /// `None` unless every tensor is f32 with those shapes.
    fn of(x: &FlexTensor, vectors: &[&FlexTensor]) -> Option<Self> {
        let dims: [usize; 4] = x.layout().shape().dims();
        let frame = [dims[0], dims[1], 1, dims[3]];
        let ok = x.dtype() == DType::F32
            && vectors
                .iter()
                .all(|v| v.dtype() == DType::F32 && v.layout().shape().dims::<4>() == frame);
        ok.then_some(Self {
            dims,
            s: dims[2],
            d: dims[3],
        })
    }

    fn frame_dims(&self) -> [usize; 4] {
        [self.dims[0], self.dims[1], 1, self.d]
    }
}

/// A tensor's values in row-major order (a copy only when it is a view).
fn values(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

fn slice(t: &FlexTensor) -> &[f32] {
    &t.storage::<f32>()[..t.layout().num_elements()]
}

fn tensor(v: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, dims))
}

/// [`crate::pointwise::modulate`]: `x * (1 + scale) + shift`, rounded as
/// the generic ops round it.
pub fn modulate(x: FlexTensor, shift: FlexTensor, scale: FlexTensor) -> Option<FlexTensor> {
    let rows = Rows::of(&x, &[&shift, &scale])?;
    let (x, shift, scale) = (values(&x), values(&shift), values(&scale));
    let (xs, sh, sc) = (slice(&x), slice(&shift), slice(&scale));
    let mut out = Vec::with_capacity(xs.len());
    for (group, xg) in xs.chunks(rows.s * rows.d).enumerate() {
        let at = group * rows.d..(group + 1) * rows.d;
        let (sh, sc) = (&sh[at.clone()], &sc[at]);
        for row in xg.chunks(rows.d) {
            out.extend(
                row.iter()
                    .zip(sh.iter().zip(sc))
                    .map(|(x, (sh, sc))| x * (sc + 1.0) + sh),
            );
        }
    }
    Some(tensor(out, rows.dims))
}

/// [`crate::pointwise::modulate_backward`]: dx, dshift and dscale in one
/// pass over g and x.
pub fn modulate_backward(
    x: FlexTensor,
    scale: FlexTensor,
    g: FlexTensor,
) -> Option<[FlexTensor; 3]> {
    let rows = Rows::of(&x, &[&scale])?;
    if g.dtype() != DType::F32 || g.layout().shape().dims::<4>() != rows.dims {
        return None;
    }
    let (x, scale, g) = (values(&x), values(&scale), values(&g));
    let (xs, sc, gs) = (slice(&x), slice(&scale), slice(&g));
    let mut dx = Vec::with_capacity(xs.len());
    let (mut dshift, mut dscale) = (vec![0f32; sc.len()], vec![0f32; sc.len()]);
    let group_len = rows.s * rows.d;
    for (group, (xg, gg)) in xs.chunks(group_len).zip(gs.chunks(group_len)).enumerate() {
        let at = group * rows.d..(group + 1) * rows.d;
        let sc = &sc[at.clone()];
        let (dsh, dsc) = (&mut dshift[at.clone()], &mut dscale[at]);
        for (xr, gr) in xg.chunks(rows.d).zip(gg.chunks(rows.d)) {
            dx.extend(gr.iter().zip(sc).map(|(g, sc)| g * (sc + 1.0)));
            for (((dsh, dsc), g), x) in dsh.iter_mut().zip(dsc.iter_mut()).zip(gr).zip(xr) {
                *dsh += g;
                *dsc += g * x;
            }
        }
    }
    let frame = rows.frame_dims();
    Some([
        tensor(dx, rows.dims),
        tensor(dshift, frame),
        tensor(dscale, frame),
    ])
}

/// [`crate::pointwise::gated_residual`]: `x + gate * y`, rounded as the
/// generic ops round it.
pub fn gated_residual(x: FlexTensor, gate: FlexTensor, y: FlexTensor) -> Option<FlexTensor> {
    let rows = Rows::of(&x, &[&gate])?;
    if y.dtype() != DType::F32 || y.layout().shape().dims::<4>() != rows.dims {
        return None;
    }
    let (x, gate, y) = (values(&x), values(&gate), values(&y));
    let (xs, gt, ys) = (slice(&x), slice(&gate), slice(&y));
    let mut out = Vec::with_capacity(xs.len());
    let group_len = rows.s * rows.d;
    for (group, (xg, yg)) in xs.chunks(group_len).zip(ys.chunks(group_len)).enumerate() {
        let gt = &gt[group * rows.d..(group + 1) * rows.d];
        for (xr, yr) in xg.chunks(rows.d).zip(yg.chunks(rows.d)) {
            out.extend(
                xr.iter()
                    .zip(gt.iter().zip(yr))
                    .map(|(x, (gt, y))| x + gt * y),
            );
        }
    }
    Some(tensor(out, rows.dims))
}

/// [`crate::pointwise::gated_residual_backward`]: dgate and dy in one pass.
pub fn gated_residual_backward(
    gate: FlexTensor,
    y: FlexTensor,
    g: FlexTensor,
) -> Option<[FlexTensor; 2]> {
    let rows = Rows::of(&y, &[&gate])?;
    if g.dtype() != DType::F32 || g.layout().shape().dims::<4>() != rows.dims {
        return None;
    }
    let (gate, y, g) = (values(&gate), values(&y), values(&g));
    let (gt, ys, gs) = (slice(&gate), slice(&y), slice(&g));
    let mut dy = Vec::with_capacity(ys.len());
    let mut dgate = vec![0f32; gt.len()];
    let group_len = rows.s * rows.d;
    for (group, (yg, gg)) in ys.chunks(group_len).zip(gs.chunks(group_len)).enumerate() {
        let at = group * rows.d..(group + 1) * rows.d;
        let gt = &gt[at.clone()];
        let dgt = &mut dgate[at];
        for (yr, gr) in yg.chunks(rows.d).zip(gg.chunks(rows.d)) {
            dy.extend(gr.iter().zip(gt).map(|(g, gt)| g * gt));
            for ((dgt, g), y) in dgt.iter_mut().zip(gr).zip(yr) {
                *dgt += g * y;
            }
        }
    }
    Some([tensor(dgate, rows.frame_dims()), tensor(dy, rows.dims)])
}
