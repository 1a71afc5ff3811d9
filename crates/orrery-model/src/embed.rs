//! The DiT's first unit: patch embedding, positions and the per-frame
//! condition (timestep + actions + class label). Letters as in dit.rs.
use burn::module::{Module, Param, ParamId};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::attention::AttnContext;
use crate::context::{gather_frames, ContextShard};
use crate::frame_mask::FrameMask;
use crate::layers::{ActionMlp, TimestepEmbedder};
use crate::tokens::{patchify, sincos, stack_history, unpatchify};
use crate::AttentionImpl;
use crate::{DitConfig, DitInput, ModelError, PosEmbed, Result};

/// Everything before the first block, as its own module: FSDP gathers,
/// runs and drops it like any block. Every parameter is created lazily, so
/// building one (a skeleton to load gathered weights into) allocates nothing.
#[derive(Module, Debug)]
pub struct DitEmbed<B: Backend> {
    patch_embed: burn::nn::Linear<B>,
    pos_spatial: Option<Param<Tensor<B, 2>>>,
    pos_temporal: Option<Param<Tensor<B, 2>>>,
    t_embed: TimestepEmbedder<B>,
    action_embed: Option<Embedding<B>>,
    action_mlp: Option<ActionMlp<B>>,
    label_embed: Option<Embedding<B>>,
    #[module(skip)]
    cfg: DitConfig,
}

/// What the blocks and the final layer read besides the tokens: the
/// per-frame condition and the constants of this input's geometry.
#[derive(Debug, Clone)]
pub struct Stem<B: Backend> {
    /// Tokens after embedding: [b, g, s, d].
    pub x: Tensor<B, 4>,
    /// Condition per frame group: [b, g, d].
    pub cond: Tensor<B, 3>,
    /// What attention reads: the mask, RoPE tables and kernel.
    pub attn: AttnContext<B>,
    /// The input's latent shape [b, t, c, h, w], for unpatchifying.
    pub dims: [usize; 5],
}

impl<B: Backend> Stem<B> {
    /// The final layer's patches back to latents; with a context group,
    /// every rank's frames gathered first ([`gather_frames`]), so the
    /// output is the whole clip.
    ///
    /// # Shapes
    /// out: [b, g (or g/C), s, pt*c*p*p] -> [b, t, c, h, w]
    pub fn unpatchify<B2: Backend>(&self, out: Tensor<B2, 4>, cfg: &DitConfig) -> Tensor<B2, 5> {
        let [_, _, c, h, w] = self.dims;
        let out = match &self.attn.context {
            Some(group) => gather_frames(out, group),
            None => out,
        };
        unpatchify(out, cfg.patch_t, c, h, w, cfg.patch_size)
    }
}

/// A lazily created parameter holding the values `make` computes (only if
/// the parameter is ever read: a skeleton's never is).
fn lazy_table<B: Backend>(
    make: impl Fn() -> Vec<f32> + Send + Sync + 'static,
    rows: usize,
    d: usize,
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    Param::uninitialized(
        ParamId::new(),
        move |device, require_grad| {
            let t = Tensor::from_data(TensorData::new(make(), [rows, d]), device);
            if require_grad {
                t.require_grad()
            } else {
                t
            }
        },
        device.clone(),
        true,
        [rows, d].into(),
    )
}

impl<B: Backend> DitEmbed<B> {
    /// A new embedder for `cfg` (validated by the caller).
    pub fn new(cfg: &DitConfig, device: &B::Device) -> Self {
        let d = cfg.hidden;
        // Learned positions start at the fixed sin-cos tables (DiT uses the
        // fixed 2-D table; a near-zero random start leaves tokens unable to
        // tell where they are for many steps).
        let learned = cfg.pos_embed == PosEmbed::Learned;
        let groups = cfg.frame_groups(cfg.frames);
        // Unit-variance action rows, on the scale of the timestep embedding
        // they are added to: with DiT's 0.02 (fine for class labels over
        // hundreds of thousands of steps) a short run never learns to use them.
        let action_embed = (cfg.num_actions > 0).then(|| {
            EmbeddingConfig::new(cfg.num_actions + 1, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 1.0,
                })
                .init(device)
        });
        // Class rows as in DiT: N(0, 0.02).
        let label_embed = (cfg.num_classes > 0).then(|| {
            EmbeddingConfig::new(cfg.num_classes + 1, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device)
        });
        DitEmbed {
            patch_embed: burn::nn::LinearConfig::new(cfg.input_patch_dim(), d)
                .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                .init(device),
            pos_spatial: learned.then(|| {
                let (cfg, tokens) = (cfg.clone(), cfg.tokens_per_frame());
                lazy_table(move || cfg.sincos_tables(groups).0, tokens, d, device)
            }),
            pos_temporal: learned.then(|| {
                let cfg = cfg.clone();
                lazy_table(move || cfg.sincos_tables(groups).1, groups, d, device)
            }),
            t_embed: TimestepEmbedder::new(d, device),
            action_embed,
            action_mlp: (cfg.action_dim > 0).then(|| ActionMlp::new(cfg.action_dim, d, device)),
            label_embed,
            cfg: cfg.clone(),
        }
    }

    /// Tokens, conditions and the blocks' constants for one input.
    ///
    /// # Shapes
    /// - latents: [b, t, c, h, w] with 1 <= t <= model.frames
    /// - t: [b, t]; actions: [b, t]
    /// - returns x [b, g, s, d], cond [b, g, d]
    pub fn forward(&self, input: DitInput<B>) -> Result<Stem<B>> {
        let cfg = &self.cfg;
        let dims = input.latents.dims();
        let [b, t, ..] = dims;
        let g = self.check_latents(dims, input.t.dims())?; // frame groups: tokens along time
        let device = input.latents.device();
        let DitInput {
            latents,
            t: times,
            actions,
            labels,
            action_values,
            action_keep,
            context,
        } = input;
        let (x, rope) = self.tokens(latents, g, &device);
        let mut cond = self.t_embed.forward(times); // [b, t, d]
        if let Some(a) = self.action_cond(actions, action_values, action_keep, [b, t], &device)? {
            cond = cond + a; // [b, t, d]
        }
        if let Some(label) = self.label_cond(labels, b, &device)? {
            cond = cond + label; // [b, t, d]
        }
        let pt = cfg.patch_t;
        if pt > 1 {
            // One condition per frame group: the mean of its frames'.
            cond = cond
                .reshape([b, g, pt, cfg.hidden])
                .mean_dim(2)
                .reshape([b, g, cfg.hidden]);
        }
        let s = cfg.tokens_per_frame();
        let mask = FrameMask::new(cfg.attention, cfg.window_frames / pt, s);
        let bias = match cfg.attention_impl {
            AttentionImpl::Naive => mask.map(|m| m.dense_bias::<B>(g * s, &device)), // [n, n]
            AttentionImpl::Blockwise => None,
        };
        let (x, cond, rope) = match &context {
            Some(group) => self.shard(group, g, (x, cond, rope))?,
            None => (x, cond, rope),
        };
        let attn = AttnContext {
            mask,
            bias,
            rope,
            kernel: cfg.attention_impl,
            block: cfg.attention_block,
            context,
        };
        Ok(Stem {
            x,
            cond,
            attn,
            dims,
        })
    }

    /// This context rank's frame groups of the tokens, conditions and RoPE
    /// rows (the g groups split into C consecutive shards).
    ///
    /// # Shapes
    /// x: [b, g, s, d], cond: [b, g, d], rope: 2 x [n, e/2]
    /// -> [b, g/C, s, d], [b, g/C, d], 2 x [n/C, e/2]
    #[allow(clippy::type_complexity)]
    fn shard(
        &self,
        group: &ContextShard,
        g: usize,
        (x, cond, rope): (
            Tensor<B, 4>,
            Tensor<B, 3>,
            Option<(Tensor<B, 2>, Tensor<B, 2>)>,
        ),
    ) -> Result<(
        Tensor<B, 4>,
        Tensor<B, 3>,
        Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    )> {
        let c = group.size();
        let cfg = &self.cfg;
        if g % c != 0 || cfg.heads % c != 0 {
            return Err(ModelError::Config(format!(
                "context parallelism over {c} ranks splits a clip's {g} frame groups and the model's {} heads evenly: both must be divisible by parallel.context = {c}",
                cfg.heads
            )));
        }
        let (gl, s) = (g / c, cfg.tokens_per_frame());
        let start = group.rank() * gl;
        let rope = rope.map(|(cos, sin)| {
            (
                cos.narrow(0, start * s, gl * s),
                sin.narrow(0, start * s, gl * s),
            )
        });
        Ok((x.narrow(1, start, gl), cond.narrow(1, start, gl), rope))
    }

    /// Check the latents [b, t, c, h, w] and noise levels [b, t] against the
    /// config; returns g, the frame groups (t / patch_t).
    fn check_latents(&self, dims: [usize; 5], t_dims: [usize; 2]) -> Result<usize> {
        let cfg = &self.cfg;
        let [b, t, c, h, w] = dims;
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
        if t_dims != [b, t] {
            return Err(ModelError::Shape {
                name: "t",
                got: t_dims.to_vec(),
                expected: format!("[{b}, {t}]"),
            });
        }
        Ok(t / pt)
    }

    /// The tokens of the latents with their positions added, and RoPE's
    /// tables when the config uses RoPE.
    ///
    /// # Shapes
    /// latents: [b, t, c, h, w] -> ([b, g, s, d], 2 x [n, e/2]), n = g * s
    fn tokens(
        &self,
        latents: Tensor<B, 5>,
        g: usize,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Option<(Tensor<B, 2>, Tensor<B, 2>)>) {
        let cfg = &self.cfg;
        let (s, d) = (cfg.tokens_per_frame(), cfg.hidden);
        let stacked = stack_history(latents, cfg.history_frames); // [b, t, c(1+k), h, w]
        let x = crate::layers::apply(
            &self.patch_embed,
            patchify(stacked, cfg.patch_t, cfg.patch_size),
        ); // [b, g, s, d]
        let pos = match (&self.pos_temporal, &self.pos_spatial) {
            (Some(temporal), Some(spatial)) => Some(
                temporal.val().narrow(0, 0, g).unsqueeze_dim::<3>(1)
                    + spatial.val().unsqueeze_dim::<3>(0),
            ),
            _ if cfg.pos_embed == PosEmbed::Sincos => {
                let (spatial, temporal) = cfg.sincos_tables(g);
                let table = |v: Vec<f32>, rows: usize| {
                    Tensor::<B, 2>::from_data(TensorData::new(v, [rows, d]), device)
                };
                Some(
                    table(temporal, g).unsqueeze_dim::<3>(1)
                        + table(spatial, s).unsqueeze_dim::<3>(0),
                )
            }
            _ => None,
        }; // [g, s, d]
        let x = match pos {
            Some(pos) => {
                let pos = crate::cast::like(pos, x.dtype());
                x + pos.unsqueeze_dim::<4>(0)
            }
            None => x,
        };
        let rope = (cfg.pos_embed == PosEmbed::Rope).then(|| {
            let (hp, wp) = (cfg.height / cfg.patch_size, cfg.width / cfg.patch_size);
            crate::rope::tables::<B>(g, hp, wp, cfg.head_dim(), device)
        }); // 2 x [n, e/2]
        (x, rope)
    }

    /// The actions' part of each frame's condition (None for a model
    /// without actions); missing actions are the null action.
    ///
    /// # Shapes
    /// actions: [b, t]; action_values: [b, t, a]; action_keep: [b, t] -> [b, t, d]
    fn action_cond(
        &self,
        actions: Option<Tensor<B, 2, Int>>,
        action_values: Option<Tensor<B, 3>>,
        action_keep: Option<Tensor<B, 2>>,
        [b, t]: [usize; 2],
        device: &B::Device,
    ) -> Result<Option<Tensor<B, 3>>> {
        let cfg = &self.cfg;
        let bad = |name: &'static str, got: Vec<usize>, expected: String| ModelError::Shape {
            name,
            got,
            expected,
        };
        let from_ids = match &self.action_embed {
            Some(embed) => {
                let ids = match actions {
                    Some(a) if a.dims() == [b, t] => a,
                    Some(a) => {
                        return Err(bad("actions", a.dims().to_vec(), format!("[{b}, {t}]")))
                    }
                    None => Tensor::<B, 2, Int>::full([b, t], cfg.num_actions as i64, device),
                };
                Some(embed.forward(ids))
            }
            None => None,
        };
        let from_values = match &self.action_mlp {
            Some(mlp) => Some(match action_values {
                Some(v) if v.dims() == [b, t, cfg.action_dim] => {
                    let keep = match action_keep {
                        Some(k) if k.dims() == [b, t] => k,
                        Some(k) => {
                            return Err(bad(
                                "action_keep",
                                k.dims().to_vec(),
                                format!("[{b}, {t}]"),
                            ))
                        }
                        None => Tensor::ones([b, t], device),
                    };
                    mlp.forward(v, keep)
                }
                Some(v) => {
                    return Err(bad(
                        "action_values",
                        v.dims().to_vec(),
                        format!("[{b}, {t}, {}]", cfg.action_dim),
                    ))
                }
                None => mlp.null(b, t),
            }),
            None => None,
        };
        // A model has one kind of actions (the config refuses both).
        Ok(match (from_ids, from_values) {
            (Some(a), Some(v)) => Some(a + v),
            (a, v) => a.or(v),
        })
    }

    /// The class label's part of the condition (None for a model without
    /// classes); a missing label is the null class.
    ///
    /// # Shapes
    /// labels: [b] -> [b, 1, d]
    fn label_cond(
        &self,
        labels: Option<Tensor<B, 1, Int>>,
        b: usize,
        device: &B::Device,
    ) -> Result<Option<Tensor<B, 3>>> {
        let Some(embed) = &self.label_embed else {
            return Ok(None);
        };
        let ids = match labels {
            Some(l) if l.dims() == [b] => l,
            Some(l) => {
                return Err(ModelError::Shape {
                    name: "labels",
                    got: l.dims().to_vec(),
                    expected: format!("[{b}]"),
                })
            }
            None => Tensor::<B, 1, Int>::full([b], self.cfg.num_classes as i64, device),
        };
        Ok(Some(embed.forward(ids.reshape([b, 1])))) // [b, 1, d]
    }
}

impl DitConfig {
    /// The 2-D spatial sin-cos table (half the width for rows, half for
    /// columns) and the temporal one for `frames` frames.
    ///
    /// # Shapes
    /// -> ([s * d], [frames * d])
    pub(crate) fn sincos_tables(&self, frames: usize) -> (Vec<f32>, Vec<f32>) {
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
