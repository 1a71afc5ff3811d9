//! Attention without the n x n score matrix: the FlashAttention-2 algorithm
//! (Dao 2023, algorithms 1 and 2) written with burn tensor ops, so it runs
//! on every backend. Forward walks key tiles with a running max and sum per
//! query row; backward recomputes each tile's probabilities from q, k and
//! the saved log-sum-exp. Tiles the frame mask hides are skipped. Letters:
//! b batch, h heads, n tokens, e head dim, bq/bk tile rows/columns.
use std::ops::Range;

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::cast::like;
use crate::frame_mask::{blocks, FrameMask, Tile};

/// What the blockwise kernel needs besides q, k and v.
#[derive(Clone, Debug, PartialEq)]
pub struct Blockwise {
    /// Logit scale, 1/sqrt(e).
    pub scale: f64,
    /// The frame mask, `None` for full attention.
    pub mask: Option<FrameMask>,
    /// Tile edge in tokens (queries and keys).
    pub block: usize,
}

impl Blockwise {
    /// The tile's logits `q k^T * scale (+ mask bias)` in f32, or `None`
    /// when the mask hides the whole tile.
    ///
    /// # Shapes
    /// qb: [b, h, bq, e], kt: [b, h, e, bk] -> [b, h, bq, bk]
    fn logits<B: Backend>(
        &self,
        qb: &Tensor<B, 4>,
        kt: &Tensor<B, 4>,
        rows: &Range<usize>,
        cols: &Range<usize>,
    ) -> Option<Tensor<B, 4>> {
        let tile = self.mask.map_or(Tile::Visible, |m| m.tile(rows, cols));
        if tile == Tile::Hidden {
            return None;
        }
        // The softmax runs in f32 (as under autocast), like the naive path.
        let logits = like(qb.clone().matmul(kt.clone()), DType::F32) * self.scale;
        Some(match (tile, self.mask) {
            (Tile::Partial, Some(mask)) => {
                // As [b*h, bq*bk] + [1, bq*bk]: one row shared by every
                // head, which burn-flex adds with SIMD; a [1, 1, bq, bk]
                // bias went through its scalar strided loop.
                let [b, h, bq, bk] = logits.dims();
                let bias = TensorData::new(mask.bias(rows, cols), [1, bq * bk]);
                let bias = like(Tensor::<B, 2>::from_data(bias, &qb.device()), DType::F32);
                (logits.reshape([b * h, bq * bk]) + bias).reshape([b, h, bq, bk])
            }
            _ => logits,
        })
    }
}

/// Keys (transposed) and values cut into column tiles.
///
/// # Shapes
/// k, v: [b, h, n, e] -> per tile ([b, h, e, bk], [b, h, bk, e])
fn key_tiles<B: Backend>(
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    tiles: &[Range<usize>],
) -> Vec<(Tensor<B, 4>, Tensor<B, 4>)> {
    tiles
        .iter()
        .map(|r| {
            let kt = k.clone().narrow(2, r.start, r.len()).swap_dims(2, 3);
            (kt, v.clone().narrow(2, r.start, r.len()))
        })
        .collect()
}

/// `p v` with p cast to v's type and the product accumulated in f32.
///
/// # Shapes
/// p: [b, h, bq, bk], v: [b, h, bk, e] -> [b, h, bq, e]
fn times_v<B: Backend>(p: Tensor<B, 4>, v: &Tensor<B, 4>) -> Tensor<B, 4> {
    like(like(p, v.dtype()).matmul(v.clone()), DType::F32)
}

/// softmax(q k^T * scale + mask) v, and the log-sum-exp of each row.
///
/// # Shapes
/// q, k, v: [b, h, n, e] -> (out [b, h, n, e] in v's type, lse [b, h, n, 1] f32)
pub fn forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    spec: &Blockwise,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [b, h, n, e] = q.dims();
    let dtype = v.dtype();
    let tiles = blocks(n, spec.block.max(1));
    let keys = key_tiles(&k, &v, &tiles);
    let device = q.device();
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for rows in &tiles {
        let qb = q.clone().narrow(2, rows.start, rows.len()); // [b, h, bq, e]
                                                              // Running max m, sum l and unnormalised output acc (FA-2, alg. 1).
        let mut state: Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> = None;
        for (cols, (kt, vb)) in tiles.iter().zip(&keys) {
            let Some(logits) = spec.logits(&qb, kt, rows, cols) else {
                continue;
            };
            let tile_max = logits.clone().max_dim(3); // [b, h, bq, 1]
            state = Some(match state {
                None => {
                    let p = (logits - tile_max.clone()).exp();
                    let l = p.clone().sum_dim(3);
                    (tile_max, l, times_v(p, vb))
                }
                Some((m, l, acc)) => {
                    let m_new = m.clone().max_pair(tile_max);
                    let correction = (m - m_new.clone()).exp(); // [b, h, bq, 1]
                    let p = (logits - m_new.clone()).exp();
                    let l = l * correction.clone() + p.clone().sum_dim(3);
                    (m_new, l, acc * correction + times_v(p, vb))
                }
            });
        }
        let (out, lse) = match state {
            Some((m, l, acc)) => (acc / l.clone(), m + l.log()),
            // A row that sees no key at all (no frame mask makes one)
            // attends to nothing: output 0, and no gradient flows.
            None => (
                Tensor::zeros([b, h, rows.len(), e], &device),
                Tensor::full([b, h, rows.len(), 1], f32::INFINITY, &device),
            ),
        };
        outs.push(like(out, dtype));
        lses.push(lse);
    }
    (Tensor::cat(outs, 2), Tensor::cat(lses, 2))
}

/// Rows `rows` of x's third axis as a tensor of their own, in row-major
/// order. A narrowed [b, h, n, 1] view steps n, not bq, between heads, and
/// broadcasting such a view across a tile fell to burn-flex's scalar
/// strided loop (a fifth of a CPU training step); the copy is b*h*bq
/// numbers.
///
/// # Shapes
/// x: [b, h, n, c] -> [b, h, len(rows), c]
fn rows_of<B: Backend>(x: &Tensor<B, 4>, rows: &Range<usize>) -> Tensor<B, 4> {
    let [b, h, _, c] = x.dims();
    let part = x.clone().narrow(2, rows.start, rows.len());
    part.reshape([b * h * rows.len() * c])
        .reshape([b, h, rows.len(), c])
}

/// Add `x` to an optional running sum.
fn accumulate<B: Backend>(sum: &mut Option<Tensor<B, 4>>, x: Tensor<B, 4>) {
    *sum = Some(match sum.take() {
        Some(s) => s + x,
        None => x,
    });
}

/// The gradients of [`forward`]'s output with respect to q, k and v, given
/// the output's gradient, recomputing each tile's probabilities from the
/// log-sum-exp (FA-2, alg. 2): nothing n x n is ever held.
///
/// # Shapes
/// q, k, v, out, d_out: [b, h, n, e], lse: [b, h, n, 1]
/// -> (dq, dk, dv) in the types of q, k and v
pub fn backward<B: Backend>(
    [q, k, v]: [Tensor<B, 4>; 3],
    out: Tensor<B, 4>,
    lse: Tensor<B, 4>,
    d_out: Tensor<B, 4>,
    spec: &Blockwise,
) -> [Tensor<B, 4>; 3] {
    let [b, h, n, e] = q.dims();
    let device = q.device();
    let d_out = like(d_out, v.dtype());
    // D_i = rowsum(dO_i * O_i)
    let delta = (like(d_out.clone(), DType::F32) * like(out, DType::F32)).sum_dim(3); // [b, h, n, 1]
    let tiles = blocks(n, spec.block.max(1));
    let keys = key_tiles(&k, &v, &tiles);
    let mut dk: Vec<Option<Tensor<B, 4>>> = vec![None; tiles.len()];
    let mut dv: Vec<Option<Tensor<B, 4>>> = vec![None; tiles.len()];
    let mut dq = Vec::new();
    for rows in &tiles {
        let narrow = |x: &Tensor<B, 4>| x.clone().narrow(2, rows.start, rows.len());
        let (qb, dob) = (narrow(&q), narrow(&d_out)); // [b, h, bq, e]
        let (lse_b, delta_b) = (rows_of(&lse, rows), rows_of(&delta, rows)); // [b, h, bq, 1]
        let mut dq_b = None;
        for (j, (cols, (kt, vb))) in tiles.iter().zip(&keys).enumerate() {
            let Some(logits) = spec.logits(&qb, kt, rows, cols) else {
                continue;
            };
            let p = (logits - lse_b.clone()).exp(); // [b, h, bq, bk]
            accumulate(
                &mut dv[j],
                like(
                    like(p.clone(), vb.dtype())
                        .swap_dims(2, 3)
                        .matmul(dob.clone()),
                    DType::F32,
                ),
            ); // [b, h, bk, e]
            let dp = like(dob.clone().matmul(vb.clone().swap_dims(2, 3)), DType::F32); // [b, h, bq, bk]
            let ds = like(p * (dp - delta_b.clone()), q.dtype()); // dS = P * (dP - D)
            accumulate(
                &mut dq_b,
                like(ds.clone().matmul(kt.clone().swap_dims(2, 3)), DType::F32),
            );
            accumulate(
                &mut dk[j],
                like(ds.swap_dims(2, 3).matmul(qb.clone()), DType::F32),
            );
        }
        dq.push(dq_b.unwrap_or_else(|| Tensor::zeros([b, h, rows.len(), e], &device)));
    }
    let gather = |parts: Vec<Option<Tensor<B, 4>>>| {
        let parts = parts
            .into_iter()
            .zip(&tiles)
            .map(|(p, r)| p.unwrap_or_else(|| Tensor::zeros([b, h, r.len(), e], &device)))
            .collect();
        Tensor::cat(parts, 2)
    };
    let dq = like(Tensor::cat(dq, 2) * spec.scale, q.dtype());
    let dk = like(gather(dk) * spec.scale, k.dtype());
    let dv = like(gather(dv), v.dtype());
    [dq, dk, dv]
}
