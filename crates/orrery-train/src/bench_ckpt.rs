//! `orrery bench ckpt`: what a checkpoint costs a run. Trains a config's
//! model in rounds of three blocks of steps: no checkpoint, a synchronous
//! one, an asynchronous one (taking turns, so all see the same machine
//! noise). A checkpoint's block runs at least `block` steps and on until
//! its write is over; its time beyond as many plain steps (the median of
//! the plain blocks) is the stall: the time the save blocks the training
//! thread plus what the background writer takes from the steps.
//! Then reads the checkpoint back, with its files dropped from the page
//! cache first (cold) and again (warm).
use orrery_model::TrainBackend;
use std::path::{Path, PathBuf};
use std::time::Instant;

use orrery_dist::Collective;
use orrery_parallel::world::join_world;

use crate::checkpoint::{TensorFile, EMA_FILE, MODEL_FILE, OPTIM_FILE};
use crate::config::TrainConfig;
use crate::feed::{open_data, Feed};
use crate::glue::to_device;
use crate::saver::Saver;
use crate::start::{start_or_resume, Started};
use crate::Result;

/// What [`bench_checkpoint`] measured (rank 0's view).
#[derive(Debug, Clone)]
pub struct CheckpointBench {
    /// Bytes of one checkpoint's tensor files.
    pub bytes: u64,
    /// Median seconds of a step of the blocks without a checkpoint.
    pub step_s: f64,
    /// Per block: seconds beyond as many plain steps, synchronous saves.
    pub stall_sync_s: Vec<f64>,
    /// The same with asynchronous saves.
    pub stall_async_s: Vec<f64>,
    /// Seconds the training thread was inside the save call, synchronous.
    pub blocked_sync_s: Vec<f64>,
    /// The same, asynchronous (the host snapshot).
    pub blocked_async_s: Vec<f64>,
    /// Seconds to read the checkpoint's tensors, cold (evicted from the
    /// page cache) and warm.
    pub load_s: (f64, f64),
}

/// Train `cfg` in `blocks` rounds of a plain, a synchronous and an
/// asynchronous block of (at least) `block` steps, in `run_dir`.
pub fn bench_checkpoint(
    cfg: TrainConfig,
    run_dir: &Path,
    blocks: usize,
    block: u64,
) -> Result<CheckpointBench> {
    orrery_parallel::with_backend!(cfg.run, |AB, device| bench_on::<AB>(
        cfg, run_dir, blocks, block, device
    ))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_on<B: TrainBackend>(
    mut cfg: TrainConfig,
    run_dir: &Path,
    blocks: usize,
    block: u64,
    device: B::Device,
) -> Result<CheckpointBench> {
    let (world, comm) = join_world(&cfg, Some(run_dir))?;
    let comm = comm.as_ref();
    let (data, stream) = open_data(&cfg, &world)?;
    let started: Started<B> = start_or_resume(&cfg, run_dir, None, (&world, comm), &device)?;
    let mut loader = Feed::start(stream, &data, &cfg, &world, started.cursor)?;
    let mut run = Some(started);
    cfg.checkpoint.keep = 1;
    let step = |cfg: &TrainConfig, run: &mut Option<Started<B>>, loader: &mut Feed| {
        let (next, secs) = train_step(cfg, run.take().expect("a run"), loader, &device, comm)?;
        *run = Some(next);
        Ok::<f64, crate::TrainError>(secs)
    };
    // Warm up.
    step(&cfg, &mut run, &mut loader)?;
    let mut out = CheckpointBench {
        bytes: 0,
        step_s: 0.0,
        stall_sync_s: vec![],
        stall_async_s: vec![],
        blocked_sync_s: vec![],
        blocked_async_s: vec![],
        load_s: (0.0, 0.0),
    };
    let mut saver = Saver::new(None);
    let mut last = PathBuf::new();
    let mut plain = Vec::new();
    // Per block: (asynchronous, seconds inside the save call, seconds of
    // the block, steps in it).
    let mut timed = Vec::new();
    for _ in 0..blocks {
        for _ in 0..block {
            plain.push(step(&cfg, &mut run, &mut loader)?);
        }
        for asynchronous in [false, true] {
            cfg.checkpoint.asynchronous = asynchronous;
            let start = Instant::now();
            let now = run.as_ref().expect("a run");
            last = saver.save(&cfg, now, &loader, (&world, comm), run_dir)?;
            let blocked = start.elapsed().as_secs_f64();
            // At least `block` steps, and on until the write is over.
            let mut steps = 0;
            loop {
                step(&cfg, &mut run, &mut loader)?;
                saver.poll(comm)?;
                steps += 1;
                let mut busy = [if saver.busy() { 1.0f32 } else { 0.0 }];
                comm.all_reduce_sum(&mut busy)?;
                if steps >= block && busy[0] == 0.0 {
                    break;
                }
            }
            saver.wait(comm)?;
            timed.push((asynchronous, blocked, start.elapsed().as_secs_f64(), steps));
        }
    }
    out.step_s = median(&plain);
    for (asynchronous, blocked, secs, steps) in timed {
        let stall = secs - steps as f64 * out.step_s;
        if asynchronous {
            out.stall_async_s.push(stall);
            out.blocked_async_s.push(blocked);
        } else {
            out.stall_sync_s.push(stall);
            out.blocked_sync_s.push(blocked);
        }
    }
    if world.is_main() {
        out.bytes = files(&last)
            .iter()
            .map(|f| f.metadata().map_or(0, |m| m.len()))
            .sum();
        out.load_s = (read_back(&last, true)?, read_back(&last, false)?);
    }
    Ok(out)
}

/// One training step of `run`; its seconds (data loading excluded).
fn train_step<B: TrainBackend>(
    cfg: &TrainConfig,
    mut run: Started<B>,
    loader: &mut Feed,
    device: &B::Device,
    comm: &dyn Collective,
) -> Result<(Started<B>, f64)> {
    let batch = to_device::<B>(&loader.next_batch()?, &cfg.model, device);
    let t = Instant::now();
    let state = (&mut run.optim, &mut run.ema);
    let (next, _) = run
        .replica
        .step(cfg, &batch, run.step, state, &run.shapes, comm)?;
    run.replica = next;
    run.step += 1;
    Ok((run, t.elapsed().as_secs_f64()))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    [MODEL_FILE, EMA_FILE, OPTIM_FILE]
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

/// Seconds to read every tensor of checkpoint `dir` (as a resume does),
/// after dropping its files from the page cache when `cold`.
fn read_back(dir: &Path, cold: bool) -> Result<f64> {
    if cold {
        for f in files(dir) {
            orrery_checkpoint::evict_from_page_cache(&f)?;
        }
    }
    let t = Instant::now();
    for f in files(dir) {
        std::hint::black_box(TensorFile::open(&f)?.read_all()?);
    }
    Ok(t.elapsed().as_secs_f64())
}
