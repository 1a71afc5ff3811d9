//! The video DiT. Letters: b batch, t frames, c channels, h/w latent size,
//! p patch, s = (h/p)(w/p) tokens per frame, n = t*s tokens, d hidden.
use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::embed::DitEmbed;
use crate::layers::{DitBlock, FinalLayer};
use crate::{AttentionMask, DitConfig, Result};

/// What the DiT reads.
#[derive(Debug, Clone)]
pub struct DitInput<B: Backend> {
    /// Noisy latents x_t: [b, t, c, h, w].
    pub latents: Tensor<B, 5>,
    /// Noise level per frame in [0, 1] (0 = clean): [b, t].
    pub t: Tensor<B, 2>,
    /// Discrete action per frame, or `None` for the null action: [b, t].
    pub actions: Option<Tensor<B, 2, Int>>,
    /// Class label per clip, or `None` for the null label: [b].
    pub labels: Option<Tensor<B, 1, Int>>,
    /// Continuous action per frame, or `None` for the null action: [b, t, A].
    pub action_values: Option<Tensor<B, 3>>,
    /// 1 where a frame's continuous action counts, 0 for the null action
    /// (`None`: all count): [b, t].
    pub action_keep: Option<Tensor<B, 2>>,
}

impl<B: Backend> DitInput<B> {
    /// Latents and noise levels with every condition null.
    pub fn unconditional(latents: Tensor<B, 5>, t: Tensor<B, 2>) -> Self {
        Self {
            latents,
            t,
            actions: None,
            labels: None,
            action_values: None,
            action_keep: None,
        }
    }
}

/// A video diffusion transformer with per-frame adaLN-Zero conditioning:
/// three kinds of unit (the embedder, each block, the final layer), which
/// FSDP runs one at a time. Parameter names follow the fields:
/// `embed.patch_embed.weight`, `blocks.3.attn.qkv.weight`, `final_layer.linear.bias`.
#[derive(Module, Debug)]
pub struct Dit<B: Backend> {
    embed: DitEmbed<B>,
    blocks: Vec<DitBlock<B>>,
    final_layer: FinalLayer<B>,
    #[module(skip)]
    cfg: DitConfig,
}

impl DitConfig {
    /// Build the model on `device`. Weights are drawn from the backend's RNG
    /// when first read: seed it (`B::seed`) first for reproducible weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Dit<B>> {
        self.validate()?;
        Ok(Dit {
            embed: DitEmbed::new(self, device),
            blocks: (0..self.depth)
                .map(|_| DitBlock::new(self, device))
                .collect(),
            final_layer: FinalLayer::new(self.hidden, self.patch_dim(), device),
            cfg: self.clone(),
        })
    }

    /// The final layer for this config (lazy: no memory until loaded).
    pub fn final_layer<B: Backend>(&self, device: &B::Device) -> FinalLayer<B> {
        FinalLayer::new(self.hidden, self.patch_dim(), device)
    }

    /// Whether AdamW's weight decay applies to the named parameter: weight
    /// matrices only, not biases, norms, position tables or embedding rows.
    pub fn decays(name: &str, shape: &[usize]) -> bool {
        shape.len() >= 2
            && !name.starts_with("embed.pos_")
            && name != "embed.action_embed.weight"
            && name != "embed.label_embed.weight"
    }
}

impl<B: Backend> Dit<B> {
    /// The config this model was built from.
    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    /// Predict the model output (velocity for flow matching) for every frame.
    ///
    /// # Shapes
    /// - latents: [b, t, c, h, w] with 1 <= t <= model.frames
    /// - t: [b, t]; actions: [b, t]
    /// - returns [b, t, c, h, w]
    /// The output has the latents' type whatever the weights' (bf16 weights
    /// compute in bf16: see [`crate::layers::like`]).
    pub fn forward(&self, input: DitInput<B>) -> Result<Tensor<B, 5>> {
        let dtype = input.latents.dtype();
        let stem = self.embed.forward(input)?;
        let mut x = stem.x.clone(); // [b, g, s, d]
        for block in &self.blocks {
            x = block.forward(x, stem.cond.clone(), stem.bias.clone(), stem.rope.as_ref());
        }
        let out = self.final_layer.forward(x, stem.cond.clone()); // [b, g, s, pt*c*p*p]
        Ok(crate::layers::like(stem.unpatchify(out, &self.cfg), dtype))
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.num_params()
    }
}

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

/// Additive attention bias from a mask: -inf where masked, 0 elsewhere.
///
/// # Shapes
/// [n, n] -> [n, n]
pub fn attention_bias<B: Backend>(mask: Tensor<B, 2, Bool>) -> Tensor<B, 2> {
    let [n, _] = mask.dims();
    Tensor::<B, 2>::zeros([n, n], &mask.device()).mask_fill(mask, f32::NEG_INFINITY)
}

/// True where a query token may not see a key token: with `FrameCausal`,
/// where the key's frame is later; with `SlidingWindow`, also where it is
/// `window` or more frames earlier. `None` for full attention.
///
/// # Shapes
/// -> [n, n] with n = t * s
pub fn frame_mask<B: Backend>(
    kind: AttentionMask,
    window: usize,
    t: usize,
    s: usize,
    device: &B::Device,
) -> Option<Tensor<B, 2, Bool>> {
    let window = match kind {
        AttentionMask::Full => return None,
        AttentionMask::FrameCausal => usize::MAX,
        AttentionMask::SlidingWindow => window,
    };
    let n = t * s;
    let mask: Vec<bool> = (0..n * n)
        .map(|i| {
            let (query, key) = ((i / n) / s, (i % n) / s);
            key > query || query - key >= window
        })
        .collect();
    Some(Tensor::from_data(TensorData::new(mask, [n, n]), device))
}
