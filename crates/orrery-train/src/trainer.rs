//! The training loop: a short loop over components (data, objective,
//! optimizer, EMA, checkpoints, metrics). Letters: b batch, t frames.
use orrery_model::TrainBackend;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use orrery_dist::{Collective, World};
use orrery_parallel::world::join_world;

use crate::config::TrainConfig;
use crate::eval::{heldout_loss, heldout_loss_by_level, next_frame_eval, HeldOut, NextFrameEval};
use crate::feed::{open_data, Feed};
use crate::glue::to_device;
use crate::metrics::MetricsLine;
use crate::records::Records;
use crate::replica::Weights;
use crate::rundir::RunOptions;
use crate::saver::Saver;
use crate::start::{start_or_resume, Started};
use crate::step::StepOut;
use crate::Result;

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
    /// A signal stopped the run before `run.steps` (after writing
    /// `checkpoint`): its number, or 0 when another rank got it.
    pub stopped_by: Option<i32>,
}

/// Train on the backend named by `cfg.run.device`.
pub fn train(cfg: TrainConfig, opts: RunOptions) -> Result<TrainSummary> {
    orrery_parallel::with_backend!(cfg.run, |AB, device| train_on::<AB>(cfg, opts, device))
}

/// Train on backend `B` (autodiff) and device.
pub fn train_on<B: TrainBackend>(
    cfg: TrainConfig,
    opts: RunOptions,
    device: B::Device,
) -> Result<TrainSummary> {
    let (world, comm) = join_world(&cfg, Some(&opts.run_dir))?;
    let result = train_ranks::<B>(cfg, opts, device, world, comm.as_ref());
    orrery_dist::abort_on_error(comm.as_ref(), result)
}

/// The training loop of one rank among `comm`'s, in its phases: start or
/// resume, then steps (each followed by its evaluation, logging and
/// checkpoint when due), then the end-of-run evaluation.
fn train_ranks<B: TrainBackend>(
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
    let from = crate::rundir::start_checkpoint(&opts, main, comm)?;
    let (data, stream) = open_checked(&cfg, &world)?;
    let mut run: Started<B> =
        start_or_resume(&cfg, run_dir, from.as_deref(), (&world, comm), &device)?;
    let mut loader = Feed::start(stream, &data, &cfg, &world, run.cursor)?;
    let held = HeldOut::<B::InnerBackend>::new(&data, &cfg, &device);
    let hparams = crate::records::hparam_values(&cfg, &opts.hparams)?;
    let mut records = Records::open(run_dir, main, run.step, &hparams)?;

    let start_step = run.step;
    let heldout_start = begin(&cfg, &run, comm, &held, &mut records)?;
    say(format!(
        "training {} params on {} clips ({} held out, {} skipped as too short), {} steps from step {start_step}; held-out loss {heldout_start:.4}{}",
        cfg.model.num_params(),
        loader.clips(&data),
        data.holdout.len(),
        loader.skipped_short(),
        cfg.run.steps,
        backend_note(&cfg),
    ));
    let bar = if main {
        crate::progress::progress_bar(cfg.run.steps, start_step)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let stop_at = opts
        .stop_after
        .map_or(cfg.run.steps, |n| (start_step + n).min(cfg.run.steps));
    let run_start = Instant::now();
    let mut window = Window::new();
    let mut health = Health::default();
    let mut stopped = None;
    let mut saver = Saver::new(opts.kill_at);
    let mut last = Evaluation {
        heldout: heldout_start,
        ..Default::default()
    };
    let mut last_ckpt = from.clone().unwrap_or_default();
    while run.step < stop_at {
        // Step.
        let t0 = Instant::now();
        let batch = to_device::<B>(&loader.next_batch()?, &cfg.model, &device);
        records.batch(run.step + 1, &loader)?;
        window.data_wait += t0.elapsed();
        let (next, out) = run.replica.step(
            &cfg,
            &batch,
            run.step,
            (&mut run.optim, &mut run.ema),
            &run.shapes,
            comm,
        )?;
        run.replica = next;
        run.step += 1;
        let step = run.step;
        let say_over_bar = |m: String| bar.suspend(|| say(m));
        health.after(step, &out, &cfg, &mut run.skipped_steps, &say_over_bar)?;
        window.add(&out);
        // A signal on any rank: every rank logs, checkpoints and stops
        // after this step.
        if step < stop_at {
            stopped = opts.stop.agreed(comm)?;
        }
        let last_step = step == stop_at || stopped.is_some();
        bar.set_position(step);
        bar.set_message(format!("loss {:.4}", out.loss));
        // Evaluate and log.
        let mut line = MetricsLine {
            step,
            ..Default::default()
        };
        let eval_now = step % cfg.logging.eval_every == 0 || step == stop_at;
        if eval_now {
            last = evaluate(&cfg, &run, comm, &held, step == stop_at, &mut line)?;
        }
        if step % cfg.logging.every == 0 || last_step {
            window.close(&cfg, &out, &mut line);
            line.skipped_steps = Some(run.skipped_steps);
            bar.suspend(|| say(progress_line(&cfg, &line, eval_now.then_some(&last))));
        }
        if !line.is_empty() {
            records.log(&line)?;
        }
        // Checkpoint.
        if step % cfg.checkpoint.every == 0 || last_step {
            last_ckpt = saver.save(&cfg, &run, &loader, (&world, comm), run_dir)?;
        }
        saver.poll(comm)?;
        if stopped.is_some() {
            break;
        }
    }
    bar.finish_and_clear();
    // The last checkpoint is complete before anyone leaves (finish's barrier).
    saver.wait(comm)?;
    if stopped.is_none() {
        records.finished()?;
    }
    finish(
        &cfg,
        &run,
        comm,
        &held,
        (start_step, heldout_start),
        last,
        (&world, run_start),
        last_ckpt,
        stopped,
    )
}

/// The run's data, checked against the model; skipped bad rows are named.
fn open_checked(
    cfg: &TrainConfig,
    world: &World,
) -> Result<(
    orrery_data::Dataset,
    Option<orrery_data::stream::StreamLoader>,
)> {
    let (data, stream) = open_data(cfg, world)?;
    crate::geometry::check_geometry(cfg, &data)?;
    if let (true, Some(first)) = (world.is_main(), data.bad_rows.first()) {
        eprintln!(
            "skipped {} bad rows (data.max_bad_rows = {}), the first: {first}",
            data.bad_rows.len(),
            cfg.data.max_bad_rows,
        );
    }
    Ok((data, stream))
}

/// The held-out loss before this run's first step; a fresh run logs it as
/// step 0 (a resumed run keeps the line its checkpoint's step already has).
fn begin<B: TrainBackend>(
    cfg: &TrainConfig,
    run: &Started<B>,
    comm: &dyn Collective,
    held: &HeldOut<B::InnerBackend>,
    records: &mut Records,
) -> Result<f64> {
    let heldout = run
        .replica
        .eval(Weights::Online, comm, |m| heldout_loss(cfg, m, &held.own))?;
    if run.step == 0 {
        let by_level = run.replica.eval(Weights::Online, comm, |m| {
            heldout_loss_by_level(cfg, m, &held.own)
        })?;
        records.log(&MetricsLine {
            step: 0,
            heldout_loss: Some(heldout),
            loss_by_t: by_level.try_into().ok(),
            ..Default::default()
        })?;
    }
    Ok(heldout)
}

/// The last phase: the end-of-run held-out losses (evaluated at the last
/// step, or here when no step was left; not after a signal, which leaves
/// them NaN to stop at once), a barrier so that nobody leaves before rank 0
/// has written the last checkpoint, and the summary.
#[allow(clippy::too_many_arguments)]
fn finish<B: TrainBackend>(
    cfg: &TrainConfig,
    run: &Started<B>,
    comm: &dyn Collective,
    held: &HeldOut<B::InnerBackend>,
    (start_step, heldout_start): (u64, f64),
    last: Evaluation,
    (world, run_start): (&World, Instant),
    last_ckpt: PathBuf,
    stopped_by: Option<i32>,
) -> Result<TrainSummary> {
    let (heldout_end, heldout_ema) = match last.heldout_ema {
        Some(ema_loss) => (last.heldout, ema_loss),
        None if stopped_by.is_some() => (f64::NAN, f64::NAN),
        None => (
            run.replica
                .eval(Weights::Online, comm, |m| heldout_loss(cfg, m, &held.own))?,
            run.replica.eval(Weights::Ema(&run.ema), comm, |m| {
                heldout_loss(cfg, m, &held.own)
            })?,
        ),
    };
    comm.barrier()?;
    let steps_run = (run.step - start_step).max(1);
    Ok(TrainSummary {
        start_step,
        end_step: run.step,
        heldout_loss_start: heldout_start,
        heldout_loss_end: heldout_end,
        heldout_loss_ema: heldout_ema,
        context_gain: last.gains.context_gain,
        action_gain: last.gains.action_gain,
        rank: world.rank,
        seconds_per_step: run_start.elapsed().as_secs_f64() / steps_run as f64,
        checkpoint: last_ckpt,
        stopped_by,
    })
}

/// The start line's note on which CUDA kernels run (nothing on the CPU).
fn backend_note(cfg: &TrainConfig) -> &'static str {
    match (cfg.run.device, cfg.run.fusion) {
        (crate::config::Device::Cpu, _) => "",
        (crate::config::Device::Cuda, false) => "; cuda, unfused kernels (run.fusion)",
        (crate::config::Device::Cuda, true) => "; cuda, fused kernels (run.fusion)",
    }
}

/// Steps skipped in a row for a non-finite loss or gradient norm.
#[derive(Default)]
struct Health {
    /// The first of the current run of skipped steps, and how many.
    in_a_row: Option<(u64, u64)>,
}

impl Health {
    /// Count step `step` if it was skipped (in `skipped`, the run's total),
    /// say so, and stop the run when `run.max_skipped_steps` were skipped in
    /// a row. Every rank sees the same global loss and norm, so every rank
    /// decides alike.
    fn after(
        &mut self,
        step: u64,
        out: &StepOut,
        cfg: &TrainConfig,
        skipped: &mut u64,
        say: &dyn Fn(String),
    ) -> Result<()> {
        if !out.skipped {
            self.in_a_row = None;
            return Ok(());
        }
        *skipped += 1;
        let (first, n) = match self.in_a_row {
            Some((first, n)) => (first, n + 1),
            None => (step, 1),
        };
        self.in_a_row = Some((first, n));
        let limit = cfg.run.max_skipped_steps;
        say(format!(
            "step {step} skipped: loss {} and gradient norm {} (not finite); nothing was updated ({n} in a row, run.max_skipped_steps = {limit}; {skipped} in this run)",
            out.loss, out.grad_norm
        ));
        if n >= limit {
            return Err(crate::TrainError::NonFinite {
                first,
                step,
                last: format!("loss {}, gradient norm {}", out.loss, out.grad_norm),
                limit,
            });
        }
        Ok(())
    }
}

/// Training loss and throughput since the last logged step.
struct Window {
    loss: f64,
    /// Steps in the window, and of those the ones not skipped (the loss
    /// is their mean).
    steps: u64,
    counted: u64,
    data_wait: Duration,
    start: Instant,
}

impl Window {
    fn new() -> Self {
        Window {
            loss: 0.0,
            steps: 0,
            counted: 0,
            data_wait: Duration::ZERO,
            start: Instant::now(),
        }
    }

    fn add(&mut self, out: &StepOut) {
        self.steps += 1;
        if !out.skipped {
            self.loss += out.loss;
            self.counted += 1;
        }
    }

    /// Fill `line`'s training and throughput scalars (the last step's
    /// learning rate and gradient norm in `out`), and start a new window.
    fn close(&mut self, cfg: &TrainConfig, out: &StepOut, line: &mut MetricsLine) {
        let secs = self.start.elapsed().as_secs_f64();
        let clips = self.steps as f64 * cfg.data.global_batch as f64;
        line.loss = (self.counted > 0).then(|| self.loss / self.counted as f64);
        line.lr = Some(out.lr);
        line.grad_norm = Some(out.grad_norm);
        line.samples_per_s = Some(clips / secs);
        // Model FLOP/s from the FLOPs count; divide by the device's peak for MFU.
        line.model_tflops_per_s =
            Some(clips * cfg.model.train_flops_per_sample(cfg.model.frames) / secs / 1e12);
        line.step_time_s = Some(secs / self.steps as f64);
        line.data_wait_frac = Some(self.data_wait.as_secs_f64() / secs);
        *self = Window::new();
    }
}

/// The latest evaluation of the run.
#[derive(Default)]
struct Evaluation {
    /// Held-out loss, online weights.
    heldout: f64,
    /// Next-frame loss and how it depends on context and actions.
    gains: NextFrameEval,
    /// Held-out loss of the EMA weights (at the last step).
    heldout_ema: Option<f64>,
}

/// Evaluate the held-out clips (and, with `ema`, the EMA weights too) and
/// fill `line`'s evaluation scalars. Every rank calls this together.
fn evaluate<B: TrainBackend>(
    cfg: &TrainConfig,
    run: &Started<B>,
    comm: &dyn Collective,
    held: &HeldOut<B::InnerBackend>,
    ema: bool,
    line: &mut MetricsLine,
) -> Result<Evaluation> {
    let mut e = Evaluation::default();
    e.heldout = run
        .replica
        .eval(Weights::Online, comm, |m| heldout_loss(cfg, m, &held.own))?;
    line.heldout_loss = Some(e.heldout);
    let by_level = run.replica.eval(Weights::Online, comm, |m| {
        heldout_loss_by_level(cfg, m, &held.own)
    })?;
    line.loss_by_t = by_level.try_into().ok();
    // Next-frame gains only mean something for world models.
    if cfg.model.has_actions() {
        e.gains = run.replica.eval(Weights::Online, comm, |m| {
            next_frame_eval(cfg, m, &held.own, &held.foreign, &held.other_action)
        })?;
        line.next_frame_loss = Some(e.gains.loss);
        line.context_gain = Some(e.gains.context_gain);
        line.action_gain = Some(e.gains.action_gain);
    }
    if ema {
        e.heldout_ema = Some(run.replica.eval(Weights::Ema(&run.ema), comm, |m| {
            heldout_loss(cfg, m, &held.own)
        })?);
        line.heldout_loss_ema = e.heldout_ema;
    }
    Ok(e)
}

/// The progress line of a logged step, with the evaluation when there was one.
fn progress_line(cfg: &TrainConfig, line: &MetricsLine, eval: Option<&Evaluation>) -> String {
    let get = |v: Option<f64>| v.unwrap_or(f64::NAN);
    let evaluated = match eval {
        Some(e) if cfg.model.has_actions() => format!(
            "  held-out {:.4}  gain: context {:+.4} action {:+.4}",
            e.heldout, e.gains.context_gain, e.gains.action_gain
        ),
        Some(e) => format!("  held-out {:.4}", e.heldout),
        None => String::new(),
    };
    format!(
        "step {:>6}  loss {:.4}  lr {:.2e}  grad_norm {:.3}  {:.1} samples/s{evaluated}",
        line.step,
        get(line.loss),
        get(line.lr),
        get(line.grad_norm),
        get(line.samples_per_s),
    )
}
