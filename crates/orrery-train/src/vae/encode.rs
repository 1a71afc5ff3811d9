//! `orrery encode`: pixel clips to latent Parquet with a trained
//! autoencoder. The work is cut into output files fixed by the input alone
//! (an input Parquet file each, or `clips_per_file` clip files of a
//! folder), rank r of n encodes files r, r + n, ..., each in fixed batches
//! of its clips: every file is the same on any number of ranks. The
//! latents are the posterior means; `scale` and `shift` in the metadata
//! make them zero-mean and unit-variance for the DiT, from statistics
//! summed per file and combined in file order (also the same for any n).
//! Letters: t frames, c channels, h/w size, C latent channels.
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use orrery_data::{import, store, Clip, DatasetMeta};
use orrery_dist::Collective;
use orrery_vae::{VaeConfig, VideoVae};

use crate::{Result, TrainError};

/// Settings of an encode.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// The autoencoder: a checkpoint, checkpoints/ or run directory.
    pub vae: PathBuf,
    /// Pixel clips: a Parquet dataset (directory or URL), or a local
    /// folder of `.npy` / `.safetensors` clip files (as `data import` takes).
    pub from: String,
    /// Output directory or URL.
    pub out: String,
    /// Clips per forward pass.
    pub batch: usize,
    /// Clip files per output file (folder input).
    pub clips_per_file: usize,
    /// Encode with the online weights instead of the EMA's.
    pub online: bool,
}

/// What an encode wrote.
#[derive(Debug, Clone)]
pub struct EncodeReport {
    /// Clips encoded (all ranks).
    pub clips: usize,
    /// Frames encoded (all ranks).
    pub frames: usize,
    /// Output files, by all ranks.
    pub files: usize,
    /// The latent shift (mean) and scale (1 / standard deviation) written.
    pub shift: f64,
    /// See `shift`.
    pub scale: f64,
    /// Latent shape of a clip of the first file: [t', C, h', w'].
    pub latent_shape: [usize; 4],
    /// Seconds this rank spent, and frames it encoded.
    pub seconds: f64,
    /// See `seconds`.
    pub own_frames: usize,
}

/// One output file's input.
enum Unit {
    /// An input Parquet file, by name under the input URL.
    Parquet(String),
    /// Clip files of a folder.
    Files(Vec<PathBuf>),
}

/// Where the clips come from: a folder of clip files when `from` is a
/// local folder without Parquet files, else a Parquet dataset.
fn units(opts: &EncodeOptions) -> Result<Vec<Unit>> {
    let dir = Path::new(&opts.from);
    let parquet = store::parquet_names(&opts.from)?;
    if dir.is_dir() && parquet.is_empty() {
        let files = import::clip_files(dir)?;
        return Ok(files
            .chunks(opts.clips_per_file.max(1))
            .map(|c| Unit::Files(c.to_vec()))
            .collect());
    }
    if parquet.is_empty() {
        return Err(TrainError::Config(format!(
            "--from {}: no Parquet files and no folder of .npy / .safetensors clips there",
            opts.from
        )));
    }
    Ok(parquet.into_iter().map(Unit::Parquet).collect())
}

/// A unit's clips and their metadata (a folder's: actions and labels only).
fn read_unit(opts: &EncodeOptions, unit: &Unit) -> Result<(Vec<Clip>, Option<DatasetMeta>)> {
    Ok(match unit {
        Unit::Parquet(name) => {
            let part = store::read_named(&opts.from, name)?;
            (part.clips, Some(part.meta))
        }
        Unit::Files(paths) => (
            paths
                .iter()
                .map(|p| import::read_clip_file(p))
                .collect::<std::result::Result<_, _>>()?,
            None,
        ),
    })
}

/// Per-file sums of the latents, exact in f64.
#[derive(Clone, Copy, Default)]
struct Sums {
    count: f64,
    sum: f64,
    sum_sq: f64,
    /// Largest action id + 1 and label + 1 seen (0 when none).
    actions: f64,
    classes: f64,
}

impl Sums {
    const LEN: usize = 5;
    fn to_array(self) -> [f64; Self::LEN] {
        [
            self.count,
            self.sum,
            self.sum_sq,
            self.actions,
            self.classes,
        ]
    }
}

/// Encode `clips` (pixels in the data's range) to posterior means, in
/// batches of `batch` consecutive clips of the same length; refuse clips
/// that do not fit the autoencoder, naming them.
fn encode_clips<B: Backend>(
    vae: &VideoVae<B>,
    cfg: &VaeConfig,
    clips: &[Clip],
    batch: usize,
    device: &B::Device,
) -> Result<Vec<Clip>> {
    let mut out = Vec::with_capacity(clips.len());
    let mut i = 0;
    while i < clips.len() {
        let shape = clips[i].shape;
        let latent = cfg
            .latent_shape(shape)
            .map_err(|e| TrainError::Config(format!("clip {}: {e}", clips[i].id)))?;
        if (clips[i].actions.is_some() || clips[i].action_values.is_some())
            && cfg.temporal_down != 1
        {
            return Err(TrainError::Config(format!(
                "clip {} has per-frame actions, and vae.temporal_down = {} would merge {0} frames' actions into one latent frame: use an autoencoder with temporal_down = 1 for world-model data",
                clips[i].id, cfg.temporal_down
            )));
        }
        let mut j = i;
        while j < clips.len() && j - i < batch.max(1) && clips[j].shape == shape {
            j += 1;
        }
        let v: Vec<f32> = clips[i..j]
            .iter()
            .flat_map(|c| c.latents.iter().copied())
            .collect();
        let [t, c, h, w] = shape;
        let x = Tensor::<B, 5>::from_data(TensorData::new(v, [j - i, t, c, h, w]), device);
        let z = vae
            .encoder
            .forward(x)
            .mean
            .into_data()
            .into_vec::<f32>()
            .expect("f32");
        let per: usize = latent.iter().product();
        for (k, clip) in clips[i..j].iter().enumerate() {
            out.push(Clip {
                shape: latent,
                latents: z[k * per..(k + 1) * per].to_vec(),
                agent_xy: clip.agent_xy.clone().filter(|_| cfg.temporal_down == 1),
                ..clip.clone()
            });
        }
        i = j;
    }
    Ok(out)
}

/// Encode `opts.from` to `opts.out` as rank `comm.rank()` of `comm.size()`
/// (every rank calls it), on the CPU.
pub fn encode(opts: &EncodeOptions, comm: &dyn Collective) -> Result<EncodeReport> {
    encode_on::<Flex>(opts, comm, &Default::default())
}

/// [`encode`] on backend `B`.
pub fn encode_on<B: Backend>(
    opts: &EncodeOptions,
    comm: &dyn Collective,
    device: &B::Device,
) -> Result<EncodeReport> {
    let (vae, cfg, _) = super::ckpt::load_vae::<B>(&opts.vae, !opts.online, device)?;
    let units = units(opts)?;
    let existing = store::parquet_names(&opts.out)?;
    if let Some(first) = existing.first() {
        return Err(TrainError::Config(format!(
            "--out {} already holds {} Parquet files ({first}, ...): choose an empty location, or remove them",
            opts.out,
            existing.len()
        )));
    }
    let (rank, n) = (comm.rank(), comm.size());
    let start = Instant::now();
    let mut mine: Vec<(usize, Vec<Clip>, Option<DatasetMeta>)> = Vec::new();
    // Two f32 (high and low parts) per f64 sum, per unit: each rank fills
    // its units' slots and leaves the rest 0, so the all_reduce sum is
    // exact and every rank gets every unit's sums.
    let mut slots = vec![0f32; units.len() * Sums::LEN * 2];
    let mut own_frames = 0;
    for (u, unit) in units.iter().enumerate().filter(|(u, _)| u % n == rank) {
        let (clips, meta) = read_unit(opts, unit)?;
        own_frames += clips.iter().map(|c| c.shape[0]).sum::<usize>();
        let latents = encode_clips(&vae, &cfg, &clips, opts.batch, device)?;
        let mut s = Sums::default();
        for c in &latents {
            s.count += c.latents.len() as f64;
            for &v in &c.latents {
                s.sum += v as f64;
                s.sum_sq += (v as f64) * (v as f64);
            }
            s.actions = s.actions.max(
                c.actions
                    .iter()
                    .flatten()
                    .max()
                    .map_or(0.0, |&a| a as f64 + 1.0),
            );
            s.classes = s.classes.max(c.label.map_or(0.0, |l| l as f64 + 1.0));
        }
        for (k, v) in s.to_array().into_iter().enumerate() {
            let hi = v as f32;
            slots[(u * Sums::LEN + k) * 2] = hi;
            slots[(u * Sums::LEN + k) * 2 + 1] = (v - hi as f64) as f32;
        }
        mine.push((u, latents, meta));
    }
    comm.all_reduce_sum(&mut slots)?;
    let value = |u: usize, k: usize| {
        slots[(u * Sums::LEN + k) * 2] as f64 + slots[(u * Sums::LEN + k) * 2 + 1] as f64
    };
    let (mut count, mut sum, mut sum_sq, mut actions, mut classes) =
        (0.0, 0.0, 0.0, 0.0f64, 0.0f64);
    for u in 0..units.len() {
        count += value(u, 0);
        sum += value(u, 1);
        sum_sq += value(u, 2);
        actions = actions.max(value(u, 3));
        classes = classes.max(value(u, 4));
    }
    let shift = sum / count.max(1.0);
    let var = (sum_sq / count.max(1.0) - shift * shift).max(0.0);
    if !(var > 0.0 && var.is_finite()) {
        return Err(TrainError::Config(format!(
            "the latents of {} have variance {var}: the autoencoder at {} maps every clip alike (trained?)",
            opts.from,
            opts.vae.display()
        )));
    }
    let scale = 1.0 / var.sqrt();
    let mut latent_shape = [0; 4];
    for (u, latents, meta) in &mine {
        let meta = DatasetMeta {
            scale,
            shift,
            num_actions: meta.as_ref().map_or(actions as usize, |m| m.num_actions),
            num_classes: meta.as_ref().map_or(classes as usize, |m| m.num_classes),
            action_dim: latents
                .iter()
                .find_map(|c| c.action_values.as_ref().map(|v| v.len() / c.shape[0]))
                .unwrap_or(0),
            generator: meta
                .as_ref()
                .and_then(|m| m.generator.clone())
                .filter(|_| cfg.temporal_down == 1),
        };
        if let Some(first) = latents.first() {
            latent_shape = first.shape;
        }
        store::write_named(&opts.out, &format!("part-{u:05}.parquet"), latents, &meta)?;
    }
    comm.barrier()?;
    let mut totals = [
        mine.iter().map(|(_, l, _)| l.len()).sum::<usize>() as f32,
        own_frames as f32,
    ];
    comm.all_reduce_sum(&mut totals)?;
    Ok(EncodeReport {
        clips: totals[0] as usize,
        frames: totals[1] as usize,
        files: units.len(),
        shift,
        scale,
        latent_shape,
        seconds: start.elapsed().as_secs_f64(),
        own_frames,
    })
}
