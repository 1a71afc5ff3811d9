//! `orrery sample`. World models (with actions): roll out frames
//! autoregressively from held-out context frames and their actions, write a
//! GIF and a PNG strip, and score the frames against the real ones and
//! copying the last context frame (scores.rs; on the synthetic sprite
//! world also the agent's position, agent_scores.rs). Other models:
//! generate from noise (generate.rs).
//! Letters: b clips, k context frames, m generated frames, c/h/w frame size.
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use orrery_data::Clip;
use orrery_diffusion::sample::{rollout, RolloutConfig, Sampler, SamplerConfig};
use orrery_model::named::load_host;
use orrery_model::ModelBackend;
use serde::Serialize;

use crate::agent_scores::{self, AgentScores};
use crate::checkpoint::{self, read_safetensors, EMA_FILE, MODEL_FILE};
use crate::glue::denoiser;
use crate::media::{grid, write_gif, Rgb};
use crate::scores::{score_frames, PixelScores};
use crate::tensorboard::EventWriter;
use crate::{Result, TrainError};

/// Options of `orrery sample`.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Run, checkpoints/ or checkpoint directory.
    pub checkpoint: PathBuf,
    /// Output file: .gif (also writes a .png strip beside it) or .png.
    pub out: PathBuf,
    /// Frames to generate (default: the run's sample.frames).
    pub frames: Option<usize>,
    /// Sampler steps per frame (default: the run's sample.steps).
    pub steps: Option<usize>,
    /// Sampler (default: the run's sample.sampler).
    pub sampler: Option<Sampler>,
    /// Guidance scale (default: the run's sample.guidance).
    pub guidance: Option<f64>,
    /// Samples per class, or in all for unconditional models (default:
    /// the run's sample.clips). Models without actions only.
    pub per_class: Option<usize>,
    /// Seed of the sampling noise.
    pub seed: u64,
    /// Use the online weights instead of the EMA.
    pub no_ema: bool,
    /// DDIM's eta, for a DDIM sampler (from --sampler or the run's).
    pub eta: Option<f64>,
    /// World models: also write the real and generated clips here
    /// (.safetensors), to score with other tools.
    pub save_frames: Option<PathBuf>,
}

/// The run's sampler settings with the command line's overrides.
fn sampler_config(
    cfg: &crate::config::TrainConfig,
    opts: &SampleOptions,
    dims: [usize; 5],
) -> Result<SamplerConfig> {
    let mut sampler = opts.sampler.unwrap_or(cfg.sample.sampler);
    if let Some(eta) = opts.eta {
        match &mut sampler {
            Sampler::Ddim { eta: e } => *e = eta,
            other => {
                return Err(TrainError::Config(format!(
                    "--eta is DDIM's noise level: use it with --sampler ddim (this run samples with {other:?}), or leave it out"
                )))
            }
        }
    }
    sampler
        .validate()
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let guidance = opts.guidance.unwrap_or(cfg.sample.guidance);
    if !(guidance.is_finite() && guidance >= 0.0) {
        return Err(TrainError::Config(format!(
            "--guidance {guidance} must be >= 0 (1 = no guidance)"
        )));
    }
    Ok(SamplerConfig {
        sampler,
        steps: opts.steps.unwrap_or(cfg.sample.steps),
        guidance,
        shift: cfg.objective.shift_alpha(dims),
        param: cfg.objective.parameterization(),
    })
}

/// What `orrery sample` did.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SampleReport {
    /// A world-model rollout.
    Rollout(RolloutReport),
    /// Samples from noise.
    Generate(crate::generate::GenerateReport),
}

/// Scores of a rollout (rollout.json: every number at the top level, as
/// sweeps' reports read them).
#[derive(Debug, Clone, Serialize)]
pub struct RolloutReport {
    /// Clips rolled out.
    pub clips: usize,
    /// Context frames per clip.
    pub context: usize,
    /// Frames generated per clip.
    pub frames: usize,
    /// PSNR, SSIM and changed-pixel PSNR against copying the last context
    /// frame: every kind of data.
    #[serde(flatten)]
    pub pixels: PixelScores,
    /// The sprite world's agent scores: only data `orrery data synth` made.
    #[serde(flatten)]
    pub agent: Option<AgentScores>,
    /// Where the GIF / PNG (and the saved frames) went.
    pub outputs: Vec<PathBuf>,
}

/// Roll out (world models) or generate from (other models) a checkpoint on
/// the run's device and write pictures.
pub fn sample(opts: &SampleOptions) -> Result<SampleReport> {
    check_options(opts)?;
    let dir = checkpoint::resolve(&opts.checkpoint)?;
    let state = checkpoint::load_state(&dir)?;
    orrery_parallel::with_backend!(state.config.run, |AB, device| sample_on::<
        <AB as burn::tensor::backend::AutodiffBackend>::InnerBackend,
    >(
        opts, &dir, &state, device
    ))
}

/// Pictures shown per output: the first clips of the rollout.
pub const SHOWN_CLIPS: usize = 4;

/// The checks that need no checkpoint: the output's kind and place, and
/// counts that must be positive. Done before anything runs, so that a typo
/// does not cost a whole rollout.
fn check_options(opts: &SampleOptions) -> Result<()> {
    let ext = opts
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if !matches!(ext.as_deref(), Some("gif" | "png")) {
        return Err(TrainError::Config(format!(
            "--out {}: orrery sample writes a .gif (animated, with a .png strip beside it) or a .png; name the file with one of those extensions",
            opts.out.display()
        )));
    }
    if opts.frames == Some(0) {
        return Err(TrainError::Config(
            "--frames 0: generate at least 1 frame after the context".into(),
        ));
    }
    if opts.steps == Some(0) {
        return Err(TrainError::Config(
            "--steps 0: the sampler needs at least 1 step per frame".into(),
        ));
    }
    if opts.per_class == Some(0) {
        return Err(TrainError::Config("--per-class must be at least 1".into()));
    }
    crate::paths::output_file(&opts.out, "--out")?;
    if let Some(path) = &opts.save_frames {
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(TrainError::Config(format!(
                "--save-frames {}: the clips are written as safetensors; name the file FILE.safetensors",
                path.display()
            )));
        }
        crate::paths::output_file(path, "--save-frames")?;
    }
    for beside in ["png", "json", "safetensors"] {
        let p = opts.out.with_extension(beside);
        if p != opts.out {
            crate::paths::output_file(&p, "--out (the file beside it)")?;
        }
    }
    Ok(())
}

fn sample_on<B: ModelBackend>(
    opts: &SampleOptions,
    dir: &Path,
    state: &checkpoint::TrainerState,
    device: B::Device,
) -> Result<SampleReport> {
    let cfg = &state.config;
    let weights = read_safetensors(&dir.join(if opts.no_ema { MODEL_FILE } else { EMA_FILE }))?;
    let model = load_host(cfg.model.init::<B>(&device)?, &weights, &device)?;
    let m = &cfg.model;
    if !m.has_actions() {
        if opts.save_frames.is_some() {
            return Err(TrainError::Config(
                "--save-frames writes a world model's rollout next to the real clips; this model has no actions and generates from noise: leave --save-frames out".into(),
            ));
        }
        return generate(opts, state, &model, &device);
    }
    if opts.per_class.is_some() {
        return Err(TrainError::Config(
            "--per-class is for models without actions; a world model rolls out held-out clips (use --frames)".into(),
        ));
    }
    // With data.streaming the held-out clips are read alone (the index's last rows).
    let (data, _) = crate::feed::open_data(&cfg, &orrery_dist::World::single())?;
    let (k, m) = (cfg.sample.context, opts.frames.unwrap_or(cfg.sample.frames));
    let clips: Vec<&Clip> = data
        .holdout
        .iter()
        .filter(|c| c.shape[0] >= k + m)
        .take(cfg.sample.clips)
        .collect();
    if clips.is_empty() {
        let longest = data.holdout.iter().map(|c| c.shape[0]).max().unwrap_or(0);
        return Err(TrainError::Config(format!(
            "no held-out clip has {} frames (context {k} + {m} generated); the longest has {longest}: use --frames {}",
            k + m,
            longest.saturating_sub(k)
        )));
    }

    let [_, c, h, w] = clips[0].shape;
    let (b, frame_len) = (clips.len(), c * h * w);
    let context: Vec<f32> = clips
        .iter()
        .flat_map(|cl| cl.latents[..k * frame_len].iter().copied())
        .collect();
    // The first k + m frames' actions of the same clips, ids or vectors.
    let host = crate::eval::heldout_batch(&data, k + m, cfg.sample.clips);
    let on_device = crate::glue::to_device::<B>(&host, &cfg.model, &device);
    let Some(actions) = on_device.actions else {
        return Err(TrainError::Config(format!(
            "{} has no actions of the kind the model takes (action_ids for model.num_actions, actions for model.action_dim): rollouts need per-frame actions",
            cfg.data.url
        )));
    };
    let rcfg = RolloutConfig {
        window: cfg.model.frames,
        context_noise: cfg.objective.context_noise,
        residual: cfg.objective.residual,
        sampler: sampler_config(cfg, opts, [b, cfg.model.frames, c, h, w])?,
    };
    eprintln!(
        "rolling out {b} held-out clips: {k} context frames, {m} generated, {} {:?} steps each, guidance {}",
        rcfg.sampler.steps, rcfg.sampler.sampler, rcfg.sampler.guidance
    );
    let generated = rollout(
        &denoiser(&model),
        Tensor::<B, 5>::from_data(TensorData::new(context, [b, k, c, h, w]), &device),
        orrery_diffusion::Cond {
            actions: Some(actions),
            labels: on_device.labels,
        },
        &rcfg,
        &mut orrery_diffusion::sample_rng(opts.seed, u64::MAX, 0),
    )?;
    let generated: Vec<f32> = generated
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32");
    // Latents (data.vae): decode the real clips and the rollouts to frames.
    let decoded = match cfg.data.vae.as_str() {
        "" => None,
        vae => {
            eprintln!("decoding the latents with the autoencoder {vae} (data.vae)");
            Some(crate::vae::decode::decode_rollout(
                vae.as_ref(),
                &data.meta,
                &clips,
                (k, m),
                &generated,
            )?)
        }
    };
    let (clips, generated, [c, h, w]) = match &decoded {
        None => (clips, &generated, [c, h, w]),
        Some(d) => (d.clips.iter().collect(), &d.generated, d.frame),
    };
    let frame_len = c * h * w;
    let gen_frame =
        |i: usize, j: usize| &generated[(i * m + j) * frame_len..(i * m + j + 1) * frame_len];
    let pixels = score_frames((b, k, m), [c, h, w], |i, f| clips[i].frame(f), gen_frame);
    let agent = agent_scores::applies(&data.meta, &clips)
        .then(|| agent_scores::score(&clips, k, m, c, h, w, gen_frame));
    let (mut outputs, strip) = write_pictures(&opts.out, &clips, k, m, (h, w), gen_frame)?;
    if let Some(path) = &opts.save_frames {
        save_frames(path, &clips, (k, m), generated, &host)?;
        outputs.push(path.clone());
    }
    let report = RolloutReport {
        clips: b,
        context: k,
        frames: m,
        pixels,
        agent,
        outputs,
    };
    add_to_tensorboard(dir, state.step, &strip, &report)?;
    Ok(SampleReport::Rollout(report))
}

/// Models without actions: generate from noise, per class or unconditionally.
fn generate<B: ModelBackend>(
    opts: &SampleOptions,
    state: &checkpoint::TrainerState,
    model: &orrery_model::Dit<B>,
    device: &B::Device,
) -> Result<SampleReport> {
    let (cfg, m) = (&state.config, &state.config.model);
    if opts.frames.is_some() {
        return Err(TrainError::Config(format!(
            "--frames is for world models, which roll out frames after a context; this model has no actions and generates whole samples of model.frames = {} frames: leave --frames out",
            m.frames
        )));
    }
    let dims = [1, m.frames, m.channels, m.height, m.width];
    let sampler = sampler_config(cfg, opts, dims)?;
    let report = crate::generate::generate_samples(
        &crate::generate::GenerateOptions {
            out: &opts.out,
            per_class: opts.per_class,
            seed: opts.seed,
        },
        state,
        model,
        sampler,
        device,
    )?;
    Ok(SampleReport::Generate(report))
}

/// A checkpoint inside a run directory: add the rollout's picture and
/// scores to the run's TensorBoard, at the checkpoint's step.
fn add_to_tensorboard(dir: &Path, step: u64, strip: &Rgb, report: &RolloutReport) -> Result<()> {
    let tb_dir = dir
        .parent()
        .and_then(Path::parent)
        .map(|run| run.join("tensorboard"))
        .filter(|d| d.is_dir());
    if let Some(tb_dir) = tb_dir {
        let io = |e| crate::io(&tb_dir)(e);
        let mut tb = EventWriter::create(&tb_dir).map_err(io)?;
        tb.image_png(
            "rollout/real_above_generated",
            step,
            strip.to_png()?,
            strip.height,
            strip.width,
        )
        .map_err(io)?;
        let p = &report.pixels;
        let mut scalars = vec![
            ("rollout/psnr_db", Some(p.psnr_db)),
            ("rollout/psnr_copy_last_db", Some(p.psnr_copy_last_db)),
            ("rollout/ssim", p.ssim),
            ("rollout/ssim_copy_last", p.ssim_copy_last),
            ("rollout/changed_psnr_db", p.changed_psnr_db),
            (
                "rollout/changed_psnr_copy_last_db",
                p.changed_psnr_copy_last_db,
            ),
        ];
        if let Some(a) = &report.agent {
            scalars.push(("rollout/agent_error_px", Some(a.agent_error_px)));
            scalars.push((
                "rollout/agent_error_copy_last_px",
                Some(a.agent_error_copy_last_px),
            ));
        }
        for (tag, value) in scalars {
            if let Some(v) = value {
                tb.scalar(tag, step, v).map_err(io)?;
            }
        }
        tb.flush().map_err(io)?;
    }
    Ok(())
}

fn write_pictures<'a>(
    out: &Path,
    clips: &[&Clip],
    k: usize,
    m: usize,
    (h, w): (usize, usize),
    gen_frame: impl Fn(usize, usize) -> &'a [f32],
) -> Result<(Vec<PathBuf>, Rgb)> {
    let scale = (128 / h.max(w)).max(1);
    let shown = clips.len().min(SHOWN_CLIPS);
    let real = |i: usize, f: usize| Rgb::from_frame(clips[i].frame(f), h, w, scale);
    let generated = |i: usize, f: usize| {
        if f < k {
            real(i, f)
        } else {
            Rgb::from_frame(gen_frame(i, f - k), h, w, scale)
        }
    };
    // Strip: per clip, real frames above generated ones (context frames repeat the real ones).
    let mut rows = Vec::new();
    for i in 0..shown {
        rows.extend((0..k + m).map(|f| real(i, f)));
        rows.extend((0..k + m).map(|f| generated(i, f)));
    }
    let strip = grid(&rows, k + m, 2);
    let png_path = out.with_extension("png");
    if let Some(parent) = png_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(crate::io(parent))?;
    }
    std::fs::write(&png_path, strip.to_png()?).map_err(crate::io(&png_path))?;
    let mut outputs = vec![png_path];
    if out.extension().is_some_and(|e| e == "gif") {
        // Animation: per clip a pair (real | generated), clips side by side.
        let frames: Vec<Rgb> = (0..k + m)
            .map(|f| {
                grid(
                    &(0..shown)
                        .flat_map(|i| [real(i, f), generated(i, f)])
                        .collect::<Vec<_>>(),
                    2 * shown,
                    2,
                )
            })
            .collect();
        write_gif(out, &frames, 40)?;
        outputs.insert(0, out.to_path_buf());
    }
    Ok((outputs, strip))
}

/// `--save-frames`: the real and generated clips as safetensors, for other
/// tools: `real` and `generated` [n, k + m, c, h, w] f32 (the generated
/// clips start with the k real context frames), the actions of those
/// frames (`action_ids` [n, k + m] i64 or `actions` [n, k + m, A] f32),
/// and the metadata `context` = k and `clip_ids` (comma-separated).
fn save_frames(
    path: &Path,
    clips: &[&Clip],
    (k, m): (usize, usize),
    generated: &[f32],
    batch: &orrery_data::Batch,
) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let [_, c, h, w] = clips[0].shape;
    let (n, frame_len) = (clips.len(), c * h * w);
    let real: Vec<f32> = clips
        .iter()
        .flat_map(|cl| cl.latents[..(k + m) * frame_len].iter().copied())
        .collect();
    let rolled: Vec<f32> = clips
        .iter()
        .enumerate()
        .flat_map(|(i, cl)| {
            let gen = &generated[i * m * frame_len..(i + 1) * m * frame_len];
            cl.latents[..k * frame_len].iter().chain(gen).copied()
        })
        .collect();
    let le = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let shape = vec![n, k + m, c, h, w];
    let mut tensors = vec![
        ("real".to_string(), Dtype::F32, shape.clone(), le(&real)),
        ("generated".to_string(), Dtype::F32, shape, le(&rolled)),
    ];
    if let Some(ids) = &batch.actions {
        let bytes = ids.iter().flat_map(|a| a.to_le_bytes()).collect();
        tensors.push(("action_ids".into(), Dtype::I64, vec![n, k + m], bytes));
    }
    if let Some(values) = &batch.action_values {
        let a = values.len() / (n * (k + m));
        tensors.push(("actions".into(), Dtype::F32, vec![n, k + m, a], le(values)));
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TrainError::Config(format!("--save-frames: {e}")))?;
    let ids: Vec<&str> = clips.iter().map(|c| c.id.as_str()).collect();
    let meta = std::collections::HashMap::from([
        ("context".to_string(), k.to_string()),
        ("clip_ids".to_string(), ids.join(",")),
    ]);
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| TrainError::Config(format!("--save-frames {}: {e}", path.display())))
}
