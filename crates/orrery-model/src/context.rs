//! Context parallelism seen from inside the model (DeepSpeed-Ulysses,
//! Jacobs et al. 2023): the C ranks of a context group hold the same clips
//! and each runs the tokens of t/C consecutive frames. Everything but
//! attention is per token; around attention an all-to-all swaps the
//! sequence shard for a head shard ([b, k, n/C, e] -> [b, k/C, n, e]) and
//! back. The group itself (over MPI, threads, ...) is implemented outside
//! the model, behind [`ContextGroup`]. Letters: p stacked tensors (q, k, v),
//! b batch, k heads, n tokens, nl = n/C local tokens, e head dim, c ranks.
use std::any::Any;
use std::sync::Arc;

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::cast::like;

/// The ranks of one context group, seen from one of them. A failed
/// exchange cannot be recovered mid-step: implementations end the job
/// with a message (as a collective's deadline does), so these return data.
pub trait ContextGroup: Send + Sync + std::fmt::Debug {
    /// This rank's place in the group (its frame shard).
    fn rank(&self) -> usize;
    /// Ranks in the group, C.
    fn size(&self) -> usize;
    /// `send` is C equal blocks, block j for rank j; returns block i from
    /// rank i, in rank order.
    fn all_to_all(&self, send: Vec<f32>) -> Vec<f32>;
    /// The same exchange on the device, where the group has a way (NCCL
    /// for CUDA tensors): `send` is a flat `Tensor<B, 1>` behind `Any`,
    /// and the result is one of the same type. `None` (the default): the
    /// host path, [`ContextGroup::all_to_all`].
    fn device_all_to_all(&self, send: &dyn Any) -> Option<Box<dyn Any>> {
        let _ = send;
        None
    }
    /// Every rank's equal `local`, concatenated in rank order.
    fn all_gather(&self, local: Vec<f32>) -> Vec<f32>;
    /// Bytes this rank has sent to the others so far (for benchmarks).
    fn bytes_sent(&self) -> usize;
}

/// A handle on this rank's context group, carried by the model input.
#[derive(Clone, Debug)]
pub struct ContextShard(pub Arc<dyn ContextGroup>);

impl ContextShard {
    /// `input` with this group, when its clips split evenly over the
    /// group (frame groups and heads divisible by C); otherwise as it is,
    /// run whole on this rank (as evaluation on shorter clips does).
    /// Training validates its clip length against the group at start.
    pub fn apply<B: Backend>(
        group: Option<&ContextShard>,
        mut input: crate::DitInput<B>,
        cfg: &crate::DitConfig,
    ) -> crate::DitInput<B> {
        if input.context.is_none() {
            let g = cfg.frame_groups(input.latents.dims()[1]);
            input.context = group
                .filter(|c| g % c.size() == 0 && cfg.heads % c.size() == 0)
                .cloned();
        }
        input
    }

    /// Ranks in the group.
    pub fn size(&self) -> usize {
        self.0.size()
    }

    /// This rank's place in the group.
    pub fn rank(&self) -> usize {
        self.0.rank()
    }
}

fn host<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    like(x, DType::F32)
        .into_data()
        .into_vec::<f32>()
        .expect("an f32 tensor reads as f32")
}

/// The all-to-all of `send`'s first axis (block j to rank j), on the
/// device when the group can, else through the host.
///
/// # Shapes
/// send: [C, ...] -> [C, ...] (block i from rank i), in send's type
fn exchange<B: Backend>(send: Tensor<B, 6>, group: &ContextShard) -> Tensor<B, 6> {
    let dims = send.dims();
    let (dtype, device) = (send.dtype(), send.device());
    let flat = send.reshape([dims.iter().product::<usize>()]);
    if let Some(recv) = group.0.device_all_to_all(&flat) {
        let recv = recv
            .downcast::<Tensor<B, 1>>()
            .expect("a device all_to_all returns the tensor type it was given");
        return recv.reshape(dims);
    }
    let recv = group.0.all_to_all(host(flat));
    like(
        Tensor::<B, 6>::from_data(TensorData::new(recv, dims), &device),
        dtype,
    )
}

/// Sequence shard to head shard: this rank's tokens of every head to every
/// rank's tokens of this rank's k/C heads.
///
/// # Shapes
/// x: [p, b, k, nl, e] -> [p, b, k/C, C*nl, e]
pub fn seq_to_heads<B: Backend>(x: Tensor<B, 5>, group: &ContextShard) -> Tensor<B, 5> {
    let [p, b, k, nl, e] = x.dims();
    let c = group.size();
    let send = x
        .reshape([p, b, c, k / c, nl, e])
        .permute([2, 0, 1, 3, 4, 5]); // [c (to), p, b, k/c, nl, e]
    exchange(send, group) // [c (from), p, b, k/c, nl, e]
        .permute([1, 2, 3, 0, 4, 5]) // [p, b, k/c, c (from), nl, e]
        .reshape([p, b, k / c, c * nl, e])
}

/// Head shard to sequence shard, the inverse of [`seq_to_heads`] (and so
/// its backward, and the other way round).
///
/// # Shapes
/// y: [p, b, k/C, n, e] -> [p, b, k, n/C, e]
pub fn heads_to_seq<B: Backend>(y: Tensor<B, 5>, group: &ContextShard) -> Tensor<B, 5> {
    let [p, b, kc, n, e] = y.dims();
    let c = group.size();
    let nl = n / c;
    let send = y.reshape([p, b, kc, c, nl, e]).permute([3, 0, 1, 2, 4, 5]); // [c (to), p, b, k/c, nl, e]
    exchange(send, group) // [c (from), p, b, k/c, nl, e]
        .permute([1, 2, 0, 3, 4, 5]) // [p, b, c (from), k/c, nl, e]
        .reshape([p, b, c * kc, nl, e])
}

/// Every rank's frames of the model output, in order: the other ranks'
/// as constants and this rank's as they are, so a loss over the whole
/// clip sends gradient only into this rank's frames (each rank of the
/// group computes the same loss; summing the ranks' parameter gradients
/// gives the clip's gradient once).
///
/// # Shapes
/// x: [b, gl, s, d] -> [b, C*gl, s, d]
pub fn gather_frames<B: Backend>(x: Tensor<B, 4>, group: &ContextShard) -> Tensor<B, 4> {
    let [b, gl, s, d] = x.dims();
    let (c, me) = (group.size(), group.rank());
    let (dtype, device) = (x.dtype(), x.device());
    let all = group.0.all_gather(host(x.clone()));
    let block = b * gl * s * d;
    let parts = (0..c)
        .map(|r| match r == me {
            true => x.clone(),
            false => {
                let data = TensorData::new(all[r * block..(r + 1) * block].to_vec(), [b, gl, s, d]);
                like(Tensor::<B, 4>::from_data(data, &device), dtype)
            }
        })
        .collect();
    Tensor::cat(parts, 1)
}
