//! Multi-head self-attention and what it reads besides the tokens: the
//! frame mask, the RoPE tables and the kernel (naive or blockwise).
//! Letters: b batch, n tokens, d hidden, k heads, e head dim.
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

use crate::blockwise::Blockwise;
use crate::cast::like;
use crate::context::ContextShard;
use crate::frame_mask::FrameMask;
use crate::layers::{apply, linear, HeadNorm};
use crate::{AttentionImpl, ModelBackend, QkNorm};

/// What every attention layer of one forward pass reads besides its tokens.
#[derive(Debug, Clone)]
pub struct AttnContext<B: Backend> {
    /// The frame mask as a rule (`None`: full attention).
    pub mask: Option<FrameMask>,
    /// The same mask as an additive bias for the naive kernel (-inf where
    /// hidden); `None` for full attention and for the blockwise kernel,
    /// which never builds it: [n, n].
    pub bias: Option<Tensor<B, 2>>,
    /// RoPE cos and sin tables: 2 x [n, e/2].
    pub rope: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    /// The kernel.
    pub kernel: AttentionImpl,
    /// Tile edge in tokens for the blockwise kernel.
    pub block: usize,
    /// The context group when this rank runs a shard of the tokens
    /// (attention then swaps the sequence shard for a head shard).
    pub context: Option<ContextShard>,
}

impl<B: AutodiffBackend> AttnContext<B> {
    /// The context of an inner-backend (no autodiff) forward, for a
    /// recompute under autodiff.
    pub fn from_inner(inner: AttnContext<B::InnerBackend>) -> Self {
        Self {
            mask: inner.mask,
            bias: inner.bias.map(Tensor::from_inner),
            rope: inner
                .rope
                .map(|(c, s)| (Tensor::from_inner(c), Tensor::from_inner(s))),
            kernel: inner.kernel,
            block: inner.block,
            context: inner.context,
        }
    }
}

/// Multi-head self-attention over all tokens under a frame mask, with
/// optional QK-norm and optional rotary positions.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    qkv: Linear<B>,
    proj: Linear<B>,
    q_norm: Option<HeadNorm<B>>,
    k_norm: Option<HeadNorm<B>>,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    /// A new attention layer.
    pub fn new(hidden: usize, heads: usize, qk_norm: QkNorm, device: &B::Device) -> Self {
        let e = hidden / heads;
        Self {
            qkv: linear(hidden, 3 * hidden, false, device),
            proj: linear(hidden, hidden, false, device),
            q_norm: HeadNorm::new(qk_norm, e, device),
            k_norm: HeadNorm::new(qk_norm, e, device),
            heads,
        }
    }
}

impl<B: ModelBackend> Attention<B> {
    /// # Shapes
    /// x: [b, n, d] -> [b, n, d]
    pub fn forward(&self, x: Tensor<B, 3>, ctx: &AttnContext<B>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let (k, e) = (self.heads, d / self.heads);
        let qkv = apply(&self.qkv, x)
            .reshape([b, n, 3, k, e])
            .permute([2, 0, 3, 1, 4]); // [3, b, k, n, e]
        let mut parts = qkv.chunk(3, 0).into_iter().map(|p| p.squeeze_dim::<4>(0)); // 3 x [b, k, n, e]
        let (mut q, mut kk, v) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if let Some(norm) = &self.q_norm {
            q = norm.forward(q);
        }
        if let Some(norm) = &self.k_norm {
            kk = norm.forward(kk);
        }
        if let Some((cos, sin)) = &ctx.rope {
            q = crate::rope::apply(q, cos, sin);
            kk = crate::rope::apply(kk, cos, sin);
        }
        // Context parallelism: this rank's tokens of all heads -> every
        // token of k/C heads (the mask and positions are the whole clip's).
        let (q, kk, v) = match &ctx.context {
            Some(group) => {
                let qkv = B::seq_to_heads(Tensor::stack(vec![q, kk, v], 0), group); // [3, b, k/C, n, e]
                let mut p = qkv.chunk(3, 0).into_iter().map(|p| p.squeeze_dim::<4>(0));
                (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
            }
            None => (q, kk, v),
        };
        let scale = 1.0 / (e as f64).sqrt();
        let out = match ctx.kernel {
            AttentionImpl::Naive => naive_attention(q, kk, v, scale, ctx.bias.clone()),
            AttentionImpl::Blockwise => {
                let spec = Blockwise {
                    scale,
                    mask: ctx.mask,
                    block: ctx.block,
                };
                B::blockwise_attention(q, kk, v, &spec)
            }
        }; // [b, k, n, e], or [b, k/C, C*n, e] with a context group
        let out = match &ctx.context {
            Some(group) => B::heads_to_seq(out.unsqueeze_dim::<5>(0), group).squeeze_dim::<4>(0), // [b, k, n, e]
            None => out,
        };
        apply(&self.proj, out.swap_dims(1, 2).reshape([b, n, d]))
    }
}

/// softmax(q k^T * scale + bias) v (Vaswani et al. 2017, eq. 1) with the
/// whole score matrix in memory (and, under autodiff, kept for backward).
///
/// # Shapes
/// q, k, v: [b, k, n, e], bias: [n, n] -> [b, k, n, e]
pub fn naive_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
    bias: Option<Tensor<B, 2>>,
) -> Tensor<B, 4> {
    let mut logits = q.matmul(k.swap_dims(2, 3)) * scale; // [b, k, n, n]
                                                          // The softmax runs in f32 (as under autocast); bf16 logits lose the
                                                          // small differences that decide it.
    let dtype = v.dtype();
    logits = like(logits, DType::F32);
    if let Some(bias) = bias {
        logits = logits + like(bias, DType::F32).unsqueeze_dims::<4>(&[0, 1]);
    }
    like(softmax(logits, 3), dtype).matmul(v)
}
