//! Building blocks of the DiT: timestep embedding, attention, MLP, adaLN-Zero
//! block and final layer. Letters: b batch, t frames, s tokens per frame,
//! n = t*s tokens, d hidden, k heads, e head dim, f timestep frequencies.
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::cast::like;
use crate::{MlpKind, ModelBackend, QkNorm};

/// Width of the sinusoidal timestep features.
pub const FREQ_DIM: usize = 128;

/// LayerNorm over the last dim without affine parameters (adaLN supplies
/// them), computed in f32 whatever the activations' type (as autocast does).
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = like(x, DType::F32);
    let mean = x.clone().mean_dim(D - 1);
    let centered = x - mean;
    let var = (centered.clone() * centered.clone()).mean_dim(D - 1);
    like(centered / (var + 1e-6).sqrt(), dtype)
}

/// Apply a linear layer as one 2-D matmul over all leading dims
/// (`[.., d_in] -> [.., d_out]`): much faster on the CPU than a batched
/// matmul of many small matrices.
pub fn apply<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = like(x, layer.weight.val().dtype());
    let y = layer.forward(x.reshape([rows, d_in])); // [rows, d_out]
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}

pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    zero: bool,
    device: &B::Device,
) -> Linear<B> {
    let init = if zero {
        Initializer::Zeros
    } else {
        // DiT initialises linears with Xavier-uniform.
        Initializer::XavierUniform { gain: 1.0 }
    };
    LinearConfig::new(d_in, d_out)
        .with_initializer(init)
        .init(device)
}

/// Sinusoidal features of a noise level t in [0, 1] (scaled by 1000, as in DiT),
/// followed by a two-layer MLP.
#[derive(Module, Debug)]
pub struct TimestepEmbedder<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> TimestepEmbedder<B> {
    /// A new embedder to width `hidden`.
    pub fn new(hidden: usize, device: &B::Device) -> Self {
        Self {
            fc1: linear(FREQ_DIM, hidden, false, device),
            fc2: linear(hidden, hidden, false, device),
        }
    }

    /// # Shapes
    /// t: [b, t] -> [b, t, d]
    pub fn forward(&self, t: Tensor<B, 2>) -> Tensor<B, 3> {
        let half = FREQ_DIM / 2;
        // DiT / ADM: freqs_i = exp(-ln(10000) * i / half)
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10000f32).ln() * i as f32 / half as f32).exp())
            .collect();
        let freqs = Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]), &t.device())
            .reshape([1, 1, half]); // [1, 1, f/2]
        let args = t.unsqueeze_dim::<3>(2) * 1000.0 * freqs; // [b, t, f/2]
        let feats = Tensor::cat(vec![args.clone().cos(), args.sin()], 2); // [b, t, f]
        apply(&self.fc2, silu(apply(&self.fc1, feats)))
    }
}

/// Normalisation over the head dim with a learned scale (and, for
/// LayerNorm, bias): the QK-norm of SD3 / ViT-22B.
#[derive(Module, Debug)]
pub struct HeadNorm<B: Backend> {
    weight: Param<Tensor<B, 1>>,
    bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> HeadNorm<B> {
    /// Scale 1 (and bias 0) over a head dim of `e`; `None` for no norm.
    pub fn new(kind: QkNorm, e: usize, device: &B::Device) -> Option<Self> {
        // Lazy like burn's own initialisers, so an FSDP unit skeleton costs nothing.
        let ones = || Initializer::Ones.init_with([e], None, None, device);
        match kind {
            QkNorm::None => None,
            QkNorm::Rms => Some(Self {
                weight: ones(),
                bias: None,
            }),
            QkNorm::Layer => Some(Self {
                weight: ones(),
                bias: Some(Initializer::Zeros.init_with([e], None, None, device)),
            }),
        }
    }

    /// RMSNorm `x / rms(x) * g` without a bias, LayerNorm with one.
    ///
    /// # Shapes
    /// x: [b, k, n, e] -> [b, k, n, e]
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let g = self.weight.val().unsqueeze_dims::<4>(&[0, 1, 2]); // [1, 1, 1, e]
        match &self.bias {
            None => {
                let dtype = x.dtype();
                let x = like(x, DType::F32);
                let ms = (x.clone() * x.clone()).mean_dim(3); // [b, k, n, 1]
                like(x / (ms + 1e-6).sqrt(), dtype) * g
            }
            Some(bias) => layer_norm(x) * g + bias.val().unsqueeze_dims::<4>(&[0, 1, 2]),
        }
    }
}

/// Continuous actions to the conditioning width: fc2(silu(fc1 a)), and a
/// learned vector for the null action (classifier-free guidance).
#[derive(Module, Debug)]
pub struct ActionMlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    null: Param<Tensor<B, 1>>,
}

impl<B: Backend> ActionMlp<B> {
    /// A new embedder from `action_dim` to `hidden`; the null vector starts
    /// at unit variance, on the scale of the timestep embedding.
    pub fn new(action_dim: usize, hidden: usize, device: &B::Device) -> Self {
        Self {
            fc1: linear(action_dim, hidden, false, device),
            fc2: linear(hidden, hidden, false, device),
            null: Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            }
            .init_with([hidden], None, None, device),
        }
    }

    /// keep * mlp(values) + (1 - keep) * null, per frame.
    ///
    /// # Shapes
    /// values: [b, t, A], keep: [b, t] -> [b, t, d]
    pub fn forward(&self, values: Tensor<B, 3>, keep: Tensor<B, 2>) -> Tensor<B, 3> {
        let emb = apply(&self.fc2, silu(apply(&self.fc1, values))); // [b, t, d]
        let keep = like(keep, emb.dtype()).unsqueeze_dim::<3>(2); // [b, t, 1]
        let null = self.null.val().unsqueeze_dims::<3>(&[0, 1]); // [1, 1, d]
        emb * keep.clone() + null * (keep.neg() + 1.0)
    }

    /// The null action for every frame.
    ///
    /// # Shapes
    /// -> [b, t, d]
    pub fn null(&self, b: usize, t: usize) -> Tensor<B, 3> {
        let d = self.null.dims()[0];
        self.null.val().reshape([1, 1, d]).expand([b, t, d])
    }
}

/// GELU MLP, or SwiGLU when it has a gate.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    fc1: Linear<B>,
    gate: Option<Linear<B>>,
    fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// A new MLP d -> inner -> d.
    pub fn new(kind: MlpKind, hidden: usize, inner: usize, device: &B::Device) -> Self {
        Self {
            fc1: linear(hidden, inner, false, device),
            gate: (kind == MlpKind::Swiglu).then(|| linear(hidden, inner, false, device)),
            fc2: linear(inner, hidden, false, device),
        }
    }
}

impl<B: ModelBackend> Mlp<B> {
    /// GELU: fc2(gelu(fc1 x)); SwiGLU: fc2(silu(gate x) * fc1 x).
    ///
    /// # Shapes
    /// x: [b, t, s, d] -> [b, t, s, d]
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let inner = match &self.gate {
            None => B::gelu_tanh(apply(&self.fc1, x)),
            Some(gate) => silu(apply(gate, x.clone())) * apply(&self.fc1, x),
        };
        apply(&self.fc2, inner)
    }
}

/// adaLN then a zero-initialised linear to patch values.
#[derive(Module, Debug)]
pub struct FinalLayer<B: Backend> {
    ada_ln: Linear<B>,
    linear: Linear<B>,
}

impl<B: Backend> FinalLayer<B> {
    /// A new final layer d -> patch_dim, zero-initialised (adaLN-Zero).
    pub fn new(hidden: usize, patch_dim: usize, device: &B::Device) -> Self {
        Self {
            ada_ln: linear(hidden, 2 * hidden, true, device),
            linear: linear(hidden, patch_dim, true, device),
        }
    }
}

impl<B: ModelBackend> FinalLayer<B> {
    /// # Shapes
    /// x: [b, t, s, d], c: [b, t, d] -> [b, t, s, c*p*p]
    pub fn forward(&self, x: Tensor<B, 4>, c: Tensor<B, 3>) -> Tensor<B, 4> {
        let m = apply(&self.ada_ln, silu(c))
            .unsqueeze_dim::<4>(2)
            .chunk(2, 3); // 2 x [b, t, 1, d]
        apply(
            &self.linear,
            B::modulate(layer_norm(x), m[0].clone(), m[1].clone()),
        )
    }
}
