//! The model config: geometry of the latents and the transformer's size.
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// Which tokens a token may attend to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionMask {
    /// Every token sees every token.
    Full,
    /// A token sees the tokens of its own frame and of earlier frames.
    FrameCausal,
    /// A token sees its own frame and the `window_frames - 1` frames before
    /// it (causal, as a world model with a bounded memory).
    SlidingWindow,
}

/// How attention is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionImpl {
    /// The whole [n, n] score matrix at once (kept for backward under
    /// autodiff): memory grows with the square of the tokens.
    Naive,
    /// Tiles of `attention_block` queries x keys with an online softmax,
    /// tiles the mask hides skipped, and backward recomputing each tile
    /// (FlashAttention-2): memory grows linearly with the tokens.
    Blockwise,
}

/// How tokens know where they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosEmbed {
    /// Learned absolute embeddings (a spatial and a temporal table, added),
    /// initialised to the sin-cos tables.
    Learned,
    /// Fixed sin-cos absolute embeddings (DiT): no parameters.
    Sincos,
    /// 3-D rotary embeddings on queries and keys: the head dim is split into
    /// a temporal and two spatial parts. Relative, so clips longer than
    /// `model.frames` need no new table.
    Rope,
}

/// Normalisation of queries and keys per head before the dot product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QkNorm {
    /// None (DiT).
    None,
    /// RMSNorm with a learned scale over the head dim (SD3, Flux).
    Rms,
    /// LayerNorm with a learned scale and bias over the head dim (ViT-22B).
    Layer,
}

/// The MLP inside each block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// fc2(gelu(fc1 x)), inner width hidden * mlp_ratio (DiT).
    Gelu,
    /// fc2(silu(gate x) * fc1 x) (Shazeer 2020). The inner width is
    /// 2/3 of hidden * mlp_ratio (rounded up to a multiple of 8), so the
    /// parameter count matches the GELU MLP.
    Swiglu,
}

/// The sizes of a DiT preset (Peebles & Xie 2023, Table 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    /// Transformer width.
    pub hidden: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Spatial patch size, if the name has one (`XL/2`).
    pub patch_size: Option<usize>,
}

impl Preset {
    /// Look a preset up by name: `S`, `B`, `L` or `XL`, optionally with a
    /// patch size (`XL/2`, `B/4`) and a `DiT-` prefix; case does not matter.
    pub fn named(name: &str) -> Result<Self> {
        let lower = name.trim().to_ascii_lowercase();
        let bare = lower.strip_prefix("dit-").unwrap_or(&lower);
        let (size, patch) = match bare.split_once('/') {
            Some((s, p)) => (s, Some(p)),
            None => (bare, None),
        };
        let (hidden, depth, heads) = match size {
            "s" => (384, 12, 6),
            "b" => (768, 12, 12),
            "l" => (1024, 24, 16),
            "xl" => (1152, 28, 16),
            _ => {
                return Err(ModelError::Config(format!(
                    "model.preset = {name:?} is not a preset: use S, B, L or XL, optionally with a patch size (e.g. \"XL/2\")"
                )))
            }
        };
        let patch_size = match patch {
            None => None,
            Some(p) => match p.parse::<usize>() {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    return Err(ModelError::Config(format!(
                        "model.preset = {name:?}: the patch size after / must be a positive integer (e.g. \"XL/2\")"
                    )))
                }
            },
        };
        Ok(Self {
            hidden,
            depth,
            heads,
            patch_size,
        })
    }
}

/// A video DiT. Sizes follow DiT's naming (hidden = width, depth = blocks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DitConfig {
    /// Latent channels c.
    pub channels: usize,
    /// Frames t per training clip (the temporal position table's length).
    pub frames: usize,
    /// Latent height h.
    pub height: usize,
    /// Latent width w.
    pub width: usize,
    /// Spatial patch size p: each frame becomes (h/p)*(w/p) tokens.
    pub patch_size: usize,
    /// Temporal patch size: each token covers `patch_t` consecutive frames
    /// (DiT-style video patches (patch_t, p, p)); their conditions are
    /// averaged and masks and positions count these frame groups. 1 for
    /// world models, which generate one frame at a time.
    pub patch_t: usize,
    /// Transformer width d.
    pub hidden: usize,
    /// Number of DiT blocks.
    pub depth: usize,
    /// Attention heads; hidden must divide by it.
    pub heads: usize,
    /// MLP width as a multiple of hidden.
    pub mlp_ratio: f64,
    /// Discrete actions per frame (0: no action conditioning). One more
    /// embedding row is kept as the learned null action.
    pub num_actions: usize,
    /// Attention mask over frames.
    pub attention: AttentionMask,
    /// The attention kernel.
    pub attention_impl: AttentionImpl,
    /// Tile edge in tokens for `attention_impl = "blockwise"`.
    pub attention_block: usize,
    /// Preceding frames stacked onto each frame's patches before the patch
    /// embedding (frame-stacking as in DIAMOND and GameNGen; zeros before
    /// the first frame). Gives every token the same spot of the recent past
    /// without attention having to learn to find it; stays frame-causal.
    /// 0 = attention only.
    pub history_frames: usize,
    /// Frames a token sees with `attention = "sliding_window"`, its own
    /// included (0 otherwise).
    pub window_frames: usize,
    /// Width A of continuous actions per frame (0: none), embedded by a
    /// two-layer MLP; a learned vector stands for the null action. Exclusive
    /// with `num_actions`.
    pub action_dim: usize,
    /// Class labels (0: no label conditioning). One more embedding row is
    /// kept as the learned null label for classifier-free guidance.
    pub num_classes: usize,
    /// Position embedding.
    pub pos_embed: PosEmbed,
    /// Query/key normalisation.
    pub qk_norm: QkNorm,
    /// MLP kind.
    pub mlp: MlpKind,
    /// A DiT preset (`S`, `B`, `L`, `XL`, optionally `/p`) that fills
    /// hidden, depth, heads (and patch_size) where the config does not set
    /// them. Resolved when the config is read; informational afterwards.
    pub preset: Option<String>,
}

impl Default for DitConfig {
    fn default() -> Self {
        Self {
            channels: 3,
            frames: 8,
            height: 32,
            width: 32,
            patch_size: 4,
            patch_t: 1,
            hidden: 128,
            depth: 4,
            heads: 4,
            mlp_ratio: 4.0,
            num_actions: 5,
            attention: AttentionMask::FrameCausal,
            attention_impl: AttentionImpl::Blockwise,
            attention_block: 128,
            history_frames: 0,
            window_frames: 0,
            action_dim: 0,
            num_classes: 0,
            pos_embed: PosEmbed::Learned,
            qk_norm: QkNorm::None,
            mlp: MlpKind::Gelu,
            preset: None,
        }
    }
}

impl DitConfig {
    /// Check that the sizes fit together; the message says which key to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        if self.channels == 0 || self.frames == 0 || self.depth == 0 || self.hidden == 0 {
            return bad(
                "model.channels, model.frames, model.depth and model.hidden must be positive"
                    .into(),
            );
        }
        if self.patch_size == 0
            || self.height % self.patch_size != 0
            || self.width % self.patch_size != 0
        {
            return bad(format!(
                "model.patch_size = {} does not divide the latent size {}x{}: pick a patch size that divides both",
                self.patch_size, self.height, self.width
            ));
        }
        if self.patch_t == 0 || self.frames % self.patch_t != 0 {
            return bad(format!(
                "model.patch_t = {} does not divide model.frames = {}: pick a divisor",
                self.patch_t, self.frames
            ));
        }
        if self.num_actions > 0 && self.action_dim > 0 {
            return bad(format!(
                "model.num_actions = {} (discrete) and model.action_dim = {} (continuous) are both set: a model takes one kind of action, set the other to 0",
                self.num_actions, self.action_dim
            ));
        }
        if self.patch_t > 1 && (self.has_actions() || self.history_frames > 0) {
            return bad(format!(
                "model.patch_t = {} groups frames into tokens, but a world model (model.num_actions or model.action_dim > 0) generates one frame at a time and frame stacking (model.history_frames) works per frame: use patch_t = 1 with them",
                self.patch_t
            ));
        }
        self.validate_width()?;
        self.validate_attention()
    }

    /// Width, heads and what a token must carry.
    fn validate_width(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        if self.heads == 0 || self.hidden % self.heads != 0 {
            return bad(format!(
                "model.hidden = {} is not divisible by model.heads = {}: change one of them",
                self.hidden, self.heads
            ));
        }
        if self.hidden % 4 != 0 {
            return bad(format!(
                "model.hidden = {} must be a multiple of 4 (2-D sin-cos positions)",
                self.hidden
            ));
        }
        if (self.hidden / self.heads) % 2 != 0 {
            return bad(format!(
                "head dim {} must be even: change model.hidden or model.heads",
                self.hidden / self.heads
            ));
        }
        if self.patch_dim() >= self.hidden {
            // Each token must carry its whole noisy patch to predict the
            // velocity; with fewer dims than values the loss cannot go below
            // roughly (patch_dim - hidden) / patch_dim of the noise variance.
            return bad(format!(
                "a patch holds channels * patch_t * patch_size^2 = {} values but model.hidden = {}: lower model.patch_size or raise model.hidden above {}",
                self.patch_dim(),
                self.hidden,
                self.patch_dim()
            ));
        }
        if self.history_frames >= self.frames {
            return bad(format!(
                "model.history_frames = {} must be below model.frames = {}",
                self.history_frames, self.frames
            ));
        }
        if self.input_patch_dim() > 2 * self.hidden {
            return bad(format!(
                "a token's input (patch values times 1 + model.history_frames) holds {} values, more than twice model.hidden = {}: lower model.history_frames or model.patch_size, or raise model.hidden",
                self.input_patch_dim(),
                self.hidden
            ));
        }
        Ok(())
    }

    /// Masks, positions, the preset's name and the MLP.
    fn validate_attention(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        match (self.attention, self.window_frames) {
            (AttentionMask::SlidingWindow, 0) => {
                return bad(
                    "model.attention = \"sliding_window\" needs model.window_frames >= 1 (the frames a token sees, its own included)".into(),
                )
            }
            (AttentionMask::SlidingWindow, w) if w % self.patch_t != 0 => {
                return bad(format!(
                    "model.window_frames = {w} must be a multiple of model.patch_t = {}: masks count frame groups",
                    self.patch_t
                ))
            }
            (AttentionMask::SlidingWindow, _) | (_, 0) => {}
            (other, w) => {
                return bad(format!(
                    "model.window_frames = {w} is only used with model.attention = \"sliding_window\", not {other:?}: remove it or change the mask"
                ))
            }
        }
        if self.pos_embed == PosEmbed::Rope && self.head_dim() < 6 {
            return bad(format!(
                "model.pos_embed = \"rope\" splits the head dim over (t, h, w) in pairs, so it must be at least 6; it is {}: raise model.hidden or lower model.heads",
                self.head_dim()
            ));
        }
        if self.attention_block == 0 {
            return bad(
                "model.attention_block must be at least 1 (tokens per tile; 64 to 256 is typical)"
                    .into(),
            );
        }
        if let Some(p) = &self.preset {
            Preset::named(p)?;
        }
        if self.mlp_ratio <= 0.0 || !self.mlp_ratio.is_finite() {
            return bad(format!(
                "model.mlp_ratio = {} must be positive",
                self.mlp_ratio
            ));
        }
        Ok(())
    }

    /// Tokens per frame, s = (h/p) * (w/p).
    pub fn tokens_per_frame(&self) -> usize {
        (self.height / self.patch_size) * (self.width / self.patch_size)
    }

    /// Values in one patch (one token's output), c * patch_t * p * p.
    pub fn patch_dim(&self) -> usize {
        self.channels * self.patch_t * self.patch_size * self.patch_size
    }

    /// Token groups along time for a clip of `frames` frames.
    pub fn frame_groups(&self, frames: usize) -> usize {
        frames / self.patch_t
    }

    /// Values a token reads: its patch and the same patch of each of the
    /// `history_frames` preceding frames, c * p * p * (1 + history_frames).
    pub fn input_patch_dim(&self) -> usize {
        self.patch_dim() * (1 + self.history_frames)
    }

    /// The MLP's inner width (for SwiGLU, 2/3 of hidden * mlp_ratio rounded
    /// up to a multiple of 8, matching the GELU MLP's parameters).
    pub fn mlp_hidden(&self) -> usize {
        let gelu = ((self.hidden as f64) * self.mlp_ratio).round() as usize;
        match self.mlp {
            MlpKind::Gelu => gelu,
            MlpKind::Swiglu => (2 * gelu).div_ceil(3).div_ceil(8) * 8,
        }
    }

    /// Whether the model takes actions (discrete or continuous): a world model.
    pub fn has_actions(&self) -> bool {
        self.num_actions > 0 || self.action_dim > 0
    }

    /// Per-head width e = hidden / heads.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}
