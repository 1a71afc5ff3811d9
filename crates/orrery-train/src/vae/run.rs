//! `orrery vae train`: the autoencoder's loop, on one process or as DDP
//! ranks, with what a DiT run has: the deterministic loader and its cursor,
//! checkpoints with exact resume (the run directory's rules), EMA, a
//! signal stops it with a checkpoint, metrics.jsonl and TensorBoard
//! (scalars, and reconstruction strips of held-out clips: real frames above
//! decoded ones). Letters: b batch, t frames, c channels, h/w size.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use orrery_data::{Clip, Dataset, Loader};
use orrery_dist::{connect, Collective, World};
use orrery_model::named::{map_named, to_host};
use orrery_parallel::ddp::broadcast_from_rank0;
use orrery_parallel::optim::{AdamW, Ema};
use orrery_vae::VideoVae;
use serde::Serialize;

use super::scores::{score, ReconScores};
use super::step::{VaeRun, VaeStepOut};
use crate::config::VaeTrainConfig;
use crate::media::{grid, Rgb};
use crate::rundir::{start_checkpoint, RunOptions};
use crate::tensorboard::EventWriter;
use crate::{io, Result, TrainError};

/// What a finished autoencoder run reports.
#[derive(Debug, Clone)]
pub struct VaeSummary {
    /// Step the run started at (non-zero when resumed).
    pub start_step: u64,
    /// Steps at the end.
    pub end_step: u64,
    /// Held-out reconstruction scores of the EMA weights at the end.
    pub heldout_ema: ReconScores,
    /// The same for the online weights.
    pub heldout: ReconScores,
    /// This process's rank.
    pub rank: usize,
    /// Mean seconds per step of this run.
    pub seconds_per_step: f64,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// A signal stopped the run: its number (0 when another rank got it).
    pub stopped_by: Option<i32>,
}

/// Train an autoencoder on the backend `cfg.run.device` names.
pub fn train_vae(cfg: VaeTrainConfig, opts: RunOptions) -> Result<VaeSummary> {
    orrery_parallel::with_backend!(cfg.run, |AB, device| train_vae_on::<AB>(cfg, opts, device))
}

/// Train on backend `B` (autodiff) and device.
pub fn train_vae_on<B: AutodiffBackend>(
    cfg: VaeTrainConfig,
    opts: RunOptions,
    device: B::Device,
) -> Result<VaeSummary> {
    let world = World::from_env()?;
    if !cfg.data.global_batch.is_multiple_of(world.size) {
        return Err(TrainError::Config(format!(
            "data.global_batch = {} does not split over {} ranks: make it a multiple of {}",
            cfg.data.global_batch, world.size, world.size
        )));
    }
    let timeout = Duration::from_secs_f64(cfg.parallel.timeout_s);
    let comm = connect(&world, timeout, Some(opts.run_dir.join("heartbeats")))?;
    let result = ranks::<B>(cfg, opts, device, world, comm.as_ref());
    orrery_dist::abort_on_error(comm.as_ref(), result)
}

/// The pixel clips, checked against the autoencoder.
fn open(cfg: &VaeTrainConfig) -> Result<Dataset> {
    let data = Dataset::open_with(&cfg.data.url, cfg.data.holdout_clips, cfg.data.max_bad_rows)?;
    let [c, h, w] = data.frame_shape();
    cfg.vae
        .latent_shape([cfg.train.frames, c, h, w])
        .map_err(|e| TrainError::Config(format!("{}: {e}", cfg.data.url)))?;
    if let Some(short) = data
        .holdout
        .iter()
        .find(|clip| clip.shape[0] < cfg.train.frames)
    {
        return Err(TrainError::Config(format!(
            "held-out clip {} has {} frames, fewer than train.frames = {}",
            short.id, short.shape[0], cfg.train.frames
        )));
    }
    Ok(data)
}

/// A new run: weights from the seed (then rank 0's, to be sure), fresh
/// AdamW states and the EMA at the weights.
fn fresh<B: AutodiffBackend>(
    cfg: &VaeTrainConfig,
    comm: &dyn Collective,
    device: &B::Device,
) -> Result<VaeRun<B>> {
    B::seed(device, cfg.run.seed);
    let bad = |e: orrery_vae::VaeError| TrainError::Config(e.to_string());
    let vae = same_on_all(cfg.vae.init::<B>(device).map_err(bad)?, comm, device)?;
    let disc = match cfg.train.has_disc() {
        true => Some(same_on_all(
            cfg.train
                .disc()
                .init::<B>(cfg.vae.channels, device)
                .map_err(bad)?,
            comm,
            device,
        )?),
        false => None,
    };
    let ema = Ema::new(
        to_host(&vae)
            .into_iter()
            .map(|(n, t)| (n, t.to_flat::<B::InnerBackend>(device)))
            .collect(),
    );
    Ok(VaeRun {
        vae,
        disc,
        optim: AdamW::default(),
        disc_optim: AdamW::default(),
        ema,
        step: 0,
    })
}

/// Parameters of a module, from its layout (no copy of the weights).
fn count<B: Backend, M: burn::module::Module<B>>(m: &M) -> usize {
    super::ckpt::shapes(m)
        .values()
        .map(|s| s.iter().product::<usize>())
        .sum()
}

/// `m` with rank 0's weights (drawn now: burn draws lazily).
fn same_on_all<B: AutodiffBackend, M: burn::module::AutodiffModule<B>>(
    m: M,
    comm: &dyn Collective,
    device: &B::Device,
) -> Result<M> {
    let mut w: std::collections::BTreeMap<String, Tensor<B::InnerBackend, 1>> = to_host(&m)
        .into_iter()
        .map(|(n, t)| (n, t.to_flat(device)))
        .collect();
    broadcast_from_rank0(comm, &mut w)?;
    Ok(map_named(m, |name, _, _| {
        Tensor::from_inner(w[name].clone())
    }))
}

/// The first `frames` frames of each clip, as one batch.
///
/// # Shapes
/// -> [clips, frames, c, h, w]
fn first_frames<B: Backend>(clips: &[&Clip], frames: usize, device: &B::Device) -> Tensor<B, 5> {
    let [_, c, h, w] = clips[0].shape;
    let len = frames * c * h * w;
    let v: Vec<f32> = clips
        .iter()
        .flat_map(|clip| clip.latents[..len].iter().copied())
        .collect();
    Tensor::from_data(TensorData::new(v, [clips.len(), frames, c, h, w]), device)
}

/// Encode (posterior mean) and decode `clips`' first `frames` frames, a
/// few clips at a time: (real, decoded), both [n, t, c, h, w] row-major.
pub fn reconstruct<B: Backend>(
    vae: &VideoVae<B>,
    clips: &[&Clip],
    frames: usize,
    device: &B::Device,
) -> (Vec<f32>, Vec<f32>) {
    let (mut real, mut decoded) = (Vec::new(), Vec::new());
    for chunk in clips.chunks(8) {
        let x = first_frames::<B>(chunk, frames, device);
        let y = vae.decoder.forward(vae.encoder.forward(x.clone()).mean);
        real.extend(x.into_data().into_vec::<f32>().expect("f32"));
        decoded.extend(y.into_data().into_vec::<f32>().expect("f32"));
    }
    (real, decoded)
}

/// Frames of each held-out clip that the scores and strips use: as many as
/// the shortest held-out clip has, up to 16 (so that encoding whole clips,
/// as `orrery encode` does, is what is measured), cut to 1 + 4k with
/// temporal downsampling.
fn eval_frames(cfg: &VaeTrainConfig, data: &Dataset) -> usize {
    let shortest = data.holdout.iter().map(|c| c.shape[0]).min().unwrap_or(1);
    (1..=shortest.min(16))
        .rev()
        .find(|&t| cfg.vae.latent_frames(t).is_some())
        .unwrap_or(1)
}

/// Held-out scores of `vae` (inner backend, no graph).
fn heldout_scores<B: Backend>(
    vae: &VideoVae<B>,
    cfg: &VaeTrainConfig,
    data: &Dataset,
    device: &B::Device,
) -> ReconScores {
    let clips: Vec<&Clip> = data.holdout.iter().collect();
    if clips.is_empty() {
        return ReconScores::default();
    }
    let (real, decoded) = reconstruct(vae, &clips, eval_frames(cfg, data), device);
    let [_, c, h, w] = clips[0].shape;
    score(&real, &decoded, [c, h, w], cfg.vae.spatial_down)
}

/// The EMA weights as an autoencoder.
fn ema_vae<B: AutodiffBackend>(run: &VaeRun<B>) -> VideoVae<B::InnerBackend> {
    map_named(run.vae.valid(), |name, _, _| run.ema.weights[name].clone())
}

/// A strip per held-out clip: its real frames in a row above the decoded ones.
fn strips<B: Backend>(
    vae: &VideoVae<B>,
    cfg: &VaeTrainConfig,
    data: &Dataset,
    device: &B::Device,
) -> Option<Rgb> {
    let clips: Vec<&Clip> = data.holdout.iter().take(cfg.train.strip_clips).collect();
    if clips.is_empty() {
        return None;
    }
    let t = eval_frames(cfg, data).min(8);
    let (real, decoded) = reconstruct(vae, &clips, t, device);
    let [_, c, h, w] = clips[0].shape;
    let len = c * h * w;
    let scale = (128 / h.max(w)).clamp(1, 4);
    let mut rows = Vec::new();
    for (i, _) in clips.iter().enumerate() {
        let frames = |v: &[f32]| -> Vec<Rgb> {
            (0..t)
                .map(|f| Rgb::from_frame(&v[(i * t + f) * len..(i * t + f + 1) * len], h, w, scale))
                .collect()
        };
        rows.push(grid(&[frames(&real), frames(&decoded)].concat(), t, 1));
    }
    Some(grid(&rows, 1, 4))
}

/// One logged line of metrics.jsonl (and TensorBoard's scalars).
#[derive(Serialize, Default)]
struct VaeLine {
    step: u64,
    #[serde(flatten)]
    out: Option<VaeStepOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step_time_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heldout: Option<ReconScores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heldout_ema: Option<ReconScores>,
}

/// metrics.jsonl and TensorBoard, on rank 0.
struct Records {
    dir: PathBuf,
    tb: EventWriter,
    metrics: std::fs::File,
}

impl Records {
    fn open(run_dir: &Path, step: u64) -> Result<Self> {
        let tb = EventWriter::create(&run_dir.join("tensorboard")).map_err(io(run_dir))?;
        let keep = |s: u64| step > 0 && s <= step;
        let metrics = crate::runlog::keep_lines(&run_dir.join("metrics.jsonl"), keep)?;
        Ok(Self {
            dir: run_dir.to_path_buf(),
            tb,
            metrics,
        })
    }

    fn log(&mut self, line: &VaeLine) -> Result<()> {
        let text = serde_json::to_string(line).expect("a line serializes");
        writeln!(self.metrics, "{text}").map_err(io(&self.dir))?;
        let mut scalars: Vec<(String, f64)> = Vec::new();
        if let Some(o) = &line.out {
            scalars.extend(
                [
                    ("vae/loss", o.loss),
                    ("vae/reconstruction", o.reconstruction),
                    ("vae/kl", o.kl),
                    ("vae/adversarial", o.adversarial),
                    ("vae/adversarial_weight", o.adversarial_weight),
                    ("vae/disc_loss", o.disc_loss),
                    ("train/grad_norm", o.grad_norm),
                    ("train/lr", o.lr),
                ]
                .map(|(k, v)| (k.to_string(), v)),
            );
        }
        if let Some(s) = line.step_time_s {
            scalars.push(("train/step_time_s".into(), s));
        }
        for (prefix, scores) in [
            ("heldout", &line.heldout),
            ("heldout_ema", &line.heldout_ema),
        ] {
            if let Some(s) = scores {
                scalars.extend(
                    [
                        ("psnr_db", s.psnr_db),
                        ("ssim", s.ssim),
                        ("blur_psnr_db", s.blur_psnr_db),
                        ("sharpness", s.sharpness()),
                    ]
                    .map(|(k, v)| (format!("{prefix}/{k}"), v)),
                );
            }
        }
        for (tag, v) in scalars {
            self.tb.scalar(&tag, line.step, v).map_err(io(&self.dir))?;
        }
        self.tb.flush().map_err(io(&self.dir))
    }

    fn image(&mut self, step: u64, img: Rgb) -> Result<()> {
        let (h, w) = (img.height, img.width);
        self.tb
            .image_png(
                "reconstructions (real above decoded)",
                step,
                img.to_png()?,
                h,
                w,
            )
            .map_err(io(&self.dir))
    }
}

fn ranks<B: AutodiffBackend>(
    cfg: VaeTrainConfig,
    opts: RunOptions,
    device: B::Device,
    world: World,
    comm: &dyn Collective,
) -> Result<VaeSummary> {
    let main = world.is_main();
    let say = |m: String| {
        if main {
            eprintln!("{m}");
        }
    };
    let from = start_checkpoint(&opts, main, comm)?;
    let data = open(&cfg)?;
    let mut run = fresh::<B>(&cfg, comm, &device)?;
    let (mut cursor, mut skipped) = (Default::default(), 0);
    if let Some(dir) = &from {
        let state = super::ckpt::restore(&mut run, &cfg, dir, &device)?;
        (cursor, skipped) = (state.cursor, state.skipped_steps);
    }
    let share = (world.rank, world.size);
    let mut loader = Loader::new(
        &data.train,
        cfg.run.seed,
        cfg.data.global_batch,
        cfg.train.frames,
        share,
        cursor,
    )?;
    let mut records = if main {
        Some(Records::open(&opts.run_dir, run.step)?)
    } else {
        None
    };
    let start_step = run.step;
    say(format!(
        "training an autoencoder ({} parameters{}) on {} clips ({} held out, {} too short) of {:?}, {} steps from step {start_step}",
        count(&run.vae),
        match &run.disc {
            Some(d) => format!(", discriminator {} from step {}", count(d), cfg.train.disc_start),
            None => String::new(),
        },
        data.train.len() - loader.skipped_short,
        data.holdout.len(),
        loader.skipped_short,
        data.frame_shape(),
        cfg.run.steps,
    ));
    let stop_at = opts
        .stop_after
        .map_or(cfg.run.steps, |n| (start_step + n).min(cfg.run.steps));
    let ckpt_dir = opts.run_dir.join("checkpoints");
    let mut last_ckpt = from.clone().unwrap_or_default();
    let (mut stopped, run_start, mut window) = (None, Instant::now(), Instant::now());
    let mut steps_in_window = 0u64;
    let mut last_scores = None;
    while run.step < stop_at {
        let batch = loader.next_batch();
        let x = Tensor::<B, 5>::from_data(TensorData::new(batch.latents, batch.dims), &device);
        let out = run.step(&cfg, x, &batch.sample_ids, comm)?;
        steps_in_window += 1;
        let step = run.step;
        if out.skipped {
            skipped += 1;
            say(format!(
                "step {step} skipped: loss {} gradient norm {} (not finite); nothing was updated",
                out.loss, out.grad_norm
            ));
            if skipped >= cfg.run.max_skipped_steps {
                return Err(TrainError::Config(format!(
                    "{skipped} steps skipped for a non-finite loss (run.max_skipped_steps = {}): lower optim.lr or check the data",
                    cfg.run.max_skipped_steps
                )));
            }
        }
        if step < stop_at {
            stopped = opts.stop.agreed(comm)?;
        }
        let last = step == stop_at || stopped.is_some();
        let mut line = VaeLine {
            step,
            ..Default::default()
        };
        if step % cfg.logging.every == 0 || last {
            line.out = Some(out);
            line.step_time_s = Some(window.elapsed().as_secs_f64() / steps_in_window as f64);
            (window, steps_in_window) = (Instant::now(), 0);
        }
        if main && (step % cfg.logging.eval_every == 0 || last) {
            let online = run.vae.valid();
            line.heldout = Some(heldout_scores(&online, &cfg, &data, &device));
            if last {
                line.heldout_ema = Some(heldout_scores(&ema_vae(&run), &cfg, &data, &device));
            }
            if let (Some(r), Some(img)) = (records.as_mut(), strips(&online, &cfg, &data, &device))
            {
                r.image(step, img)?;
            }
        }
        if let (Some(online), Some(ema)) = (line.heldout, line.heldout_ema) {
            last_scores = Some((online, ema));
        }
        if line.out.is_some() || line.heldout.is_some() {
            if let Some(r) = records.as_mut() {
                r.log(&line)?;
            }
            if let Some(o) = line.out {
                let held = line.heldout.map_or(String::new(), |h| {
                    format!(
                        "  held-out PSNR {:.2} dB (blurred {:.2}) SSIM {:.3} sharpness {:.2}",
                        h.psnr_db,
                        h.blur_psnr_db,
                        h.ssim,
                        h.sharpness()
                    )
                });
                say(format!(
                    "step {step:>6}  loss {:.4}  rec {:.4}  kl {:.3}  adv {:+.3} x {:.3}  disc {:.3}  grad_norm {:.3}{held}",
                    o.loss, o.reconstruction, o.kl, o.adversarial, o.adversarial_weight, o.disc_loss, o.grad_norm
                ));
            }
        }
        if step % cfg.checkpoint.every == 0 || last {
            last_ckpt = super::ckpt::save(
                &run,
                &cfg,
                (loader.cursor(), skipped, world.size),
                &ckpt_dir,
                main,
            )?;
        }
        if stopped.is_some() {
            break;
        }
    }
    comm.barrier()?;
    // The last step's scores, or (no step was left to take) scored now.
    let (heldout, heldout_ema) = match (main, last_scores) {
        (true, Some(scores)) => scores,
        (true, None) => (
            heldout_scores(&run.vae.valid(), &cfg, &data, &device),
            heldout_scores(&ema_vae(&run), &cfg, &data, &device),
        ),
        (false, _) => Default::default(),
    };
    Ok(VaeSummary {
        start_step,
        end_step: run.step,
        heldout,
        heldout_ema,
        rank: world.rank,
        seconds_per_step: run_start.elapsed().as_secs_f64() / (run.step - start_step).max(1) as f64,
        checkpoint: last_ckpt,
        stopped_by: stopped,
    })
}
