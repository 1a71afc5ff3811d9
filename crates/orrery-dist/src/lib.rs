//! orrery-dist: ranks and collectives.
//!
//! The principal type is [`World`]: this process's rank, the world size and
//! its local rank on the node, discovered from the launcher's environment in
//! the order DESIGN.md gives (OpenMPI, then PMIx/PMI, then Slurm, then a single
//! process); and [`Collective`], the operations the parallel strategies use,
//! with an identity backend for one process, MPI for several ([`connect`]
//! picks) and [`ThreadComm`] for ranks as threads of one process (tests).
//! NCCL, for GPU tensors, lives with the GPU code in orrery-parallel.
//!
//! ```
//! use orrery_dist::World;
//! let env = |k: &str| match k { "OMPI_COMM_WORLD_RANK" => Some("1".to_string()),
//!     "OMPI_COMM_WORLD_SIZE" => Some("4".to_string()), _ => None };
//! let w = World::from_env_fn(env).unwrap();
//! assert_eq!((w.rank, w.size), (1, 4));
//! ```
#![deny(missing_docs)]

mod bench;
mod collective;
mod deadline;
mod threads;

#[cfg(feature = "mpi")]
pub use bench::bench_collectives;
pub use bench::CommRow;

#[cfg(feature = "mpi")]
pub use collective::Mpi;
pub use collective::{
    abort_on_error, all_reduce_sum_bucketed, connect, self_test, Collective, GatherLane,
    SingleProcess,
};
pub use deadline::Deadline;
pub use threads::ThreadComm;

/// Errors from discovering the world.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launcher variable holds something that is not a rank.
    #[error("environment variable {var} = {value:?} is not a valid number")]
    BadEnv {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// Rank outside the world.
    #[error("rank {rank} is not below world size {size} (from {source_name})")]
    RankOutOfRange {
        /// The rank read.
        rank: usize,
        /// The size read.
        size: usize,
        /// Which launcher's variables.
        source_name: &'static str,
    },
    /// Buffers of a collective do not fit together.
    #[error("{0}")]
    Shape(String),
    /// The communication backend failed or is missing.
    #[error("{0}")]
    Backend(String),
}

/// Where this process sits among its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    /// Global rank, 0-based.
    pub rank: usize,
    /// Number of processes.
    pub size: usize,
    /// Rank among the processes on this node.
    pub local_rank: usize,
    /// Which launcher the values came from.
    pub launcher: &'static str,
}

impl World {
    /// One process alone.
    pub fn single() -> Self {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            launcher: "single",
        }
    }

    /// Read the world from the process environment.
    pub fn from_env() -> Result<Self, DistError> {
        Self::from_env_fn(|k| std::env::var(k).ok())
    }

    /// Read the world through `get` (for tests). Under mpirun inside an sbatch
    /// every rank sees SLURM_PROCID=0, so OpenMPI's variables come first.
    pub fn from_env_fn(get: impl Fn(&str) -> Option<String>) -> Result<Self, DistError> {
        let num = |var: &str| -> Result<Option<usize>, DistError> {
            match get(var) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| DistError::BadEnv {
                    var: var.to_string(),
                    value: v,
                }),
            }
        };
        let sources: [(&'static str, &str, &str, &str); 3] = [
            (
                "openmpi",
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_LOCAL_RANK",
            ),
            ("pmix", "PMIX_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
            ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
        ];
        for (name, rank_var, size_var, local_var) in sources {
            if let (Some(rank), Some(size)) = (num(rank_var)?, num(size_var)?) {
                if rank >= size {
                    return Err(DistError::RankOutOfRange {
                        rank,
                        size,
                        source_name: name,
                    });
                }
                let local_rank = num(local_var)?.unwrap_or(0);
                return Ok(World {
                    rank,
                    size,
                    local_rank,
                    launcher: name,
                });
            }
        }
        Ok(World::single())
    }

    /// Whether this is rank 0, the one that logs and writes shared files.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn openmpi_wins_over_slurm_inside_sbatch() {
        let w = World::from_env_fn(env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]))
        .unwrap();
        assert_eq!(
            w,
            World {
                rank: 3,
                size: 4,
                local_rank: 1,
                launcher: "openmpi"
            }
        );
    }

    #[test]
    fn slurm_alone_and_no_launcher() {
        let w = World::from_env_fn(env(&[
            ("SLURM_PROCID", "2"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "2"),
        ]))
        .unwrap();
        assert_eq!(
            (w.rank, w.size, w.local_rank, w.launcher),
            (2, 8, 2, "slurm")
        );
        assert_eq!(World::from_env_fn(env(&[])).unwrap(), World::single());
    }

    #[test]
    fn the_single_process_backend_passes_the_self_test() {
        let report = self_test(&SingleProcess).unwrap();
        assert!(report.contains("rank 0 of 1"), "{report}");
        let mut out = vec![0.0; 3];
        let err = SingleProcess.all_gather(&[1.0, 2.0], &mut out).unwrap_err();
        assert!(err.to_string().contains("1 ranks x 2"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        let e =
            World::from_env_fn(env(&[("SLURM_PROCID", "x"), ("SLURM_NTASKS", "2")])).unwrap_err();
        assert!(e.to_string().contains("SLURM_PROCID"));
        let e =
            World::from_env_fn(env(&[("SLURM_PROCID", "2"), ("SLURM_NTASKS", "2")])).unwrap_err();
        assert!(e.to_string().contains("not below world size"));
    }
}
