//! 3-D rotary position embeddings (Su et al. 2021, RoFormer) over
//! (frame, row, column). Letters: b batch, k heads, n = t*s tokens, e head dim.
//!
//! The head dim is e/2 rotation pairs (x_i, x_{i + e/2}). The first `pt`
//! pairs rotate with the frame index, the next `ps` with the row and the
//! last `ps` with the column, where ps = (e/2) / 3 (rounded down) and
//! pt = e/2 - 2 ps. Within an axis with m pairs, pair j turns by
//! pos * 10000^(-j / m). A rotation by angle(p) on queries and angle(p') on
//! keys leaves q·k a function of p - p' only: attention sees relative
//! positions, so a window of frames starting anywhere gives the same logits.
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Pairs of the head dim given to (frames, rows, columns).
pub fn axis_pairs(head_dim: usize) -> [usize; 3] {
    let half = head_dim / 2;
    let ps = half / 3;
    [half - 2 * ps, ps, ps]
}

/// Rotation angles for every token of a (t, hp, wp) grid whose first frame
/// has index `t0`.
///
/// # Shapes
/// -> [n * e/2] (row-major [n, e/2]), n = t * hp * wp
pub fn angles(t0: usize, t: usize, hp: usize, wp: usize, head_dim: usize) -> Vec<f32> {
    let pairs = axis_pairs(head_dim);
    let freqs: Vec<Vec<f64>> = pairs
        .iter()
        .map(|&m| {
            (0..m)
                .map(|j| 10000f64.powf(-(j as f64) / m as f64))
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(t * hp * wp * head_dim / 2);
    for f in t0..t0 + t {
        for r in 0..hp {
            for c in 0..wp {
                for (axis, pos) in [f, r, c].into_iter().enumerate() {
                    out.extend(freqs[axis].iter().map(|w| (pos as f64 * w) as f32));
                }
            }
        }
    }
    out
}

/// Cos and sin tables of [`angles`] on `device`.
///
/// # Shapes
/// -> ([n, e/2], [n, e/2])
pub fn tables<B: Backend>(
    t: usize,
    hp: usize,
    wp: usize,
    head_dim: usize,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let a = angles(0, t, hp, wp, head_dim);
    let n = t * hp * wp;
    let make = |f: fn(f32) -> f32| {
        Tensor::<B, 2>::from_data(
            TensorData::new(
                a.iter().map(|&x| f(x)).collect::<Vec<f32>>(),
                [n, head_dim / 2],
            ),
            device,
        )
    };
    (make(f32::cos), make(f32::sin))
}

/// Rotate each pair (x_i, x_{i + e/2}) by its token's angle.
///
/// # Shapes
/// x: [b, k, n, e], cos/sin: [n, e/2] -> [b, k, n, e]
pub fn apply<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    let e = x.dims()[3];
    let (cos, sin) = (
        &crate::cast::like(cos.clone(), x.dtype()),
        &crate::cast::like(sin.clone(), x.dtype()),
    );
    let x1 = x.clone().narrow(3, 0, e / 2); // [b, k, n, e/2]
    let x2 = x.narrow(3, e / 2, e / 2);
    let cos = cos.clone().unsqueeze_dims::<4>(&[0, 1]); // [1, 1, n, e/2]
    let sin = sin.clone().unsqueeze_dims::<4>(&[0, 1]);
    Tensor::cat(
        vec![
            x1.clone() * cos.clone() - x2.clone() * sin.clone(),
            x1 * sin + x2 * cos,
        ],
        3,
    )
}
