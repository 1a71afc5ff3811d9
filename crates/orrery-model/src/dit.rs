//! The video DiT. Letters: b batch, t frames, c channels, h/w latent size,
//! p patch, s = (h/p)(w/p) tokens per frame, n = t*s tokens, d hidden.
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::layers::{ActionMlp, DitBlock, FinalLayer, TimestepEmbedder};
use crate::{AttentionMask, DitConfig, ModelError, PosEmbed, Result};

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

/// A video diffusion transformer with per-frame adaLN-Zero conditioning.
#[derive(Module, Debug)]
pub struct Dit<B: Backend> {
    patch_embed: burn::nn::Linear<B>,
    pos_spatial: Option<Param<Tensor<B, 2>>>,
    pos_temporal: Option<Param<Tensor<B, 2>>>,
    t_embed: TimestepEmbedder<B>,
    action_embed: Option<Embedding<B>>,
    action_mlp: Option<ActionMlp<B>>,
    label_embed: Option<Embedding<B>>,
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
        // Learned positions start at the fixed sin-cos tables (DiT uses the
        // fixed 2-D table; a near-zero random start leaves tokens unable to
        // tell where they are for many steps).
        let learned = self.pos_embed == PosEmbed::Learned;
        let pos = |values: Vec<f32>, rows: usize| {
            learned.then(|| {
                Param::from_tensor(Tensor::from_data(
                    TensorData::new(values, [rows, d]),
                    device,
                ))
            })
        };
        let (spatial, temporal) = self.sincos_tables(self.frame_groups(self.frames));
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
        // Class rows as in DiT: N(0, 0.02).
        let label_embed = (self.num_classes > 0).then(|| {
            EmbeddingConfig::new(self.num_classes + 1, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device)
        });
        Ok(Dit {
            patch_embed: burn::nn::LinearConfig::new(self.input_patch_dim(), d)
                .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                .init(device),
            pos_spatial: pos(spatial, self.tokens_per_frame()),
            pos_temporal: pos(temporal, self.frame_groups(self.frames)),
            t_embed: TimestepEmbedder::new(d, device),
            action_embed,
            action_mlp: (self.action_dim > 0).then(|| ActionMlp::new(self.action_dim, d, device)),
            label_embed,
            blocks: (0..self.depth)
                .map(|_| DitBlock::new(self, device))
                .collect(),
            final_layer: FinalLayer::new(d, self.patch_dim(), device),
            cfg: self.clone(),
        })
    }
}

impl DitConfig {
    /// The 2-D spatial sin-cos table (half the width for rows, half for
    /// columns) and the temporal one for `frames` frames.
    ///
    /// # Shapes
    /// -> ([s * d], [frames * d])
    fn sincos_tables(&self, frames: usize) -> (Vec<f32>, Vec<f32>) {
        let d = self.hidden;
        let wp = self.width / self.patch_size;
        let spatial = (0..self.tokens_per_frame())
            .flat_map(|i| {
                let mut row = sincos(&[(i / wp) as f32], d / 2);
                row.extend(sincos(&[(i % wp) as f32], d / 2));
                row
            })
            .collect();
        let temporal = sincos(&(0..frames).map(|f| f as f32).collect::<Vec<_>>(), d);
        (spatial, temporal)
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
        let pt = cfg.patch_t;
        if c != cfg.channels
            || h != cfg.height
            || w != cfg.width
            || t == 0
            || t > cfg.frames
            || t % pt != 0
        {
            return Err(ModelError::Shape {
                name: "latents",
                got: vec![b, t, c, h, w],
                expected: format!(
                    "[b, 1..={} (a multiple of model.patch_t = {pt}), {}, {}, {}]",
                    cfg.frames, cfg.channels, cfg.height, cfg.width
                ),
            });
        }
        let g = t / pt; // frame groups: tokens along time
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
        let x = crate::layers::apply(&self.patch_embed, patchify(stacked, pt, cfg.patch_size)); // [b, g, s, d]
        let d = cfg.hidden;
        let pos = match (&self.pos_temporal, &self.pos_spatial) {
            (Some(temporal), Some(spatial)) => Some(
                temporal.val().narrow(0, 0, g).unsqueeze_dim::<3>(1)
                    + spatial.val().unsqueeze_dim::<3>(0),
            ),
            _ if cfg.pos_embed == PosEmbed::Sincos => {
                let (spatial, temporal) = cfg.sincos_tables(g);
                let table = |v: Vec<f32>, rows: usize| {
                    Tensor::<B, 2>::from_data(TensorData::new(v, [rows, d]), &device)
                };
                Some(
                    table(temporal, g).unsqueeze_dim::<3>(1)
                        + table(spatial, s).unsqueeze_dim::<3>(0),
                )
            }
            _ => None,
        }; // [g, s, d]
        let mut x = match pos {
            Some(pos) => x + pos.unsqueeze_dim::<4>(0),
            None => x,
        };
        let rope = (cfg.pos_embed == PosEmbed::Rope).then(|| {
            let (hp, wp) = (cfg.height / cfg.patch_size, cfg.width / cfg.patch_size);
            crate::rope::tables::<B>(g, hp, wp, cfg.head_dim(), &device)
        }); // 2 x [n, e/2], n = g * s

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
        if let Some(mlp) = &self.action_mlp {
            cond = cond
                + match input.action_values {
                    Some(v) if v.dims() == [b, t, cfg.action_dim] => {
                        let keep = match input.action_keep {
                            Some(k) if k.dims() == [b, t] => k,
                            Some(k) => {
                                return Err(ModelError::Shape {
                                    name: "action_keep",
                                    got: k.dims().to_vec(),
                                    expected: format!("[{b}, {t}]"),
                                })
                            }
                            None => Tensor::ones([b, t], &device),
                        };
                        mlp.forward(v, keep)
                    }
                    Some(v) => {
                        return Err(ModelError::Shape {
                            name: "action_values",
                            got: v.dims().to_vec(),
                            expected: format!("[{b}, {t}, {}]", cfg.action_dim),
                        })
                    }
                    None => mlp.null(b, t),
                }; // [b, t, d]
        }
        if let Some(embed) = &self.label_embed {
            let ids = match input.labels {
                Some(l) if l.dims() == [b] => l,
                Some(l) => {
                    return Err(ModelError::Shape {
                        name: "labels",
                        got: l.dims().to_vec(),
                        expected: format!("[{b}]"),
                    })
                }
                None => Tensor::<B, 1, Int>::full([b], cfg.num_classes as i64, &device),
            };
            let label = embed.forward(ids.reshape([b, 1])); // [b, 1, d]
            cond = cond + label; // [b, t, d]
        }

        if pt > 1 {
            // One condition per frame group: the mean of its frames'.
            cond = cond.reshape([b, g, pt, d]).mean_dim(2).reshape([b, g, d]);
        }
        let bias = frame_mask::<B>(cfg.attention, cfg.window_frames / pt, g, s, &device)
            .map(attention_bias); // [n, n]
        for block in &self.blocks {
            x = block.forward(x, cond.clone(), bias.clone(), rope.as_ref());
        }
        let out = self.final_layer.forward(x, cond); // [b, g, s, pt*c*p*p]
        Ok(unpatchify(out, pt, c, h, w, cfg.patch_size))
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
