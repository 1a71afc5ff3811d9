//! `orrery bench parity`: the same weights, batches and noise on the CPU
//! reference backend and on the GPU, and where they part. Three levels, so a
//! backend bug is pinned to an op rather than to "training diverges":
//! single ops (forward and gradient), the first step's loss and
//! per-parameter gradients, then `steps` training steps (losses, gradient
//! norms, final weights).
use std::collections::BTreeMap;

use burn::optim::GradientsParams;
use burn::tensor::activation::{gelu_approximate, silu, softmax};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use orrery_data::{Batch, Cursor, Dataset, Loader};
use orrery_dist::SingleProcess;
use orrery_model::blockwise::Blockwise;
use orrery_model::frame_mask::FrameMask;
use orrery_model::named::{load_host, named_grads, to_host, NamedTensors};
use orrery_model::{naive_attention, AttentionMask, Dit, TrainBackend};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::TrainConfig;
use crate::glue::{denoiser, param_shapes, to_device};
use crate::optim::{host, AdamW, Ema};
use crate::step::{plan_step, train_step};
use crate::Result;

/// What one backend computed.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The backend's name.
    pub backend: String,
    /// Per op: its name, its output and the gradient of its input (flat).
    pub ops: Vec<(String, Vec<f32>, Vec<f32>)>,
    /// The attention kernels against each other on this backend
    /// ([`crate::attention_check`]): what, and the relative difference.
    pub kernels: Vec<(String, f64)>,
    /// The first step's loss.
    pub loss0: f64,
    /// The first step's gradient of each parameter (flat).
    pub grads0: BTreeMap<String, Vec<f32>>,
    /// Loss and gradient norm of each training step.
    pub steps: Vec<(f64, f64)>,
    /// The weights after the training steps.
    pub weights: NamedTensors,
}

/// One line of a comparison: what, and its relative L2 difference
/// ||other - reference|| / ||reference|| (NaN anywhere gives NaN).
#[derive(Debug, Clone)]
pub struct Diff {
    /// What was compared.
    pub what: String,
    /// Relative L2 difference.
    pub rel: f64,
}

/// A relative L2 difference over many tensors at once:
/// ||other - reference|| / ||reference|| over every pair added; NaN if any
/// value is not finite or a pair's lengths differ.
#[derive(Default)]
pub(crate) struct Rel {
    num: f64,
    den: f64,
    finite: bool,
}

impl Rel {
    pub(crate) fn new() -> Self {
        Self {
            finite: true,
            ..Self::default()
        }
    }

    pub(crate) fn add(&mut self, reference: &[f32], other: &[f32]) {
        if reference.len() != other.len() {
            self.finite = false;
            return;
        }
        for (x, y) in reference.iter().zip(other) {
            self.finite &= x.is_finite() && y.is_finite();
            self.num += (*y as f64 - *x as f64).powi(2);
            self.den += (*x as f64).powi(2);
        }
    }

    pub(crate) fn value(&self) -> f64 {
        if self.finite {
            (self.num / self.den.max(1e-300)).sqrt()
        } else {
            f64::NAN
        }
    }
}

/// ||b - a|| / ||a||, in f64; NaN if either holds a NaN or Inf, or the
/// lengths differ.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let mut rel = Rel::new();
    rel.add(a, b);
    rel.value()
}

/// Compare `other` with `reference`: every op, the first loss, every
/// parameter's first gradient, each step's loss, and every final weight.
pub fn compare(reference: &Trace, other: &Trace) -> Vec<Diff> {
    let mut out = Vec::new();
    let mut push = |what: String, rel: f64| out.push(Diff { what, rel });
    for ((name, y, g), (_, y2, g2)) in reference.ops.iter().zip(&other.ops) {
        push(format!("op {name}: output"), rel_l2(y, y2));
        push(format!("op {name}: input grad"), rel_l2(g, g2));
    }
    push(
        "step 0 loss".into(),
        rel_l2(&[reference.loss0 as f32], &[other.loss0 as f32]),
    );
    for (name, g) in &reference.grads0 {
        if let Some(g2) = other.grads0.get(name) {
            push(format!("step 0 grad {name}"), rel_l2(g, g2));
        }
    }
    for (k, ((l, n), (l2, n2))) in reference.steps.iter().zip(&other.steps).enumerate() {
        push(
            format!("step {k} loss / grad norm"),
            rel_l2(&[*l as f32, *n as f32], &[*l2 as f32, *n2 as f32]),
        );
    }
    for (name, w) in &reference.weights {
        if let Some(w2) = other.weights.get(name) {
            push(format!("final weight {name}"), rel_l2(&w.data, &w2.data));
        }
    }
    out
}

/// Deterministic host values in [-2, 2) for input `key`.
fn values(key: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(key);
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

/// Every op the DiT leans on, alone: output and d(sum(out * w))/d(input)
/// for fixed inputs and weights.
fn op_checks<B: TrainBackend>(device: &B::Device) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    type Op<B> = fn(Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>;
    // x: [2, 4, 16, 32] (batch, heads, tokens, width); y: a second input of the same shape
    let ops: Vec<(&str, Op<B>)> = vec![
        ("matmul q k^T", |x, y| x.matmul(y.swap_dims(2, 3))),
        ("matmul 2-D", |x, y| {
            let [b, k, n, e] = x.dims();
            x.reshape([b * k * n, e])
                .matmul(y.reshape([b * k * n, e]).narrow(0, 0, e))
                .reshape([b, k, n, e])
        }),
        ("softmax", |x, _| softmax(x, 3)),
        ("softmax causal", |x, _| {
            let n = x.dims()[2];
            let d = x.device();
            let rows = Tensor::<B, 1, burn::tensor::Int>::arange(0..n as i64, &d).reshape([n, 1]);
            let cols = Tensor::<B, 1, burn::tensor::Int>::arange(0..n as i64, &d).reshape([1, n]);
            let bias =
                Tensor::<B, 2>::zeros([n, n], &d).mask_fill(cols.greater(rows), f32::NEG_INFINITY);
            let e = x.dims()[3];
            let x = x.narrow(3, 0, n.min(e));
            softmax(x + bias.unsqueeze::<4>(), 3)
        }),
        ("attention", |x, y| {
            let e = x.dims()[3] as f64;
            softmax(
                x.clone().matmul(y.clone().swap_dims(2, 3)) * (1.0 / e.sqrt()),
                3,
            )
            .matmul(y)
        }),
        ("layer norm", |x, _| {
            let mean = x.clone().mean_dim(3);
            let centered = x - mean;
            let var = (centered.clone() * centered.clone()).mean_dim(3);
            centered / (var + 1e-6).sqrt()
        }),
        ("modulate", |x, y| x * (y.clone() + 1.0) + y),
        ("gelu (tanh)", |x, _| gelu_approximate(x)),
        ("silu", |x, _| silu(x)),
        ("exp", |x, _| x.exp()),
        ("sin cos", |x, y| x.sin() * y.cos()),
        ("swap + reshape", |x, _| {
            let [b, k, n, e] = x.dims();
            x.swap_dims(1, 2)
                .reshape([b, n, k * e])
                .reshape([b, n, k, e])
        }),
        ("cat + narrow", |x, y| {
            let t = x.dims()[1];
            Tensor::cat(vec![y.narrow(1, 0, 1), x.narrow(1, 0, t - 1)], 1)
        }),
        ("sum_dim + mean_dim", |x, _| {
            x.clone().sum_dim(2) * x.mean_dim(3)
        }),
        ("powf", |x, _| (x.abs() + 0.5).powf_scalar(1.5)),
        // The parts of attention's backward, to tell which fused pattern
        // goes wrong when the whole does (BENCHMARKS.md: fused CUDA);
        // last, so the ops above keep their inputs (seeded by position).
        ("scaled scores (q k^T * c)", |x, y| {
            let e = x.dims()[3] as f64;
            x.matmul(y.swap_dims(2, 3)) * (1.0 / e.sqrt())
        }),
        ("softmax of scaled scores", |x, y| {
            let e = x.dims()[3] as f64;
            softmax(x.matmul(y.swap_dims(2, 3)) * (1.0 / e.sqrt()), 3)
        }),
        ("softmax then matmul (p v)", |x, y| {
            // p: [.., 16, 16] over the tokens, then p v: [.., 16, 32]
            let n = x.dims()[2];
            softmax(x.narrow(3, 0, n), 3).matmul(y)
        }),
        // Issue 18: the two attention kernels on 4 frames of 4 tokens,
        // frame-causal, tiles of 6 (not a multiple of the frames): each
        // backend's blockwise kernel against the CPU's, and its naive one.
        ("attention naive, frame-causal", |x, y| {
            let n = x.dims()[2];
            let mask = FrameMask::new(AttentionMask::FrameCausal, 0, 4).expect("a mask");
            let bias = mask.dense_bias::<B>(n, &x.device());
            let scale = 1.0 / (x.dims()[3] as f64).sqrt();
            naive_attention(x, y.clone(), y, scale, Some(bias))
        }),
        ("attention blockwise, frame-causal", |x, y| {
            let spec = Blockwise {
                scale: 1.0 / (x.dims()[3] as f64).sqrt(),
                mask: FrameMask::new(AttentionMask::FrameCausal, 0, 4),
                block: 6,
            };
            B::blockwise_attention(x, y.clone(), y, &spec)
        }),
    ];
    let dims = [2, 4, 16, 32];
    let n: usize = dims.iter().product();
    let mut out = Vec::new();
    for (i, (name, op)) in ops.into_iter().enumerate() {
        let x = Tensor::<B, 4>::from_data(TensorData::new(values(2 * i as u64, n), dims), device)
            .require_grad();
        let y =
            Tensor::<B, 4>::from_data(TensorData::new(values(2 * i as u64 + 1, n), dims), device);
        let z = op(x.clone(), y);
        let w = Tensor::<B, 4>::from_data(
            TensorData::new(values(1000 + i as u64, z.shape().num_elements()), z.dims()),
            device,
        );
        let grads = (z.clone() * w).sum().backward();
        let g = x.grad(&grads).expect("input grad");
        out.push((
            name.to_string(),
            host(z.inner().flatten::<1>(0, 3)),
            host(g.flatten::<1>(0, 3)),
        ));
    }
    out
}

/// How far a [`trace`] has come.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// The op checks are in.
    Ops,
    /// The first step's loss and gradients are in.
    FirstStep,
    /// Training step k (0-based) is in.
    Step(usize),
    /// The final weights are in.
    Done,
}

/// Run the checks on backend `B`: the ops, then `batches.len()` training
/// steps of `cfg` from `init`. `progress` sees the trace after each phase
/// (a GPU's first steps compile kernels for minutes: partial results count).
pub fn trace<B: TrainBackend>(
    backend: &str,
    cfg: &TrainConfig,
    init: &NamedTensors,
    batches: &[Batch],
    device: &B::Device,
    progress: &mut dyn FnMut(Phase, &Trace),
) -> Result<Trace> {
    let mut t = Trace {
        backend: backend.into(),
        ops: op_checks::<B>(device),
        kernels: crate::attention_check::blockwise_vs_naive::<B>(device),
        loss0: f64::NAN,
        grads0: BTreeMap::new(),
        steps: Vec::new(),
        weights: NamedTensors::new(),
    };
    progress(Phase::Ops, &t);
    let mut model: Dit<B> = load_host(cfg.model.init(device)?, init, device)?;
    let shapes = param_shapes(&model);
    // The first step's loss and gradients, as train_step computes them (one micro-batch).
    let first = to_device::<B>(&batches[0], &cfg.model, device);
    let (micro, mut plans, frames, _) = plan_step(cfg, &first, (0, 1), &SingleProcess)?;
    let loss = cfg
        .objective
        .loss_part(&denoiser(&model), &micro[0], plans.remove(0), frames)?;
    t.loss0 = loss.clone().into_scalar().elem::<f32>() as f64;
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    t.grads0 = named_grads(&model, &mut grads)
        .into_iter()
        .map(|(name, g)| (name, host(g)))
        .collect();
    progress(Phase::FirstStep, &t);
    let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
    for (k, batch) in batches.iter().enumerate() {
        let batch = to_device::<B>(batch, &cfg.model, device);
        let (next, out) = train_step(
            cfg,
            model,
            &batch,
            k as u64,
            (&mut optim, &mut ema),
            &shapes,
            &SingleProcess,
        )?;
        model = next;
        t.steps.push((out.loss, out.grad_norm));
        progress(Phase::Step(k), &t);
    }
    t.weights = to_host(&model);
    progress(Phase::Done, &t);
    Ok(t)
}

/// The reference (CPU) trace of `cfg` over its first `steps` batches, and
/// what the other backends need to repeat it: the initial weights and the batches.
pub fn reference(cfg: &TrainConfig, steps: usize) -> Result<(Trace, NamedTensors, Vec<Batch>)> {
    let (init, batches) = inputs(cfg, steps)?;
    let device = Default::default();
    let cpu = trace::<Cpu>("cpu (flex)", cfg, &init, &batches, &device, &mut |_, _| {})?;
    Ok((cpu, init, batches))
}

/// The CPU reference backend.
pub(crate) type Cpu = burn::backend::Autodiff<burn::backend::Flex>;

/// The initial weights (seeded on the CPU) and the first `steps` batches of `cfg`.
pub(crate) fn inputs(cfg: &TrainConfig, steps: usize) -> Result<(NamedTensors, Vec<Batch>)> {
    let data = Dataset::open_with(&cfg.data.url, cfg.data.holdout_clips, cfg.data.max_bad_rows)?;
    let mut loader = Loader::new(
        &data.train,
        cfg.run.seed,
        cfg.data.global_batch,
        cfg.model.frames,
        (0, 1),
        Cursor::default(),
    )?;
    let batches: Vec<Batch> = (0..steps.max(1)).map(|_| loader.next_batch()).collect();
    let device = Default::default();
    <Cpu as burn::tensor::backend::Backend>::seed(&device, cfg.run.seed);
    let init = to_host(&cfg.model.init::<Cpu>(&device)?);
    Ok((init, batches))
}

/// WGSL has no bf16 (cubecl panics on it): an error first.
#[cfg(feature = "wgpu")]
pub(crate) fn no_bf16_on_wgpu(cfg: &TrainConfig) -> Result<()> {
    if cfg.run.precision == crate::config::Precision::Bf16 {
        return Err(crate::TrainError::Config(
            "run.precision = \"bf16\": WebGPU (WGSL) has no bf16; compare in f32, or with the CUDA build".into(),
        ));
    }
    Ok(())
}

/// The CPU reference, then each GPU backend of this binary (CUDA without
/// kernel fusion, training's default, then with), reported through `progress` as they go.
#[cfg(feature = "cuda")]
pub fn gpu_backends(
    cfg: &TrainConfig,
    steps: usize,
    progress: &mut dyn FnMut(&Trace, Phase, &Trace),
) -> Result<()> {
    use burn::backend::Autodiff;
    type Fused = Autodiff<crate::CudaFused>;
    type Plain = Autodiff<crate::CudaPlain>;
    let device = crate::cuda_device("bench parity")?;
    let (cpu, init, batches) = reference(cfg, steps)?;
    let mut report = |phase: Phase, t: &Trace| progress(&cpu, phase, t);
    trace::<Plain>(
        "cuda (no fusion)",
        cfg,
        &init,
        &batches,
        &device,
        &mut report,
    )?;
    trace::<Fused>("cuda (fusion)", cfg, &init, &batches, &device, &mut report)?;
    Ok(())
}

/// The CPU reference, then burn's WebGPU backend with kernel fusion (the
/// same cubecl kernels and fusion as CUDA's, on Vulkan), reported through
/// `progress` as it goes.
#[cfg(feature = "wgpu")]
pub fn wgpu_backends(
    cfg: &TrainConfig,
    steps: usize,
    progress: &mut dyn FnMut(&Trace, Phase, &Trace),
) -> Result<()> {
    type Fused = burn::backend::Autodiff<burn::backend::Wgpu<f32, i32>>;
    no_bf16_on_wgpu(cfg)?;
    crate::kernels::install(None);
    let (cpu, init, batches) = reference(cfg, steps)?;
    let device = Default::default();
    let mut report = |phase: Phase, t: &Trace| progress(&cpu, phase, t);
    trace::<Fused>("wgpu (fusion)", cfg, &init, &batches, &device, &mut report)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_parallel::fixtures::setup;

    type AB = burn::backend::Autodiff<burn::backend::Flex>;

    #[test]
    fn one_backend_matches_itself_and_a_changed_weight_shows() {
        let (cfg, model, _, batch) = setup();
        let init = to_host(&model);
        let device = Default::default();
        let batches = vec![batch.clone(), batch];
        let a = trace::<AB>("a", &cfg, &init, &batches, &device, &mut |_, _| {}).unwrap();
        let b = trace::<AB>("b", &cfg, &init, &batches, &device, &mut |_, _| {}).unwrap();
        let diffs = compare(&a, &b);
        assert!(diffs.len() > 30, "{}", diffs.len());
        for d in &diffs {
            assert!(d.rel < 1e-6, "{} differs by {}", d.what, d.rel);
        }
        assert!(a.steps.iter().all(|(l, n)| l.is_finite() && *n > 0.0));
        // From the trained weights (adaLN-Zero gates are 0 at init, so the
        // blocks' weights do not matter yet), one weight moved by 0.01: the
        // first gradients must show it.
        let base = trace::<AB>("a2", &cfg, &a.weights, &batches, &device, &mut |_, _| {}).unwrap();
        let mut moved = a.weights.clone();
        let w = moved
            .get_mut("blocks.0.attn.qkv.weight")
            .expect("qkv weight");
        w.data.iter_mut().for_each(|v| *v += 0.01);
        let c = trace::<AB>("c", &cfg, &moved, &batches, &device, &mut |_, _| {}).unwrap();
        let a = base;
        let diffs = compare(&a, &c);
        let worst = |prefix: &str| {
            diffs
                .iter()
                .filter(|d| d.what.starts_with(prefix))
                .map(|d| d.rel)
                .fold(0.0, f64::max)
        };
        assert!(worst("step 0 grad") > 1e-4, "{}", worst("step 0 grad"));
        assert!(worst("op") < 1e-6, "ops do not depend on the weights");
    }

    #[test]
    fn rel_flags_mismatches_and_non_finite_values() {
        let mut r = Rel::new();
        r.add(&[3.0, 4.0], &[3.0, 4.5]);
        assert!((r.value() - 0.1).abs() < 1e-12);
        r.add(&[1.0], &[f32::NAN]);
        assert!(r.value().is_nan());
        let mut r = Rel::new();
        r.add(&[1.0, 2.0], &[1.0]);
        assert!(r.value().is_nan());
    }

    #[test]
    fn rel_l2_flags_non_finite_values() {
        assert_eq!(rel_l2(&[1.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!((rel_l2(&[3.0, 4.0], &[3.0, 4.5]) - 0.1).abs() < 1e-12);
        assert!(rel_l2(&[1.0], &[f32::NAN]).is_nan());
        assert!(rel_l2(&[1.0], &[f32::INFINITY]).is_nan());
    }
}
