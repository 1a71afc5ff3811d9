//! `orrery bench ...`: step, data, comm (MPI or NCCL) and CPU-vs-GPU parity.
use anyhow::{bail, Result};
use clap::Subcommand;
use std::path::PathBuf;

use crate::data::{self, run_bench_data};
use orrery_train::TrainConfig;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Checkpoint save and load throughput (GB/s), and the stall a
    /// synchronous and an asynchronous save cause a run, side by side.
    Ckpt {
        /// The experiment config (TOML).
        config: PathBuf,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// An empty run directory for its checkpoints [default: runs/bench-ckpt].
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Blocks per mode (synchronous and asynchronous take turns).
        #[arg(long, default_value_t = 3)]
        blocks: usize,
        /// Steps per block (one checkpoint each).
        #[arg(long, default_value_t = 4)]
        block: u64,
    },
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
        /// Gaussian latents of the model's shape (random actions and
        /// labels) instead of the config's data: throughput needs no dataset.
        #[arg(long)]
        synthetic: bool,
        /// The device's peak, in TFLOP/s, that MFU divides by [default: 989,
        /// the H100/H200 SXM dense bf16 peak; the workplace measured about
        /// 790 TFLOP/s of bf16 matrix work on an H200].
        #[arg(long, default_value_t = 989.0)]
        peak_tflops: f64,
        /// Run this many data-parallel ranks as threads of this one process
        /// (each computing on one core, summing in shared memory), as
        /// `orrery launch -n N` runs processes.
        #[arg(long, default_value_t = 1)]
        threads: usize,
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
    /// (CUDA without fusion, training's default, then with; or wgpu): single
    /// ops, the first step's loss and per-parameter gradients, then a short
    /// training run. Prints where the GPU parts from the CPU (needs
    /// `--features cuda` or `--features wgpu`).
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
        /// Instead: train --steps steps on the CPU and, at every step,
        /// compute the same step's gradients on the GPU from the CPU's
        /// weights (twice), and apply the CPU's gradients with its own
        /// AdamW, so the runs cannot drift apart: shows the steps where the
        /// GPU's gradient or update is wrong, and whether it repeats itself.
        #[arg(long)]
        lockstep: bool,
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

pub fn run_bench(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Ckpt {
            config,
            set,
            run_dir,
            blocks,
            block,
        } => crate::bench_ckpt::run_bench_ckpt(&config, &set, run_dir, blocks, block),
        BenchCommand::Comm {
            sizes_mb,
            iters,
            nccl,
        } => run_bench_comm(sizes_mb, iters, nccl),
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
                data::run_bench_stream(&url, repeat, batch, frames, buffer, prefetch)
            } else {
                run_bench_data(&url, repeat)
            }
        }
        BenchCommand::Parity {
            config,
            set,
            steps,
            top,
            lockstep,
        } => {
            if lockstep {
                run_bench_lockstep(&config, &set, steps)
            } else {
                run_bench_parity(&config, &set, steps, top)
            }
        }
        BenchCommand::Step {
            config,
            set,
            steps,
            warmup,
            synthetic,
            peak_tflops,
            threads,
        } => run_bench_step(
            &config,
            &set,
            (steps, warmup, threads),
            synthetic,
            peak_tflops,
        ),
    }
}

/// `orrery bench step`: time the training step of a config and print a table.
fn run_bench_step(
    config: &std::path::Path,
    set: &[String],
    (steps, warmup, threads): (usize, usize, usize),
    synthetic: bool,
    peak_tflops: f64,
) -> Result<()> {
    if steps == 0 || threads == 0 {
        bail!("--steps and --threads must be at least 1");
    }
    if !(peak_tflops > 0.0 && peak_tflops.is_finite()) {
        bail!("--peak-tflops {peak_tflops}: give the device's peak in TFLOP/s (e.g. 989)");
    }
    let cfg = TrainConfig::load(config, set)?;
    let b = match threads {
        1 => orrery_diagnostics::bench::bench_step(&cfg, steps, warmup, synthetic)?,
        n => orrery_diagnostics::bench::bench_step_threads(&cfg, (steps, warmup), synthetic, n)?,
    };
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
        "config {}{}: {} params, batch {}, {} tokens/sample, {:?} on {} thread(s)",
        config.display(),
        if synthetic {
            " (synthetic batches)"
        } else {
            ""
        },
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
    let context = match cfg.parallel.context {
        1 => String::new(),
        c => format!(", {} data x {c} context", b.ranks / c),
    };
    println!("| ranks | {} ({strategy}{context}) |", b.ranks);
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
    if cfg.parallel.context > 1 {
        println!(
            "| context parallelism: bytes sent per rank per step, measured / Ulysses analysis | {:.2} / {:.2} MiB |",
            b.context_bytes.0 as f64 / 1048576.0,
            b.context_bytes.1 as f64 / 1048576.0
        );
    }
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
    // Per rank: each computes its share of the global batch.
    let tflops = b.flops_per_step / b.ranks as f64 / median / 1e12;
    println!("| model TFLOP/s per rank (median step) | {tflops:.2} |");
    println!(
        "| MFU per rank (against a peak of {peak_tflops} TFLOP/s) | {:.1}% |",
        100.0 * tflops / peak_tflops
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
        println!("{} rank(s), NCCL collectives of CUDA f32 tensors, median of {iters} calls (busbw, as nccl-tests: all_reduce 2 (n-1)/n x bytes / time, all_gather and reduce_scatter (n-1)/n x n x bytes / time)", world.size);
        println!("| op | MiB per rank | time (ms) | busbw (GB/s) | max abs error |\n|---|---|---|---|---|");
        let p = world.size as f64;
        for (op, n, s, worst) in rows {
            let bytes = 4.0 * n as f64;
            let moved = if op == "all_reduce" {
                2.0 * bytes
            } else {
                p * bytes
            };
            println!(
                "| {op} | {:.1} | {:.3} | {:.2} | {:.1e} |",
                bytes / 1048576.0,
                s * 1e3,
                (p - 1.0) / p * moved / s / 1e9,
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

#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn run_bench_parity(
    config: &std::path::Path,
    set: &[String],
    steps: usize,
    top: usize,
) -> Result<()> {
    #[cfg(feature = "cuda")]
    use orrery_diagnostics::parity::gpu_backends as backends;
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    use orrery_diagnostics::parity::wgpu_backends as backends;
    use orrery_diagnostics::parity::{compare, Phase};
    use std::io::Write;
    let cfg = TrainConfig::load(config, set)?;
    let mut start = std::time::Instant::now();
    println!(
        "reference: cpu (flex), {steps} steps of {}",
        config.display()
    );
    // Printed as each phase ends: a GPU's first steps compile and autotune kernels.
    backends(&cfg, steps, &mut |reference, phase, other| {
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
                for (what, d) in &other.kernels {
                    println!("| {what}, both on {} | {d:.2e} |", other.backend);
                }
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

#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn run_bench_lockstep(config: &std::path::Path, set: &[String], steps: usize) -> Result<()> {
    #[cfg(feature = "cuda")]
    use orrery_diagnostics::lockstep::gpu_lockstep as lockstep;
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    use orrery_diagnostics::lockstep::wgpu_lockstep as lockstep;
    use std::collections::BTreeMap;
    use std::io::Write;
    let cfg = TrainConfig::load(config, set)?;
    let steps = steps.max(1);
    let start = std::time::Instant::now();
    println!(
        "reference: cpu (flex) training {steps} steps of {}; at each step, each GPU backend computes the step's gradients from the CPU's weights, twice\n",
        config.display()
    );
    // Per backend: (step, largest gradient difference), steps over 1e-2 or
    // NaN, the largest difference between two evaluations and the largest
    // update difference; NaN, once seen, stays.
    type Seen = BTreeMap<String, ((usize, f64), usize, f64, f64)>;
    let mut seen = Seen::new();
    let worse = |v: f64, than: f64| !than.is_nan() && !(v <= than);
    // Every `every`-th step, each step whose gradient is off by over 1%, and
    // the summary now and then (a run cut short still says where it got).
    let every = (steps / 40).max(1);
    let summary = |seen: &Seen, upto: usize| {
        println!();
        for (name, ((at, worst), off, repeat, update)) in seen {
            println!(
                "{name}, steps 0..={upto}: largest gradient difference {worst:.2e} at step {at}; {off} steps with gradient or update over 1e-2 or NaN; largest difference between two GPU evaluations {repeat:.2e}; largest update difference {update:.2e}"
            );
        }
        println!();
    };
    let mut current = 0;
    lockstep(&cfg, steps, &mut |backend, r| {
        if seen.is_empty() {
            println!("| step | backend | loss cpu | loss gpu | grad norm cpu | grad norm gpu | grad rel. diff | worst parameter | its rel. diff | gpu twice: rel. diff | update rel. diff | s in |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        }
        if r.step != current {
            current = r.step;
            if current % (10 * every) == 0 {
                summary(&seen, current - 1);
            }
        }
        let e = seen
            .entry(backend.to_string())
            .or_insert(((0, 0.0), 0, 0.0, 0.0));
        let bad = !(r.grad_rel <= 1e-2) || !(r.update_rel <= 1e-2);
        e.1 += bad as usize;
        if worse(r.grad_rel, e.0 .1) {
            e.0 = (r.step, r.grad_rel);
        }
        if worse(r.repeat_rel, e.2) {
            e.2 = r.repeat_rel;
        }
        if worse(r.update_rel, e.3) {
            e.3 = r.update_rel;
        }
        if bad || r.step % every == 0 || r.step + 1 == steps {
            println!(
                "| {} | {backend} | {:.5} | {:.5} | {:.4} | {:.4} | {:.2e} | {} | {:.2e} | {:.2e} | {:.2e} | {:.1} |",
                r.step, r.loss.0, r.loss.1, r.norm.0, r.norm.1, r.grad_rel, r.worst.0, r.worst.1,
                r.repeat_rel, r.update_rel, start.elapsed().as_secs_f64()
            );
        }
        let _ = std::io::stdout().flush();
    })?;
    summary(&seen, steps - 1);
    Ok(())
}

#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
fn run_bench_lockstep(_: &std::path::Path, _: &[String], _: usize) -> Result<()> {
    run_bench_parity(&std::path::PathBuf::new(), &[], 0, 0)
}

#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
fn run_bench_parity(_: &std::path::Path, _: &[String], _: usize, _: usize) -> Result<()> {
    bail!("bench parity compares the CPU with the GPU: build with `cargo build --release --features cuda` (or `--features wgpu`: cubecl's kernels on Vulkan, also Mesa's llvmpipe on a CPU)")
}
