//! A request to stop a run early (a scheduler's or a user's signal): the
//! command line sets it from a signal handler, and the loop, after the step
//! in flight, agrees with every rank to stop, writes a checkpoint and
//! returns. The exit code of such a stop is [`PREEMPTED_EXIT_CODE`].
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use orrery_dist::Collective;

use crate::Result;

/// The exit code of a run that a signal stopped after writing a
/// checkpoint: 75, `EX_TEMPFAIL` of sysexits.h ("try again later").
/// launch/slurm/train.sbatch requeues a job that ends with it.
pub const PREEMPTED_EXIT_CODE: u8 = 75;

/// A shared flag holding the first signal number received (0: none).
#[derive(Debug, Clone, Default)]
pub struct StopRequest(Arc<AtomicI32>);

impl StopRequest {
    /// A request that nothing has made yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the run to stop, because of signal `sig` (kept if it is the
    /// first). Returns whether this was the first request.
    pub fn request(&self, sig: i32) -> bool {
        self.0
            .compare_exchange(0, sig.max(1), Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// The signal of the first request, if any came on this process.
    pub fn requested(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
        }
    }

    /// Whether any rank was asked to stop, agreed by every rank of `comm`
    /// (a one-number all_reduce), so that all of them stop after the same
    /// step. Returns a signal number: this rank's, or 0 when only another
    /// rank got one.
    pub fn agreed(&self, comm: &dyn Collective) -> Result<Option<i32>> {
        let mine = self.requested();
        if comm.size() == 1 {
            return Ok(mine);
        }
        let mut any = [if mine.is_some() { 1.0f32 } else { 0.0 }];
        comm.all_reduce_sum(&mut any)?;
        Ok((any[0] > 0.0).then(|| mine.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_signal_is_kept() {
        let stop = StopRequest::new();
        assert_eq!(stop.requested(), None);
        assert!(stop.request(10));
        assert!(!stop.request(15), "a second request changes nothing");
        assert_eq!(stop.requested(), Some(10));
        let seen_elsewhere = stop.clone();
        assert_eq!(seen_elsewhere.requested(), Some(10));
        assert_eq!(stop.agreed(&orrery_dist::SingleProcess).unwrap(), Some(10));
    }

    /// Two thread ranks: one got the signal, both agree to stop.
    #[test]
    fn every_rank_stops_when_one_is_asked() {
        let comms = orrery_dist::ThreadComm::world(2, std::time::Duration::from_secs(30));
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                std::thread::spawn(move || {
                    let stop = StopRequest::new();
                    let before = stop.agreed(&comm).unwrap();
                    if rank == 1 {
                        stop.request(15);
                    }
                    (before, stop.agreed(&comm).unwrap())
                })
            })
            .collect();
        let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(got, vec![(None, Some(0)), (None, Some(15))]);
    }
}
