//! The video DiT. Letters: b batch, t frames, c channels, h/w latent size,
//! p patch, s = (h/p)(w/p) tokens per frame, n = t*s tokens, d hidden.
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::layers::{DitBlock, FinalLayer, TimestepEmbedder};
use crate::{AttentionMask, DitConfig, ModelError, Result};

/// What the DiT reads.
#[derive(Debug, Clone)]
pub struct DitInput<B: Backend> {
    /// Noisy latents x_t: [b, t, c, h, w].
    pub latents: Tensor<B, 5>,
    /// Noise level per frame in [0, 1] (0 = clean): [b, t].
    pub t: Tensor<B, 2>,
    /// Discrete action per frame, or `None` for the null action: [b, t].
    pub actions: Option<Tensor<B, 2, Int>>,
}

/// A video diffusion transformer with per-frame adaLN-Zero conditioning.
#[derive(Module, Debug)]
pub struct Dit<B: Backend> {
    patch_embed: burn::nn::Linear<B>,
    pos_spatial: Param<Tensor<B, 2>>,
    pos_temporal: Param<Tensor<B, 2>>,
    t_embed: TimestepEmbedder<B>,
    action_embed: Option<Embedding<B>>,
    blocks: Vec<DitBlock<B>>,
    final_layer: FinalLayer<B>,
    #[module(skip)]
    cfg: DitConfig,
}

impl DitConfig {
    /// Build the model on `device`. Weights are drawn from the backend's RNG:
    /// seed it (`B::seed`) first for reproducible weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Dit<B>> {
        self.validate()?;
        let d = self.hidden;
        // Learned positions initialised to fixed sin-cos tables (DiT uses the
        // fixed 2-D table; a near-zero random start leaves tokens unable to
        // tell where they are for many steps).
        let (hp, wp) = (self.height / self.patch_size, self.width / self.patch_size);
        let spatial: Vec<f32> = (0..hp * wp)
            .flat_map(|i| {
                let mut row = sincos(&[(i / wp) as f32], d / 2);
                row.extend(sincos(&[(i % wp) as f32], d / 2));
                row
            })
            .collect();
        let temporal = sincos(&(0..self.frames).map(|f| f as f32).collect::<Vec<_>>(), d);
        let pos = |values: Vec<f32>, rows: usize| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [rows, d]),
                device,
            ))
        };
        // Unit-variance action rows, on the scale of the timestep embedding
        // they are added to: with DiT's 0.02 (fine for class labels over
        // hundreds of thousands of steps) a short run never learns to use them.
        let action_embed = (self.num_actions > 0).then(|| {
            EmbeddingConfig::new(self.num_actions + 1, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 1.0,
                })
                .init(device)
        });
        Ok(Dit {
            patch_embed: burn::nn::LinearConfig::new(self.input_patch_dim(), d)
                .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                .init(device),
            pos_spatial: pos(spatial, self.tokens_per_frame()),
            pos_temporal: pos(temporal, self.frames),
            t_embed: TimestepEmbedder::new(d, device),
            action_embed,
            blocks: (0..self.depth)
                .map(|_| DitBlock::new(d, self.heads, self.mlp_hidden(), device))
                .collect(),
            final_layer: FinalLayer::new(d, self.patch_dim(), device),
            cfg: self.clone(),
        })
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
    pub fn forward(&self, input: DitInput<B>) -> Result<Tensor<B, 5>> {
        let cfg = &self.cfg;
        let [b, t, c, h, w] = input.latents.dims();
        if c != cfg.channels || h != cfg.height || w != cfg.width || t == 0 || t > cfg.frames {
            return Err(ModelError::Shape {
                name: "latents",
                got: vec![b, t, c, h, w],
                expected: format!(
                    "[b, 1..={}, {}, {}, {}]",
                    cfg.frames, cfg.channels, cfg.height, cfg.width
                ),
            });
        }
        if input.t.dims() != [b, t] {
            return Err(ModelError::Shape {
                name: "t",
                got: input.t.dims().to_vec(),
                expected: format!("[{b}, {t}]"),
            });
        }
        let device = input.latents.device();
        let s = cfg.tokens_per_frame();
        let stacked = stack_history(input.latents, cfg.history_frames); // [b, t, c(1+k), h, w]
        let x = crate::layers::apply(&self.patch_embed, patchify(stacked, cfg.patch_size)); // [b, t, s, d]
        let pos = self
            .pos_temporal
            .val()
            .narrow(0, 0, t)
            .unsqueeze_dim::<3>(1)
            + self.pos_spatial.val().unsqueeze_dim::<3>(0); // [t, s, d]
        let mut x = x + pos.unsqueeze_dim::<4>(0);

        let mut cond = self.t_embed.forward(input.t); // [b, t, d]
        if let Some(embed) = &self.action_embed {
            let ids = match input.actions {
                Some(a) if a.dims() == [b, t] => a,
                Some(a) => {
                    return Err(ModelError::Shape {
                        name: "actions",
                        got: a.dims().to_vec(),
                        expected: format!("[{b}, {t}]"),
                    })
                }
                None => Tensor::<B, 2, Int>::full([b, t], cfg.num_actions as i64, &device),
            };
            cond = cond + embed.forward(ids); // [b, t, d]
        }

        let bias = match cfg.attention {
            AttentionMask::Full => None,
            AttentionMask::FrameCausal => {
                Some(attention_bias(frame_causal_mask::<B>(t, s, &device)))
            } // [n, n]
        };
        for block in &self.blocks {
            x = block.forward(x, cond.clone(), bias.clone());
        }
        let out = self.final_layer.forward(x, cond); // [b, t, s, c*p*p]
        Ok(unpatchify(out, c, h, w, cfg.patch_size))
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

/// Split frames into non-overlapping p x p patches.
///
/// # Shapes
/// x: [b, t, c, h, w] -> [b, t, s, c*p*p]
pub fn patchify<B: Backend>(x: Tensor<B, 5>, p: usize) -> Tensor<B, 4> {
    let [b, t, c, h, w] = x.dims();
    let (hp, wp) = (h / p, w / p);
    x.reshape([b * t, c, hp, p, wp, p]) // [bt, c, hp, p, wp, p]
        .permute([0, 2, 4, 1, 3, 5]) // [bt, hp, wp, c, p, p]
        .reshape([b, t, hp * wp, c * p * p])
}

/// Inverse of [`patchify`].
///
/// # Shapes
/// x: [b, t, s, c*p*p] -> [b, t, c, h, w]
pub fn unpatchify<B: Backend>(
    x: Tensor<B, 4>,
    c: usize,
    h: usize,
    w: usize,
    p: usize,
) -> Tensor<B, 5> {
    let [b, t, _, _] = x.dims();
    let (hp, wp) = (h / p, w / p);
    x.reshape([b * t, hp, wp, c, p, p]) // [bt, hp, wp, c, p, p]
        .permute([0, 3, 1, 4, 2, 5]) // [bt, c, hp, p, wp, p]
        .reshape([b, t, c, h, w])
}

/// Additive attention bias from a mask: -inf where masked, 0 elsewhere.
///
/// # Shapes
/// [n, n] -> [n, n]
pub fn attention_bias<B: Backend>(mask: Tensor<B, 2, Bool>) -> Tensor<B, 2> {
    let [n, _] = mask.dims();
    Tensor::<B, 2>::zeros([n, n], &mask.device()).mask_fill(mask, f32::NEG_INFINITY)
}

/// True where a query token may not see a key token: the key's frame is later.
///
/// # Shapes
/// -> [n, n] with n = t * s
pub fn frame_causal_mask<B: Backend>(t: usize, s: usize, device: &B::Device) -> Tensor<B, 2, Bool> {
    let n = t * s;
    let mask: Vec<bool> = (0..n * n).map(|i| (i % n) / s > (i / n) / s).collect();
    Tensor::from_data(TensorData::new(mask, [n, n]), device)
}
