//! Generation from noise for models without actions: class-conditional
//! images (`model.num_classes > 0`, guided) or unconditional clips. Writes a
//! PNG grid (one row per class) and the samples as safetensors for scoring
//! outside (benchmarks/mnist). Letters: n samples, t frames, c/h/w frame size.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use orrery_diffusion::sample::{generate, SamplerConfig};
use orrery_diffusion::{sample_rng, Cond};
use orrery_model::named::{HostTensor, NamedTensors};
use orrery_model::{Dit, ModelBackend};
use serde::Serialize;

use crate::checkpoint::{to_safetensors, TrainerState};
use crate::glue::denoiser;
use crate::io;
use crate::media::{grid, Rgb};
use crate::{Result, TrainError};

/// Samples generated per model call (bounds memory).
const CHUNK: usize = 64;

/// What `orrery sample` generated for a model without actions.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateReport {
    /// Samples generated.
    pub samples: usize,
    /// Samples per class (all samples when unconditional).
    pub per_class: usize,
    /// Classes (0: unconditional).
    pub classes: usize,
    /// Frames per sample.
    pub frames: usize,
    /// Sampler steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f64,
    /// Where the PNG grid and the safetensors went.
    pub outputs: Vec<PathBuf>,
}

/// What `orrery sample` asks of a generation: where to write, how many
/// samples per class (default: the run's sample.clips), the noise seed.
pub struct GenerateOptions<'a> {
    /// The output file (its extension is replaced by .png and .safetensors).
    pub out: &'a Path,
    /// Samples per class, or in all for unconditional models.
    pub per_class: Option<usize>,
    /// Seed of the sampling noise.
    pub seed: u64,
}

/// Generate `per_class` samples for every class (or unconditionally).
pub(crate) fn generate_samples<B: ModelBackend>(
    opts: &GenerateOptions,
    state: &TrainerState,
    model: &Dit<B>,
    sampler: SamplerConfig,
    device: &B::Device,
) -> Result<GenerateReport> {
    let m = &state.config.model;
    let per_class = opts.per_class.unwrap_or(state.config.sample.clips);
    if per_class == 0 {
        return Err(TrainError::Config("--per-class must be at least 1".into()));
    }
    let classes = m.num_classes;
    let labels: Vec<i64> = if classes > 0 {
        (0..classes as i64)
            .flat_map(|l| std::iter::repeat_n(l, per_class))
            .collect()
    } else {
        vec![-1; per_class]
    };
    let n = labels.len();
    let dims = [m.frames, m.channels, m.height, m.width];
    let sample_len: usize = dims.iter().product();
    eprintln!(
        "generating {n} samples ({}), {} {:?} steps, guidance {}",
        if classes > 0 {
            format!("{per_class} for each of {classes} classes")
        } else {
            "unconditional".into()
        },
        sampler.steps,
        sampler.sampler,
        sampler.guidance
    );
    let bar = crate::progress::progress_bar(n as u64, 0);
    let mut values = Vec::with_capacity(n * sample_len);
    for (chunk, ids) in labels.chunks(CHUNK).enumerate() {
        let b = ids.len();
        let cond = Cond {
            actions: None,
            labels: (classes > 0).then(|| {
                Tensor::<B, 1, Int>::from_data(TensorData::new(ids.to_vec(), [b]), device)
            }),
        };
        let x = generate(
            &denoiser(model),
            [b, dims[0], dims[1], dims[2], dims[3]],
            cond,
            &sampler,
            &mut sample_rng(opts.seed, u64::MAX, chunk as u64),
            device,
        )?;
        values.extend(
            x.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32"),
        );
        bar.inc(b as u64);
    }
    bar.finish_and_clear();
    let outputs = write(opts.out, &values, &labels, per_class, dims, state.step)?;
    Ok(GenerateReport {
        samples: n,
        per_class,
        classes,
        frames: m.frames,
        steps: sampler.steps,
        guidance: sampler.guidance,
        outputs,
    })
}

/// A PNG grid of the first frames (a row per class, at most 10 columns) and
/// `samples` [n, t, c, h, w] plus `labels` [n] (as f32; -1 = none) in
/// safetensors.
fn write(
    out: &Path,
    values: &[f32],
    labels: &[i64],
    per_class: usize,
    [t, c, h, w]: [usize; 4],
    step: u64,
) -> Result<Vec<PathBuf>> {
    let sample_len = t * c * h * w;
    let cols = per_class.min(10);
    let scale = (64 / h.max(w)).max(1);
    let rows = labels.len() / per_class;
    let images: Vec<Rgb> = (0..rows)
        .flat_map(|r| (0..cols).map(move |j| r * per_class + j))
        .map(|i| {
            Rgb::from_frame(
                &values[i * sample_len..i * sample_len + c * h * w],
                h,
                w,
                scale,
            )
        })
        .collect();
    let png = out.with_extension("png");
    if let Some(parent) = png.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(&png, grid(&images, cols, 2).to_png()?).map_err(io(&png))?;
    let mut tensors = NamedTensors::new();
    tensors.insert(
        "samples".into(),
        HostTensor {
            shape: vec![labels.len(), t, c, h, w],
            data: values.to_vec(),
        },
    );
    tensors.insert(
        "labels".into(),
        HostTensor {
            shape: vec![labels.len()],
            data: labels.iter().map(|&l| l as f32).collect(),
        },
    );
    let meta = HashMap::from([("step".to_string(), step.to_string())]);
    let st = out.with_extension("safetensors");
    std::fs::write(&st, to_safetensors(&tensors, meta)?).map_err(io(&st))?;
    Ok(vec![png, st])
}
