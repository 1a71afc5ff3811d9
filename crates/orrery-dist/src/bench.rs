//! `orrery bench comm`: the bandwidth of orrery's collectives next to the raw
//! MPI call on the same buffer, in the nccl-tests conventions (algorithm
//! bandwidth = bytes per rank / time; bus bandwidth scales it by the share
//! of data each rank must send: 2(n-1)/n for all_reduce, (n-1)/n for
//! all_gather and reduce_scatter).
use std::time::Instant;

use crate::{Collective, DistError};

/// One measured operation and size.
#[derive(Debug, Clone)]
pub struct CommRow {
    /// all_reduce, all_gather or reduce_scatter.
    pub op: &'static str,
    /// Bytes of the full buffer per rank (f32).
    pub bytes: usize,
    /// Median seconds of orrery's call.
    pub orrery_s: f64,
    /// Median seconds of the raw MPI call.
    pub raw_s: f64,
    /// Bus bandwidth of orrery's call, GB/s.
    pub orrery_busbw: f64,
    /// Bus bandwidth of the raw call, GB/s.
    pub raw_busbw: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

/// Time `f` `iters` times after one warm-up call, with a barrier before
/// each call so that every rank starts together; the median.
fn time(
    comm: &dyn Collective,
    iters: usize,
    mut f: impl FnMut() -> Result<(), DistError>,
) -> Result<f64, DistError> {
    f()?;
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters {
        comm.barrier()?;
        let t0 = Instant::now();
        f()?;
        v.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(v))
}

/// Measure all_reduce, all_gather and reduce_scatter on buffers of each of
/// `elems` f32 values per rank, through `comm` and through raw MPI on the
/// world communicator. Every rank must call it.
#[cfg(feature = "mpi")]
pub fn bench_collectives(
    comm: &dyn Collective,
    elems: &[usize],
    iters: usize,
) -> Result<Vec<CommRow>, DistError> {
    use mpi::collective::{CommunicatorCollectives, SystemOperation};
    let raw = mpi::topology::SimpleCommunicator::world();
    let n = comm.size();
    let nf = n as f64;
    let mut rows = Vec::new();
    for &m in elems {
        let m = m.div_ceil(n) * n; // divisible into n blocks
        let bytes = m * 4;
        let block = m / n;
        let full: Vec<f32> = (0..m).map(|i| (i % 97) as f32).collect();
        let mut buf = full.clone();
        let mut recv = vec![0f32; m];
        let mut part = vec![0f32; block];
        let bus = |s: f64, share: f64| bytes as f64 * share / s / 1e9;
        let ar_share = 2.0 * (nf - 1.0) / nf;
        let ag_share = (nf - 1.0) / nf;
        let orrery_s = time(comm, iters, || comm.all_reduce_sum(&mut buf))?;
        let raw_s = time(comm, iters, || {
            raw.all_reduce_into(&full[..], &mut recv[..], SystemOperation::sum());
            Ok(())
        })?;
        rows.push(CommRow {
            op: "all_reduce",
            bytes,
            orrery_s,
            raw_s,
            orrery_busbw: bus(orrery_s, ar_share),
            raw_busbw: bus(raw_s, ar_share),
        });
        let orrery_s = time(comm, iters, || comm.all_gather(&full[..block], &mut recv))?;
        let raw_s = time(comm, iters, || {
            raw.all_gather_into(&full[..block], &mut recv[..]);
            Ok(())
        })?;
        rows.push(CommRow {
            op: "all_gather",
            bytes,
            orrery_s,
            raw_s,
            orrery_busbw: bus(orrery_s, ag_share),
            raw_busbw: bus(raw_s, ag_share),
        });
        let orrery_s = time(comm, iters, || comm.reduce_scatter_sum(&full, &mut part))?;
        let raw_s = time(comm, iters, || {
            raw.reduce_scatter_block_into(&full[..], &mut part[..], SystemOperation::sum());
            Ok(())
        })?;
        rows.push(CommRow {
            op: "reduce_scatter",
            bytes,
            orrery_s,
            raw_s,
            orrery_busbw: bus(orrery_s, ag_share),
            raw_busbw: bus(raw_s, ag_share),
        });
    }
    Ok(rows)
}
