//! The autoencoder's config: compression in space and time, widths, the
//! latent channels; and what its shapes are.
use serde::{Deserialize, Serialize};

use crate::{Result, VaeError};

/// A video autoencoder (`[vae]` in a config; every key has a default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaeConfig {
    /// Channels of the frames (3 for RGB).
    pub channels: usize,
    /// Latent channels, C.
    pub latent_channels: usize,
    /// Spatial downsampling: 4 or 8 (each halving is one level).
    pub spatial_down: usize,
    /// Temporal downsampling: 1, or 4 (clips of 1 + 4k frames become 1 + k
    /// latent frames; the first frame is encoded on its own).
    pub temporal_down: usize,
    /// Width of the first level; each further level doubles it, up to
    /// `width_cap`.
    pub width: usize,
    /// The widest level.
    pub width_cap: usize,
    /// Residual blocks per level.
    pub blocks: usize,
    /// Groups of the per-frame group norms (must divide every width).
    pub groups: usize,
    /// Frames each convolution sees: 3 (the frame and the two before it),
    /// or 1 (every frame on its own: an image autoencoder applied per
    /// frame, as world models on per-frame latents want; needs
    /// `temporal_down = 1`).
    pub time_kernel: usize,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            channels: 3,
            latent_channels: 4,
            spatial_down: 4,
            temporal_down: 1,
            width: 32,
            width_cap: 128,
            blocks: 1,
            groups: 8,
            time_kernel: 3,
        }
    }
}

impl VaeConfig {
    /// Refuse settings the architecture cannot build, with what to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(VaeError::Config(m));
        if !matches!(self.spatial_down, 4 | 8) {
            return bad(format!(
                "vae.spatial_down = {}: use 4 or 8",
                self.spatial_down
            ));
        }
        if !matches!(self.temporal_down, 1 | 4) {
            return bad(format!(
                "vae.temporal_down = {}: use 1 or 4",
                self.temporal_down
            ));
        }
        match (self.time_kernel, self.temporal_down) {
            (3, _) | (1, 1) => {}
            (1, d) => {
                return bad(format!(
                    "vae.time_kernel = 1 encodes every frame alone, which cannot merge frames: it needs vae.temporal_down = 1, not {d}"
                ))
            }
            (k, _) => return bad(format!("vae.time_kernel = {k}: use 3 (causal in time) or 1 (per frame)")),
        }
        if self.channels == 0 || self.latent_channels == 0 || self.blocks == 0 {
            return bad(
                "vae.channels, vae.latent_channels and vae.blocks must be at least 1".into(),
            );
        }
        for w in self.widths() {
            if self.groups == 0 || w % self.groups != 0 {
                return bad(format!(
                    "vae.groups = {} must divide every level's width ({:?}): change vae.groups or vae.width",
                    self.groups,
                    self.widths()
                ));
            }
        }
        Ok(())
    }

    /// Levels of spatial halving: 2 or 3.
    pub fn levels(&self) -> usize {
        self.spatial_down.trailing_zeros() as usize
    }

    /// Levels that also halve time (the first ones): 0 or 2.
    pub fn time_levels(&self) -> usize {
        self.temporal_down.trailing_zeros() as usize
    }

    /// Each level's width, then the bottleneck's: levels + 1 values.
    pub fn widths(&self) -> Vec<usize> {
        (0..=self.levels())
            .map(|i| (self.width << i).min(self.width_cap))
            .collect()
    }

    /// Latent frames for `t` frames: t (no temporal compression) or
    /// 1 + (t - 1) / 4. `None` when t does not fit (1 + 4k frames).
    pub fn latent_frames(&self, t: usize) -> Option<usize> {
        match self.temporal_down {
            1 => (t >= 1).then_some(t),
            d => (t >= 1 && (t - 1) % d == 0).then(|| 1 + (t - 1) / d),
        }
    }

    /// Frames decoded from `t` latent frames.
    pub fn frames(&self, t: usize) -> usize {
        1 + (t - 1) * self.temporal_down
    }

    /// The latent shape of a clip: [t', C, h / s, w / s]; errors name the
    /// frame count or size that does not fit.
    pub fn latent_shape(&self, [t, c, h, w]: [usize; 4]) -> Result<[usize; 4]> {
        let s = self.spatial_down;
        if c != self.channels {
            return Err(VaeError::Shape(format!(
                "frames have {c} channels, the autoencoder {} (vae.channels)",
                self.channels
            )));
        }
        if h % s != 0 || w % s != 0 || h == 0 || w == 0 {
            return Err(VaeError::Shape(format!(
                "frames of {h} x {w} do not divide by vae.spatial_down = {s}: crop or resize them to a multiple of {s}"
            )));
        }
        let Some(tl) = self.latent_frames(t) else {
            return Err(VaeError::Shape(format!(
                "{t} frames: with vae.temporal_down = {} a clip has 1 + {0}k frames (1, 5, 9, ...)",
                self.temporal_down
            )));
        };
        Ok([tl, self.latent_channels, h / s, w / s])
    }
}
