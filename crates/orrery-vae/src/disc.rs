//! The patch discriminator of the adversarial loss (PatchGAN, Isola et al.
//! 2017, as Esser et al. 2021 use it): a few strided convolutions over each
//! frame on its own, one logit per patch. Group norms instead of batch
//! norms, so a sample's logits do not depend on the rest of its batch (nor
//! on how the global batch is split over ranks). Letters: b batch, t
//! frames, c channels, h/w size, n layers.
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Result, VaeError};

/// The discriminator's shape (`[train]`'s `disc_*` keys).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscConfig {
    /// Width of the first layer; each further layer doubles it, up to 8x.
    pub width: usize,
    /// Strided layers (each halves the frame): patches see about
    /// 2^(n + 2) pixels.
    pub layers: usize,
    /// Groups of the group norms (must divide every width but the first).
    pub groups: usize,
}

impl DiscConfig {
    /// Each strided layer's width.
    pub fn widths(&self) -> Vec<usize> {
        (0..self.layers)
            .map(|i| (self.width << i).min(8 * self.width))
            .collect()
    }

    /// Refuse shapes it cannot build, with what to change.
    pub fn validate(&self) -> Result<()> {
        let w = self.widths();
        if self.layers == 0 || self.width == 0 {
            return Err(VaeError::Config(
                "train.disc_layers and train.disc_width must be at least 1".into(),
            ));
        }
        if w[1..]
            .iter()
            .any(|c| self.groups == 0 || c % self.groups != 0)
        {
            return Err(VaeError::Config(format!(
                "train.disc_groups = {} must divide the discriminator's widths {:?}",
                self.groups,
                &w[1..]
            )));
        }
        Ok(())
    }

    /// A new discriminator over frames of `channels` channels.
    pub fn init<B: Backend>(&self, channels: usize, device: &B::Device) -> Result<PatchDisc<B>> {
        self.validate()?;
        let w = self.widths();
        let conv = |[i, o]: [usize; 2], k: usize, s: usize| {
            Conv2dConfig::new([i, o], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)) // k 4 s 2 halves, k 3 s 1 keeps
                .init(device)
        };
        Ok(PatchDisc {
            first: conv([channels, w[0]], 4, 2),
            layers: (1..self.layers)
                .map(|i| {
                    (
                        conv([w[i - 1], w[i]], 4, 2),
                        GroupNormConfig::new(self.groups, w[i]).init(device),
                    )
                })
                .collect(),
            last: conv([w[self.layers - 1], 1], 3, 1),
        })
    }
}

/// Frames to patch logits (high: looks real).
#[derive(Module, Debug)]
pub struct PatchDisc<B: Backend> {
    first: Conv2d<B>,
    layers: Vec<(Conv2d<B>, GroupNorm<B>)>,
    last: Conv2d<B>,
}

impl<B: Backend> PatchDisc<B> {
    /// # Shapes
    /// x: [b, t, c, h, w] -> [b t, 1, h / 2^n, w / 2^n]
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 4> {
        let [b, t, c, h, w] = x.dims();
        let mut y = leaky_relu(self.first.forward(x.reshape([b * t, c, h, w])), 0.2);
        for (conv, norm) in &self.layers {
            y = leaky_relu(norm.forward(conv.forward(y)), 0.2);
        }
        self.last.forward(y)
    }
}
