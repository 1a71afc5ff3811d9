//! The video autoencoder: a causal convolutional encoder to a diagonal
//! Gaussian over latents, and a causal decoder back to frames (the shape of
//! LDM's KL autoencoder, made causal in time as Cosmos' and Open-Sora's
//! video autoencoders are; no attention: it runs on CPUs). Letters: b
//! batch, t frames, c channels, h/w size, C latent channels, s spatial and
//! d temporal downsampling, t' = 1 + (t - 1) / d.
use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Distribution, Tensor};

use crate::layers::{CausalConv, FrameNorm, ResBlock, Upsample};
use crate::{Result, VaeConfig};

/// The encoder's q(z | x): mean and log-variance per latent value.
#[derive(Clone, Debug)]
pub struct Posterior<B: Backend> {
    /// [b, t', C, h / s, w / s]
    pub mean: Tensor<B, 5>,
    /// [b, t', C, h / s, w / s], clamped to [-30, 20] (as LDM's).
    pub logvar: Tensor<B, 5>,
}

impl<B: Backend> Posterior<B> {
    /// A draw z = mean + exp(logvar / 2) * noise, with noise from burn's
    /// generator (seed it with `B::seed` to repeat a draw).
    pub fn sample(&self) -> Tensor<B, 5> {
        let noise = Tensor::random(
            self.mean.dims(),
            Distribution::Normal(0.0, 1.0),
            &self.mean.device(),
        );
        self.mean.clone() + (self.logvar.clone() * 0.5).exp() * noise
    }

    /// The draw mean + exp(logvar / 2) * noise for given standard normal
    /// noise (drawn per sample by the caller, so a draw does not depend on
    /// which rank holds the sample).
    ///
    /// # Shapes
    /// noise: as `mean`
    pub fn sample_with(&self, noise: Tensor<B, 5>) -> Tensor<B, 5> {
        self.mean.clone() + (self.logvar.clone() * 0.5).exp() * noise
    }

    /// KL(q || N(0, 1)) per latent value, the mean over all of them:
    /// 0.5 (mean^2 + var - 1 - logvar).
    pub fn kl(&self) -> Tensor<B, 1> {
        let var = self.logvar.clone().exp();
        ((self.mean.clone().powi_scalar(2) + var - 1.0 - self.logvar.clone()) * 0.5).mean()
    }
}

/// The encoder: conv in, per level residual blocks then a strided causal
/// conv (space, and time in the first `time_levels` levels), a middle
/// block, then norm, SiLU and a conv to 2C channels (mean, log-variance).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    conv_in: CausalConv<B>,
    levels: Vec<(Vec<ResBlock<B>>, CausalConv<B>)>,
    mid: ResBlock<B>,
    norm_out: FrameNorm<B>,
    conv_out: CausalConv<B>,
}

/// The decoder, the encoder's mirror: conv in, a middle block, per level
/// (deepest first) an upsampling then residual blocks, and norm, SiLU and a
/// conv to the frame channels.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    conv_in: CausalConv<B>,
    mid: ResBlock<B>,
    levels: Vec<(Upsample<B>, Vec<ResBlock<B>>)>,
    norm_out: FrameNorm<B>,
    conv_out: CausalConv<B>,
}

/// Encoder and decoder.
#[derive(Module, Debug)]
pub struct VideoVae<B: Backend> {
    /// Frames to q(z | x).
    pub encoder: Encoder<B>,
    /// Latents to frames.
    pub decoder: Decoder<B>,
}

impl VaeConfig {
    /// A new autoencoder, refused when the config cannot build one.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<VideoVae<B>> {
        self.validate()?;
        let (w, g, n) = (self.widths(), self.groups, self.levels());
        let kt = self.time_kernel;
        let blocks = |c: usize| {
            (0..self.blocks)
                .map(|_| ResBlock::new([c, c], g, kt, device))
                .collect::<Vec<_>>()
        };
        let time = |i: usize| i < self.time_levels();
        let encoder = Encoder {
            conv_in: CausalConv::new([self.channels, w[0]], [kt, 3], [1, 1], device),
            levels: (0..n)
                .map(|i| {
                    let st = if time(i) { 2 } else { 1 };
                    (
                        blocks(w[i]),
                        CausalConv::new([w[i], w[i + 1]], [kt, 3], [st, 2], device),
                    )
                })
                .collect(),
            mid: ResBlock::new([w[n], w[n]], g, kt, device),
            norm_out: FrameNorm::new(g, w[n], device),
            conv_out: CausalConv::new([w[n], 2 * self.latent_channels], [kt, 3], [1, 1], device),
        };
        let decoder = Decoder {
            conv_in: CausalConv::new([self.latent_channels, w[n]], [kt, 3], [1, 1], device),
            mid: ResBlock::new([w[n], w[n]], g, kt, device),
            levels: (0..n)
                .rev()
                .map(|i| {
                    (
                        Upsample::new([w[i + 1], w[i]], time(i), kt, device),
                        blocks(w[i]),
                    )
                })
                .collect(),
            norm_out: FrameNorm::new(g, w[0], device),
            conv_out: CausalConv::new([w[0], self.channels], [kt, 3], [1, 1], device),
        };
        Ok(VideoVae { encoder, decoder })
    }
}

impl<B: Backend> Encoder<B> {
    /// # Shapes
    /// x: [b, t, c, h, w] -> q(z | x) over [b, t', C, h / s, w / s]
    pub fn forward(&self, x: Tensor<B, 5>) -> Posterior<B> {
        let mut h = self.conv_in.forward(x.swap_dims(1, 2)); // [b, w0, t, h, w]
        for (blocks, down) in &self.levels {
            for block in blocks {
                h = block.forward(h);
            }
            h = down.forward(h);
        }
        let h = self.mid.forward(h);
        let out = self.conv_out.forward(silu(self.norm_out.forward(h))); // [b, 2C, t', h', w']
        let [mean, logvar] = out
            .swap_dims(1, 2)
            .chunk(2, 2)
            .try_into()
            .expect("two halves");
        Posterior {
            mean,
            logvar: logvar.clamp(-30.0, 20.0),
        }
    }
}

impl<B: Backend> Decoder<B> {
    /// # Shapes
    /// z: [b, t', C, h', w'] -> [b, 1 + (t' - 1) d, c, h' s, w' s]
    pub fn forward(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_parts(z).1
    }

    /// The frames, and what the last layer ([`Decoder::last_layer`]) took
    /// in to make them: the adversarial loss's adaptive weight compares
    /// gradients at that layer.
    ///
    /// # Shapes
    /// z: [b, t', C, h', w'] -> ([b, w0, t, h, w], [b, t, c, h, w])
    pub fn forward_parts(&self, z: Tensor<B, 5>) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let mut h = self.mid.forward(self.conv_in.forward(z.swap_dims(1, 2)));
        for (up, blocks) in &self.levels {
            h = up.forward(h);
            for block in blocks {
                h = block.forward(h);
            }
        }
        let features = silu(self.norm_out.forward(h));
        let frames = self.conv_out.forward(features.clone()).swap_dims(1, 2);
        (features, frames)
    }

    /// The last layer: features [b, w0, t, h, w] to frames [b, c, t, h, w].
    pub fn last_layer(&self) -> &CausalConv<B> {
        &self.conv_out
    }
}

impl<B: Backend> VideoVae<B> {
    /// Encode, draw a latent, decode: the reconstruction and the posterior.
    ///
    /// # Shapes
    /// x: [b, t, c, h, w] -> ([b, t, c, h, w], q over [b, t', C, h', w'])
    pub fn forward(&self, x: Tensor<B, 5>) -> (Tensor<B, 5>, Posterior<B>) {
        let q = self.encoder.forward(x);
        (self.decoder.forward(q.sample()), q)
    }
}
