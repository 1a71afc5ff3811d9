//! The orrery command line: train, data, sample, ckpt.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use orrery_diffusion::Sampler;

mod data;
mod launch;

// Counts tensor-sized allocations for `bench step`'s heap figures.
#[global_allocator]
static ALLOC: orrery_train::heap::CountingAlloc = orrery_train::heap::CountingAlloc;
use data::{run_bench_data, run_data, DataCommand};
use launch::{run_dist, run_launch, DistCommand, LaunchArgs};
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

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the training step of a config (data loading reported apart).
    Step {
        /// The experiment config (TOML).
        config: PathBuf,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Timed steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
    },
    /// Read (fetch + decode) every file of a dataset, N times, and print
    /// clips/s and MB/s (compare with benchmarks/data/pyarrow_read.py).
    Data {
        /// Directory, file or URL.
        url: String,
        /// Timed passes (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Time the streaming loader instead: one epoch of global batches
        /// of `--batch` clips cropped to `--frames`, row groups read as needed.
        #[arg(long)]
        stream: bool,
        /// Streaming: clips per global batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Streaming: frames each clip is cropped to.
        #[arg(long, default_value_t = 4)]
        frames: usize,
        /// Streaming: shuffle buffer rows.
        #[arg(long, default_value_t = 4096)]
        buffer: usize,
        /// Streaming: row groups read at once.
        #[arg(long, default_value_t = 8)]
        prefetch: usize,
    },
    /// The same weights, batches and noise on the CPU and on each GPU backend
    /// (CUDA with and without fusion): single ops, the first step's loss and
    /// per-parameter gradients, then a short training run. Prints where the
    /// GPU parts from the CPU (needs `--features cuda`).
    Parity {
        /// The experiment config (TOML).
        config: PathBuf,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Training steps compared.
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// Rows of each section to print (the worst first).
        #[arg(long, default_value_t = 8)]
        top: usize,
    },
    /// Bandwidth of all_reduce, all_gather and reduce_scatter next to raw MPI
    /// (run under `orrery launch -n N`, N >= 2).
    Comm {
        /// Buffer sizes per rank in MiB.
        #[arg(long, value_delimiter = ',', default_values_t = [1.0, 16.0, 64.0])]
        sizes_mb: Vec<f64>,
        /// Timed calls per size and operation (the median is reported).
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// NCCL all_reduce of CUDA tensors instead (one rank works too;
        /// needs `--features cuda`).
        #[arg(long)]
        nccl: bool,
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
}

#[derive(Args)]
struct SampleArgs {
    /// Run directory, its checkpoints/ directory, or one checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output: a .gif (a .png strip is written beside it) or a .png.
    #[arg(long)]
    out: PathBuf,
    /// Frames to generate after the context.
    #[arg(long)]
    frames: Option<usize>,
    /// Sampler steps per generated frame.
    #[arg(long)]
    steps: Option<usize>,
    /// Sampler: euler, heun, ddim, ddpm or euler_maruyama (default: the run's sample.sampler).
    #[arg(long)]
    sampler: Option<String>,
    /// DDIM's eta (with --sampler ddim).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Classifier-free guidance scale on the actions or labels (default: the run's sample.guidance).
    #[arg(long)]
    guidance: Option<f64>,
    /// Models without actions: samples per class (or in all, unconditional); default sample.clips.
    #[arg(long)]
    per_class: Option<usize>,
    /// Seed of the sampling noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the online weights instead of the EMA.
    #[arg(long)]
    no_ema: bool,
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

fn run_train(args: TrainArgs) -> Result<()> {
    let cfg = TrainConfig::load(&args.config, &args.set)?;
    let run_dir = args
        .run_dir
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.run.name));
    let resume = match args.resume.as_str() {
        "auto" => Resume::Auto,
        "never" => Resume::Never,
        path => Resume::From(PathBuf::from(path)),
    };
    let world_model = cfg.model.has_actions();
    let s = train(
        cfg,
        RunOptions {
            run_dir: run_dir.clone(),
            resume,
            stop_after: args.stop_after,
        },
    )?;
    if s.rank != 0 {
        return Ok(());
    }
    println!(
        "trained steps {}..{} in {:.3} s/step",
        s.start_step, s.end_step, s.seconds_per_step
    );
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
    println!(
        "run directory: {}  (tensorboard --logdir {})",
        run_dir.display(),
        run_dir.join("tensorboard").display()
    );
    println!("checkpoint: {}", s.checkpoint.display());
    Ok(())
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
            .map(|name| parse_sampler(name, args.eta))
            .transpose()?,
        guidance: args.guidance,
        per_class: args.per_class,
        seed: args.seed,
        no_ema: args.no_ema,
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
    println!("agent-position error (pixels, mean over generated frames):");
    println!("  model                 {:>6.2}", r.model_error_px);
    println!("  copy last context     {:>6.2}", r.copy_last_error_px);
    println!("  generated frames without an agent: {}", r.agent_lost);
    println!(
        "  moves in the commanded direction: {:.0}% of frames where the agent moved",
        100.0 * r.direction_accuracy
    );
    let per: Vec<String> = r
        .model_error_by_frame
        .iter()
        .zip(&r.copy_last_error_by_frame)
        .map(|(a, b)| format!("{a:.1}/{b:.1}"))
        .collect();
    println!("  per frame (model/copy): {}", per.join(" "));
    let json = opts.out.with_extension("json");
    std::fs::write(&json, serde_json::to_string_pretty(&r)?)
        .with_context(|| format!("writing {}", json.display()))?;
    for o in r.outputs.iter().chain([&json]) {
        println!("wrote {}", o.display());
    }
    Ok(())
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

fn run_bench_comm(sizes_mb: Vec<f64>, iters: usize, nccl: bool) -> Result<()> {
    if iters == 0 || sizes_mb.iter().any(|&s| !(s > 0.0)) {
        bail!("--iters and every --sizes-mb value must be positive");
    }
    let world = orrery_dist::World::from_env()?;
    if nccl {
        return run_bench_nccl(&world, &sizes_mb, iters);
    }
    if world.size < 2 {
        bail!("bench comm measures communication between ranks: run it as `orrery launch -n 2 -- bench comm` (or more ranks)");
    }
    let comm = orrery_dist::connect(&world, std::time::Duration::from_secs(600), None)?;
    #[cfg(feature = "mpi")]
    {
        let elems: Vec<usize> = sizes_mb
            .iter()
            .map(|mb| (mb * 1024.0 * 1024.0 / 4.0) as usize)
            .collect();
        let rows = orrery_dist::bench_collectives(comm.as_ref(), &elems, iters)?;
        if world.rank == 0 {
            println!(
                "{} ranks over {} ({}), f32 buffers, median of {iters} calls; busbw in the nccl-tests convention",
                world.size,
                comm.name(),
                world.launcher
            );
            println!("| op | MiB per rank | orrery (ms) | raw MPI (ms) | orrery busbw (GB/s) | raw busbw (GB/s) | raw time / orrery time |");
            println!("|---|---|---|---|---|---|---|");
            for r in rows {
                println!(
                    "| {} | {:.1} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} |",
                    r.op,
                    r.bytes as f64 / 1048576.0,
                    r.orrery_s * 1e3,
                    r.raw_s * 1e3,
                    r.orrery_busbw,
                    r.raw_busbw,
                    r.raw_s / r.orrery_s
                );
            }
        }
        Ok(())
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = comm;
        bail!("this binary was built without MPI")
    }
}

fn run_bench(cmd: BenchCommand) -> Result<()> {
    let (config, set, steps, warmup) = match cmd {
        BenchCommand::Comm {
            sizes_mb,
            iters,
            nccl,
        } => return run_bench_comm(sizes_mb, iters, nccl),
        BenchCommand::Data {
            url,
            repeat,
            stream,
            batch,
            frames,
            buffer,
            prefetch,
        } => {
            if stream {
                return data::run_bench_stream(&url, repeat, batch, frames, buffer, prefetch);
            }
            return run_bench_data(&url, repeat);
        }
        BenchCommand::Parity {
            config,
            set,
            steps,
            top,
        } => return run_bench_parity(&config, &set, steps, top),
        BenchCommand::Step {
            config,
            set,
            steps,
            warmup,
        } => (config, set, steps, warmup),
    };
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let cfg = TrainConfig::load(&config, &set)?;
    let b = orrery_train::bench::bench_step(&cfg, steps, warmup)?;
    let mean = b.step_s.iter().sum::<f64>() / b.step_s.len() as f64;
    let min = b.step_s.iter().copied().fold(f64::INFINITY, f64::min);
    let median = b.median_step();
    let data = b.data_s.iter().sum::<f64>() / b.data_s.len() as f64;
    if b.rank != 0 {
        return Ok(());
    }
    let mut comm = b.comm_s.clone();
    comm.sort_by(f64::total_cmp);
    let comm = comm[comm.len() / 2];
    println!(
        "config {}: {} params, batch {}, {} tokens/sample, {:?} on {} thread(s)",
        config.display(),
        b.params,
        b.batch,
        b.tokens_per_sample,
        cfg.run.device,
        b.threads
    );
    println!("| metric | value |");
    println!("|---|---|");
    println!("| step time, median (s) | {median:.4} |");
    println!("| step time, mean (s) | {mean:.4} |");
    println!("| step time, min (s) | {min:.4} |");
    println!("| data to device, mean (s) | {data:.5} |");
    let strategy = format!("{:?}", cfg.parallel.strategy).to_lowercase();
    println!("| ranks | {} ({strategy}) |", b.ranks);
    println!(
        "| parameter + gradient + AdamW bytes per rank | {:.2} MiB |",
        b.state_bytes.0 as f64 / 1048576.0
    );
    if b.heap.1 > 0 {
        println!(
            "| heap when the timed steps start / peak during them | {:.1} / {:.1} MiB |",
            b.heap.0 as f64 / 1048576.0,
            b.heap.1 as f64 / 1048576.0
        );
    }
    if b.state_bytes.1 > 0 {
        println!(
            "| largest unit gathered (parameters + gradient) | {:.2} MiB |",
            b.state_bytes.1 as f64 / 1048576.0
        );
    }
    println!("| communication per step, median (s) | {comm:.4} |");
    println!(
        "| bytes sent into collectives per rank per step | {} ({:.2} MiB) |",
        b.comm_bytes,
        b.comm_bytes as f64 / 1048576.0
    );
    println!(
        "| samples/s (median step) | {:.1} |",
        b.batch as f64 / median
    );
    println!(
        "| tokens/s (median step) | {:.0} |",
        (b.batch * b.tokens_per_sample) as f64 / median
    );
    println!(
        "| model GFLOP/s (median step; FLOPs count of the config) | {:.1} |",
        b.flops_per_step / median / 1e9
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn run_bench_nccl(world: &orrery_dist::World, sizes_mb: &[f64], iters: usize) -> Result<()> {
    let timeout = std::time::Duration::from_secs(120);
    let comm = orrery_dist::connect(world, timeout, None)?;
    let elems: Vec<usize> = sizes_mb
        .iter()
        .map(|mb| (mb * 1024.0 * 1024.0 / 4.0) as usize)
        .collect();
    let rows = orrery_train::nccl::bench(comm.as_ref(), &elems, iters, timeout)
        .map_err(anyhow::Error::msg)?;
    if world.rank == 0 {
        println!("{} rank(s), NCCL all_reduce of CUDA f32 tensors, median of {iters} calls (busbw = 2 (n-1)/n bytes / time)", world.size);
        println!("| MiB per rank | time (ms) | busbw (GB/s) | max abs error |\n|---|---|---|---|");
        let p = world.size as f64;
        for (n, s, worst) in rows {
            let bytes = 4.0 * n as f64;
            println!(
                "| {:.1} | {:.3} | {:.2} | {:.1e} |",
                bytes / 1048576.0,
                s * 1e3,
                2.0 * (p - 1.0) / p * bytes / s / 1e9,
                worst
            );
        }
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn run_bench_nccl(_: &orrery_dist::World, _: &[f64], _: usize) -> Result<()> {
    bail!("bench comm --nccl needs a binary built with `--features cuda`")
}

#[cfg(feature = "cuda")]
fn run_bench_parity(
    config: &std::path::Path,
    set: &[String],
    steps: usize,
    top: usize,
) -> Result<()> {
    use orrery_train::parity::{compare, gpu_backends, Phase};
    use std::io::Write;
    let cfg = TrainConfig::load(config, set)?;
    let mut start = std::time::Instant::now();
    println!(
        "reference: cpu (flex), {steps} steps of {}",
        config.display()
    );
    // Printed as each phase ends: a GPU's first steps compile and autotune kernels.
    gpu_backends(&cfg, steps, &mut |reference, phase, other| {
        let diffs = compare(reference, other);
        let rows = |prefix: &str, sorted: bool| {
            let mut rows: Vec<_> = diffs
                .iter()
                .filter(|d| d.what.starts_with(prefix))
                .collect();
            if sorted {
                rows.sort_by(|a, b| b.rel.total_cmp(&a.rel));
                rows.truncate(top);
            }
            for d in rows {
                println!("| {} | {:.2e} |", d.what, d.rel);
            }
        };
        let secs = start.elapsed().as_secs_f64();
        match phase {
            Phase::Ops => {
                println!(
                    "\n## {} vs cpu (flex): relative L2 difference ({secs:.1} s in)",
                    other.backend
                );
                println!("| what | rel. diff |\n|---|---|");
                rows("op ", false);
            }
            Phase::FirstStep => {
                rows("step 0 loss", false);
                rows("step 0 grad", true);
                println!("(first step: {secs:.1} s in)\n\n| step | loss cpu | loss {0} | grad norm cpu | grad norm {0} | s in |\n|---|---|---|---|---|---|", other.backend);
            }
            Phase::Step(k) => {
                let ((l, n), (l2, n2)) = (reference.steps[k], other.steps[k]);
                println!("| {k} | {l:.5} | {l2:.5} | {n:.4} | {n2:.4} | {secs:.1} |");
            }
            Phase::Done => {
                println!();
                rows("final weight", true);
                start = std::time::Instant::now();
            }
        }
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn run_bench_parity(_: &std::path::Path, _: &[String], _: usize, _: usize) -> Result<()> {
    bail!("bench parity compares the CPU with the GPU: build with `cargo build --release --features cuda`")
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
    log_store_retries();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => run_train(args),
        Command::Data(cmd) => run_data(cmd),
        Command::Sample(args) => run_sample(args),
        Command::Bench(cmd) => run_bench(cmd),
        Command::Weights { config, set, bins } => run_weights(config, set, bins),
        Command::Launch(args) => run_launch(args),
        Command::Dist(cmd) => run_dist(cmd),
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
