//! The `parallel` section: how ranks share the work (DDP or FSDP, the
//! collectives, activation checkpointing, context parallelism), and the
//! checks of a config against the number of ranks.
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Device, Result, TrainConfig};

/// Parallel strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Replicated weights, averaged gradients.
    Ddp,
    /// Sharded weights, gradients and optimizer state.
    Fsdp,
}

/// Parallelism.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelConfig {
    /// ddp or fsdp.
    pub strategy: Strategy,
    /// DDP gradient bucket size in MiB (one all_reduce per bucket).
    pub bucket_mb: f64,
    /// Seconds a collective may wait for the other ranks before this rank
    /// ends the job (a hung or lost peer).
    pub timeout_s: f64,
    /// FSDP: the type units are gathered in for compute (`f32`, or `bf16`:
    /// half the bytes, and the forward and backward see bf16-rounded
    /// weights). Shards, gradients, AdamW and checkpoints stay f32.
    pub gather_dtype: GatherDtype,
    /// What DDP's gradient sums and FSDP's gathers and reduce_scatters run
    /// on: `auto` (NCCL on the device when run.device = "cuda" and there
    /// are several ranks, else MPI), `nccl`, or `mpi` (through the host;
    /// also for ranks that share a GPU).
    pub comm: CommBackend,
    /// What backward recomputes instead of keeping (DDP and one process):
    /// `none`, or `block` (keep each block's input, recompute its forward in
    /// backward). FSDP always recomputes blocks.
    pub activation_checkpoint: ActivationCheckpoint,
    /// Context parallelism: ranks per context group, C. The C ranks of a
    /// group read the same clips and each runs the tokens of 1/C of every
    /// clip's frames (Ulysses all-to-all around attention). The world is
    /// C x data-parallel ranks; 1 turns it off.
    pub context: usize,
    /// FSDP over MPI: gather the next unit on a helper thread while this
    /// one computes (needs MPI_THREAD_MULTIPLE; without it, or on NCCL,
    /// units are gathered in line as with `false`).
    pub prefetch: bool,
}

/// Activation checkpointing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationCheckpoint {
    /// Keep every activation autodiff needs.
    None,
    /// Keep each DiT block's input and recompute the block in backward.
    Block,
}

/// The collective library for DDP's and FSDP's collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommBackend {
    /// NCCL on CUDA with several ranks, MPI otherwise.
    Auto,
    /// NCCL (CUDA builds, run.device = "cuda").
    Nccl,
    /// MPI through host memory.
    Mpi,
}

/// What FSDP gathers units in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatherDtype {
    /// Full precision.
    F32,
    /// bfloat16 (round to nearest even), widened to f32 after the gather.
    Bf16,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Ddp,
            bucket_mb: 25.0,
            timeout_s: 600.0,
            gather_dtype: GatherDtype::F32,
            comm: CommBackend::Auto,
            activation_checkpoint: ActivationCheckpoint::None,
            context: 1,
            prefetch: false,
        }
    }
}

impl ParallelConfig {
    /// The bucket size in f32 elements.
    pub fn bucket_elems(&self) -> usize {
        ((self.bucket_mb * 1024.0 * 1024.0 / 4.0) as usize).max(1)
    }
}

impl TrainConfig {
    /// Check the batch against the number of ranks; the message says what to change.
    pub fn validate_world(&self, world: usize) -> Result<()> {
        let c = self.parallel.context;
        if world % c != 0 {
            return Err(ConfigError(format!(
                "parallel.context = {c} needs a number of ranks divisible by {c}, but this job has {world}: start a multiple of {c} ranks or change parallel.context"
            )));
        }
        // Context groups share their clips: the batch splits over the data ranks.
        let ranks = world / c;
        let b = self.data.global_batch;
        if b % ranks != 0 {
            let lower = b / ranks * ranks;
            let higher = lower + ranks;
            return Err(ConfigError(format!(
                "data.global_batch = {b} does not split evenly over {ranks} ranks: set it to a multiple of {ranks} (e.g. {}{higher}) or run {} ranks",
                if lower > 0 { format!("{lower} or ") } else { String::new() },
                divisors_hint(b, ranks)
            )));
        }
        let share = b / ranks;
        let m = self.data.micro_batch;
        if m > 0 && share % m != 0 {
            return Err(ConfigError(format!(
                "data.micro_batch = {m} does not divide the {share} clips each of the {ranks} ranks gets (data.global_batch = {b}): pick a divisor of {share}, or 0 for the whole share"
            )));
        }
        Ok(())
    }

    /// The parallel section.
    pub(crate) fn validate_parallel(&self) -> Result<()> {
        let bad = |m: String| Err(ConfigError(m));
        if !(self.parallel.bucket_mb > 0.0 && self.parallel.bucket_mb.is_finite()) {
            return bad(format!(
                "parallel.bucket_mb = {} must be positive",
                self.parallel.bucket_mb
            ));
        }
        if !(self.parallel.timeout_s > 0.0 && self.parallel.timeout_s <= 1e7) {
            return bad(format!(
                "parallel.timeout_s = {} must be positive and at most 1e7 (about 4 months)",
                self.parallel.timeout_s
            ));
        }
        let c = self.parallel.context;
        let groups = self.model.frame_groups(self.model.frames);
        if c == 0 {
            return bad("parallel.context must be at least 1 (1: no context parallelism)".into());
        }
        if c > 1 && (self.model.heads % c != 0 || groups % c != 0) {
            return bad(format!(
                "parallel.context = {c} splits each clip's {groups} frame groups (model.frames / model.patch_t) and the model's {} heads (Ulysses swaps frames for heads) over {c} ranks: both must be divisible by {c}; change parallel.context, model.frames or model.heads",
                self.model.heads
            ));
        }
        if self.parallel.comm == CommBackend::Nccl && self.run.device != Device::Cuda {
            return bad("parallel.comm = \"nccl\" runs collectives on CUDA tensors: set run.device = \"cuda\", or parallel.comm = \"auto\"".into());
        }
        if self.parallel.gather_dtype == GatherDtype::Bf16
            && self.parallel.strategy != Strategy::Fsdp
        {
            return bad(
                "parallel.gather_dtype = \"bf16\" applies to FSDP's unit gathers: set parallel.strategy = \"fsdp\" or leave gather_dtype at \"f32\"".into(),
            );
        }
        Ok(())
    }
}

/// The largest rank count below `ranks` that divides `batch`, as text.
fn divisors_hint(batch: usize, ranks: usize) -> String {
    (1..ranks)
        .rev()
        .find(|r| batch % r == 0)
        .map_or("fewer".into(), |r| r.to_string())
}
