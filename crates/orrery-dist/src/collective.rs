//! Collectives over flat f32 buffers in host memory: the single-process
//! identity backend and MPI (the `mpi` feature, on by default).
//! Letters: n = world size, k = elements per rank.
use std::sync::Arc;

use crate::{Deadline, DistError, World};

/// The collective operations orrery's parallel strategies use. Every rank
/// calls the same operations in the same order with the same lengths.
pub trait Collective {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// The backend's name, for logs.
    fn name(&self) -> &'static str;
    /// Element-wise sum over ranks, in place: [m] -> [m].
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), DistError>;
    /// Every rank's `local` [k], concatenated in rank order into `out` [n k].
    fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<(), DistError>;
    /// Sum `full` [n k] over ranks and keep this rank's block [k] in `out`.
    fn reduce_scatter_sum(&self, full: &[f32], out: &mut [f32]) -> Result<(), DistError>;
    /// All-to-all: `send` is `size` equal blocks, block j for rank j;
    /// `recv` (as long) gets block i from rank i. Context parallelism's
    /// swap of a sequence shard for a head shard (DeepSpeed-Ulysses).
    fn all_to_all(&self, send: &[f32], recv: &mut [f32]) -> Result<(), DistError>;
    /// Copy `root`'s buffer to every rank, in place.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), DistError>;
    /// Copy `root`'s bytes to every rank, in place: for values that are not
    /// f32 (steps, ids, flags), sent exactly.
    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<(), DistError>;
    /// Copy `root`'s u64 values to every rank, in place, exactly.
    fn broadcast_u64(&self, buf: &mut [u64], root: usize) -> Result<(), DistError> {
        let mut bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.broadcast_bytes(&mut bytes, root)?;
        for (v, b) in buf.iter_mut().zip(bytes.chunks_exact(8)) {
            *v = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        Ok(())
    }
    /// Wait until every rank gets here.
    fn barrier(&self) -> Result<(), DistError>;
    /// The ranks that pass the same `color`, as a world of their own
    /// ranked in the order of their ranks here (MPI_Comm_split): context
    /// parallelism's groups. Every rank calls it, in step.
    fn split(&self, color: usize) -> Result<Box<dyn Collective>, DistError>;
    /// End the whole job now with `code` (MPI_Abort): for a rank that fails
    /// alone, which must not wait in MPI_Finalize for peers that wait for it.
    fn abort(&self, code: i32) -> !;
    /// This world's [`GatherLane`]: made on the first call, which is a
    /// collective (every rank calls it at the same point). `None` where the
    /// backend has none: one process, thread ranks, or MPI without
    /// `MPI_THREAD_MULTIPLE`.
    fn gather_lane(&self) -> Option<Arc<dyn GatherLane>> {
        None
    }
}

/// A second channel of all_gathers over the same ranks, independent of the
/// collective's own calls: a helper thread may gather on it while the
/// thread that owns the collective runs other collectives (FSDP's
/// prefetch). Every rank issues the same gathers on it in the same order,
/// one at a time.
pub trait GatherLane: Send + Sync {
    /// As [`Collective::all_gather`]: [k] -> [n k].
    fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<(), DistError>;
}

/// Pass `result` through; on an error in a multi-rank job, print it with the
/// rank and end the whole job (a rank that returned alone would hang the
/// others, and itself in MPI_Finalize).
pub fn abort_on_error<T, E: std::fmt::Display>(
    comm: &dyn Collective,
    result: Result<T, E>,
) -> Result<T, E> {
    match result {
        Err(e) if comm.size() > 1 => {
            eprintln!("[rank {} of {}] error: {e}", comm.rank(), comm.size());
            comm.abort(2)
        }
        other => other,
    }
}

/// A broadcast's root must be one of the ranks.
pub(crate) fn check_root(root: usize, size: usize) -> Result<(), DistError> {
    if root >= size {
        return Err(DistError::Shape(format!(
            "broadcast from rank {root} in a world of {size}"
        )));
    }
    Ok(())
}

/// Check the lengths of a gather / scatter pair: `big` must be n times `small`.
fn check_blocks(op: &'static str, small: usize, big: usize, n: usize) -> Result<(), DistError> {
    if big != small * n {
        return Err(DistError::Shape(format!(
            "{op}: the full buffer has {big} elements, but {n} ranks x {small} per rank = {}",
            small * n
        )));
    }
    Ok(())
}

/// Check an all_to_all's buffers: the same length, `n` equal blocks.
pub(crate) fn check_all_to_all(send: usize, recv: usize, n: usize) -> Result<(), DistError> {
    if send != recv || send % n != 0 {
        return Err(DistError::Shape(format!(
            "all_to_all: send has {send} elements and recv {recv}; both must be {n} ranks x the same block"
        )));
    }
    Ok(())
}

/// Sum over ranks in chunks of at most `bucket` elements (DDP's gradient
/// buckets: bounded staging memory per call, and one call per bucket).
pub fn all_reduce_sum_bucketed(
    comm: &dyn Collective,
    buf: &mut [f32],
    bucket: usize,
) -> Result<(), DistError> {
    if comm.size() == 1 {
        return Ok(());
    }
    for chunk in buf.chunks_mut(bucket.max(1)) {
        comm.all_reduce_sum(chunk)?;
    }
    Ok(())
}

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn name(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }
    fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        check_blocks("all_gather", local.len(), out.len(), 1)?;
        out.copy_from_slice(local);
        Ok(())
    }
    fn reduce_scatter_sum(&self, full: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        check_blocks("reduce_scatter", out.len(), full.len(), 1)?;
        out.copy_from_slice(full);
        Ok(())
    }
    fn all_to_all(&self, send: &[f32], recv: &mut [f32]) -> Result<(), DistError> {
        check_all_to_all(send.len(), recv.len(), 1)?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f32], root: usize) -> Result<(), DistError> {
        check_root(root, 1)
    }
    fn broadcast_bytes(&self, _buf: &mut [u8], root: usize) -> Result<(), DistError> {
        check_root(root, 1)
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
    fn split(&self, _color: usize) -> Result<Box<dyn Collective>, DistError> {
        Ok(Box::new(SingleProcess))
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// MPI over `MPI_COMM_WORLD` (host memory; CPU training and bootstrap).
#[cfg(feature = "mpi")]
pub struct Mpi {
    // The communicator (the world, or a split of it); dropped (freed)
    // before the universe below.
    world: mpi::topology::SimpleCommunicator,
    // The send copy of in-place all_reduce, kept between calls (the mpi crate
    // has no MPI_IN_PLACE; a fresh allocation per call costs page faults).
    scratch: std::cell::RefCell<Vec<f32>>,
    // Whether MPI gave MPI_THREAD_MULTIPLE (a gather lane needs it).
    threads: bool,
    // The gather lane, a duplicate of the communicator, made on first use;
    // freed before the universe below.
    lane: std::cell::OnceCell<Option<Arc<MpiLane>>>,
    // Keeps MPI initialised; MPI_Finalize runs when the world and every
    // split of it have dropped.
    _universe: std::rc::Rc<mpi::environment::Universe>,
}

/// A duplicate of an MPI communicator for a [`GatherLane`].
#[cfg(feature = "mpi")]
struct MpiLane(std::sync::Mutex<mpi::topology::SimpleCommunicator>);

// SAFETY: a lane exists only when MPI runs with MPI_THREAD_MULTIPLE, so any
// thread may call MPI; its communicator is its own duplicate, used by one
// call at a time (the mutex), so its collectives never interleave with the
// owning collective's.
#[cfg(feature = "mpi")]
unsafe impl Send for MpiLane {}
#[cfg(feature = "mpi")]
unsafe impl Sync for MpiLane {}

#[cfg(feature = "mpi")]
impl GatherLane for MpiLane {
    fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        use mpi::collective::CommunicatorCollectives;
        use mpi::topology::Communicator;
        let comm = self.0.lock().unwrap_or_else(|p| p.into_inner());
        check_blocks("all_gather", local.len(), out.len(), comm.size() as usize)?;
        comm.all_gather_into(local, out);
        Ok(())
    }
}

#[cfg(feature = "mpi")]
impl Mpi {
    /// Initialise MPI (once per process, asking for MPI_THREAD_MULTIPLE so
    /// a [`GatherLane`] can run on a helper thread) and take the world
    /// communicator.
    pub fn init() -> Result<Self, DistError> {
        use mpi::Threading;
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| {
                DistError::Backend("MPI was already initialised in this process".into())
            })?;
        let world = universe.world();
        Ok(Mpi {
            world,
            scratch: Default::default(),
            threads: threading == Threading::Multiple,
            lane: Default::default(),
            _universe: std::rc::Rc::new(universe),
        })
    }
}

#[cfg(feature = "mpi")]
impl Mpi {
    /// MPI_Bcast of any plain element type from `root`.
    fn broadcast_any<T: mpi::datatype::Equivalence>(
        &self,
        buf: &mut [T],
        root: usize,
    ) -> Result<(), DistError> {
        use mpi::collective::Root;
        use mpi::topology::Communicator;
        check_root(root, self.size())?;
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
}

#[cfg(feature = "mpi")]
impl Collective for Mpi {
    fn rank(&self) -> usize {
        use mpi::topology::Communicator;
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        use mpi::topology::Communicator;
        self.world.size() as usize
    }
    fn name(&self) -> &'static str {
        "mpi"
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), DistError> {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        let mut send = self.scratch.borrow_mut();
        send.clear();
        send.extend_from_slice(buf);
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_gather(&self, local: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        use mpi::collective::CommunicatorCollectives;
        check_blocks("all_gather", local.len(), out.len(), self.size())?;
        self.world.all_gather_into(local, out);
        Ok(())
    }
    fn reduce_scatter_sum(&self, full: &[f32], out: &mut [f32]) -> Result<(), DistError> {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        check_blocks("reduce_scatter", out.len(), full.len(), self.size())?;
        self.world
            .reduce_scatter_block_into(full, out, SystemOperation::sum());
        Ok(())
    }
    fn all_to_all(&self, send: &[f32], recv: &mut [f32]) -> Result<(), DistError> {
        use mpi::collective::CommunicatorCollectives;
        check_all_to_all(send.len(), recv.len(), self.size())?;
        self.world.all_to_all_into(send, recv);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), DistError> {
        self.broadcast_any(buf, root)
    }
    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<(), DistError> {
        self.broadcast_any(buf, root)
    }
    fn barrier(&self) -> Result<(), DistError> {
        use mpi::collective::CommunicatorCollectives;
        self.world.barrier();
        Ok(())
    }
    fn split(&self, color: usize) -> Result<Box<dyn Collective>, DistError> {
        use mpi::topology::{Color, Communicator};
        let color = i32::try_from(color)
            .map_err(|_| DistError::Backend(format!("split: color {color} is too large")))?;
        let sub = self
            .world
            .split_by_color(Color::with_value(color))
            .ok_or_else(|| DistError::Backend("MPI_Comm_split returned no communicator".into()))?;
        Ok(Box::new(Mpi {
            world: sub,
            scratch: Default::default(),
            threads: self.threads,
            lane: Default::default(),
            _universe: self._universe.clone(),
        }))
    }
    fn abort(&self, code: i32) -> ! {
        use mpi::topology::Communicator;
        self.world.abort(code)
    }
    fn gather_lane(&self) -> Option<Arc<dyn GatherLane>> {
        use mpi::topology::Communicator;
        let lane = self.lane.get_or_init(|| {
            self.threads
                .then(|| Arc::new(MpiLane(std::sync::Mutex::new(self.world.duplicate()))))
        });
        lane.clone().map(|l| l as Arc<dyn GatherLane>)
    }
}

/// The collective backend for `world`: the identity for one process, MPI
/// when a launcher started several, with a [`Deadline`] of `timeout` per
/// operation (and heartbeats in `heartbeats`, a directory all ranks share,
/// so a timeout names the rank it waits for). MPI's own view of the world
/// must agree with the launcher's environment.
pub fn connect(
    world: &World,
    timeout: std::time::Duration,
    heartbeats: Option<std::path::PathBuf>,
) -> Result<Box<dyn Collective>, DistError> {
    if world.size == 1 {
        return Ok(Box::new(SingleProcess));
    }
    Ok(Box::new(Deadline::new(
        connect_raw(world)?,
        timeout,
        heartbeats,
    )))
}

fn connect_raw(world: &World) -> Result<Box<dyn Collective>, DistError> {
    #[cfg(feature = "mpi")]
    {
        let mpi = Mpi::init()?;
        if (mpi.rank(), mpi.size()) != (world.rank, world.size) {
            return Err(DistError::Backend(format!(
                "MPI says rank {} of {}, but the {} environment says rank {} of {}: start every rank with the same launcher (mpirun, or srun --mpi=pmix)",
                mpi.rank(),
                mpi.size(),
                world.launcher,
                world.rank,
                world.size
            )));
        }
        Ok(Box::new(mpi))
    }
    #[cfg(not(feature = "mpi"))]
    Err(DistError::Backend(format!(
        "started as rank {} of {} by {}, but this binary was built without MPI: rebuild with the default features (needs OpenMPI: launch/setup.sh installs it)",
        world.rank, world.size, world.launcher
    )))
}

/// Check every collective against values each rank can predict; returns a
/// one-line report. Run under a launcher: `orrery dist selftest`.
pub fn self_test(comm: &dyn Collective) -> Result<String, DistError> {
    let (r, n) = (comm.rank(), comm.size());
    let fail = |what: &str, got: &[f32], want: &[f32]| {
        Err(DistError::Backend(format!(
            "rank {r}: {what} gave {got:?}, expected {want:?}"
        )))
    };
    let k = 3;
    // Rank r holds r * 10 + i.
    let local: Vec<f32> = (0..k).map(|i| (r * 10 + i) as f32).collect();
    let mut sum = local.clone();
    comm.all_reduce_sum(&mut sum)?;
    let want: Vec<f32> = (0..k)
        .map(|i| (0..n).map(|q| (q * 10 + i) as f32).sum())
        .collect();
    if sum != want {
        return fail("all_reduce_sum", &sum, &want);
    }
    let mut gathered = vec![0.0; k * n];
    comm.all_gather(&local, &mut gathered)?;
    let want: Vec<f32> = (0..n)
        .flat_map(|q| (0..k).map(move |i| (q * 10 + i) as f32))
        .collect();
    if gathered != want {
        return fail("all_gather", &gathered, &want);
    }
    // Rank r contributes (r + 1) at every position; block b sums to n(n+1)/2 + b.
    let full: Vec<f32> = (0..k * n).map(|j| (r + 1 + j / k) as f32).collect();
    let mut block = vec![0.0; k];
    comm.reduce_scatter_sum(&full, &mut block)?;
    let want = vec![(n * (n + 1) / 2 + n * r) as f32; k];
    if block != want {
        return fail("reduce_scatter_sum", &block, &want);
    }
    // Block j of rank r holds r * 100 + j * 10 + i; rank r receives block r
    // of every rank q: q * 100 + r * 10 + i.
    let send: Vec<f32> = (0..n * k)
        .map(|x| (r * 100 + (x / k) * 10 + x % k) as f32)
        .collect();
    let mut swapped = vec![0.0; n * k];
    comm.all_to_all(&send, &mut swapped)?;
    let want: Vec<f32> = (0..n * k)
        .map(|x| ((x / k) * 100 + r * 10 + x % k) as f32)
        .collect();
    if swapped != want {
        return fail("all_to_all", &swapped, &want);
    }
    let root = n - 1;
    let mut b: Vec<f32> = vec![r as f32; k];
    comm.broadcast(&mut b, root)?;
    if b != vec![root as f32; k] {
        return fail("broadcast", &b, &vec![root as f32; k]);
    }
    // u64 values f32 cannot hold exactly (a step count past 2^24).
    let mut steps = [(r as u64) << 40 | 0xABCD, u64::MAX - r as u64];
    comm.broadcast_u64(&mut steps, root)?;
    let want = [(root as u64) << 40 | 0xABCD, u64::MAX - root as u64];
    if steps != want {
        return Err(DistError::Backend(format!(
            "rank {r}: broadcast_u64 gave {steps:?}, expected {want:?}"
        )));
    }
    let mut big: Vec<f32> = (0..1000).map(|i| (i * (r + 1)) as f32).collect();
    all_reduce_sum_bucketed(comm, &mut big, 64)?;
    let tri = (n * (n + 1) / 2) as f32;
    let want: Vec<f32> = (0..1000).map(|i| i as f32 * tri).collect();
    if big != want {
        return fail("bucketed all_reduce (first values)", &big[..4], &want[..4]);
    }
    comm.barrier()?;
    // The gather lane on a helper thread while this thread all_reduces.
    let lane = match comm.gather_lane() {
        None => "no gather lane",
        Some(lane) => {
            let local = vec![r as f32 + 0.5; k];
            let helper = std::thread::spawn(move || {
                let mut out = vec![0.0; n * k];
                lane.all_gather(&local, &mut out).map(|_| out)
            });
            let mut sum = vec![1.0f32; k];
            comm.all_reduce_sum(&mut sum)?;
            let gathered = helper
                .join()
                .map_err(|_| DistError::Backend("the gather lane's thread panicked".into()))??;
            let want: Vec<f32> = (0..n * k).map(|x| (x / k) as f32 + 0.5).collect();
            if gathered != want {
                return fail("all_gather on the gather lane", &gathered, &want);
            }
            if sum != vec![n as f32; k] {
                return fail(
                    "all_reduce beside the gather lane",
                    &sum,
                    &vec![n as f32; k],
                );
            }
            "the gather lane beside an all_reduce"
        }
    };
    Ok(format!(
        "rank {r} of {n} ({}): all_reduce, all_gather, reduce_scatter, all_to_all, broadcast (f32 and u64), bucketed all_reduce, barrier and {lane} ok",
        comm.name()
    ))
}
