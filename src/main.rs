//! The orrery command line: train, data, sample, ckpt.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use orrery_diffusion::Sampler;

mod bench;
mod bench_ckpt;
mod data;
mod launch;
mod shell;
mod signals;
mod sweep;
mod sweep_slurm;
mod vae;

// mimalloc, counting tensor-sized allocations for `bench step`'s heap figures.
#[global_allocator]
static ALLOC: orrery_diagnostics::heap::CountingAlloc = orrery_diagnostics::heap::CountingAlloc;
use bench::{run_bench, BenchCommand};
use data::{run_data, DataCommand};
use launch::{run_dist, run_launch, DistCommand, LaunchArgs};
use orrery_train::checkpoint::SavePoint;
use orrery_train::sample::{sample, SampleOptions, SampleReport};
use orrery_train::{train, Resume, RunOptions, TrainConfig};

/// Train video diffusion transformers and action-conditioned world models.
#[derive(Parser)]
#[command(name = "orrery", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a TOML config.
    Train(TrainArgs),
    /// Create and check datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Roll out a trained world model from held-out context frames.
    Sample(SampleArgs),
    /// Work with checkpoints.
    #[command(subcommand)]
    Ckpt(CkptCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Start N ranks of an orrery command on this machine with mpirun:
    /// `orrery launch -n 2 -- train configs/quickstart.toml`.
    Launch(LaunchArgs),
    /// Distributed helpers.
    #[command(subcommand)]
    Dist(DistCommand),
    /// Many runs of one base config from a sweep file (docs/sweeps.md).
    #[command(subcommand)]
    Sweep(sweep::SweepCommand),
    /// Compare runs: a table of their final losses and throughput.
    Report(sweep::ReportArgs),
    /// The video autoencoder of latent diffusion's first stage.
    #[command(subcommand)]
    Vae(vae::VaeCommand),
    /// Encode pixel clips to latent Parquet with a trained autoencoder
    /// (under `orrery launch -n N`, each rank encodes its share of the files).
    Encode(vae::EncodeArgs),
    /// Print the loss weight per noise level of a config's objective.
    Weights {
        /// The experiment config (TOML).
        config: PathBuf,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Rows (equal bins of t in (0, 1)).
        #[arg(long, default_value_t = 20)]
        bins: usize,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// The experiment config (TOML).
    config: PathBuf,
    /// Override a config key, e.g. --set optim.lr=3e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory (default: runs/<run.name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// auto (latest checkpoint of the run directory, if any), never, or a path.
    #[arg(long, default_value = "auto")]
    resume: String,
    /// Stop after this many steps in this invocation, with a checkpoint (run.steps still sets the schedule).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Start afresh in a run directory that holds another run's checkpoints:
    /// that run's checkpoints and records are moved aside into
    /// <run dir>/replaced-<time>/, never deleted.
    #[arg(long)]
    overwrite: bool,
    /// Record this config key (dotted, as --set takes) as a hyperparameter
    /// in TensorBoard's HParams tab (repeatable) [default: the keys given
    /// with --set].
    #[arg(long = "hparam", value_name = "KEY")]
    hparams: Vec<String>,
    /// Tests of crash safety: kill this process (SIGKILL) when a checkpoint
    /// write reaches `tensors`, `rename` or `latest`.
    #[arg(long, hide = true, value_parser = ["tensors", "rename", "latest"])]
    debug_kill_at: Option<String>,
}

#[derive(Args)]
struct SampleArgs {
    /// Run directory, its checkpoints/ directory, or one checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output: a .gif (a .png strip is written beside it) or a .png.
    #[arg(long)]
    out: PathBuf,
    /// World models: frames to generate after the context [default: the run's sample.frames].
    #[arg(long)]
    frames: Option<usize>,
    /// Sampler steps per generated frame [default: the run's sample.steps].
    #[arg(long)]
    steps: Option<usize>,
    /// Sampler: euler, heun, ddim, ddpm or euler_maruyama [default: the run's sample.sampler].
    #[arg(long)]
    sampler: Option<String>,
    /// DDIM's eta, 0 (deterministic) to 1 (with --sampler ddim) [default: 0].
    #[arg(long)]
    eta: Option<f64>,
    /// Classifier-free guidance scale on the actions or labels (1 = none) [default: the run's sample.guidance].
    #[arg(long)]
    guidance: Option<f64>,
    /// Models without actions: samples per class (or in all, unconditional) [default: the run's sample.clips].
    #[arg(long)]
    per_class: Option<usize>,
    /// Seed of the sampling noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the online weights instead of the EMA.
    #[arg(long)]
    no_ema: bool,
    /// World models: also write the real and generated clips ([n, t, c, h, w],
    /// with their actions) to this .safetensors file, to score with other tools.
    #[arg(long, value_name = "FILE.safetensors")]
    save_frames: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CkptCommand {
    /// Write the full model weights to one safetensors file.
    Export {
        /// Run directory or checkpoint directory.
        from: PathBuf,
        /// Export the EMA weights.
        #[arg(long)]
        ema: bool,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

/// The run options of `train` and `vae train` (run directory `run_dir`),
/// with signal handlers installed.
fn run_options(args: &TrainArgs, run_dir: &std::path::Path) -> Result<RunOptions> {
    if args.overwrite && args.resume == "auto" {
        bail!("--overwrite starts a new run in place of the old one: use it with --resume never (or --resume CHECKPOINT of another run); --resume auto continues the old run");
    }
    let resume = match args.resume.as_str() {
        "auto" => Resume::Auto,
        "never" => Resume::Never,
        path => Resume::From(PathBuf::from(path)),
    };
    Ok(RunOptions {
        run_dir: run_dir.to_path_buf(),
        resume,
        stop_after: args.stop_after,
        overwrite: args.overwrite,
        stop: signals::stop_on_signals(run_dir),
        hparams: if args.hparams.is_empty() {
            args.set
                .iter()
                .filter_map(|s| s.split_once('=').map(|(k, _)| k.trim().to_string()))
                .collect()
        } else {
            args.hparams.clone()
        },
        kill_at: args.debug_kill_at.as_deref().map(|p| match p {
            "tensors" => SavePoint::Tensors,
            "rename" => SavePoint::Rename,
            _ => SavePoint::Latest,
        }),
    })
}

/// The error a run stopped by a signal ends with: every rank exits with the
/// code a scheduler requeues on, and rank 0 says why and how to continue
/// (`command`, with `--run-dir run_dir`).
fn preempted(
    sig: i32,
    stop: &orrery_train::StopRequest,
    (rank, step, steps, checkpoint): (usize, u64, u64, &std::path::Path),
    command: &str,
    run_dir: &std::path::Path,
) -> anyhow::Error {
    // Another rank's signal stopped the run; this rank's own may have come
    // since (a scheduler signals every rank).
    let sig = if sig == 0 {
        stop.requested().unwrap_or(0)
    } else {
        sig
    };
    let msg = if rank == 0 {
        format!(
            "stopped by {} after step {step} of {steps}: wrote checkpoint {}. Continue with `{command} --run-dir {}` (the default --resume auto); exit code {}",
            if sig == 0 { "a signal to another rank" } else { signals::name(sig) },
            checkpoint.display(),
            run_dir.display(),
            orrery_train::PREEMPTED_EXIT_CODE,
        )
    } else {
        String::new()
    };
    signals::Preempted(msg).into()
}

fn run_train(args: TrainArgs) -> Result<()> {
    let cfg = TrainConfig::load(&args.config, &args.set)?;
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.run.name));
    let world_model = cfg.model.has_actions();
    let steps = cfg.run.steps;
    let opts = run_options(&args, &run_dir)?;
    let stop = opts.stop.clone();
    let s = train(cfg, opts)?;
    if let Some(sig) = s.stopped_by {
        let at = (s.rank, s.end_step, steps, s.checkpoint.as_path());
        return Err(preempted(
            sig,
            &stop,
            at,
            &format!("orrery train {}", args.config.display()),
            &run_dir,
        ));
    }
    if s.rank != 0 {
        return Ok(());
    }
    if s.end_step > s.start_step {
        println!(
            "trained steps {}..{} in {:.3} s/step",
            s.start_step, s.end_step, s.seconds_per_step
        );
    } else {
        println!(
            "the run had already reached step {} (run.steps): nothing to train; raise run.steps to train on",
            s.end_step
        );
    }
    println!(
        "held-out loss: {:.4} at step {} -> {:.4} at step {} (EMA weights: {:.4})",
        s.heldout_loss_start, s.start_step, s.heldout_loss_end, s.end_step, s.heldout_loss_ema
    );
    if world_model {
        println!(
            "next-frame loss rises by {:+.4} with another clip's context and by {:+.4} with another action (about 0 = ignored)",
            s.context_gain, s.action_gain
        );
    }
    print_run_dir(&run_dir, &s.checkpoint);
    Ok(())
}

/// The last lines of a finished run: where it wrote and its last checkpoint.
fn print_run_dir(run_dir: &std::path::Path, checkpoint: &std::path::Path) {
    println!(
        "run directory: {}  (tensorboard --logdir {})",
        run_dir.display(),
        run_dir.join("tensorboard").display()
    );
    println!("checkpoint: {}", checkpoint.display());
}

fn run_sample(args: SampleArgs) -> Result<()> {
    let opts = SampleOptions {
        checkpoint: args.checkpoint,
        out: args.out,
        frames: args.frames,
        steps: args.steps,
        sampler: args
            .sampler
            .as_deref()
            .map(|name| parse_sampler(name, 0.0))
            .transpose()?,
        guidance: args.guidance,
        per_class: args.per_class,
        seed: args.seed,
        no_ema: args.no_ema,
        eta: args.eta,
        save_frames: args.save_frames,
    };
    let r = match sample(&opts)? {
        SampleReport::Rollout(r) => r,
        SampleReport::Generate(g) => {
            println!(
                "generated {} samples ({}), {} steps, guidance {}",
                g.samples,
                if g.classes > 0 {
                    format!("{} per class, {} classes", g.per_class, g.classes)
                } else {
                    "unconditional".into()
                },
                g.steps,
                g.guidance
            );
            for o in &g.outputs {
                println!("wrote {}", o.display());
            }
            return Ok(());
        }
    };
    println!(
        "rollout of {} held-out clips: {} context frames, {} generated",
        r.clips, r.context, r.frames
    );
    print_pixel_scores(&r.pixels);
    if let Some(a) = &r.agent {
        println!("agent-position error (pixels, mean over generated frames; the synthetic sprite world):");
        println!("  model                 {:>6.2}", a.agent_error_px);
        println!(
            "  copy last context     {:>6.2}",
            a.agent_error_copy_last_px
        );
        println!("  generated frames without an agent: {}", a.agent_lost);
        match a.agent_direction_accuracy {
            Some(acc) => println!(
                "  moves in the commanded direction: {:.0}% of frames where the agent moved",
                100.0 * acc
            ),
            None => println!("  the agent never moved in these frames"),
        }
        let per: Vec<String> = a
            .agent_error_by_frame
            .iter()
            .zip(&a.agent_error_copy_last_by_frame)
            .map(|(a, b)| format!("{a:.1}/{b:.1}"))
            .collect();
        println!("  per frame (model/copy): {}", per.join(" "));
    }
    let json = opts.out.with_extension("json");
    std::fs::write(&json, serde_json::to_string_pretty(&r)?)
        .with_context(|| format!("writing {}", json.display()))?;
    for o in r.outputs.iter().chain([&json]) {
        println!("wrote {}", o.display());
    }
    let shown = r.clips.min(orrery_train::sample::SHOWN_CLIPS);
    if shown < r.clips {
        println!(
            "the pictures show the first {shown} of the {} clips; the scores and {} cover all of them",
            r.clips,
            json.display()
        );
    }
    Ok(())
}

/// The rollout's scores on any data, model against copying the last
/// context frame.
fn print_pixel_scores(p: &orrery_train::scores::PixelScores) {
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!("frame scores (mean over generated frames; values in [-1, 1]):");
    println!("  {:<30} {:>7}  {:>7}", "", "model", "copy last context");
    let row = |name: &str, a: String, b: String| println!("  {name:<30} {a:>7}  {b:>7}");
    row(
        "PSNR (dB)",
        format!("{:.2}", p.psnr_db),
        format!("{:.2}", p.psnr_copy_last_db),
    );
    row("SSIM", opt(p.ssim, 3), opt(p.ssim_copy_last, 3));
    row(
        "PSNR on changed pixels (dB)",
        opt(p.changed_psnr_db, 2),
        opt(p.changed_psnr_copy_last_db, 2),
    );
    println!(
        "  ({:.1}% of pixels changed since the last context frame, by more than {})",
        100.0 * p.changed_share_by_frame.iter().sum::<f64>()
            / p.changed_share_by_frame.len().max(1) as f64,
        orrery_train::scores::CHANGED
    );
    let per: Vec<String> = p
        .model
        .psnr_by_frame
        .iter()
        .zip(&p.copy_last.psnr_by_frame)
        .map(|(a, b)| format!("{a:.1}/{b:.1}"))
        .collect();
    println!("  PSNR per frame (model/copy): {}", per.join(" "));
    println!(
        "  the model beats copying on {} of {} generated frames",
        p.frames_model_beats_copy,
        p.model.psnr_by_frame.len()
    );
}

fn parse_sampler(name: &str, eta: f64) -> Result<Sampler> {
    Ok(match name {
        "euler" => Sampler::Euler,
        "heun" => Sampler::Heun,
        "ddim" => Sampler::Ddim { eta },
        "ddpm" => Sampler::Ddpm,
        "euler_maruyama" => Sampler::EulerMaruyama,
        other => bail!(
            "--sampler {other}: unknown sampler; use euler, heun, ddim, ddpm or euler_maruyama"
        ),
    })
}

fn run_weights(config: PathBuf, set: Vec<String>, bins: usize) -> Result<()> {
    if bins == 0 {
        bail!("--bins must be at least 1");
    }
    let cfg = TrainConfig::load(&config, &set)?;
    let o = &cfg.objective;
    let m = &cfg.model;
    let dims = [1, m.frames, m.channels, m.height, m.width];
    println!(
        "{:?}, predicting {:?}, weighting {:?}, timesteps {:?}, shift factor {:.3}",
        o.interpolant,
        o.prediction,
        o.weighting,
        o.timesteps,
        o.shift_alpha(dims)
    );
    println!("effective = weight on x_0 errors; factor = multiplier of the target's MSE; density = of the drawn t");
    println!("| t | alpha | sigma | SNR | density | factor | effective | density x effective |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in o.weight_table(dims, bins) {
        println!(
            "| {:.3} | {:.4} | {:.4} | {:.4e} | {:.3} | {:.4e} | {:.4e} | {:.4e} |",
            r.t,
            r.alpha,
            r.sigma,
            r.snr,
            r.density,
            r.factor,
            r.effective,
            r.density * r.effective
        );
    }
    Ok(())
}

/// Print object_store's retries of transient errors (its `info` events) on
/// stderr, so a flaky store is visible in the job log.
fn log_store_retries() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true)
        .without_time();
    let only_store = Targets::new().with_target(
        "object_store",
        tracing_subscriber::filter::LevelFilter::INFO,
    );
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(only_store))
        .try_init();
}

fn main() -> ExitCode {
    // A closed pipe (`orrery data inspect DIR | head -1`) ends the command
    // quietly, as it does `cat`, instead of panicking in println!.
    // SAFETY: restores the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    orrery_diagnostics::heap::keep_freed_pages();
    log_store_retries();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => run_train(args),
        Command::Vae(cmd) => vae::run_vae(cmd),
        Command::Encode(args) => vae::run_encode(args),
        Command::Data(cmd) => run_data(cmd),
        Command::Sample(args) => run_sample(args),
        Command::Bench(cmd) => run_bench(cmd),
        Command::Weights { config, set, bins } => run_weights(config, set, bins),
        Command::Launch(args) => run_launch(args),
        Command::Dist(cmd) => run_dist(cmd),
        Command::Sweep(cmd) => sweep::run_sweep(cmd),
        Command::Report(args) => sweep::run_report(args),
        Command::Ckpt(CkptCommand::Export { from, ema, out }) => {
            orrery_train::export::export(&from, ema, &out)
                .map(|(dir, n)| {
                    println!(
                        "wrote {n} tensors from {} to {}",
                        dir.display(),
                        out.display()
                    )
                })
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<signals::Preempted>().is_some() => {
            if !e.to_string().is_empty() {
                eprintln!("{e}");
            }
            ExitCode::from(orrery_train::PREEMPTED_EXIT_CODE)
        }
        Err(e) => {
            // Under a launcher every rank may fail the same way: name the rank.
            let who = match orrery_dist::World::from_env() {
                Ok(w) if w.size > 1 => format!("[rank {} of {}] ", w.rank, w.size),
                _ => String::new(),
            };
            eprintln!("{who}error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
