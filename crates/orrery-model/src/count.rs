//! Parameter and FLOP counts from the config alone (no weights needed), for
//! MFU reporting and sizing. Letters as in dit.rs; m = MLP inner width,
//! P = c*p*p patch values, I = input patch values, F = timestep frequencies.
use crate::layers::FREQ_DIM;
use crate::{DitConfig, MlpKind, PosEmbed, QkNorm};

impl DitConfig {
    /// Scalar parameters of the model this config builds (equals the built
    /// module's `num_params()`; tested).
    pub fn num_params(&self) -> usize {
        let (d, e, m, p) = (
            self.hidden,
            self.head_dim(),
            self.mlp_hidden(),
            self.patch_dim(),
        );
        let linear = |i: usize, o: usize| i * o + o;
        let mut n = linear(self.input_patch_dim(), d) + linear(FREQ_DIM, d) + linear(d, d);
        if self.pos_embed == PosEmbed::Learned {
            n += (self.tokens_per_frame() + self.frame_groups(self.frames)) * d;
        }
        if self.num_actions > 0 {
            n += (self.num_actions + 1) * d;
        }
        if self.num_classes > 0 {
            n += (self.num_classes + 1) * d;
        }
        if self.action_dim > 0 {
            n += linear(self.action_dim, d) + linear(d, d) + d;
        }
        let qk_norm = match self.qk_norm {
            QkNorm::None => 0,
            QkNorm::Rms => 2 * e,
            QkNorm::Layer => 4 * e,
        };
        let mlp = match self.mlp {
            MlpKind::Gelu => linear(d, m) + linear(m, d),
            MlpKind::Swiglu => 2 * linear(d, m) + linear(m, d),
        };
        let block = linear(d, 3 * d) + linear(d, d) + qk_norm + mlp + linear(d, 6 * d);
        n + self.depth * block + linear(d, 2 * d) + linear(d, p)
    }

    /// Multiply-accumulates of one forward pass over one clip of `frames`
    /// frames: every matmul, attention (q k^T and the weighted sum of v)
    /// counted dense over all n x n pairs, as the kernel computes it whatever
    /// the mask. Elementwise work (norms, softmax, modulation) is left out.
    /// For DiT-XL/2 on a 256x256 image this is the paper's 118.6 "Gflops".
    pub fn forward_macs(&self, frames: usize) -> u64 {
        let (d, m, p) = (
            self.hidden as u64,
            self.mlp_hidden() as u64,
            self.patch_dim() as u64,
        );
        // Conditions are per frame group (per frame when patch_t = 1).
        let t = self.frame_groups(frames) as u64;
        let n = t * self.tokens_per_frame() as u64;
        let mlp_mats = match self.mlp {
            MlpKind::Gelu => 2,
            MlpKind::Swiglu => 3,
        };
        let action_mlp = if self.action_dim > 0 {
            self.action_dim as u64 * d + d * d
        } else {
            0
        };
        let embed = n * self.input_patch_dim() as u64 * d
            + frames as u64 * (FREQ_DIM as u64 * d + d * d + action_mlp);
        let block = n * d * 3 * d // qkv
            + 2 * n * n * d // q k^T and attn v, all heads
            + n * d * d // proj
            + mlp_mats * n * d * m
            + t * d * 6 * d; // adaLN per frame
        let last = t * d * 2 * d + n * d * p;
        embed + self.depth as u64 * block + last
    }

    /// FLOPs of one training step on one clip: forward and backward, with
    /// backward counted as twice the forward (2 FLOPs per multiply-add).
    /// Divide achieved FLOP/s by the device peak for MFU.
    pub fn train_flops_per_sample(&self, frames: usize) -> f64 {
        3.0 * 2.0 * self.forward_macs(frames) as f64
    }
}
