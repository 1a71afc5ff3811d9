//! `orrery bench step`: time the training step of a config on its device.
use std::time::Instant;

use orrery_data::{Cursor, Dataset, Loader};
use orrery_model::{Dit, TrainBackend};

use crate::config::TrainConfig;
use crate::glue::{param_shapes, to_device};
use crate::replica::{Replica, StartState};
use crate::Result;
use orrery_parallel::world::join_world;

/// Timings of a step benchmark.
#[derive(Debug, Clone)]
pub struct StepBench {
    /// Parameters of the model.
    pub params: usize,
    /// Tokens per sample (frames x tokens per frame).
    pub tokens_per_sample: usize,
    /// Clips per step.
    pub batch: usize,
    /// Threads available to the CPU backend.
    pub threads: usize,
    /// Seconds of each timed step (data excluded).
    pub step_s: Vec<f64>,
    /// Seconds of loading each batch to the device.
    pub data_s: Vec<f64>,
    /// Training FLOPs per step ([`orrery_model::DitConfig::train_flops_per_sample`]:
    /// matmuls and dense attention, backward counted as twice the forward).
    pub flops_per_step: f64,
    /// Ranks (the global batch is split over them).
    pub ranks: usize,
    /// This process's rank.
    pub rank: usize,
    /// Seconds of each timed step spent in collectives.
    pub comm_s: Vec<f64>,
    /// Bytes each rank sends into collectives per step.
    pub comm_bytes: usize,
    /// Bytes of parameter, gradient and AdamW state each rank holds
    /// (sharded under FSDP), and the largest unit FSDP gathers whole (0 for DDP).
    pub state_bytes: (usize, usize),
    /// Heap bytes live when the timed steps start, and the most live during
    /// them ([`crate::heap`]; 0 unless the binary counts its allocations).
    pub heap: (usize, usize),
    /// Context parallelism: bytes each rank sent to its group per step,
    /// measured, and by Ulysses' analysis (0 without).
    pub context_bytes: (usize, usize),
}

impl StepBench {
    /// Median of the step times.
    pub fn median_step(&self) -> f64 {
        let mut v = self.step_s.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

/// Run `warmup + steps` training steps of `cfg` and time the last `steps`,
/// on batches of the config's data, or (`synthetic`) of Gaussian latents of
/// the model's shape with random actions and labels: for throughput, the
/// values do not matter, and no dataset of that shape is needed.
pub fn bench_step(
    cfg: &TrainConfig,
    steps: usize,
    warmup: usize,
    synthetic: bool,
) -> Result<StepBench> {
    orrery_parallel::with_backend!(cfg.run, |AB, device| {
        let (world, comm) = join_world(cfg, None)?;
        bench_on::<AB>(
            cfg,
            (steps, warmup),
            synthetic,
            device,
            (&world, comm.as_ref()),
        )
    })
}

/// [`bench_step`] with `threads` data-parallel ranks as threads of this
/// process (shared-memory sums, [`ThreadComm`]), each with a rayon pool of
/// one thread: what one process gets from using every core the way
/// `orrery launch -n N` does. Returns rank 0's figures.
pub fn bench_step_threads(
    cfg: &TrainConfig,
    (steps, warmup): (usize, usize),
    synthetic: bool,
    threads: usize,
) -> Result<StepBench> {
    cfg.validate_world(threads)?;
    orrery_parallel::with_backend!(cfg.run, |AB, device| threads_on::<AB>(
        cfg,
        (steps, warmup),
        synthetic,
        device,
        threads
    ))
}

fn threads_on<B: TrainBackend>(
    cfg: &TrainConfig,
    (steps, warmup): (usize, usize),
    synthetic: bool,
    device: B::Device,
    threads: usize,
) -> Result<StepBench> {
    use orrery_dist::Collective;
    let comms = orrery_dist::ThreadComm::world(
        threads,
        std::time::Duration::from_secs_f64(cfg.parallel.timeout_s),
    );
    let results: Vec<Result<StepBench>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .map(|comm| {
                let device = device.clone();
                s.spawn(move || {
                    let world = orrery_dist::World {
                        rank: comm.rank(),
                        size: threads,
                        local_rank: comm.rank(),
                        launcher: "threads",
                    };
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .map_err(|e| {
                            orrery_parallel::Error::Config(format!("a thread pool: {e}"))
                        })?;
                    pool.install(|| {
                        let out =
                            bench_on::<B>(cfg, (steps, warmup), synthetic, device, (&world, comm));
                        if let Err(e) = &out {
                            comm.fail(&e.to_string());
                        }
                        out
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(orrery_parallel::Error::Config(
                        "a thread rank panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut first = None;
    for r in results {
        let r = r?;
        first.get_or_insert(r);
    }
    first.ok_or_else(|| orrery_parallel::Error::Config("no ranks".into()))
}

/// Where the benchmark's batches come from.
enum Source<'a> {
    Data(Loader<'a>),
    /// Gaussian batches: `rows` per rank; `next` is the first global
    /// sample index of this rank's next rows, `stride` the global batch.
    Synthetic {
        rng: rand_chacha::ChaCha8Rng,
        rows: usize,
        next: u64,
        stride: u64,
    },
}

impl Source<'_> {
    fn next_batch(&mut self, m: &orrery_model::DitConfig) -> orrery_data::Batch {
        use rand::Rng;
        use rand_distr::{Distribution, StandardNormal};
        let (rng, rows, next, stride) = match self {
            Source::Data(loader) => return loader.next_batch(),
            Source::Synthetic {
                rng,
                rows,
                next,
                stride,
            } => (rng, *rows, next, *stride),
        };
        let dims = [rows, m.frames, m.channels, m.height, m.width];
        let n: usize = dims.iter().product();
        let latents = (0..n).map(|_| StandardNormal.sample(rng)).collect();
        let ids: Vec<u64> = (*next..*next + rows as u64).collect();
        *next += stride;
        orrery_data::Batch {
            dims,
            latents,
            actions: (m.num_actions > 0).then(|| {
                (0..rows * m.frames)
                    .map(|_| rng.random_range(0..m.num_actions as i64))
                    .collect()
            }),
            action_values: (m.action_dim > 0).then(|| {
                (0..rows * m.frames * m.action_dim)
                    .map(|_| StandardNormal.sample(rng))
                    .collect()
            }),
            labels: (m.num_classes > 0).then(|| {
                (0..rows)
                    .map(|_| rng.random_range(0..m.num_classes as i64))
                    .collect()
            }),
            clip_ids: ids.iter().map(|i| format!("synthetic-{i}")).collect(),
            sample_ids: ids,
        }
    }
}

fn bench_on<B: TrainBackend>(
    cfg: &TrainConfig,
    (steps, warmup): (usize, usize),
    synthetic: bool,
    device: B::Device,
    (world, comm): (&orrery_dist::World, &dyn orrery_dist::Collective),
) -> Result<StepBench> {
    let data = if synthetic {
        None
    } else {
        Some(Dataset::open_with(
            &cfg.data.url,
            cfg.data.holdout_clips,
            cfg.data.max_bad_rows,
        )?)
    };
    B::seed(&device, cfg.run.seed);
    let model: Dit<B> = cfg.model.init(&device)?;
    let shapes = param_shapes(&model);
    let params = model.param_count();
    let (mut replica, mut optim, mut ema) =
        Replica::new(cfg, model, world, comm, &device, StartState::Fresh)?;
    // The ranks of a context group read the same clips.
    let c = cfg.parallel.context.max(1);
    let (data_rank, data_ranks) = (world.rank / c, world.size / c);
    let mut source = match &data {
        Some(data) => Source::Data(Loader::new(
            &data.train,
            cfg.run.seed,
            cfg.data.global_batch,
            cfg.model.frames,
            (data_rank, data_ranks),
            Cursor::default(),
        )?),
        None => {
            use rand::SeedableRng;
            let rows = cfg.data.global_batch / data_ranks;
            Source::Synthetic {
                rng: rand_chacha::ChaCha8Rng::seed_from_u64(cfg.run.seed ^ data_rank as u64),
                rows,
                next: (data_rank * rows) as u64,
                stride: cfg.data.global_batch as u64,
            }
        }
    };
    let m = &cfg.model;
    let tokens = m.frame_groups(m.frames) * m.tokens_per_frame();
    let per_sample = m.train_flops_per_sample(m.frames);
    let mut bench = StepBench {
        params,
        tokens_per_sample: tokens,
        batch: cfg.data.global_batch,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        step_s: Vec::new(),
        data_s: Vec::new(),
        flops_per_step: per_sample * cfg.data.global_batch as f64,
        ranks: world.size,
        rank: world.rank,
        comm_s: Vec::new(),
        comm_bytes: 0,
        state_bytes: match &replica {
            Replica::Full(_) => (16 * params, 0),
            Replica::Sharded(fsdp) => fsdp.state_bytes(),
        },
        heap: (0, 0),
        context_bytes: (
            0,
            orrery_parallel::context::ulysses_bytes_per_step(
                cfg,
                cfg.data.global_batch / data_ranks,
            ),
        ),
    };
    if let Some(n) = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        bench.threads = n;
    }
    for step in 0..warmup + steps {
        if step == warmup {
            bench.heap.0 = crate::heap::reset_peak();
            bench.context_bytes.0 = replica.context().map_or(0, |c| c.0.bytes_sent());
        }
        let t0 = Instant::now();
        let batch = to_device::<B>(&source.next_batch(m), m, &device);
        let t1 = Instant::now();
        let (next, out) = replica.step(
            cfg,
            &batch,
            step as u64,
            (&mut optim, &mut ema),
            &shapes,
            comm,
        )?;
        replica = next;
        let t2 = Instant::now();
        if step >= warmup {
            bench.data_s.push((t1 - t0).as_secs_f64());
            bench.step_s.push((t2 - t1).as_secs_f64());
            bench.comm_s.push(out.comm_s);
            bench.comm_bytes = out.comm_bytes;
        }
    }
    bench.heap.1 = crate::heap::peak();
    let sent = replica.context().map_or(0, |c| c.0.bytes_sent());
    bench.context_bytes.0 = (sent - bench.context_bytes.0) / steps.max(1);
    Ok(bench)
}
