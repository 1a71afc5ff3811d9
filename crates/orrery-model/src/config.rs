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
    /// Preceding frames stacked onto each frame's patches before the patch
    /// embedding (frame-stacking as in DIAMOND and GameNGen; zeros before
    /// the first frame). Gives every token the same spot of the recent past
    /// without attention having to learn to find it; stays frame-causal.
    /// 0 = attention only.
    pub history_frames: usize,
}

impl Default for DitConfig {
    fn default() -> Self {
        Self {
            channels: 3,
            frames: 8,
            height: 32,
            width: 32,
            patch_size: 4,
            hidden: 128,
            depth: 4,
            heads: 4,
            mlp_ratio: 4.0,
            num_actions: 5,
            attention: AttentionMask::FrameCausal,
            history_frames: 0,
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
                "a patch holds channels * patch_size^2 = {} values but model.hidden = {}: lower model.patch_size or raise model.hidden above {}",
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

    /// Values in one patch, c * p * p.
    pub fn patch_dim(&self) -> usize {
        self.channels * self.patch_size * self.patch_size
    }

    /// Values a token reads: its patch and the same patch of each of the
    /// `history_frames` preceding frames, c * p * p * (1 + history_frames).
    pub fn input_patch_dim(&self) -> usize {
        self.patch_dim() * (1 + self.history_frames)
    }

    /// The MLP's inner width.
    pub fn mlp_hidden(&self) -> usize {
        ((self.hidden as f64) * self.mlp_ratio).round() as usize
    }
}
