//! orrery-parallel: one rank's model and its optimizer step, whole or sharded.
//!
//! [`replica::Replica`] holds the model as this rank does: whole (one
//! process, or DDP with gradients summed over ranks in buckets) or as FSDP
//! shards (units gathered one at a time, gradients reduce-scattered). It
//! steps ([`step::train_step`], [`fsdp_step::fsdp_step`]), evaluates and
//! writes checkpoints through one interface, and both strategies update
//! their weights through one function ([`update::update`]: clip, AdamW,
//! EMA). [`glue`] joins the model, the diffusion objective and the data.
//! The backend of a run (CPU, or CUDA with or without kernel fusion) is
//! chosen by [`with_backend!`]; NCCL sums on the device when built with
//! the `cuda` feature.
//!
//! ```no_run
//! use orrery_parallel::replica::{Replica, StartState};
//! // let (replica, optim, ema) = Replica::new(&cfg, model, &world, comm, &device, StartState::Fresh)?;
//! ```
#![deny(missing_docs)]

#[doc(hidden)]
pub use burn as __burn;
#[doc(hidden)]
pub use orrery_config as __config;

/// Run `$body` with `$B` bound to the autodiff backend for `$run` (a
/// [`orrery_config::RunConfig`]: its device, and on CUDA whether kernels are fused)
/// and `$dev` to its device handle.
#[macro_export]
macro_rules! with_backend {
    ($run:expr, |$B:ident, $dev:ident| $body:expr) => {{
        let run: &$crate::__config::RunConfig = &$run;
        match run.device {
            $crate::__config::Device::Cpu => {
                type $B = $crate::__burn::backend::Autodiff<$crate::__burn::backend::Flex>;
                let $dev = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::__config::Device::Cuda if run.fusion => {
                type $B = $crate::__burn::backend::Autodiff<$crate::CudaFused>;
                let $dev = $crate::cuda_device("run.device = \"cuda\"")?;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::__config::Device::Cuda => {
                type $B = $crate::__burn::backend::Autodiff<$crate::CudaPlain>;
                let $dev = $crate::cuda_device("run.device = \"cuda\"")?;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::__config::Device::Cuda => Err($crate::Error::Config(
                "run.device = \"cuda\" needs a binary built with `cargo build --release --features cuda`".into(),
            )),
        }
    }};
}

/// burn's CUDA backend with kernel fusion (`run.fusion = true`).
#[cfg(feature = "cuda")]
pub type CudaFused = burn::backend::Cuda<f32, i32>;
/// burn's CUDA backend without fusion: each op its own cubecl kernel (the default).
#[cfg(feature = "cuda")]
pub type CudaPlain = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// The GPU of this rank: its rank on the node modulo the GPUs visible
/// (ranks beyond the count share GPUs; NCCL then refuses, MPI works). An
/// error saying why, not cudarc's panic, when there is no driver or no GPU.
#[cfg(feature = "cuda")]
pub fn cuda_ordinal(world: &orrery_dist::World) -> std::result::Result<usize, String> {
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
pub fn cuda_device(what: &str) -> Result<burn::backend::cuda::CudaDevice> {
    let world = orrery_dist::World::from_env().unwrap_or_else(|_| orrery_dist::World::single());
    cuda_ordinal(&world)
        .map(burn::backend::cuda::CudaDevice::new)
        .map_err(|why| Error::Config(format!("{what} needs a CUDA GPU, but {why}")))
}

pub mod context;
pub mod ddp;
pub mod fixtures;
pub mod fsdp;
pub mod fsdp_gather;
mod fsdp_shard;
pub mod fsdp_step;
pub mod glue;
pub mod kernels;
#[cfg(feature = "cuda")]
pub mod nccl;
#[cfg(not(feature = "cuda"))]
pub mod nccl {
    //! Without CUDA there are no device collectives: each tensor goes back
    //! for the host path.
    use burn::tensor::{backend::Backend, Tensor};

    /// The sum / gather / block on the device, or the tensor back for the host path.
    pub type Back<B> = Result<Result<Tensor<B, 1>, String>, Tensor<B, 1>>;

    /// Always the host path here.
    pub fn device_collectives() -> bool {
        false
    }

    /// Always the host path here.
    pub fn all_reduce_on_device<B: Backend>(t: Tensor<B, 1>) -> Back<B> {
        Err(t)
    }

    /// Always the host path here.
    pub fn all_gather_on_device<B: Backend>(t: Tensor<B, 1>) -> Back<B> {
        Err(t)
    }

    /// Always the host path here.
    pub fn reduce_scatter_on_device<B: Backend>(t: Tensor<B, 1>) -> Back<B> {
        Err(t)
    }
}
pub mod optim;
#[cfg(test)]
mod parallel_tests;
pub mod recompute;
pub mod replica;
pub mod snapshot;
pub mod step;
pub mod update;
pub mod world;

/// Errors of a run; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// Too many steps in a row had a non-finite loss or gradient norm.
    #[error("steps {first}..={step} all had a non-finite loss or gradient norm ({last}), {} in a row (run.max_skipped_steps = {limit}): the run stopped, keeping its last checkpoint. Lower optim.lr or raise optim.warmup_steps, check the data with `orrery data inspect`, or raise run.max_skipped_steps", step - first + 1)]
    NonFinite {
        /// The first of the skipped steps in a row.
        first: u64,
        /// The last (1-based, as metrics.jsonl counts).
        step: u64,
        /// The last step's loss and norm, as text.
        last: String,
        /// run.max_skipped_steps.
        limit: u64,
    },
}

/// Map an I/O error to one that names the path.
pub fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io(format!("{}: {e}", path.display()))
}

impl From<orrery_config::ConfigError> for Error {
    fn from(e: orrery_config::ConfigError) -> Self {
        Error::Config(e.0)
    }
}

impl From<orrery_checkpoint::CheckpointError> for Error {
    fn from(e: orrery_checkpoint::CheckpointError) -> Self {
        Error::Checkpoint(e.0)
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
