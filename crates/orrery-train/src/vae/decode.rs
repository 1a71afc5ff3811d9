//! Decoding a world model's rollout on latents back to frames, with the
//! autoencoder that made the latents (`data.vae`): the real clips and the
//! rollouts both go through the decoder, so the scores compare the world
//! model's frames with what the autoencoder makes of the real ones (its own
//! error is measured by `orrery vae train`'s held-out scores). The decoder
//! is causal in time, so the context frames decode alike in both. Letters:
//! b clips, k context and m generated frames, C latent channels, h/w the
//! latent size, c, H, W the frames'.
use std::path::Path;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use orrery_data::{Clip, DatasetMeta};

use crate::{Result, TrainError};

/// Latent clips and rollouts decoded to frames.
pub struct Decoded {
    /// The real clips' first k + m frames, decoded: [k + m, c, H, W] each.
    pub clips: Vec<Clip>,
    /// The generated frames, decoded: [b, m, c, H, W].
    pub generated: Vec<f32>,
    /// [c, H, W].
    pub frame: [usize; 3],
}

/// Decode `clips` (model-space latents, as the loader gives them) and the
/// rollout `generated` ([b, m, C, h, w], model space) with the autoencoder
/// of checkpoint `vae` (its EMA weights); `meta` holds the latents' scale
/// and shift.
pub fn decode_rollout(
    vae: &Path,
    meta: &DatasetMeta,
    clips: &[&Clip],
    (k, m): (usize, usize),
    generated: &[f32],
) -> Result<Decoded> {
    let device = Default::default();
    let (vae_model, cfg, dir) = super::ckpt::load_vae::<Flex>(vae, true, &device)?;
    let [_, lc, lh, lw] = clips[0].shape;
    if lc != cfg.latent_channels || cfg.temporal_down != 1 {
        return Err(TrainError::Config(format!(
            "data.vae = {}: its autoencoder makes {} latent channels (temporal_down {}), the data have {lc}: name the autoencoder that encoded them",
            dir.display(),
            cfg.latent_channels,
            cfg.temporal_down
        )));
    }
    let frame_len = lc * lh * lw;
    // Model space to the autoencoder's: x = x_model / scale + shift.
    let unscale = |v: f32| (v as f64 / meta.scale + meta.shift) as f32;
    let decode = |latents: Vec<f32>, t: usize| -> Vec<f32> {
        let z = Tensor::<Flex, 5>::from_data(TensorData::new(latents, [1, t, lc, lh, lw]), &device);
        vae_model
            .decoder
            .forward(z)
            .into_data()
            .into_vec::<f32>()
            .expect("f32")
    };
    let (c, s) = (cfg.channels, cfg.spatial_down);
    let frame = [c, lh * s, lw * s];
    let px_len = frame.iter().product::<usize>();
    let mut out = Decoded {
        clips: Vec::new(),
        generated: Vec::new(),
        frame,
    };
    for (i, clip) in clips.iter().enumerate() {
        let real: Vec<f32> = clip.latents[..(k + m) * frame_len]
            .iter()
            .map(|&v| unscale(v))
            .collect();
        let rolled: Vec<f32> = clip.latents[..k * frame_len]
            .iter()
            .chain(&generated[i * m * frame_len..(i + 1) * m * frame_len])
            .map(|&v| unscale(v))
            .collect();
        let real_px = decode(real, k + m);
        let rolled_px = decode(rolled, k + m);
        out.generated.extend_from_slice(&rolled_px[k * px_len..]);
        out.clips.push(Clip {
            shape: [k + m, c, lh * s, lw * s],
            latents: real_px,
            ..(*clip).clone()
        });
    }
    Ok(out)
}
