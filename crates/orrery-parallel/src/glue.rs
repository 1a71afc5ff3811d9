//! Where the leaves meet: the model as the diffusion objective's denoiser,
//! the model's input from a noisy batch and its conditions, and a host batch
//! from the data loader on a device. Everything that composes orrery-model,
//! orrery-diffusion and orrery-data uses these, so they live below the loop.
use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use orrery_data::Batch;
use orrery_diffusion::{Actions, Cond, DiffusionError, TrainBatch};
use orrery_model::{Dit, DitConfig, DitInput, ModelBackend};

/// `model` as the objective's and the samplers' denoiser.
pub fn denoiser<B: ModelBackend>(model: &Dit<B>) -> impl orrery_diffusion::Denoiser<B> + '_ {
    move |x_t: Tensor<B, 5>, t: Tensor<B, 2>, cond: Cond<B>| {
        model
            .forward(dit_input(x_t, t, cond))
            .map_err(|e| DiffusionError::Denoiser(e.to_string()))
    }
}

/// The model input for noisy latents under conditions.
pub fn dit_input<B: Backend>(x_t: Tensor<B, 5>, t: Tensor<B, 2>, cond: Cond<B>) -> DitInput<B> {
    let mut input = DitInput::unconditional(x_t, t);
    input.labels = cond.labels;
    match cond.actions {
        None => {}
        Some(Actions::Ids(ids)) => input.actions = Some(ids),
        Some(Actions::Values { values, keep }) => {
            input.action_values = Some(values);
            input.action_keep = Some(keep);
        }
    }
    input
}

/// A host batch on the device, with the model's null ids (one past its
/// actions and its classes).
pub fn to_device<B: Backend>(
    batch: &Batch,
    model: &DitConfig,
    device: &B::Device,
) -> TrainBatch<B> {
    let [b, t, ..] = batch.dims;
    TrainBatch {
        latents: Tensor::from_data(TensorData::new(batch.latents.clone(), batch.dims), device),
        actions: match (&batch.actions, &batch.action_values) {
            (Some(ids), _) if model.num_actions > 0 => Some(Actions::Ids(Tensor::from_data(
                TensorData::new(ids.clone(), [b, t]),
                device,
            ))),
            (_, Some(v)) if model.action_dim > 0 => Some(Actions::Values {
                values: Tensor::from_data(
                    TensorData::new(v.clone(), [b, t, model.action_dim]),
                    device,
                ),
                keep: Tensor::ones([b, t], device),
            }),
            _ => None,
        },
        null_action: model.num_actions as i64,
        labels: batch
            .labels
            .as_ref()
            .filter(|_| model.num_classes > 0)
            .map(|l| Tensor::from_data(TensorData::new(l.clone(), [b]), device)),
        null_label: model.num_classes as i64,
        sample_ids: batch.sample_ids.clone(),
    }
}

/// The shape of every named parameter.
pub fn param_shapes<B: Backend>(model: &Dit<B>) -> BTreeMap<String, Vec<usize>> {
    orrery_model::named::layout(model).into_iter().collect()
}
