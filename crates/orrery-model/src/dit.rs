//! The video DiT. Letters: b batch, t frames, c channels, h/w latent size,
//! p patch, s = (h/p)(w/p) tokens per frame, n = t*s tokens, d hidden.
use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor};

use crate::block::DitBlock;
use crate::context::ContextShard;
use crate::embed::DitEmbed;
use crate::layers::FinalLayer;
use crate::{DitConfig, ModelBackend, Result};

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
    /// This rank's context group, to run only its frames' tokens
    /// (context parallelism); `None` runs every token here. The output is
    /// the whole clip either way.
    pub context: Option<ContextShard>,
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
            context: None,
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
    #[module(skip)]
    context: Option<ContextShard>,
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
            context: None,
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

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.num_params()
    }

    /// This model run as one rank of `group` (context parallelism: each
    /// rank runs its frames' tokens, attention swaps them around), for
    /// every input whose clip splits evenly over the group.
    pub fn with_context(mut self, group: Option<ContextShard>) -> Self {
        self.context = group;
        self
    }

    /// The context group set by [`Dit::with_context`].
    pub fn context(&self) -> Option<&ContextShard> {
        self.context.as_ref()
    }

    /// The units the model runs as, in order: the embedder, the blocks and
    /// the final layer (for running it unit by unit: activation
    /// checkpointing). Their parameter names take the prefixes `embed.`,
    /// `blocks.i.` and `final_layer.`.
    pub fn units(&self) -> (&DitEmbed<B>, &[DitBlock<B>], &FinalLayer<B>) {
        (&self.embed, &self.blocks, &self.final_layer)
    }
}

impl<B: ModelBackend> Dit<B> {
    /// Predict the model output (velocity for flow matching) for every frame.
    ///
    /// # Shapes
    /// - latents: [b, t, c, h, w] with 1 <= t <= model.frames
    /// - t: [b, t]; actions: [b, t]
    /// - returns [b, t, c, h, w]
    /// The output has the latents' type whatever the weights' (bf16 weights
    /// compute in bf16: see [`crate::cast::like`]).
    pub fn forward(&self, input: DitInput<B>) -> Result<Tensor<B, 5>> {
        let dtype = input.latents.dtype();
        let input = ContextShard::apply(self.context.as_ref(), input, &self.cfg);
        let stem = self.embed.forward(input)?;
        let mut x = stem.x.clone(); // [b, g, s, d]
        for block in &self.blocks {
            x = block.forward(x, stem.cond.clone(), &stem.attn);
        }
        let out = self.final_layer.forward(x, stem.cond.clone()); // [b, g, s, pt*c*p*p]
        Ok(crate::cast::like(stem.unpatchify(out, &self.cfg), dtype))
    }
}
