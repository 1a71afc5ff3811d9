//! The training loop: a short loop over components (data, objective,
//! optimizer, EMA, checkpoints, metrics). Letters: b batch, t frames.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use orrery_data::Cursor;
use orrery_dist::{connect, Collective, World};
use orrery_model::named::load_host;
use orrery_model::Dit;

use crate::checkpoint::{self, TensorFile, TrainerState};
use crate::config::{Strategy, TrainConfig};
use crate::eval::{
    heldout_batch, heldout_loss, next_frame_eval, with_foreign_context, with_other_last_action,
    NextFrameEval,
};
use crate::feed::{open_data, Feed};
use crate::glue::{param_shapes, to_device};
use crate::metrics::MetricsLine;
use crate::replica::{Replica, StartState, Weights};
use crate::rundir::RunOptions;
use crate::runlog::keep_lines;
use crate::tensorboard::EventWriter;
use crate::{io, Result, TrainError};

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Step the run started at (non-zero when resumed).
    pub start_step: u64,
    /// Steps at the end.
    pub end_step: u64,
    /// Held-out loss before the first step of this run.
    pub heldout_loss_start: f64,
    /// Held-out loss at the end (online weights).
    pub heldout_loss_end: f64,
    /// Held-out loss at the end (EMA weights).
    pub heldout_loss_ema: f64,
    /// Next-frame loss with another clip's context minus with the true one,
    /// at the last evaluation (about 0: the model ignores its context).
    pub context_gain: f64,
    /// Next-frame loss with another action minus with the true one (about
    /// 0: the model ignores its actions).
    pub action_gain: f64,
    /// This process's rank (0 prints the summary).
    pub rank: usize,
    /// Mean seconds per step of this run.
    pub seconds_per_step: f64,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
}

/// Train on the backend named by `cfg.run.device`.
pub fn train(cfg: TrainConfig, opts: RunOptions) -> Result<TrainSummary> {
    with_backend!(cfg.run, |AB, device| train_on::<AB>(cfg, opts, device))
}

/// This process's place among the ranks and its collective backend, after
/// checking the config against the number of ranks. With a run directory
/// (shared by the ranks), heartbeats go to its `heartbeats/`, so a collective
/// that times out names the rank it waits for.
pub(crate) fn join_world(
    cfg: &TrainConfig,
    run_dir: Option<&Path>,
) -> Result<(World, Box<dyn Collective>)> {
    let world = World::from_env()?;
    cfg.validate_world(world.size)?;
    let timeout = Duration::from_secs_f64(cfg.parallel.timeout_s);
    let comm = connect(&world, timeout, run_dir.map(|d| d.join("heartbeats")))?;
    connect_nccl(cfg, &world, comm.as_ref(), timeout)?;
    Ok((world, comm))
}

/// With CUDA and several ranks (or parallel.comm = "nccl"), join NCCL over
/// the bootstrap collective: DDP then sums gradients on the device, and FSDP
/// gathers units and reduce_scatters their gradients there.
#[cfg(feature = "cuda")]
fn connect_nccl(
    cfg: &TrainConfig,
    world: &World,
    boot: &dyn Collective,
    timeout: Duration,
) -> Result<()> {
    use crate::config::{CommBackend, Device};
    let wanted = match cfg.parallel.comm {
        CommBackend::Nccl => true,
        CommBackend::Mpi => false,
        CommBackend::Auto => cfg.run.device == Device::Cuda && world.size > 1,
    };
    if !wanted || crate::nccl::installed().is_some() {
        return Ok(());
    }
    let nccl = crate::cuda_ordinal(world)
        .map_err(|why| format!("NCCL needs a CUDA GPU, but {why}"))
        .and_then(|ordinal| crate::nccl::Nccl::connect(boot, ordinal, timeout))
        .map_err(|e| TrainError::Comm(format!("[rank {} of {}] {e}", world.rank, world.size)))?;
    crate::nccl::install(nccl);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn connect_nccl(_: &TrainConfig, _: &World, _: &dyn Collective, _: Duration) -> Result<()> {
    Ok(())
}

/// Train on backend `B` (autodiff) and device.
pub fn train_on<B: AutodiffBackend>(
    cfg: TrainConfig,
    opts: RunOptions,
    device: B::Device,
) -> Result<TrainSummary> {
    let (world, comm) = join_world(&cfg, Some(&opts.run_dir))?;
    let result = train_ranks::<B>(cfg, opts, device, world, comm.as_ref());
    orrery_dist::abort_on_error(comm.as_ref(), result)
}

/// The training loop of one rank among `comm`'s.
fn train_ranks<B: AutodiffBackend>(
    cfg: TrainConfig,
    opts: RunOptions,
    device: B::Device,
    world: World,
    comm: &dyn Collective,
) -> Result<TrainSummary> {
    // Rank 0 logs and writes the run directory; the others compute.
    let main = world.is_main();
    let say = |msg: String| {
        if main {
            eprintln!("{msg}");
        }
    };
    let run_dir = &opts.run_dir;
    let from = crate::rundir::start_checkpoint(&opts, main)?;
    let (data, stream) = open_data(&cfg, &world)?;
    crate::geometry::check_geometry(&cfg, &data)?;
    if !data.bad_rows.is_empty() {
        say(format!(
            "skipped {} bad rows (data.max_bad_rows = {}), the first: {}",
            data.bad_rows.len(),
            cfg.data.max_bad_rows,
            data.bad_rows[0]
        ));
    }
    let ckpt_dir = run_dir.join("checkpoints");

    B::seed(&device, cfg.run.seed);
    // Lazy: each parameter is drawn from the seeded RNG when first read,
    // which for FSDP happens one unit at a time (never the whole model).
    let mut model: Dit<B> = cfg.model.init(&device)?;
    let sharded = cfg.parallel.strategy == Strategy::Fsdp;
    let shapes = param_shapes(&model);
    let (mut step, mut cursor) = (0u64, Cursor::default());
    // A checkpoint's AdamW and EMA files, read one tensor at a time when the
    // replica is made (sharded, each rank keeps only its shards).
    let mut resumed: Option<(TensorFile, TensorFile, TensorFile, u64)> = None;
    if let Some(dir) = &from {
        let state = checkpoint::load_state(dir)?;
        if state.config.model != cfg.model {
            return Err(TrainError::Config(format!(
                "checkpoint {} was trained with a different [model] section; resume with the same model config or use --resume never",
                dir.display()
            )));
        }
        let changed = crate::rundir::config_changes(&state.config, &cfg)?;
        if !changed.is_empty() {
            say(format!(
                "resuming with a changed config: {}",
                changed.join(", ")
            ));
        }
        // Every file must hold this model's tensors and nothing else, so that
        // nothing later reads a missing tensor as zeros or panics on a name.
        let weights = TensorFile::open(&dir.join(checkpoint::MODEL_FILE))?;
        let optim_file = TensorFile::open(&dir.join(checkpoint::OPTIM_FILE))?;
        let ema_file = TensorFile::open(&dir.join(checkpoint::EMA_FILE))?;
        weights.expect_layout(&shapes, |_| false)?;
        ema_file.expect_layout(&shapes, |_| false)?;
        checkpoint::expect_optimizer_layout(&optim_file, &shapes)?;
        // DDP loads the weights whole; FSDP ranks read their shards later.
        if !sharded {
            model = load_host(model, &weights.read_all()?, &device)?;
        }
        resumed = Some((weights, optim_file, ema_file, state.ema_updates));
        (step, cursor) = (state.step, state.cursor);
        say(format!("resuming from {} at step {step}", dir.display()));
    }
    // Written once the resume checks passed: a refused resume leaves the
    // run directory as it was.
    if main {
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let resolved = toml::to_string(&cfg).expect("config serializes");
        std::fs::write(run_dir.join("config.toml"), resolved).map_err(io(run_dir))?;
    }
    if comm.size() > 1 {
        // Every rank must have resumed from the same checkpoint (a shared
        // run directory): compare the step with rank 0's.
        let mut s0 = [step];
        comm.broadcast_u64(&mut s0, 0)?;
        let step0 = s0[0];
        if step0 != step {
            return Err(TrainError::Config(format!(
                "rank {} resumed at step {step} but rank 0 at step {step0}: every rank must see the same run directory {} (a shared filesystem)",
                world.rank,
                run_dir.display()
            )));
        }
        say(format!(
            "data parallel over {} ranks ({}, started by {}): {} clips per rank per step",
            comm.size(),
            comm.name(),
            world.launcher,
            cfg.data.global_batch / comm.size()
        ));
    }
    let start = match &resumed {
        Some((model, optim, ema, ema_updates)) => StartState::Checkpoint {
            model,
            optim,
            ema,
            steps: step,
            ema_updates: *ema_updates,
        },
        None => StartState::Fresh,
    };
    let (mut replica, mut optim, mut ema) =
        Replica::new(&cfg, model, &world, comm, &device, start)?;
    drop(resumed);
    if let Replica::Sharded(fsdp) = &replica {
        let (state, unit) = fsdp.state_bytes();
        let whole = 4 * 4 * cfg.model.num_params();
        say(format!(
            "fsdp: {} units; each rank holds {:.2} MB of parameter, gradient and AdamW shards (one process: {:.2} MB) and gathers at most {:.2} MB at a time",
            fsdp.units.len(),
            state as f64 / 1e6,
            whole as f64 / 1e6,
            unit as f64 / 1e6
        ));
        if main {
            let report = serde_json::json!({
                "world_size": world.size,
                "units": fsdp.units.len(),
                "state_bytes_per_rank": state,
                "state_bytes_one_process": whole,
                "largest_unit_bytes": unit,
            });
            let path = run_dir.join("fsdp_memory.json");
            std::fs::write(&path, report.to_string()).map_err(io(&path))?;
        }
    }

    let mut loader = Feed::start(stream, &data, &cfg, &world, cursor)?;
    let inner_device = device.clone();
    let heldout_host = heldout_batch(&data, cfg.model.frames, cfg.data.global_batch);
    let heldout = to_device::<B::InnerBackend>(&heldout_host, &cfg.model, &inner_device);
    let foreign = to_device::<B::InnerBackend>(
        &with_foreign_context(&heldout_host),
        &cfg.model,
        &inner_device,
    );
    let other_action = to_device::<B::InnerBackend>(
        &with_other_last_action(&heldout_host, cfg.model.num_actions),
        &cfg.model,
        &inner_device,
    );
    let mut tb = main
        .then(|| EventWriter::create(&run_dir.join("tensorboard")).map_err(io(run_dir)))
        .transpose()?;
    // Lines of steps after the checkpoint this run starts from are dropped
    // (a run that died after them will take those steps again; a fresh run
    // in an old run directory starts both files afresh). metrics.jsonl: one
    // line per logging step, numbered by the steps done.
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics = main
        .then(|| keep_lines(&metrics_path, |s| s <= step))
        .transpose()?;
    // The data order: per step k (1-based, as metrics.jsonl counts), the
    // clip ids of the global batch that step k trained on.
    let samples_path = run_dir.join("samples.jsonl");
    let mut samples = main
        .then(|| keep_lines(&samples_path, |s| s <= step))
        .transpose()?;
    // One line to metrics.jsonl and the same scalars to TensorBoard.
    let mut log = |line: &MetricsLine| -> Result<()> {
        if let Some(tb) = tb.as_mut() {
            for (tag, value) in line.scalars() {
                tb.scalar(tag, line.step, value).map_err(io(run_dir))?;
            }
            tb.flush().map_err(io(run_dir))?;
        }
        if let Some(m) = metrics.as_mut() {
            let json = serde_json::to_string(line).expect("metrics serialize");
            writeln!(m, "{json}").map_err(io(&metrics_path))?;
        }
        Ok(())
    };

    let start_step = step;
    let heldout_start = replica.eval(Weights::Online, comm, |m| heldout_loss(&cfg, m, &heldout))?;
    if step == 0 {
        // A resumed run keeps the line its checkpoint's step already has.
        log(&MetricsLine {
            step,
            heldout_loss: Some(heldout_start),
            ..Default::default()
        })?;
    }
    let mut gains = NextFrameEval::default();
    let on = match (cfg.run.device, cfg.run.fusion) {
        (crate::config::Device::Cpu, _) => "",
        (crate::config::Device::Cuda, false) => "; cuda, unfused kernels (run.fusion)",
        (crate::config::Device::Cuda, true) => "; cuda, fused kernels (run.fusion)",
    };
    say(format!(
        "training {} params on {} clips ({} held out, {} skipped as too short), {} steps from step {step}; held-out loss {heldout_start:.4}{on}",
        cfg.model.num_params(),
        loader.clips(&data),
        data.holdout.len(),
        loader.skipped_short(),
        cfg.run.steps
    ));
    let bar = if main {
        crate::progress::progress_bar(cfg.run.steps, step)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut window_loss, mut window_n, mut data_wait, mut window_start) =
        (0.0f64, 0u64, Duration::ZERO, Instant::now());
    let run_start = Instant::now();
    let mut last_ckpt = from.clone().unwrap_or_default();
    let mut last_heldout = heldout_start;
    let mut heldout_ema = None;
    let stop_at = opts
        .stop_after
        .map_or(cfg.run.steps, |n| (step + n).min(cfg.run.steps));
    while step < stop_at {
        let t0 = Instant::now();
        let batch = to_device::<B>(&loader.next_batch()?, &cfg.model, &device);
        if let Some(f) = samples.as_mut() {
            let mut line = serde_json::json!({
                "step": step + 1,
                "epoch": loader.cursor().epoch,
            });
            match &loader {
                Feed::Memory(l) => line["ids"] = l.last_global_ids().into(),
                Feed::Stream(l) => line["rows"] = l.last_global_rows().into(),
            }
            writeln!(f, "{line}").map_err(io(&samples_path))?;
        }
        data_wait += t0.elapsed();
        let (next, out) =
            replica.step(&cfg, &batch, step, (&mut optim, &mut ema), &shapes, comm)?;
        replica = next;
        let (loss_value, norm, lr) = (out.loss, out.grad_norm, out.lr);
        step += 1;
        window_loss += loss_value;
        window_n += 1;
        bar.set_position(step);
        bar.set_message(format!("loss {loss_value:.4}"));

        let eval_now = step % cfg.logging.eval_every == 0 || step == stop_at;
        let mut line = MetricsLine {
            step,
            ..Default::default()
        };
        if eval_now {
            last_heldout =
                replica.eval(Weights::Online, comm, |m| heldout_loss(&cfg, m, &heldout))?;
            line.heldout_loss = Some(last_heldout);
            // Next-frame gains only mean something for world models.
            if cfg.model.has_actions() {
                gains = replica.eval(Weights::Online, comm, |m| {
                    next_frame_eval(&cfg, m, &heldout, &foreign, &other_action)
                })?;
                line.next_frame_loss = Some(gains.loss);
                line.context_gain = Some(gains.context_gain);
                line.action_gain = Some(gains.action_gain);
            }
        }
        if step == stop_at {
            heldout_ema = Some(replica.eval(Weights::Ema(&ema), comm, |m| {
                heldout_loss(&cfg, m, &heldout)
            })?);
            line.heldout_loss_ema = heldout_ema;
        }
        if step % cfg.logging.every == 0 || step == stop_at {
            let secs = window_start.elapsed().as_secs_f64();
            let samples = window_n as f64 * cfg.data.global_batch as f64;
            line.loss = Some(window_loss / window_n as f64);
            line.lr = Some(lr);
            line.grad_norm = Some(norm);
            line.samples_per_s = Some(samples / secs);
            // Model FLOP/s from the FLOPs count; divide by the device's
            // peak for MFU.
            line.model_tflops_per_s =
                Some(samples * cfg.model.train_flops_per_sample(cfg.model.frames) / secs / 1e12);
            line.step_time_s = Some(secs / window_n as f64);
            line.data_wait_frac = Some(data_wait.as_secs_f64() / secs);
            bar.suspend(|| {
                say(format!(
                    "step {step:>6}  loss {:.4}  lr {lr:.2e}  grad_norm {norm:.3}  {:.1} samples/s{}",
                    window_loss / window_n as f64,
                    samples / secs,
                    if eval_now && cfg.model.has_actions() {
                        format!(
                            "  held-out {last_heldout:.4}  gain: context {:+.4} action {:+.4}",
                            gains.context_gain, gains.action_gain
                        )
                    } else if eval_now {
                        format!("  held-out {last_heldout:.4}")
                    } else {
                        String::new()
                    }
                ))
            });
            (window_loss, window_n, data_wait, window_start) =
                (0.0, 0, Duration::ZERO, Instant::now());
        }
        if !line.is_empty() {
            log(&line)?;
        }
        if step % cfg.checkpoint.every == 0 || step == stop_at {
            // Rank 0 writes whole tensors; sharded, every rank helps gather them.
            let pending = checkpoint::Pending::begin(&ckpt_dir, step, world.rank == 0)?;
            replica.write_checkpoint(&pending, &optim, &ema, &shapes, comm)?;
            let state = TrainerState {
                step,
                cursor: loader.cursor(),
                ema_updates: ema.updates,
                config: cfg.clone(),
                world_size: world.size,
                version: env!("CARGO_PKG_VERSION").into(),
            };
            last_ckpt = pending.commit(&state, cfg.checkpoint.keep)?;
        }
    }
    bar.finish_and_clear();
    // The last step evaluated both; a run with no step left evaluates here.
    let (heldout_end, heldout_ema) = match heldout_ema {
        Some(ema_loss) => (last_heldout, ema_loss),
        None => (
            replica.eval(Weights::Online, comm, |m| heldout_loss(&cfg, m, &heldout))?,
            replica.eval(Weights::Ema(&ema), comm, |m| {
                heldout_loss(&cfg, m, &heldout)
            })?,
        ),
    };
    // Nobody leaves before rank 0 has written the last checkpoint.
    comm.barrier()?;
    let steps_run = (step - start_step).max(1);
    Ok(TrainSummary {
        start_step,
        end_step: step,
        heldout_loss_start: heldout_start,
        heldout_loss_end: heldout_end,
        heldout_loss_ema: heldout_ema,
        context_gain: gains.context_gain,
        action_gain: gains.action_gain,
        rank: world.rank,
        seconds_per_step: run_start.elapsed().as_secs_f64() / steps_run as f64,
        checkpoint: last_ckpt,
    })
}
