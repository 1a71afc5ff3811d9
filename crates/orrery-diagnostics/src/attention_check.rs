//! The two attention kernels against each other on one backend: blockwise
//! (tiles, online softmax, recompute in backward) against naive (the whole
//! score matrix), output and the gradients of q, k and v, for every mask
//! and for tiles that do and do not divide the tokens. `bench parity`
//! prints it for each backend it runs (CPU, CUDA, wgpu). Letters: b batch,
//! h heads, n tokens, e head dim.
use burn::tensor::{Tensor, TensorData};
use orrery_model::blockwise::Blockwise;
use orrery_model::frame_mask::FrameMask;
use orrery_model::{naive_attention, AttentionMask, TrainBackend};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// (b, h, e, tokens per frame, frames): 15 tokens.
const DIMS: (usize, usize, usize, usize, usize) = (2, 3, 8, 3, 5);

fn host<B: burn::tensor::backend::Backend>(x: Tensor<B, 4>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// max |a - b| / max |b| (NaN if anything is not finite).
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| {
        if (x - y).is_finite() {
            m.max((x - y).abs())
        } else {
            f32::NAN
        }
    });
    (diff / scale) as f64
}

/// Output and the gradients of q, k, v of sum(attention(q, k, v) * w), by
/// `kernel` (`None`: naive).
fn run<B: TrainBackend>(
    kernel: Option<&Blockwise>,
    mask: Option<FrameMask>,
    inputs: &[Vec<f32>; 4],
    device: &B::Device,
) -> [Vec<f32>; 4] {
    let (b, h, e, s, t) = DIMS;
    let dims = [b, h, s * t, e];
    let make = |v: &Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v.clone(), dims), device);
    let (q, k, v) = (
        make(&inputs[0]).require_grad(),
        make(&inputs[1]).require_grad(),
        make(&inputs[2]).require_grad(),
    );
    let out = match kernel {
        Some(spec) => B::blockwise_attention(q.clone(), k.clone(), v.clone(), spec),
        None => {
            let bias = mask.map(|m| m.dense_bias::<B>(s * t, device));
            naive_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                1.0 / (e as f64).sqrt(),
                bias,
            )
        }
    };
    let grads = (out.clone() * make(&inputs[3])).sum().backward();
    let g = |x: &Tensor<B, 4>| x.grad(&grads).map(host).unwrap_or_default();
    [host(out.inner()), g(&q), g(&k), g(&v)]
}

/// One row per mask: the largest relative difference between the kernels
/// over the output and the three input gradients, and over tiles of 4 (not
/// a divisor of the 15 tokens) and 5.
pub fn blockwise_vs_naive<B: TrainBackend>(device: &B::Device) -> Vec<(String, f64)> {
    let (b, h, e, s, t) = DIMS;
    let n = b * h * s * t * e;
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let mut draw = || {
        (0..n)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect::<Vec<_>>()
    };
    let inputs = [draw(), draw(), draw(), draw()];
    let masks = [
        ("full", AttentionMask::Full, 0),
        ("frame-causal", AttentionMask::FrameCausal, 0),
        (
            "sliding window of 2 frames",
            AttentionMask::SlidingWindow,
            2,
        ),
    ];
    masks
        .into_iter()
        .map(|(name, kind, window)| {
            let mask = FrameMask::new(kind, window, s);
            let naive = run::<B>(None, mask, &inputs, device);
            let worst = [4, 5]
                .into_iter()
                .flat_map(|block| {
                    let spec = Blockwise {
                        scale: 1.0 / (e as f64).sqrt(),
                        mask,
                        block,
                    };
                    let got = run::<B>(Some(&spec), mask, &inputs, device);
                    got.into_iter()
                        .zip(&naive)
                        .map(|(g, w)| rel(&g, w))
                        .collect::<Vec<_>>()
                })
                .fold(0f64, |m, d| {
                    if d.is_nan() || m.is_nan() {
                        f64::NAN
                    } else {
                        m.max(d)
                    }
                });
            (format!("blockwise vs naive attention, {name}"), worst)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_agree_on_the_cpu() {
        let rows =
            blockwise_vs_naive::<burn::backend::Autodiff<burn::backend::Flex>>(&Default::default());
        assert_eq!(rows.len(), 3);
        for (what, d) in rows {
            assert!(d < 1e-5, "{what}: {d:e}");
        }
    }
}
