//! A DiT block: attention and an MLP, each behind adaLN-Zero modulation,
//! conditioned per frame. Letters: b batch, t frames, s tokens per frame,
//! n = t*s tokens, d hidden.
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Tensor};

use crate::attention::{Attention, AttnContext};
use crate::layers::{apply, layer_norm, linear, Mlp};
use crate::ModelBackend;

/// A DiT block with adaLN-Zero conditioning (Peebles & Xie 2023, section 3.2),
/// the condition given per frame.
#[derive(Module, Debug)]
pub struct DitBlock<B: Backend> {
    attn: Attention<B>,
    mlp: Mlp<B>,
    ada_ln: Linear<B>,
}

impl<B: Backend> DitBlock<B> {
    /// A new block; the modulation starts at zero so the block starts as identity.
    pub fn new(cfg: &crate::DitConfig, device: &B::Device) -> Self {
        let hidden = cfg.hidden;
        Self {
            attn: Attention::new(hidden, cfg.heads, cfg.qk_norm, device),
            mlp: Mlp::new(cfg.mlp, hidden, cfg.mlp_hidden(), device),
            ada_ln: linear(hidden, 6 * hidden, true, device),
        }
    }
}

impl<B: ModelBackend> DitBlock<B> {
    /// # Shapes
    /// x: [b, t, s, d], c: [b, t, d] -> [b, t, s, d]
    pub fn forward(&self, x: Tensor<B, 4>, c: Tensor<B, 3>, ctx: &AttnContext<B>) -> Tensor<B, 4> {
        let [b, t, s, d] = x.dims();
        let m = apply(&self.ada_ln, silu(c))
            .unsqueeze_dim::<4>(2)
            .chunk(6, 3); // 6 x [b, t, 1, d]
        let h = B::modulate(layer_norm(x.clone()), m[0].clone(), m[1].clone());
        let h = self
            .attn
            .forward(h.reshape([b, t * s, d]), ctx)
            .reshape([b, t, s, d]);
        let x = B::gated_residual(x, m[2].clone(), h);
        let h = B::modulate(layer_norm(x.clone()), m[3].clone(), m[4].clone());
        B::gated_residual(x, m[5].clone(), self.mlp.forward(h))
    }
}
