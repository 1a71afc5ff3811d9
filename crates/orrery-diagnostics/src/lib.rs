//! orrery-diagnostics: measurements and checks kept off the training path.
//!
//! [`bench::bench_step`] times the training step of a config (with the heap
//! figures of [`heap::CountingAlloc`], the binary's allocator);
//! [`parity`] runs the same weights, batches and noise on the CPU and on
//! each GPU backend op by op and step by step; [`lockstep`] makes the GPU
//! recompute every CPU step from the CPU's own weights, so that a wrong
//! kernel shows as a one-step difference instead of a drift.
//!
//! ```no_run
//! let cfg = orrery_config::TrainConfig::load("configs/quickstart.toml".as_ref(), &[]).unwrap();
//! let b = orrery_diagnostics::bench::bench_step(&cfg, 10, 2, false).unwrap();
//! println!("median step {:.3} s", b.median_step());
//! ```
#![deny(missing_docs)]

pub mod attention_check;
pub mod bench;
pub mod heap;
pub mod lockstep;
pub mod parity;

// The training pieces these measure, under the names they had in orrery-train.
#[cfg(feature = "wgpu")]
use orrery_parallel::kernels;
#[cfg(feature = "wgpu")]
use orrery_parallel::Error as TrainError;
use orrery_parallel::Result;
#[cfg(feature = "cuda")]
use orrery_parallel::{cuda_device, CudaFused, CudaPlain};
use orrery_parallel::{glue, optim, replica, step};

/// The config tree (orrery-config).
mod config {
    pub use orrery_config::*;
}
