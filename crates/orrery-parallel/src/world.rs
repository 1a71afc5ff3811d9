//! Joining the world: this process's rank, its collective backend (MPI
//! for several ranks), heartbeats in the run directory, and NCCL when the
//! config or a multi-rank CUDA run asks for it.
use std::path::Path;
use std::time::Duration;

use orrery_config::TrainConfig;
use orrery_dist::{connect, Collective, World};

use crate::Result;

/// This process's place among the ranks and its collective backend, after
/// checking the config against the number of ranks. With a run directory
/// (shared by the ranks), heartbeats go to its `heartbeats/`, so a collective
/// that times out names the rank it waits for.
pub fn join_world(
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
    use orrery_config::{CommBackend, Device};
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
        .map_err(|e| crate::Error::Comm(format!("[rank {} of {}] {e}", world.rank, world.size)))?;
    crate::nccl::install(nccl);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn connect_nccl(_: &TrainConfig, _: &World, _: &dyn Collective, _: Duration) -> Result<()> {
    Ok(())
}
