//! The model as this rank holds it: whole (DDP, or one process) or as FSDP
//! shards. The trainer steps, evaluates and checkpoints through this one
//! type; checkpoints hold whole tensors either way, so a run can resume with
//! the other strategy or another number of ranks.
use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use orrery_diffusion::{Denoiser, TrainBatch};
use orrery_dist::{Collective, World};
use orrery_model::named::{map_named, visit_named};
use orrery_model::{Dit, TrainBackend};

use crate::fsdp::Fsdp;
use crate::fsdp_step::fsdp_step;
use crate::glue::denoiser;
use crate::optim::FlatMap;
use crate::optim::{AdamW, Ema};
use crate::snapshot::{Held, Snapshot, WholeSnapshot};
use crate::step::{train_step, StepOut};
use crate::Result;
use orrery_checkpoint::{Pending, TensorFile, EMA_FILE, MODEL_FILE, OPTIM_FILE};
use orrery_config::{GatherDtype, Strategy, TrainConfig};

/// The model as this rank holds it.
pub enum Replica<B: TrainBackend> {
    /// Every parameter, on every rank.
    Full(Dit<B>),
    /// This rank's shard of every unit.
    Sharded(Fsdp<B::InnerBackend>),
}

/// Which weights to evaluate.
#[derive(Clone, Copy)]
pub enum Weights<'a, B: TrainBackend> {
    /// The weights being trained.
    Online,
    /// Their exponential moving average.
    Ema(&'a Ema<B::InnerBackend>),
}

/// Where a run's AdamW moments and EMA start from.
pub enum StartState<'a> {
    /// A fresh start from the seeded initial weights: zero moments, EMA =
    /// the weights. FSDP draws them unit by unit (never whole).
    Fresh,
    /// A checkpoint's files, read one tensor at a time: sharded, each rank
    /// keeps only its shard of each. DDP takes its weights from the model
    /// as given (loaded by the trainer), FSDP its shards from `model`.
    Checkpoint {
        /// The model weights file.
        model: &'a TensorFile,
        /// The AdamW moments file.
        optim: &'a TensorFile,
        /// The EMA weights file.
        ema: &'a TensorFile,
        /// Optimizer steps taken.
        steps: u64,
        /// EMA updates taken.
        ema_updates: u64,
    },
}

/// The whole flat tensor `name` of `file` on `device`, if there.
fn read_flat<B: burn::tensor::backend::Backend>(
    file: &TensorFile,
    name: &str,
    device: &B::Device,
) -> Result<Option<Tensor<B, 1>>> {
    Ok(file.get(name)?.map(|t| t.to_flat(device)))
}

impl StartState<'_> {
    /// Whole moments and EMA on `device` (DDP; every tensor read once);
    /// `weights` (the model's, flat, by name) start a fresh EMA.
    fn whole<B: TrainBackend>(
        self,
        weights: BTreeMap<String, Tensor<B::InnerBackend, 1>>,
        device: &B::Device,
    ) -> Result<(AdamW<B::InnerBackend>, Ema<B::InnerBackend>)> {
        let (optim, ema, steps, ema_updates) = match self {
            StartState::Fresh => return Ok((AdamW::default(), Ema::new(weights))),
            StartState::Checkpoint {
                optim,
                ema,
                steps,
                ema_updates,
                ..
            } => (optim, ema, steps, ema_updates),
        };
        let mut adam = AdamW {
            steps,
            ..Default::default()
        };
        for key in optim.names() {
            adam.insert(
                &key,
                read_flat(optim, &key, device)?.expect("a listed tensor"),
            );
        }
        let mut weights = BTreeMap::new();
        for name in ema.names() {
            let t = read_flat(ema, &name, device)?.expect("a listed tensor");
            weights.insert(name, t);
        }
        let mut averaged = Ema::new(weights);
        averaged.updates = ema_updates;
        Ok((adam, averaged))
    }
}

impl<B: TrainBackend> Replica<B> {
    /// Hold `model` (identical on every rank) as the config's strategy says,
    /// with its optimizer state and EMA (by parameter name, as a checkpoint
    /// or a fresh start gives them), sharded to match.
    pub fn new(
        cfg: &TrainConfig,
        model: Dit<B>,
        world: &World,
        comm: &dyn Collective,
        device: &B::Device,
        start: StartState<'_>,
    ) -> Result<(Self, AdamW<B::InnerBackend>, Ema<B::InnerBackend>)> {
        let context = match cfg.parallel.context {
            1 => None,
            c => {
                let mesh = crate::context::Mesh::new(world.rank, world.size, c)?;
                Some(crate::context::ContextComm::split(comm, &mesh)?.shard())
            }
        };
        let model = model.with_context(context.clone());
        if cfg.parallel.strategy == Strategy::Ddp {
            // Draw every weight now, in module order: a lazy parameter is
            // drawn when first read, and each copy made before that (a bf16
            // cast, a micro-batch's graph) would draw its own. Then every
            // rank takes rank 0's (FSDP broadcasts unit by unit instead).
            let mut w = BTreeMap::new();
            visit_named(&model, |name, _, _, flat| {
                w.insert(name.to_string(), flat.inner());
            });
            let model = if comm.size() > 1 {
                crate::ddp::broadcast_from_rank0(comm, &mut w)?;
                map_named(model, |name, _, _| Tensor::from_inner(w[name].clone()))
            } else {
                model
            };
            let (optim, ema) = start.whole::<B>(w, device)?;
            return Ok((Replica::Full(model), optim, ema));
        }
        // A fresh or resumed FSDP rank never holds the model whole: its
        // shards are drawn unit by unit, or read from the checkpoint.
        let mut fsdp = Fsdp::plan(model.config(), world.rank, world.size, device)?;
        drop(model);
        fsdp.gather_bf16 = cfg.parallel.gather_dtype == GatherDtype::Bf16;
        fsdp.compute_bf16 = cfg.run.precision == orrery_config::Precision::Bf16;
        fsdp.prefetch = prefetch(cfg, world, comm);
        fsdp.context = context;
        let (sharded_optim, sharded_ema) = match start {
            StartState::Fresh => {
                fsdp.init_params(comm)?;
                let optim = AdamW {
                    exp_avg: fsdp.shard(|_| None)?,
                    exp_avg_sq: fsdp.shard(|_| None)?,
                    steps: 0,
                };
                (optim, Ema::new(fsdp.params.clone()))
            }
            StartState::Checkpoint {
                model,
                optim,
                ema,
                steps,
                ema_updates,
            } => {
                let read = |file: &TensorFile, prefix: &str| fsdp.shard_file(file, prefix);
                // Every weight must be there (moments and EMA may be absent).
                let missing = fsdp
                    .named_layout("")
                    .into_iter()
                    .find(|(n, _)| !model.contains(n));
                if let Some((name, _)) = missing {
                    return Err(crate::Error::Checkpoint(format!(
                        "{} has no tensor {name}: the checkpoint does not fit this model; resume with the config it was trained with, or --resume never",
                        orrery_checkpoint::MODEL_FILE
                    )));
                }
                let params = read(model, "")?;
                let sharded_optim = AdamW {
                    exp_avg: read(optim, "exp_avg.")?,
                    exp_avg_sq: read(optim, "exp_avg_sq.")?,
                    steps,
                };
                let mut sharded_ema = Ema::new(read(ema, "")?);
                sharded_ema.updates = ema_updates;
                fsdp.params = params;
                (sharded_optim, sharded_ema)
            }
        };
        Ok((Replica::Sharded(fsdp), sharded_optim, sharded_ema))
    }

    /// This rank's context group, if context parallelism is on.
    pub fn context(&self) -> Option<&orrery_model::ContextShard> {
        match self {
            Replica::Full(model) => model.context(),
            Replica::Sharded(fsdp) => fsdp.context.as_ref(),
        }
    }

    /// One optimizer step.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        self,
        cfg: &TrainConfig,
        batch: &TrainBatch<B>,
        step: u64,
        state: (&mut AdamW<B::InnerBackend>, &mut Ema<B::InnerBackend>),
        shapes: &BTreeMap<String, Vec<usize>>,
        comm: &dyn Collective,
    ) -> Result<(Self, StepOut)> {
        match self {
            Replica::Full(model) => {
                let (model, out) = train_step(cfg, model, batch, step, state, shapes, comm)?;
                Ok((Replica::Full(model), out))
            }
            Replica::Sharded(mut fsdp) => {
                let out = fsdp_step(cfg, &mut fsdp, batch, step, state, comm)?;
                Ok((Replica::Sharded(fsdp), out))
            }
        }
    }

    /// Run `f` with the weights as a no-autodiff denoiser. Sharded, every
    /// rank must call this in step with the others.
    pub fn eval<R>(
        &self,
        weights: Weights<'_, B>,
        comm: &dyn Collective,
        f: impl FnOnce(&dyn Denoiser<B::InnerBackend>) -> Result<R>,
    ) -> Result<R> {
        match (self, weights) {
            (Replica::Full(model), Weights::Online) => f(&denoiser(&model.valid())),
            (Replica::Full(model), Weights::Ema(ema)) => {
                let averaged = map_named(model.valid(), |name, _, _| ema.weights[name].clone());
                let out = f(&denoiser(&averaged));
                out
            }
            (Replica::Sharded(fsdp), Weights::Online) => f(&fsdp.denoiser(&fsdp.params, comm)),
            (Replica::Sharded(fsdp), Weights::Ema(ema)) => f(&fsdp.denoiser(&ema.weights, comm)),
        }
    }

    /// Everything this rank writes of a checkpoint, held for a background
    /// thread to write while training goes on ([`crate::snapshot`]): on
    /// rank 0 of a whole model (DDP, one process) the model, EMA and AdamW
    /// tensors (None on the other ranks, which write nothing); under FSDP
    /// every rank's own shards, which it writes in place.
    pub fn snapshot(
        &self,
        optim: &AdamW<B::InnerBackend>,
        ema: &Ema<B::InnerBackend>,
        shapes: &BTreeMap<String, Vec<usize>>,
        comm: &dyn Collective,
    ) -> Option<Snapshot<B::InnerBackend>> {
        match self {
            Replica::Full(_) if comm.rank() != 0 => None,
            Replica::Full(model) => {
                let mut weights = BTreeMap::new();
                visit_named(model, |name, _, shape, flat| {
                    weights.insert(name.to_string(), (shape, Held::Device(flat.inner())));
                });
                let held = |prefix: &str, map: &FlatMap<B::InnerBackend>| {
                    map.iter()
                        .map(|(name, t)| {
                            let key = format!("{prefix}{name}");
                            (key, (shapes[name].clone(), Held::Device(t.clone())))
                        })
                        .collect::<BTreeMap<_, _>>()
                };
                let mut moments = held("exp_avg.", &optim.exp_avg);
                moments.extend(held("exp_avg_sq.", &optim.exp_avg_sq));
                let files = BTreeMap::from([
                    (MODEL_FILE, weights),
                    (EMA_FILE, held("", &ema.weights)),
                    (OPTIM_FILE, moments),
                ]);
                Some(Snapshot::Whole(WholeSnapshot { files }))
            }
            Replica::Sharded(fsdp) => Some(Snapshot::Shards(fsdp.snapshot_shards(optim, ema))),
        }
    }

    /// Write the model, EMA and AdamW tensors, whole, into `pending`, on
    /// this thread: rank 0 of a whole model one tensor at a time (each file
    /// on a thread of its own); sharded, every rank must call this, and the
    /// units are gathered one at a time and streamed into rank 0's files.
    pub fn write_checkpoint(
        &self,
        pending: &Pending,
        optim: &AdamW<B::InnerBackend>,
        ema: &Ema<B::InnerBackend>,
        shapes: &BTreeMap<String, Vec<usize>>,
        comm: &dyn Collective,
    ) -> Result<()> {
        match self {
            Replica::Full(_) => match self.snapshot(optim, ema, shapes, comm) {
                Some(Snapshot::Whole(whole)) => whole.write(pending, true),
                _ => Ok(()),
            },
            Replica::Sharded(fsdp) => {
                for (file, shards) in [(MODEL_FILE, &fsdp.params), (EMA_FILE, &ema.weights)] {
                    let mut sink = pending.file(file, &fsdp.named_layout(""))?;
                    fsdp.write_gathered(shards, "", &mut sink, comm)?;
                    sink.finish()?;
                }
                let mut layout = fsdp.named_layout("exp_avg.");
                layout.extend(fsdp.named_layout("exp_avg_sq."));
                let mut sink = pending.file(OPTIM_FILE, &layout)?;
                fsdp.write_gathered(&optim.exp_avg, "exp_avg.", &mut sink, comm)?;
                fsdp.write_gathered(&optim.exp_avg_sq, "exp_avg_sq.", &mut sink, comm)?;
                Ok(sink.finish()?)
            }
        }
    }
}

/// FSDP's prefetch deadline when `parallel.prefetch` is on and can run:
/// several ranks over MPI with a gather lane, not NCCL. Makes the lane now
/// (a collective) and says on rank 0 what happens.
fn prefetch(
    cfg: &TrainConfig,
    world: &World,
    comm: &dyn Collective,
) -> Option<std::time::Duration> {
    if !cfg.parallel.prefetch || world.size == 1 {
        return None;
    }
    let why_not = if crate::nccl::device_collectives() {
        Some("units are gathered by NCCL on the device")
    } else if comm.gather_lane().is_none() {
        Some("MPI here does not give MPI_THREAD_MULTIPLE")
    } else {
        None
    };
    if world.is_main() {
        match why_not {
            Some(why) => eprintln!("fsdp: parallel.prefetch is on, but {why}: gathering in line"),
            None => eprintln!(
                "fsdp: prefetch: each next unit is gathered on a helper thread over a duplicate MPI communicator"
            ),
        }
    }
    why_not
        .is_none()
        .then(|| std::time::Duration::from_secs_f64(cfg.parallel.timeout_s))
}
