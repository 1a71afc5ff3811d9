//! How FSDP gathers units through the host: two bf16 values packed per
//! f32 slot when gathering in bf16 (a gather only moves bits), and the
//! prefetch (`parallel.prefetch`): while unit i computes, unit i+1 is
//! gathered on a helper thread over the collective's gather lane (a
//! duplicate MPI communicator), so its all_gather overlaps the compute
//! instead of following it. Every rank asks for the same units in the same
//! order; the values are the same bits as the in-line gather's. The time
//! counted as communication is what the compute thread waits for a unit,
//! the part the overlap did not hide. Letters: n ranks, k shard length.
use std::sync::mpsc;
use std::time::Instant;

use burn::tensor::{backend::Backend, Tensor};
use orrery_dist::Collective;

use crate::fsdp::Fsdp;
use crate::optim::{flat, host, FlatMap};
use crate::{Error, Result};

impl<B: Backend> Fsdp<B> {
    /// This rank's values of unit `u` as the host gather sends them: [k],
    /// or [ceil(k / 2)] bf16 pairs when gathering in bf16.
    pub(crate) fn host_send(&self, shards: &FlatMap<B>, u: usize) -> Vec<f32> {
        let local = host(shards[&self.units[u].prefix].clone());
        match self.gather_bf16 {
            true => pack_bf16(&local),
            false => local,
        }
    }

    /// Every rank's [`Fsdp::host_send`] of unit `u`, gathered, as a tensor
    /// for compute (widened to f32 from bf16 pairs).
    ///
    /// # Shapes
    /// all: n x the sent length -> [n k]
    pub(crate) fn host_finish(&self, u: usize, all: Vec<f32>) -> Tensor<B, 1> {
        if !self.gather_bf16 {
            return flat(all, &self.device);
        }
        let k = self.units[u].shard;
        let block = all.len() / self.size;
        let full = all.chunks(block).flat_map(|b| unpack_bf16(b, k)).collect();
        flat(full, &self.device)
    }

    /// Gather the units of `order` one after another and hand each whole,
    /// as [`Fsdp::gather_compute`] gives it, to `f`. With prefetch on, no
    /// NCCL, and a gather lane, the next unit's gather runs on a helper
    /// thread while `f` runs; every rank must pass the same order.
    pub fn each_unit(
        &self,
        shards: &FlatMap<B>,
        order: &[usize],
        comm: &dyn Collective,
        mut f: impl FnMut(usize, Tensor<B, 1>) -> Result<()>,
    ) -> Result<()> {
        let lane = match self.prefetch {
            Some(_) if !crate::nccl::device_collectives() => comm.gather_lane(),
            _ => None,
        };
        let (Some(lane), Some(timeout)) = (lane, self.prefetch) else {
            for &u in order {
                f(u, self.gather_compute(shards, u, comm)?)?;
            }
            return Ok(());
        };
        // Start unit u's gather on a helper thread; its result comes back
        // on the channel (a helper stuck on a dead peer is left behind:
        // the run ends with the error below).
        let start = |u: usize| -> Result<(usize, mpsc::Receiver<_>)> {
            let send = self.host_send(shards, u);
            let (sent, total) = (send.len(), send.len() * self.size);
            let (tx, rx) = mpsc::channel();
            let lane = lane.clone();
            std::thread::Builder::new()
                .name(format!("fsdp-gather-{u}"))
                .spawn(move || {
                    let mut all = vec![0.0; total];
                    let _ = tx.send(lane.all_gather(&send, &mut all).map(|_| all));
                })
                .map_err(|e| Error::Comm(format!("fsdp prefetch: no helper thread: {e}")))?;
            Ok((sent, rx))
        };
        let mut next = order.first().map(|&u| start(u)).transpose()?;
        for (i, &u) in order.iter().enumerate() {
            let (sent, rx) = next.take().expect("one gather in flight");
            let t = Instant::now();
            let all = rx
                .recv_timeout(timeout)
                .map_err(|_| {
                    Error::Comm(format!(
                        "[rank {} of {}] fsdp prefetch: the gather of unit {} has not finished after {:.0} s: a peer is dead, stopped or stuck (parallel.timeout_s)",
                        self.rank,
                        self.size,
                        self.units[u].prefix,
                        timeout.as_secs_f64()
                    ))
                })?
                .map_err(|e| Error::Comm(e.to_string()))?;
            self.count(t, sent);
            next = order.get(i + 1).map(|&v| start(v)).transpose()?;
            f(u, self.host_finish(u, all))?;
        }
        Ok(())
    }
}

/// Round to bf16 (nearest even) and pack two values per f32 bit pattern.
///
/// # Shapes
/// [k] -> [ceil(k / 2)]
pub fn pack_bf16(values: &[f32]) -> Vec<f32> {
    values
        .chunks(2)
        .map(|pair| {
            let bits = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
            let hi = pair.get(1).map_or(0, |&v| bits(v));
            f32::from_bits(bits(pair[0]) | (hi << 16))
        })
        .collect()
}

/// Inverse of [`pack_bf16`], widened to f32: the first `k` values.
///
/// # Shapes
/// [ceil(k / 2)] -> [k]
pub fn unpack_bf16(packed: &[f32], k: usize) -> impl Iterator<Item = f32> + '_ {
    (0..k).map(move |i| {
        let bits = packed[i / 2].to_bits();
        let half = if i % 2 == 0 {
            bits & 0xFFFF
        } else {
            bits >> 16
        };
        half::bf16::from_bits(half as u16).to_f32()
    })
}
