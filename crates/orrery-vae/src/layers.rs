//! The autoencoder's layers, every one causal in time: a 3-D convolution
//! that pads the past with copies of the first frame, a group norm over
//! each frame alone, residual blocks of those, and the up- and
//! downsampling steps. Letters: b batch, c channels, t frames, h/w size.
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig3d};
use burn::tensor::activation::silu;
use burn::tensor::module::{conv2d, interpolate};
use burn::tensor::ops::ConvOptions;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{backend::Backend, Tensor};

/// A 3-D convolution, causal in time: before the first frame it sees
/// `kt - 1` copies of that frame, so output frame j depends on input
/// frames up to `stride_t * j` only; in space it pads to keep the size
/// (or halve it with stride 2).
#[derive(Module, Debug)]
pub struct CausalConv<B: Backend> {
    conv: Conv3d<B>,
    kt: usize,
}

impl<B: Backend> CausalConv<B> {
    /// `c_in -> c_out` with kernel `[kt, k, k]` and stride `[st, s, s]`.
    pub fn new(
        [c_in, c_out]: [usize; 2],
        [kt, k]: [usize; 2],
        [st, s]: [usize; 2],
        device: &B::Device,
    ) -> Self {
        let conv = Conv3dConfig::new([c_in, c_out], [kt, k, k])
            .with_stride([st, s, s])
            .with_padding(PaddingConfig3d::Explicit(0, k / 2, k / 2))
            .init(device);
        Self { conv, kt }
    }

    /// # Shapes
    /// x: [b, c_in, t, h, w] -> [b, c_out, (t - 1) / st + 1, h / s, w / s]
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        if t == 1 {
            // One frame sees kt copies of itself: the 3-D convolution is a
            // 2-D one with the kernel summed over time (kt times less work;
            // a world model's frames and single images take this path).
            let weight = self.conv.weight.val(); // [c_out, c_in, kt, k, k]
            let [co, ci, kt, k, _] = weight.dims();
            let weight = weight.sum_dim(2).reshape([co, ci, k, k]);
            let [_, s, _] = self.conv.stride;
            let y = conv2d(
                x.reshape([b, c, h, w]),
                weight,
                self.conv.bias.as_ref().map(|bias| bias.val()),
                ConvOptions::new([s, s], [k / 2, k / 2], [1, 1], 1),
            );
            let [_, _, h2, w2] = y.dims();
            debug_assert!(kt == self.kt);
            return y.reshape([b, co, 1, h2, w2]);
        }
        let x = match self.kt {
            1 => x,
            kt => {
                let first = x.clone().narrow(2, 0, 1).repeat_dim(2, kt - 1);
                Tensor::cat(vec![first, x], 2)
            }
        };
        self.conv.forward(x)
    }
}

impl<B: Backend> CausalConv<B> {
    /// The id of the kernel's parameter (tests compare its gradients).
    pub fn weight_id(&self) -> burn::module::ParamId {
        self.conv.weight.id
    }
}

/// Group norm over each frame on its own (channels and space, never
/// time), so later frames cannot change earlier frames' codes.
#[derive(Module, Debug)]
pub struct FrameNorm<B: Backend> {
    norm: GroupNorm<B>,
}

impl<B: Backend> FrameNorm<B> {
    /// `groups` groups over `channels`.
    pub fn new(groups: usize, channels: usize, device: &B::Device) -> Self {
        Self {
            norm: GroupNormConfig::new(groups, channels).init(device),
        }
    }

    /// # Shapes
    /// x: [b, c, t, h, w] -> [b, c, t, h, w]
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        let frames = x.swap_dims(1, 2).reshape([b * t, c, h, w]);
        self.norm
            .forward(frames)
            .reshape([b, t, c, h, w])
            .swap_dims(1, 2)
    }
}

/// norm, SiLU, 3x3x3 conv, twice, plus the input (through a 1x1x1 conv
/// when the width changes).
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    norm1: FrameNorm<B>,
    conv1: CausalConv<B>,
    norm2: FrameNorm<B>,
    conv2: CausalConv<B>,
    skip: Option<CausalConv<B>>,
}

impl<B: Backend> ResBlock<B> {
    /// `c_in -> c_out`, norms of `groups` groups, kernels `kt` frames long.
    pub fn new([c_in, c_out]: [usize; 2], groups: usize, kt: usize, device: &B::Device) -> Self {
        Self {
            norm1: FrameNorm::new(groups, c_in, device),
            conv1: CausalConv::new([c_in, c_out], [kt, 3], [1, 1], device),
            norm2: FrameNorm::new(groups, c_out, device),
            conv2: CausalConv::new([c_out, c_out], [kt, 3], [1, 1], device),
            skip: (c_in != c_out).then(|| CausalConv::new([c_in, c_out], [1, 1], [1, 1], device)),
        }
    }

    /// # Shapes
    /// x: [b, c_in, t, h, w] -> [b, c_out, t, h, w]
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let x = match &self.skip {
            Some(skip) => skip.forward(x),
            None => x,
        };
        x + h
    }
}

/// The decoder's upsampling: nearest x2 in space, then a causal conv; with
/// `time`, the conv makes two frames per frame (depth to time) and the
/// first is dropped, so t frames become 2t - 1 and frame 0 still comes from
/// frame 0 alone.
#[derive(Module, Debug)]
pub struct Upsample<B: Backend> {
    conv: CausalConv<B>,
    time: bool,
}

impl<B: Backend> Upsample<B> {
    /// `c_in -> c_out`, doubling time when `time`, the kernel `kt` frames long.
    pub fn new([c_in, c_out]: [usize; 2], time: bool, kt: usize, device: &B::Device) -> Self {
        let out = if time { 2 * c_out } else { c_out };
        Self {
            conv: CausalConv::new([c_in, out], [kt, 3], [1, 1], device),
            time,
        }
    }

    /// # Shapes
    /// x: [b, c_in, t, h, w] -> [b, c_out, t or 2t - 1, 2h, 2w]
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        let frames = x.swap_dims(1, 2).reshape([b * t, c, h, w]);
        let up = interpolate(
            frames,
            [2 * h, 2 * w],
            InterpolateOptions::new(InterpolateMode::Nearest),
        );
        let x = up.reshape([b, t, c, 2 * h, 2 * w]).swap_dims(1, 2);
        let y = self.conv.forward(x); // [b, c_out or 2 c_out, t, 2h, 2w]
        if !self.time {
            return y;
        }
        let [b, c2, t, h2, w2] = y.dims();
        let c_out = c2 / 2;
        // [b, 2, c_out, t, ..] -> [b, c_out, t, 2, ..] -> [b, c_out, 2t, ..]: frame
        // 2j is the first half of frame j's channels, 2j + 1 the second.
        let y = y
            .reshape([b, 2, c_out, t, h2 * w2])
            .permute([0, 2, 3, 1, 4])
            .reshape([b, c_out, 2 * t, h2, w2]);
        y.narrow(2, 1, 2 * t - 1)
    }
}
