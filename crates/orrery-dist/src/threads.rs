//! Ranks as threads of one process, exchanging buffers through shared
//! memory: the DDP and FSDP equivalence tests run on 1-4 ranks as unit
//! tests, without mpirun. Sums are taken in rank order, so every rank gets
//! bit-identical results. A rank that fails or aborts wakes the others with
//! an error instead of leaving them waiting; a rank that never arrives ends
//! the wait after a timeout. Letters: n = world size, k = elements per rank.
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{Collective, DistError};

/// A meeting point for all ranks, reusable (generations), that can be
/// broken by one rank (abort) and gives up after `timeout`.
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
    size: usize,
    timeout: Duration,
}

struct GateState {
    arrived: usize,
    generation: u64,
    broken: Option<String>,
}

impl Gate {
    fn wait(&self, rank: usize) -> Result<(), DistError> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &s.broken {
            return Err(DistError::Backend(why.clone()));
        }
        let generation = s.generation;
        s.arrived += 1;
        if s.arrived == self.size {
            s.arrived = 0;
            s.generation += 1;
            self.cv.notify_all();
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        while s.generation == generation {
            if let Some(why) = &s.broken {
                return Err(DistError::Backend(why.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = format!(
                    "rank {rank} waited {:?} for the other ranks at a collective",
                    self.timeout
                );
                s.broken = Some(why.clone());
                self.cv.notify_all();
                return Err(DistError::Backend(why));
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    fn break_with(&self, why: String) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.broken.get_or_insert(why);
        self.cv.notify_all();
    }
}

struct Shared {
    /// Each rank's contribution to the collective in progress.
    slots: Mutex<Vec<Vec<f32>>>,
    gate: Gate,
    /// The sub-worlds split from this one, by their members' ranks here.
    groups: Mutex<HashMap<Vec<usize>, Arc<Shared>>>,
}

impl Shared {
    fn new(n: usize, timeout: Duration) -> Self {
        Shared {
            slots: Mutex::new(vec![Vec::new(); n]),
            gate: Gate {
                state: Mutex::new(GateState {
                    arrived: 0,
                    generation: 0,
                    broken: None,
                }),
                cv: Condvar::new(),
                size: n,
                timeout,
            },
            groups: Mutex::new(HashMap::new()),
        }
    }
}

/// One rank of a world of threads ([`ThreadComm::world`]).
#[derive(Clone)]
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadComm {
    /// The `n` ranks of one world, rank order; give one to each thread.
    /// A collective gives up with an error after `timeout` without peers.
    pub fn world(n: usize, timeout: Duration) -> Vec<ThreadComm> {
        let shared = Arc::new(Shared::new(n, timeout));
        (0..n)
            .map(|rank| ThreadComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Tell the other ranks that this one failed: their next (or current)
    /// collective returns an error naming it.
    pub fn fail(&self, why: &str) {
        self.shared
            .gate
            .break_with(format!("rank {} failed: {why}", self.rank));
    }

    /// Put this rank's `buf` in its slot, wait for every rank's, read them
    /// all with `read`, and wait again before anyone writes the next one.
    fn exchange<T>(
        &self,
        buf: &[f32],
        read: impl FnOnce(&[Vec<f32>]) -> T,
    ) -> Result<T, DistError> {
        self.shared.slots.lock().unwrap_or_else(|p| p.into_inner())[self.rank] = buf.to_vec();
        self.shared.gate.wait(self.rank)?;
        let out = read(&self.shared.slots.lock().unwrap_or_else(|p| p.into_inner()));
        self.shared.gate.wait(self.rank)?;
        Ok(out)
    }

    fn same_lengths(op: &str, slots: &[Vec<f32>]) -> Result<usize, DistError> {
        let k = slots[0].len();
        match slots.iter().position(|s| s.len() != k) {
            Some(r) => Err(DistError::Shape(format!(
                "{op}: rank 0 gave {k} elements but rank {r} gave {}",
                slots[r].len()
            ))),
            None => Ok(k),
        }
    }
}

impl Collective for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.gate.size
    }
    fn name(&self) -> &'static str {
        "threads"
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), DistError> {
        let sum = self.exchange(buf, |slots| {
            let k = Self::same_lengths("all_reduce_sum", slots)?;
            let mut sum = vec![0.0f32; k];
            for s in slots {
                sum.iter_mut().zip(s).for_each(|(a, b)| *a += b);
            }
            Ok::<_, DistError>(sum)
        })??;
        buf.copy_from_slice(&sum);
        Ok(())
    }
    fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        let n = self.size();
        let all = self.exchange(local, |slots| {
            Self::same_lengths("all_gather", slots)?;
            Ok::<_, DistError>(slots.concat())
        })??;
        if all.len() != out.len() {
            return Err(DistError::Shape(format!(
                "all_gather: the full buffer has {} elements, but {n} ranks x {} per rank = {}",
                out.len(),
                local.len(),
                all.len()
            )));
        }
        out.copy_from_slice(&all);
        Ok(())
    }
    fn reduce_scatter_sum(&self, full: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        let (n, k, rank) = (self.size(), out.len(), self.rank);
        let block = self.exchange(full, |slots| {
            let len = Self::same_lengths("reduce_scatter", slots)?;
            if len != n * k {
                return Err(DistError::Shape(format!(
                    "reduce_scatter: the full buffer has {len} elements, but {n} ranks x {k} per rank = {}",
                    n * k
                )));
            }
            let mut sum = vec![0.0f32; k];
            for s in slots {
                sum.iter_mut()
                    .zip(&s[rank * k..(rank + 1) * k])
                    .for_each(|(a, b)| *a += b);
            }
            Ok(sum)
        })??;
        out.copy_from_slice(&block);
        Ok(())
    }
    fn all_to_all(&self, send: &[f32], recv: &mut [f32]) -> Result<(), DistError> {
        let (n, rank) = (self.size(), self.rank);
        crate::collective::check_all_to_all(send.len(), recv.len(), n)?;
        let k = send.len() / n;
        let mine = self.exchange(send, |slots| {
            Self::same_lengths("all_to_all", slots)?;
            Ok::<_, DistError>(
                slots
                    .iter()
                    .flat_map(|s| s[rank * k..(rank + 1) * k].iter().copied())
                    .collect::<Vec<f32>>(),
            )
        })??;
        recv.copy_from_slice(&mine);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), DistError> {
        crate::collective::check_root(root, self.size())?;
        let from_root = self.exchange(buf, |slots| slots[root].clone())?;
        if from_root.len() != buf.len() {
            return Err(DistError::Shape(format!(
                "broadcast: rank {root} sent {} elements, rank {} expects {}",
                from_root.len(),
                self.rank,
                buf.len()
            )));
        }
        buf.copy_from_slice(&from_root);
        Ok(())
    }
    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<(), DistError> {
        // Bytes travel as f32 slots holding one byte each: exact, and small.
        let mut as_f32: Vec<f32> = buf.iter().map(|&b| b as f32).collect();
        self.broadcast(&mut as_f32, root)?;
        for (b, v) in buf.iter_mut().zip(as_f32) {
            *b = v as u8;
        }
        Ok(())
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.shared.gate.wait(self.rank)
    }
    fn split(&self, color: usize) -> Result<Box<dyn Collective>, DistError> {
        let colors = self.exchange(&[color as f32], |slots| {
            slots.iter().map(|s| s[0] as usize).collect::<Vec<_>>()
        })?;
        let members: Vec<usize> = (0..colors.len()).filter(|&r| colors[r] == color).collect();
        let rank = members
            .iter()
            .position(|&r| r == self.rank)
            .expect("a member");
        let shared = self
            .shared
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(members.clone())
            .or_insert_with(|| Arc::new(Shared::new(members.len(), self.shared.gate.timeout)))
            .clone();
        Ok(Box::new(ThreadComm { rank, shared }))
    }
    fn abort(&self, code: i32) -> ! {
        self.fail(&format!("aborted with code {code}"));
        panic!(
            "rank {} aborted the thread world with code {code}",
            self.rank
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `f` on every rank of a world of `n` threads; results by rank.
    fn on_ranks<T: Send>(n: usize, f: impl Fn(&ThreadComm) -> T + Sync) -> Vec<T> {
        let comms = ThreadComm::world(n, Duration::from_secs(20));
        std::thread::scope(|s| {
            let handles: Vec<_> = comms.iter().map(|c| s.spawn(|| f(c))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn collectives_match_their_definitions() {
        for n in 1..=4 {
            let out = on_ranks(n, |c| {
                let r = c.rank() as f32;
                let mut sum = vec![r, 10.0 * r, 1.0];
                c.all_reduce_sum(&mut sum).unwrap();
                let mut gathered = vec![0.0; 2 * n];
                c.all_gather(&[r, -r], &mut gathered).unwrap();
                let full: Vec<f32> = (0..2 * n).map(|i| i as f32 + r).collect();
                let mut block = vec![0.0; 2];
                c.reduce_scatter_sum(&full, &mut block).unwrap();
                let mut b = vec![r; 3];
                c.broadcast(&mut b, n - 1).unwrap();
                let mut steps = [c.rank() as u64 * (1 << 40) + 7, u64::MAX - c.rank() as u64];
                c.broadcast_u64(&mut steps, n - 1).unwrap();
                assert_eq!(
                    steps,
                    [(n as u64 - 1) * (1 << 40) + 7, u64::MAX - (n as u64 - 1)]
                );
                c.barrier().unwrap();
                (sum, gathered, block, b)
            });
            let total: f32 = (0..n).map(|r| r as f32).sum();
            for (rank, (sum, gathered, block, b)) in out.into_iter().enumerate() {
                assert_eq!(sum, vec![total, 10.0 * total, n as f32]);
                let want: Vec<f32> = (0..n).flat_map(|r| [r as f32, -(r as f32)]).collect();
                assert_eq!(gathered, want);
                let want: Vec<f32> = (0..2)
                    .map(|i| n as f32 * (2 * rank + i) as f32 + total)
                    .collect();
                assert_eq!(block, want, "rank {rank} of {n}");
                assert_eq!(b, vec![(n - 1) as f32; 3]);
            }
        }
    }

    #[test]
    fn threads_pass_the_self_test_that_mpi_ranks_run() {
        for n in 1..=4 {
            for r in on_ranks(n, |c| crate::self_test(c)) {
                r.unwrap();
            }
        }
    }

    /// split makes sub-worlds of the ranks with one color, ranked in
    /// order, whose collectives stay inside them.
    #[test]
    fn split_makes_independent_sub_worlds() {
        let got = on_ranks(4, |c| {
            let sub = c.split(c.rank() % 2).unwrap();
            let mut sum = [c.rank() as f32];
            sub.all_reduce_sum(&mut sum).unwrap();
            let mut recv = [0.0; 2];
            let r = c.rank() as f32;
            sub.all_to_all(&[r * 10.0, r * 10.0 + 1.0], &mut recv)
                .unwrap();
            (sub.rank(), sub.size(), sum[0], recv)
        });
        assert_eq!(got[0], (0, 2, 2.0, [0.0, 20.0]));
        assert_eq!(got[1], (0, 2, 4.0, [10.0, 30.0]));
        assert_eq!(got[2], (1, 2, 2.0, [1.0, 21.0]));
        assert_eq!(got[3], (1, 2, 4.0, [11.0, 31.0]));
    }

    /// all_to_all swaps block j of rank i with block i of rank j, and a
    /// buffer that does not split into one block per rank is refused.
    #[test]
    fn all_to_all_transposes_blocks_and_checks_lengths() {
        let got = on_ranks(3, |c| {
            let r = c.rank() as f32;
            let send: Vec<f32> = (0..6).map(|x| r * 10.0 + (x / 2) as f32).collect();
            let mut recv = vec![0.0; 6];
            c.all_to_all(&send, &mut recv).unwrap();
            recv
        });
        for (r, recv) in got.iter().enumerate() {
            let want: Vec<f32> = (0..6).map(|x| ((x / 2) * 10 + r) as f32).collect();
            assert_eq!(recv, &want, "rank {r}");
        }
        let errs = on_ranks(2, |c| {
            let mut recv = vec![0.0; 3];
            c.all_to_all(&[1.0, 2.0, 3.0], &mut recv)
                .unwrap_err()
                .to_string()
        });
        assert!(errs[0].contains("2 ranks x the same block"), "{}", errs[0]);
    }

    #[test]
    fn a_failed_rank_or_a_missing_one_ends_the_others_wait() {
        let out = on_ranks(3, |c| {
            if c.rank() == 1 {
                c.fail("bad batch");
                return "failed".to_string();
            }
            c.barrier().unwrap_err().to_string()
        });
        assert_eq!(out[1], "failed");
        assert!(out[0].contains("rank 1 failed: bad batch"), "{}", out[0]);
        let comms = ThreadComm::world(2, Duration::from_millis(50));
        let err = comms[0].barrier().unwrap_err().to_string();
        assert!(err.contains("waited"), "{err}");
        let out = on_ranks(2, |c| {
            let mut buf = vec![0.0; 2 + c.rank()];
            c.all_reduce_sum(&mut buf).unwrap_err().to_string()
        });
        assert!(
            out[0].contains("rank 0 gave 2 elements but rank 1 gave 3"),
            "{}",
            out[0]
        );
    }
}
