//! Context parallelism's mesh: world ranks r = d * C + c, data rank d
//! (DDP or FSDP over the data groups, as without context parallelism) and
//! context rank c. The C ranks of a context group read the same clips and
//! each runs the tokens of t/C consecutive frames; the model swaps the
//! sequence shard for a head shard around attention over the group
//! ([`orrery_model::context`]). Every rank's parameter gradient is a part
//! of the whole, so DDP's sums and FSDP's reduce_scatters run over the
//! whole world as before.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use orrery_dist::Collective;
use orrery_model::{ContextGroup, ContextShard};

use crate::{Error, Result};

/// Where a rank sits in the (data x context) mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mesh {
    /// Ranks per context group, C.
    pub context: usize,
    /// This rank's data rank d (its share of each global batch).
    pub data_rank: usize,
    /// Data-parallel ranks, world / C.
    pub data_ranks: usize,
}

impl Mesh {
    /// The mesh of a world of `size` ranks with context groups of
    /// `context`; refused unless the world splits into whole groups.
    pub fn new(rank: usize, size: usize, context: usize) -> Result<Self> {
        if context == 0 || size % context != 0 {
            return Err(Error::Config(format!(
                "parallel.context = {context} must divide the number of ranks, {size}: start a multiple of {context} ranks or change parallel.context"
            )));
        }
        Ok(Self {
            context,
            data_rank: rank / context,
            data_ranks: size / context,
        })
    }
}

/// The bytes one rank of a context group sends per training step by the
/// analysis of Ulysses (Jacobs et al. 2023, section 3.2): each swap sends
/// (C-1)/C of a buffer of b * n/C * d values; per block, forward swaps q, k
/// and v (3 buffers) and the output (1), backward the same again, and a
/// recomputed forward (FSDP, block checkpointing) once more; then the
/// output's frames, gathered once (b * n/C * patch values to C-1 ranks).
pub fn ulysses_bytes_per_step(cfg: &orrery_config::TrainConfig, local_batch: usize) -> usize {
    let c = cfg.parallel.context;
    if c <= 1 {
        return 0;
    }
    let m = &cfg.model;
    let n = m.frame_groups(m.frames) * m.tokens_per_frame();
    let buffer = local_batch * n / c * m.hidden; // values of one swap's buffer
    let recompute = cfg.parallel.strategy == orrery_config::Strategy::Fsdp
        || cfg.parallel.activation_checkpoint == orrery_config::ActivationCheckpoint::Block;
    let passes = if recompute { 3 } else { 2 };
    let swaps = m.depth * 4 * passes * buffer * (c - 1) / c;
    let gather = local_batch * n / c * m.patch_dim() * (c - 1);
    4 * (swaps + gather)
}

/// A context group over a collective split from the world.
pub struct ContextComm {
    // Used only by the thread that runs the model (the training loop);
    // the lock makes that so, whatever the collective.
    comm: Mutex<Box<dyn Collective>>,
    // The group's NCCL communicator when the world's is installed (CUDA):
    // the swaps then stay on the device.
    #[cfg(feature = "cuda")]
    device: Option<crate::nccl::Nccl>,
    rank: usize,
    size: usize,
    sent: AtomicUsize,
}

// SAFETY: a `ContextComm` is only ever used from one thread at a time (the
// mutex), and the collectives it wraps (MPI over a communicator of this
// process, shared-memory threads, one process) may be called from any one
// thread at a time: orrery runs collectives from the training thread only.
unsafe impl Send for ContextComm {}
unsafe impl Sync for ContextComm {}

impl std::fmt::Debug for ContextComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "context rank {} of {}", self.rank, self.size)
    }
}

impl ContextComm {
    /// Split the world into context groups of `mesh.context` consecutive
    /// ranks; a collective: every rank calls it.
    pub fn split(world: &dyn Collective, mesh: &Mesh) -> Result<Arc<Self>> {
        let comm = world.split(mesh.data_rank)?;
        #[cfg(feature = "cuda")]
        let device =
            match crate::nccl::installed() {
                Some(nccl) => Some(nccl.connect_group(comm.as_ref()).map_err(|e| {
                    Error::Comm(format!("the context group's NCCL communicator: {e}"))
                })?),
                None => None,
            };
        Ok(Arc::new(Self {
            rank: comm.rank(),
            size: comm.size(),
            comm: Mutex::new(comm),
            #[cfg(feature = "cuda")]
            device,
            sent: AtomicUsize::new(0),
        }))
    }

    /// This rank's handle for the model input.
    pub fn shard(self: &Arc<Self>) -> ContextShard {
        ContextShard(self.clone())
    }

    fn run(
        &self,
        op: &str,
        len: usize,
        f: impl FnOnce(&dyn Collective) -> std::result::Result<(), orrery_dist::DistError>,
    ) {
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f(comm.as_ref()) {
            // Mid-step, with the other ranks inside the same exchange:
            // nothing to recover, so end the job with the reason.
            eprintln!(
                "[context rank {} of {}] error: {op} of the context group failed: {e}",
                self.rank, self.size
            );
            comm.abort(2)
        }
        self.sent.fetch_add(
            4 * len * (self.size - 1) / self.size.max(1),
            Ordering::Relaxed,
        );
    }
}

impl ContextGroup for ContextComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_to_all(&self, send: Vec<f32>) -> Vec<f32> {
        let mut recv = vec![0.0; send.len()];
        self.run("all_to_all", send.len(), |c| c.all_to_all(&send, &mut recv));
        recv
    }
    #[cfg(feature = "cuda")]
    fn device_all_to_all(&self, send: &dyn std::any::Any) -> Option<Box<dyn std::any::Any>> {
        let nccl = self.device.as_ref()?;
        let done = crate::nccl::all_to_all_any(nccl, send)?;
        let out = done.unwrap_or_else(|e| {
            eprintln!(
                "[context rank {} of {}] error: all_to_all of the context group failed: {e}",
                self.rank, self.size
            );
            self.comm.lock().unwrap_or_else(|p| p.into_inner()).abort(2)
        });
        // Counted as values of the f32 host path, whatever the device type.
        let values = out
            .downcast_ref::<burn::tensor::Tensor<crate::CudaFused, 1>>()
            .map(|t| t.dims()[0])
            .or_else(|| {
                out.downcast_ref::<burn::tensor::Tensor<crate::CudaPlain, 1>>()
                    .map(|t| t.dims()[0])
            })
            .unwrap_or(0);
        self.sent.fetch_add(
            4 * values * (self.size - 1) / self.size.max(1),
            Ordering::Relaxed,
        );
        Some(out)
    }
    /// Bytes sent to the others of the group (this rank's own block of
    /// each exchange stays here and is not counted).
    fn bytes_sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }
    fn all_gather(&self, local: Vec<f32>) -> Vec<f32> {
        let mut out = vec![0.0; local.len() * self.size];
        self.run("all_gather", local.len() * self.size, |c| {
            c.all_gather(&local, &mut out)
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use burn::backend::Flex;
    use burn::optim::GradientsParams;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Distribution, Int, Tensor, TensorData};
    use orrery_dist::ThreadComm;
    use orrery_model::named::{load_host, map_named, named_grads, to_host, NamedTensors};
    use orrery_model::{AttentionImpl, AttentionMask, DitConfig, DitInput, PosEmbed, QkNorm};

    use super::*;
    use crate::fixtures::AB;

    fn config(kernel: AttentionImpl) -> DitConfig {
        DitConfig {
            frames: 4,
            height: 8,
            width: 8,
            patch_size: 2,
            hidden: 32,
            depth: 2,
            heads: 4,
            attention: AttentionMask::FrameCausal,
            history_frames: 1,
            pos_embed: PosEmbed::Rope,
            qk_norm: QkNorm::Rms,
            attention_impl: kernel,
            attention_block: 6,
            ..DitConfig::default()
        }
    }

    /// The output and parameter gradients of sum(out * w) on a fixed input,
    /// the model loaded from `weights`, run here or as a shard of `group`.
    fn run(
        cfg: &DitConfig,
        weights: &NamedTensors,
        group: Option<ContextShard>,
    ) -> (Vec<f32>, BTreeMap<String, Tensor<Flex, 1>>) {
        let device = Default::default();
        let model = load_host(cfg.init::<AB>(&device).unwrap(), weights, &device).unwrap();
        let (b, t) = (2, cfg.frames);
        let dims = [b, t, cfg.channels, cfg.height, cfg.width];
        let n: usize = dims.iter().product();
        let values = |k: usize| {
            (0..n)
                .map(|i| ((i * 7919 + k * 104729) % 1000) as f32 / 500.0 - 1.0)
                .collect::<Vec<_>>()
        };
        let latents = Tensor::<AB, 5>::from_data(TensorData::new(values(1), dims), &device);
        let w = Tensor::<AB, 5>::from_data(TensorData::new(values(2), dims), &device);
        let input = DitInput {
            latents,
            t: Tensor::from_data(
                TensorData::new(vec![0.1f32, 0.5, 0.9, 0.3, 0.7, 0.2, 0.6, 0.8], [b, t]),
                &device,
            ),
            actions: Some(Tensor::<AB, 2, Int>::from_data(
                TensorData::new(vec![0i64, 1, 2, 3, 4, 0, 1, 2], [b, t]),
                &device,
            )),
            labels: None,
            action_values: None,
            action_keep: None,
            context: group,
        };
        let out = model.forward(input).unwrap();
        let host = out.clone().inner().into_data().into_vec::<f32>().unwrap();
        let mut grads = GradientsParams::from_grads((out * w).sum().backward(), &model);
        (host, named_grads(&model, &mut grads))
    }

    /// A group that offers the device path for CPU tensors (the host
    /// exchange behind it), as NCCL does for CUDA tensors: checks the
    /// model's hand-over of flat tensors behind `Any` and back.
    #[derive(Debug)]
    struct OnDevice(Arc<ContextComm>, AtomicUsize);

    impl ContextGroup for OnDevice {
        fn rank(&self) -> usize {
            self.0.rank()
        }
        fn size(&self) -> usize {
            self.0.size()
        }
        fn all_to_all(&self, _: Vec<f32>) -> Vec<f32> {
            panic!("the device path was offered, so the host path must not run")
        }
        fn device_all_to_all(&self, send: &dyn std::any::Any) -> Option<Box<dyn std::any::Any>> {
            let t = send.downcast_ref::<Tensor<Flex, 1>>()?;
            let n = t.dims()[0];
            let recv = self
                .0
                .all_to_all(t.clone().into_data().into_vec::<f32>().unwrap());
            self.1.fetch_add(1, Ordering::Relaxed);
            Some(Box::new(Tensor::<Flex, 1>::from_data(
                TensorData::new(recv, [n]),
                &t.device(),
            )))
        }
        fn all_gather(&self, local: Vec<f32>) -> Vec<f32> {
            self.0.all_gather(local)
        }
        fn bytes_sent(&self) -> usize {
            self.0.bytes_sent()
        }
    }

    /// C = 2 and 4 ranks of a context group (threads) give one process's
    /// output on every rank, and their parameter gradients sum to one
    /// process's, with RoPE, QK-norm, history frames and a frame-causal
    /// mask, for both attention kernels, and through the host and the
    /// device hand-over of the swaps.
    #[test]
    fn context_ranks_give_the_one_process_output_and_gradients() {
        for (kernel, handed_over) in [
            (AttentionImpl::Naive, false),
            (AttentionImpl::Blockwise, false),
            (AttentionImpl::Blockwise, true),
        ] {
            let cfg = config(kernel);
            let device = Default::default();
            Flex::seed(&device, 5);
            let model = map_named(cfg.init::<Flex>(&device).unwrap(), |_, _, t| {
                let n = t.dims()[0];
                t + Tensor::random([n], Distribution::Normal(0.0, 0.2), &device)
            });
            let weights = to_host(&model);
            let (want_out, want_grads) = run(&cfg, &weights, None);
            for c in [2, 4] {
                let comms = ThreadComm::world(c, Duration::from_secs(60));
                let ranks: Vec<_> = std::thread::scope(|s| {
                    let handles: Vec<_> = comms
                        .iter()
                        .map(|comm| {
                            let (cfg, weights) = (&cfg, &weights);
                            s.spawn(move || {
                                let mesh = Mesh::new(comm.rank(), c, c).unwrap();
                                let group = ContextComm::split(comm, &mesh).unwrap();
                                let on_device =
                                    Arc::new(OnDevice(group.clone(), AtomicUsize::new(0)));
                                let shard = match handed_over {
                                    true => ContextShard(on_device.clone()),
                                    false => group.shard(),
                                };
                                let (out, grads) = run(cfg, weights, Some(shard));
                                assert_eq!(on_device.1.load(Ordering::Relaxed) > 0, handed_over);
                                let host: BTreeMap<String, Vec<f32>> = grads
                                    .into_iter()
                                    .map(|(k, g)| (k, g.into_data().into_vec::<f32>().unwrap()))
                                    .collect();
                                (out, host, group.bytes_sent())
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                let rel = |a: &[f32], b: &[f32]| {
                    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
                    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
                };
                for (rank, (out, _, sent)) in ranks.iter().enumerate() {
                    let d = rel(out, &want_out);
                    assert!(
                        d < 1e-5,
                        "{kernel:?} C={c} rank {rank}: output differs by {d:e}"
                    );
                    assert!(*sent > 0, "rank {rank} sent nothing");
                }
                for (name, want) in &want_grads {
                    let want = want.clone().into_data().into_vec::<f32>().unwrap();
                    let mut sum = vec![0f32; want.len()];
                    for (_, grads, _) in &ranks {
                        sum.iter_mut().zip(&grads[name]).for_each(|(a, b)| *a += b);
                    }
                    let d = rel(&sum, &want);
                    let limit = 1e-5;
                    assert!(
                        d < limit,
                        "{kernel:?} C={c}: gradient of {name} differs by {d:e}"
                    );
                }
            }
        }
    }
}
