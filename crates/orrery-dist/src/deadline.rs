//! A deadline on every collective, and heartbeats that name the rank a
//! timed-out collective waits for. MPI cannot say which peer never arrived,
//! so each rank's watchdog thread writes a small heartbeat file (how many
//! collectives it has entered, whether it is inside one, when it last wrote)
//! to a directory all ranks share (the run directory). When a collective
//! times out, the waiting rank reads its peers' files and says which ones
//! fell silent (stopped, dead, node lost) or are alive but never reached
//! this collective.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{Collective, DistError};

/// A collective backend with a deadline: if one operation waits longer than
/// `timeout` (a peer rank hung, or died without the launcher noticing), the
/// process prints what it was waiting for, and for whom when heartbeats are
/// on, and exits with code 3, which makes mpirun / srun end the whole job
/// instead of leaving it waiting forever.
pub struct Deadline {
    inner: Box<dyn Collective>,
    // Start of the operation in flight, in ms since `epoch` (0 = none), its
    // name, and how many operations have started.
    busy_since_ms: Arc<AtomicU64>,
    op: Arc<Mutex<&'static str>>,
    // Collectives entered << 1 | inside one now: one word, read whole.
    progress: Arc<AtomicU64>,
    epoch: Instant,
    timeout: Duration,
}

/// What a rank's heartbeat file says.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Beat {
    /// Collectives entered so far.
    started: u64,
    /// Inside one now.
    busy: bool,
    /// Written at, ms since the Unix epoch.
    at_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn beat_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank{rank}"))
}

fn write_beat(dir: &Path, rank: usize, beat: Beat) {
    // Written whole and renamed, so a reader never sees half a line.
    let tmp = dir.join(format!(".rank{rank}.tmp"));
    let line = format!("{} {} {}\n", beat.started, beat.busy as u8, beat.at_ms);
    if std::fs::write(&tmp, line).is_ok() {
        let _ = std::fs::rename(&tmp, beat_path(dir, rank));
    }
}

fn read_beat(dir: &Path, rank: usize) -> Option<Beat> {
    let text = std::fs::read_to_string(beat_path(dir, rank)).ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some(Beat {
        started: it.next()??,
        busy: it.next()?? == 1,
        at_ms: it.next()??,
    })
}

/// Why the collective that this rank entered as number `mine` waits: one
/// phrase per peer that is not waiting in it too.
fn diagnose(dir: &Path, rank: usize, size: usize, mine: u64, silent_after: Duration) -> String {
    let now = unix_ms();
    let mut found = Vec::new();
    for peer in (0..size).filter(|&p| p != rank) {
        match read_beat(dir, peer) {
            None => found.push(format!(
                "rank {peer} never wrote a heartbeat to {} (not started, or the directory is not shared)",
                dir.display()
            )),
            Some(b) if now.saturating_sub(b.at_ms) > silent_after.as_millis() as u64 => {
                found.push(format!(
                    "rank {peer} has been silent for {:.0} s (stopped, dead, or its node is unreachable)",
                    now.saturating_sub(b.at_ms) as f64 / 1000.0
                ))
            }
            Some(b) if b.started < mine && b.busy => found.push(format!(
                "rank {peer} is waiting in an earlier collective (#{} of this rank's {mine}): the ranks disagree on the order of collectives",
                b.started
            )),
            Some(b) if b.started < mine || (b.started == mine && !b.busy) => found.push(format!(
                "rank {peer} is alive but has not reached this collective (it entered {} of this rank's {mine}): stuck or slow outside collectives",
                b.started
            )),
            Some(_) => {}
        }
    }
    if found.is_empty() {
        "every other rank is waiting in a collective too".into()
    } else {
        found.join("; ")
    }
}

impl Deadline {
    /// Watch `inner` with a background thread; `timeout` must be positive.
    /// With `heartbeats`, a directory every rank can read and write, a second
    /// thread writes this rank's heartbeat there (so a stalled filesystem
    /// cannot stop the deadline), and a timeout names the peers it waits for.
    pub fn new(inner: Box<dyn Collective>, timeout: Duration, heartbeats: Option<PathBuf>) -> Self {
        let busy_since_ms = Arc::new(AtomicU64::new(0));
        let op = Arc::new(Mutex::new(""));
        let progress = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let (rank, size) = (inner.rank(), inner.size());
        let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        // A peer whose heartbeat is older than this has stopped writing.
        let silent_after = tick * 3 + Duration::from_secs(1);
        let heartbeats = heartbeats.filter(|d| std::fs::create_dir_all(d).is_ok());
        if let Some(dir) = heartbeats.clone() {
            let progress = progress.clone();
            std::thread::Builder::new()
                .name("orrery-heartbeat".into())
                .spawn(move || loop {
                    let (started, busy) = unpack(progress.load(Ordering::Acquire));
                    let at_ms = unix_ms();
                    write_beat(
                        &dir,
                        rank,
                        Beat {
                            started,
                            busy,
                            at_ms,
                        },
                    );
                    std::thread::sleep(tick);
                })
                .expect("spawn the heartbeat thread");
        }
        let (busy, name, count) = (busy_since_ms.clone(), op.clone(), progress.clone());
        std::thread::Builder::new()
            .name("orrery-collective-deadline".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let since = busy.load(Ordering::Acquire);
                if since == 0 {
                    continue;
                }
                let now = epoch.elapsed().as_millis() as u64;
                let waited = now.saturating_sub(since);
                if waited <= timeout.as_millis() as u64 {
                    continue;
                }
                let what = *name.lock().unwrap_or_else(|e| e.into_inner());
                let (mine, _) = unpack(count.load(Ordering::Acquire));
                if busy.load(Ordering::Acquire) != since {
                    continue; // it finished just now
                }
                let why = match &heartbeats {
                    Some(dir) => diagnose_bounded(dir.clone(), rank, size, mine, silent_after),
                    None => "a rank is hung or lost".into(),
                };
                eprintln!(
                    "[rank {rank} of {size}] error: {what} (collective #{mine}) has waited {:.0} s for the other ranks (parallel.timeout_s = {:.0}): {why}; ending the job",
                    waited as f64 / 1000.0,
                    timeout.as_secs_f64()
                );
                // _exit: no atexit handlers or stdio locks while the
                // main thread sits inside MPI.
                // SAFETY: _exit only ends the process.
                unsafe { libc::_exit(3) }
            })
            .expect("spawn the deadline thread");
        Deadline {
            inner,
            busy_since_ms,
            op,
            progress,
            epoch,
            timeout,
        }
    }

    fn watch<T>(&self, op: &'static str, f: impl FnOnce(&dyn Collective) -> T) -> T {
        *self.op.lock().unwrap_or_else(|e| e.into_inner()) = op;
        let now = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.busy_since_ms.store(now, Ordering::Release);
        // One more collective, and busy: (n << 1 | 0) + 3 = (n + 1) << 1 | 1.
        self.progress.fetch_add(3, Ordering::AcqRel);
        let out = f(self.inner.as_ref());
        self.progress.fetch_sub(1, Ordering::AcqRel);
        self.busy_since_ms.store(0, Ordering::Release);
        out
    }
}

/// (collectives entered, inside one now) from the packed progress word, so
/// a heartbeat always reads the two together.
fn unpack(progress: u64) -> (u64, bool) {
    (progress >> 1, progress & 1 == 1)
}

/// [`diagnose`] on its own thread, given 2 s: a stalled filesystem must not
/// keep the job from ending.
fn diagnose_bounded(
    dir: PathBuf,
    rank: usize,
    size: usize,
    mine: u64,
    silent_after: Duration,
) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir_shown = dir.display().to_string();
    let spawned = std::thread::Builder::new().spawn(move || {
        let _ = tx.send(diagnose(&dir, rank, size, mine, silent_after));
    });
    match spawned {
        Ok(_) => rx.recv_timeout(Duration::from_secs(2)).unwrap_or_else(|_| {
            format!("the heartbeats in {dir_shown} could not be read within 2 s")
        }),
        Err(_) => "a rank is hung or lost".into(),
    }
}

impl Collective for Deadline {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), DistError> {
        self.watch("all_reduce", |c| c.all_reduce_sum(buf))
    }
    fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        self.watch("all_gather", |c| c.all_gather(local, out))
    }
    fn reduce_scatter_sum(&self, full: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        self.watch("reduce_scatter", |c| c.reduce_scatter_sum(full, out))
    }
    fn all_to_all(&self, send: &[f32], recv: &mut [f32]) -> Result<(), DistError> {
        self.watch("all_to_all", |c| c.all_to_all(send, recv))
    }
    /// The inner lane, unwatched: its user waits for each gather with a
    /// deadline of its own (a helper thread cannot be watched from here).
    fn gather_lane(&self) -> Option<std::sync::Arc<dyn crate::GatherLane>> {
        self.inner.gather_lane()
    }
    fn split(&self, color: usize) -> Result<Box<dyn Collective>, DistError> {
        let sub = self.watch("split", |c| c.split(color))?;
        Ok(Box::new(Deadline::new(sub, self.timeout, None)))
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), DistError> {
        self.watch("broadcast", |c| c.broadcast(buf, root))
    }
    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<(), DistError> {
        self.watch("broadcast", |c| c.broadcast_bytes(buf, root))
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.watch("barrier", |c| c.barrier())
    }
    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_name_the_silent_and_the_late_peer() {
        let dir = std::env::temp_dir().join(format!("orrery-beats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let now = unix_ms();
        // Rank 0 waits in its collective #10. Rank 1 waits too, rank 2 stopped
        // writing 30 s ago, rank 3 is alive at #9, rank 4 never wrote, rank 5
        // waits in #8.
        let beats = [
            (1, 10, true, now),
            (2, 10, true, now - 30_000),
            (3, 9, false, now),
            (5, 8, true, now),
        ];
        for (rank, started, busy, at_ms) in beats {
            write_beat(
                &dir,
                rank,
                Beat {
                    started,
                    busy,
                    at_ms,
                },
            );
        }
        assert_eq!(
            read_beat(&dir, 3),
            Some(Beat {
                started: 9,
                busy: false,
                at_ms: now
            })
        );
        let why = diagnose(&dir, 0, 6, 10, Duration::from_secs(2));
        assert!(
            why.contains("rank 5 is waiting in an earlier collective (#8"),
            "{why}"
        );
        assert_eq!(unpack(0b1011), (5, true));
        assert!(!why.contains("rank 1"), "{why}");
        assert!(why.contains("rank 2 has been silent for 30 s"), "{why}");
        assert!(
            why.contains("rank 3 is alive but has not reached this collective (it entered 9"),
            "{why}"
        );
        assert!(why.contains("rank 4 never wrote a heartbeat"), "{why}");
        let all_waiting = diagnose(&dir, 0, 2, 10, Duration::from_secs(2));
        assert_eq!(
            all_waiting,
            "every other rank is waiting in a collective too"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
