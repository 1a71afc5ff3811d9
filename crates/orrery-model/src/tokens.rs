//! Tokens from latents and back, and what attention between them may
//! see: patchify / unpatchify, frame stacking, sin-cos position features
//! and frame masks. Letters: b batch, t frames, c channels, h/w latent size,
//! g frame groups, s tokens per group, d width.
use burn::tensor::{backend::Backend, Tensor};

/// Sin-cos position features (Vaswani et al. 2017, section 3.5; DiT's
/// `get_1d_sincos_pos_embed`): for each position, `dim / 2` sines then
/// `dim / 2` cosines of `pos / 10000^(i / (dim / 2))`.
///
/// # Shapes
/// positions: [r] -> [r * dim] (row-major [r, dim])
pub fn sincos(positions: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    positions
        .iter()
        .flat_map(|&p| {
            let omega = move |i: usize| 1.0 / 10000f32.powf(i as f32 / half as f32);
            (0..half)
                .map(move |i| (p * omega(i)).sin())
                .chain((0..half).map(move |i| (p * omega(i)).cos()))
        })
        .collect()
}

/// Stack the `k` preceding frames onto each frame's channels, newest first,
/// with zeros before the first frame. Frame f reads only frames <= f.
///
/// # Shapes
/// x: [b, t, c, h, w] -> [b, t, c * (1 + k), h, w]
pub fn stack_history<B: Backend>(x: Tensor<B, 5>, k: usize) -> Tensor<B, 5> {
    if k == 0 {
        return x;
    }
    let [b, t, c, h, w] = x.dims();
    let mut parts = vec![x.clone()];
    for lag in 1..=k {
        let pad = Tensor::<B, 5>::zeros([b, lag.min(t), c, h, w], &x.device());
        let shifted = if lag >= t {
            pad
        } else {
            Tensor::cat(vec![pad, x.clone().narrow(1, 0, t - lag)], 1)
        }; // [b, t, c, h, w]: frame f holds frame f - lag
        parts.push(shifted);
    }
    Tensor::cat(parts, 2)
}

/// Split clips into non-overlapping pt x p x p patches (pt frames, p x p
/// pixels); within a patch values run frame, channel, row, column.
///
/// # Shapes
/// x: [b, t, c, h, w] -> [b, g, s, pt*c*p*p] with g = t / pt
pub fn patchify<B: Backend>(x: Tensor<B, 5>, pt: usize, p: usize) -> Tensor<B, 4> {
    let [b, t, c, h, w] = x.dims();
    let (g, hp, wp) = (t / pt, h / p, w / p);
    x.reshape([b * g, pt, c, hp, p, wp, p]) // [bg, pt, c, hp, p, wp, p]
        .permute([0, 3, 5, 1, 2, 4, 6]) // [bg, hp, wp, pt, c, p, p]
        .reshape([b, g, hp * wp, pt * c * p * p])
}

/// Inverse of [`patchify`].
///
/// # Shapes
/// x: [b, g, s, pt*c*p*p] -> [b, g*pt, c, h, w]
pub fn unpatchify<B: Backend>(
    x: Tensor<B, 4>,
    pt: usize,
    c: usize,
    h: usize,
    w: usize,
    p: usize,
) -> Tensor<B, 5> {
    let [b, g, _, _] = x.dims();
    let (hp, wp) = (h / p, w / p);
    x.reshape([b * g, hp, wp, pt, c, p, p]) // [bg, hp, wp, pt, c, p, p]
        .permute([0, 3, 4, 1, 5, 2, 6]) // [bg, pt, c, hp, p, wp, p]
        .reshape([b, g * pt, c, h, w])
}
