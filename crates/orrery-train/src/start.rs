//! The first phase of a run: start fresh or resume from a checkpoint, and
//! hold the model as the strategy says (whole, or FSDP shards). A resume is
//! checked before anything is written: the same [model], config changes a
//! resume can take, every checkpoint file matching the model, and every
//! rank at the same step.
use std::collections::BTreeMap;
use std::path::Path;

use orrery_data::Cursor;
use orrery_dist::{Collective, World};
use orrery_model::Dit;
use orrery_model::{named::load_host, TrainBackend};

use crate::checkpoint::{self, TensorFile};
use crate::config::{Strategy, TrainConfig};
use crate::glue::param_shapes;
use crate::optim::{AdamW, Ema};
use crate::replica::{Replica, StartState};
use crate::{io, Result, TrainError};

/// A run ready for its first step.
pub(crate) struct Started<B: TrainBackend> {
    /// The model as this rank holds it.
    pub replica: Replica<B>,
    /// AdamW state (this rank's shards under FSDP).
    pub optim: AdamW<B::InnerBackend>,
    /// EMA of the weights (this rank's shards under FSDP).
    pub ema: Ema<B::InnerBackend>,
    /// Steps done so far.
    pub step: u64,
    /// Of those, skipped for a non-finite loss or gradient norm.
    pub skipped_steps: u64,
    /// Where the data order continues.
    pub cursor: Cursor,
    /// Every parameter's shape, by name.
    pub shapes: BTreeMap<String, Vec<usize>>,
}

/// A checkpoint's files, opened and checked against the model.
struct Resumed {
    weights: TensorFile,
    optim: TensorFile,
    ema: TensorFile,
    ema_updates: u64,
    step: u64,
    skipped_steps: u64,
    cursor: Cursor,
}

/// Start fresh (`from` None) or resume from checkpoint directory `from`,
/// write the resolved config into `run_dir` (rank 0), and make the replica.
pub(crate) fn start_or_resume<B: TrainBackend>(
    cfg: &TrainConfig,
    run_dir: &Path,
    from: Option<&Path>,
    (world, comm): (&World, &dyn Collective),
    device: &B::Device,
) -> Result<Started<B>> {
    let say = |msg: String| {
        if world.is_main() {
            eprintln!("{msg}");
        }
    };
    B::seed(device, cfg.run.seed);
    // Lazy: each parameter is drawn from the seeded RNG when first read,
    // which for FSDP happens one unit at a time (never the whole model).
    let mut model: Dit<B> = cfg.model.init(device)?;
    let shapes = param_shapes(&model);
    let resumed = match from {
        Some(dir) => {
            let r = open_checkpoint(cfg, dir, &shapes, &say)?;
            // DDP loads the weights whole; FSDP ranks read their shards later.
            if cfg.parallel.strategy != Strategy::Fsdp {
                model = load_host(model, &r.weights.read_all()?, device)?;
            }
            say(format!(
                "resuming from {} at step {}",
                dir.display(),
                r.step
            ));
            Some(r)
        }
        None => None,
    };
    let (step, skipped_steps, cursor) = resumed.as_ref().map_or((0, 0, Cursor::default()), |r| {
        (r.step, r.skipped_steps, r.cursor)
    });
    // Written once the resume checks passed: a refused resume leaves the
    // run directory as it was.
    if world.is_main() {
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let resolved = toml::to_string(cfg).expect("config serializes");
        std::fs::write(run_dir.join("config.toml"), resolved).map_err(io(run_dir))?;
    }
    if comm.size() > 1 {
        same_step_on_every_rank(step, world, comm, run_dir)?;
        let c = cfg.parallel.context;
        let data_ranks = comm.size() / c;
        say(match c {
            1 => format!(
                "data parallel over {} ranks ({}, started by {}): {} clips per rank per step",
                comm.size(),
                comm.name(),
                world.launcher,
                cfg.data.global_batch / data_ranks
            ),
            _ => format!(
                "{} ranks ({}, started by {}): data parallel over {data_ranks} groups of {c} context-parallel ranks; each group runs {} clips per step, each rank 1/{c} of every clip's frames",
                comm.size(),
                comm.name(),
                world.launcher,
                cfg.data.global_batch / data_ranks
            ),
        });
    }
    let start = match &resumed {
        Some(r) => StartState::Checkpoint {
            model: &r.weights,
            optim: &r.optim,
            ema: &r.ema,
            // AdamW counts only the steps it took.
            steps: step - skipped_steps,
            ema_updates: r.ema_updates,
        },
        None => StartState::Fresh,
    };
    let (replica, optim, ema) = Replica::new(cfg, model, world, comm, device, start)?;
    drop(resumed);
    if let Replica::Sharded(fsdp) = &replica {
        report_fsdp_memory(cfg, fsdp, world, run_dir)?;
    }
    Ok(Started {
        replica,
        optim,
        ema,
        step,
        skipped_steps,
        cursor,
        shapes,
    })
}

/// Open checkpoint `dir` for `cfg`'s model: the same [model] section, only
/// config changes a resume can take (named on stderr), and model, AdamW
/// and EMA files that hold this model's tensors and nothing else, so that
/// nothing later reads a missing tensor as zeros or panics on a name.
fn open_checkpoint(
    cfg: &TrainConfig,
    dir: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
    say: &dyn Fn(String),
) -> Result<Resumed> {
    let state = checkpoint::load_state(dir)?;
    if state.config.model != cfg.model {
        return Err(TrainError::Config(format!(
            "checkpoint {} was trained with a different [model] section; resume with the same model config or use --resume never",
            dir.display()
        )));
    }
    let changed = crate::rundir::config_changes(&state.config, cfg)?;
    if !changed.is_empty() {
        say(format!(
            "resuming with a changed config: {}",
            changed.join(", ")
        ));
    }
    let weights = TensorFile::open(&dir.join(checkpoint::MODEL_FILE))?;
    let optim = TensorFile::open(&dir.join(checkpoint::OPTIM_FILE))?;
    let ema = TensorFile::open(&dir.join(checkpoint::EMA_FILE))?;
    weights.expect_layout(shapes, |_| false)?;
    ema.expect_layout(shapes, |_| false)?;
    checkpoint::expect_optimizer_layout(&optim, shapes)?;
    Ok(Resumed {
        weights,
        optim,
        ema,
        ema_updates: state.ema_updates,
        step: state.step,
        skipped_steps: state.skipped_steps.min(state.step),
        cursor: state.cursor,
    })
}

/// Every rank must have resumed from the same checkpoint (a shared run
/// directory): compare the step with rank 0's.
fn same_step_on_every_rank(
    step: u64,
    world: &World,
    comm: &dyn Collective,
    run_dir: &Path,
) -> Result<()> {
    let mut step0 = [step];
    comm.broadcast_u64(&mut step0, 0)?;
    if step0[0] != step {
        return Err(TrainError::Config(format!(
            "rank {} resumed at step {step} but rank 0 at step {}: every rank must see the same run directory {} (a shared filesystem)",
            world.rank,
            step0[0],
            run_dir.display()
        )));
    }
    Ok(())
}

/// Say (and write to fsdp_memory.json) what each FSDP rank holds.
fn report_fsdp_memory<B: burn::tensor::backend::Backend>(
    cfg: &TrainConfig,
    fsdp: &crate::fsdp::Fsdp<B>,
    world: &World,
    run_dir: &Path,
) -> Result<()> {
    if !world.is_main() {
        return Ok(());
    }
    let (state, unit) = fsdp.state_bytes();
    let whole = 4 * 4 * cfg.model.num_params();
    eprintln!(
        "fsdp: {} units; each rank holds {:.2} MB of parameter, gradient and AdamW shards (one process: {:.2} MB) and gathers at most {:.2} MB at a time",
        fsdp.units.len(),
        state as f64 / 1e6,
        whole as f64 / 1e6,
        unit as f64 / 1e6
    );
    let report = serde_json::json!({
        "world_size": world.size,
        "units": fsdp.units.len(),
        "state_bytes_per_rank": state,
        "state_bytes_one_process": whole,
        "largest_unit_bytes": unit,
    });
    let path = run_dir.join("fsdp_memory.json");
    std::fs::write(&path, report.to_string()).map_err(io(&path))
}
