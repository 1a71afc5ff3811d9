//! Data parallelism: every rank holds the whole model, computes the gradient
//! of its share of the global batch, and the shares are summed over ranks in
//! buckets, so every rank takes the same optimizer step.
use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use orrery_diffusion::TrainBatch;
use orrery_dist::{all_reduce_sum_bucketed, Collective};

use crate::optim::host;
use crate::Result;

/// Sum named flat gradients over ranks, together with a few scalars (the
/// loss part, ...) that ride in the last bucket. Names are visited in sorted
/// order, the same on every rank.
///
/// # Shapes
/// grads: name -> [numel]; scalars: [k]
pub fn sum_over_ranks<B: Backend>(
    comm: &dyn Collective,
    grads: &mut BTreeMap<String, Tensor<B, 1>>,
    scalars: &mut [f32],
    bucket_elems: usize,
) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let device = match grads.values().next() {
        Some(g) => g.device(),
        None => return Ok(all_reduce_sum_bucketed(comm, scalars, bucket_elems)?),
    };
    // One flat tensor [sum of numel + k], summed on the device by NCCL when
    // it is installed and the tensor is on CUDA, else through the host.
    let mut parts: Vec<Tensor<B, 1>> = grads.values().cloned().collect();
    parts.push(crate::optim::flat(scalars.to_vec(), &device));
    let sum = match crate::nccl::all_reduce_on_device(Tensor::cat(parts, 0)) {
        Ok(sum) => sum.map_err(crate::Error::Comm)?,
        Err(whole) => {
            let mut v = host(whole);
            all_reduce_sum_bucketed(comm, &mut v, bucket_elems)?;
            crate::optim::flat(v, &device)
        }
    };
    let mut at = 0;
    for g in grads.values_mut() {
        let n = g.dims()[0];
        *g = sum.clone().narrow(0, at, n);
        at += n;
    }
    if !scalars.is_empty() {
        scalars.copy_from_slice(&host(sum.narrow(0, at, scalars.len())));
    }
    Ok(())
}

/// Split a rank's batch into micro-batches of `size` rows (0 = one piece).
///
/// # Shapes
/// latents [b, t, c, h, w] -> b / size x [size, t, c, h, w]
pub fn micro_batches<B: Backend>(batch: &TrainBatch<B>, size: usize) -> Vec<TrainBatch<B>> {
    let b = batch.sample_ids.len();
    if size == 0 || size >= b {
        return vec![batch.clone()];
    }
    (0..b)
        .step_by(size)
        .map(|start| {
            let len = size.min(b - start);
            TrainBatch {
                latents: batch.latents.clone().narrow(0, start, len),
                actions: batch.actions.as_ref().map(|a| a.rows(start, len)),
                null_action: batch.null_action,
                labels: batch.labels.clone().map(|l| l.narrow(0, start, len)),
                null_label: batch.null_label,
                sample_ids: batch.sample_ids[start..start + len].to_vec(),
            }
        })
        .collect()
}

/// Copy rank 0's named flat tensors to every rank (identical start even if
/// a backend's RNG differed between processes).
///
/// # Shapes
/// weights: name -> [numel]
pub fn broadcast_from_rank0<B: Backend>(
    comm: &dyn Collective,
    weights: &mut BTreeMap<String, Tensor<B, 1>>,
) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    for w in weights.values_mut() {
        let mut v = host(w.clone());
        comm.broadcast(&mut v, 0)?;
        *w = crate::optim::flat(v, &w.device());
    }
    Ok(())
}
