//! orrery-train: the config tree, the training loop and everything it writes.
//!
//! The principal entry points are [`TrainConfig`] (one TOML tree for a run,
//! with `--set` overrides and start-up validation), [`train`] (the loop:
//! AdamW with warm-up and clipping, EMA, safetensors checkpoints with exact
//! resume, TensorBoard and metrics.jsonl, on one process or as DDP or FSDP
//! ranks) and [`sample::sample`] (an
//! autoregressive rollout of a trained world model, written as GIF and PNG and
//! scored against the synthetic world's ground truth).
//!
//! ```no_run
//! use orrery_train::{train, RunOptions, Resume, TrainConfig};
//! let cfg = TrainConfig::load("configs/quickstart.toml".as_ref(), &["run.steps=10".into()]).unwrap();
//! let summary = train(cfg, RunOptions { run_dir: "runs/demo".into(), resume: Resume::Auto, stop_after: None, overwrite: false }).unwrap();
//! println!("held-out loss {} -> {}", summary.heldout_loss_start, summary.heldout_loss_end);
//! ```
#![deny(missing_docs)]

/// Run `$body` with `$B` bound to the autodiff backend for `$run` (a
/// [`config::RunConfig`]: its device, and on CUDA whether kernels are fused)
/// and `$dev` to its device handle.
macro_rules! with_backend {
    ($run:expr, |$B:ident, $dev:ident| $body:expr) => {{
        let run: &crate::config::RunConfig = &$run;
        match run.device {
            crate::config::Device::Cpu => {
                type $B = burn::backend::Autodiff<burn::backend::Flex>;
                let $dev = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            crate::config::Device::Cuda if run.fusion => {
                type $B = burn::backend::Autodiff<crate::CudaFused>;
                let $dev = crate::cuda_device("run.device = \"cuda\"")?;
                $body
            }
            #[cfg(feature = "cuda")]
            crate::config::Device::Cuda => {
                type $B = burn::backend::Autodiff<crate::CudaPlain>;
                let $dev = crate::cuda_device("run.device = \"cuda\"")?;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            crate::config::Device::Cuda => Err(crate::TrainError::Config(
                "run.device = \"cuda\" needs a binary built with `cargo build --release --features cuda`".into(),
            )),
        }
    }};
}

/// burn's CUDA backend with kernel fusion (`run.fusion = true`).
#[cfg(feature = "cuda")]
pub(crate) type CudaFused = burn::backend::Cuda<f32, i32>;
/// burn's CUDA backend without fusion: each op its own cubecl kernel (the default).
#[cfg(feature = "cuda")]
pub(crate) type CudaPlain = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// The GPU of this rank: its rank on the node modulo the GPUs visible
/// (ranks beyond the count share GPUs; NCCL then refuses, MPI works). An
/// error saying why, not cudarc's panic, when there is no driver or no GPU.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_ordinal(world: &orrery_dist::World) -> std::result::Result<usize, String> {
    use cudarc::driver::{result, sys};
    // SAFETY: only checks whether libcuda loads (cudarc panics on use otherwise).
    if !unsafe { sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) is not on this machine".into());
    }
    result::init().map_err(|e| format!("the CUDA driver did not start ({e:?})"))?;
    let count = result::device::get_count()
        .map_err(|e| format!("the CUDA driver could not count its GPUs ({e:?})"))?;
    if count <= 0 {
        return Err("the CUDA driver sees no GPU".into());
    }
    let ordinal = world.local_rank % count as usize;
    kernels::install(kernels::gpu_arch(ordinal));
    Ok(ordinal)
}

/// This rank's CUDA device ([`cuda_ordinal`]) for `what` (the setting or
/// command that needs it, named in the error).
#[cfg(feature = "cuda")]
pub(crate) fn cuda_device(what: &str) -> Result<burn::backend::cuda::CudaDevice> {
    let world = orrery_dist::World::from_env().unwrap_or_else(|_| orrery_dist::World::single());
    cuda_ordinal(&world)
        .map(burn::backend::cuda::CudaDevice::new)
        .map_err(|why| TrainError::Config(format!("{what} needs a CUDA GPU, but {why}")))
}

pub mod bench;
pub mod checkpoint;
/// The config tree (orrery-config).
pub mod config {
    pub use orrery_config::*;
}
mod ddp;
mod eval;
pub mod export;
mod feed;
mod fsdp;
mod fsdp_shard;
mod fsdp_step;
pub mod generate;
mod geometry;
mod glue;
pub mod heap;
pub mod kernels;
pub mod lockstep;
pub mod media;
pub mod metrics;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod optim;
#[cfg(not(feature = "cuda"))]
mod nccl {
    //! Without CUDA there are no device collectives: each tensor goes back
    //! for the host path.
    use burn::tensor::{backend::Backend, Tensor};

    type Back<B> = Result<Result<Tensor<B, 1>, String>, Tensor<B, 1>>;

    pub(crate) fn device_collectives() -> bool {
        false
    }

    pub(crate) fn all_reduce_on_device<B: Backend>(t: Tensor<B, 1>) -> Back<B> {
        Err(t)
    }

    pub(crate) fn all_gather_on_device<B: Backend>(t: Tensor<B, 1>) -> Back<B> {
        Err(t)
    }

    pub(crate) fn reduce_scatter_on_device<B: Backend>(t: Tensor<B, 1>) -> Back<B> {
        Err(t)
    }
}
#[cfg(test)]
mod parallel_tests;
pub mod parity;
pub mod paths;
pub mod progress;
mod records;
mod replica;
mod rundir;
mod runlog;
pub mod sample;
mod start;
mod step;
pub mod tensorboard;
mod trainer;
mod update;

pub use config::TrainConfig;
pub use rundir::{Resume, RunOptions};
pub use trainer::{train, train_on, TrainSummary};

/// Errors of a run; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config problem.
    #[error("{0}")]
    Config(String),
    /// A data problem.
    #[error(transparent)]
    Data(#[from] orrery_data::DataError),
    /// A model problem.
    #[error(transparent)]
    Model(#[from] orrery_model::ModelError),
    /// A diffusion problem.
    #[error(transparent)]
    Diffusion(#[from] orrery_diffusion::DiffusionError),
    /// The launcher's environment.
    #[error(transparent)]
    World(#[from] orrery_dist::DistError),
    /// A device collective (NCCL) failed or timed out.
    #[error("{0}")]
    Comm(String),
    /// Reading or writing a checkpoint.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Other I/O.
    #[error("{0}")]
    Io(String),
    /// A broken invariant of orrery itself, not of the user's input.
    #[error("internal error (a bug in orrery; please report it): {0}")]
    Internal(String),
    /// Training diverged or the data holds non-finite values.
    #[error("non-finite {what} at step {step}: the run stopped before writing anything from this step; lower optim.lr, check the data with `orrery data inspect`, or resume from the last checkpoint")]
    NonFinite {
        /// The step.
        step: u64,
        /// Which quantity.
        what: String,
    },
}

/// Map an I/O error to one that names the path.
pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io(format!("{}: {e}", path.display()))
}

impl From<orrery_config::ConfigError> for TrainError {
    fn from(e: orrery_config::ConfigError) -> Self {
        TrainError::Config(e.0)
    }
}

impl From<orrery_checkpoint::CheckpointError> for TrainError {
    fn from(e: orrery_checkpoint::CheckpointError) -> Self {
        TrainError::Checkpoint(e.0)
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, TrainError>;
