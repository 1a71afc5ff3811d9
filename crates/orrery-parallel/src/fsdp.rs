//! FSDP (ZeRO-3 style) shards: the DiT as a sequence of units (the embedder,
//! each block, the final layer), each unit's parameters flattened into one
//! vector, padded to a multiple of the world size and split evenly, so a rank
//! keeps only its block of the parameters, gradients, AdamW moments and EMA.
//! A unit is gathered (all_gather) into a skeleton module right before it
//! runs and dropped right after; its gradient is summed and split back
//! (reduce_scatter). Letters: n ranks, L a unit's parameter count,
//! k = ceil(L / n) the shard length.
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};
use orrery_diffusion::{Cond, Denoiser, DiffusionError};
use orrery_dist::Collective;
use orrery_model::named::{cast_params, layout, load_flat, named_grads};
use orrery_model::{
    like, ContextShard, DitBlock, DitConfig, DitEmbed, DitInput, FinalLayer, ModelBackend, Stem,
};

use crate::optim::{flat, host, FlatMap};
use crate::{Error, Result};

/// Which part of the DiT a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// The patch, time, action and label embeddings.
    Embed,
    /// Transformer block `i`.
    Block(usize),
    /// The final adaLN layer and projection.
    Final,
}

/// The units of a DiT of `depth` blocks, in the order they run (and in
/// which their parameters come in the whole model).
pub fn unit_kinds(depth: usize) -> impl Iterator<Item = UnitKind> {
    std::iter::once(UnitKind::Embed)
        .chain((0..depth).map(UnitKind::Block))
        .chain(std::iter::once(UnitKind::Final))
}

/// The part of a parameter that falls in this rank's shard of its unit.
pub struct Piece<'a> {
    /// The parameter's name in the whole model and its shape.
    pub name: String,
    /// The parameter's shape.
    pub shape: &'a [usize],
    /// Values [from, to) of the flat parameter...
    pub from: usize,
    /// End of the values (exclusive).
    pub to: usize,
    /// ...go to position `at` of the shard.
    pub at: usize,
}

/// One unit's flat layout.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Name prefix of its parameters in the whole model (`blocks.3`), also
    /// its key in the shard maps.
    pub prefix: String,
    /// Its parameters' names within the unit and shapes, in module order.
    pub params: Vec<(String, Vec<usize>)>,
    /// L: parameters in the unit.
    pub len: usize,
    /// k: elements per rank.
    pub shard: usize,
}

/// This rank's shards of the model, and how to gather units.
pub struct Fsdp<B: Backend> {
    /// The model's config.
    pub cfg: DitConfig,
    /// The units, in the order they run.
    pub units: Vec<Unit>,
    /// Parameter shards by unit prefix: [k].
    pub params: FlatMap<B>,
    /// Where AdamW's weight decay applies in each unit's shard, as
    /// [start, end) ranges by unit prefix (a mask would cost another shard).
    pub decay: BTreeMap<String, Vec<(usize, usize)>>,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub size: usize,
    /// Where the shards live.
    pub device: B::Device,
    /// Gather units for compute in bf16 (checkpoint gathers stay f32).
    pub gather_bf16: bool,
    /// Train in bf16 (`run.precision = "bf16"`): each gathered unit is cast
    /// to bf16 for the forward and backward, inside the autodiff graph, so
    /// its gradient arrives in f32; shards, AdamW and EMA stay f32.
    pub compute_bf16: bool,
    /// This rank's context group (context parallelism), applied to every
    /// input whose clip splits over it.
    pub context: Option<ContextShard>,
    /// Prefetch (`parallel.prefetch`): gather the next unit on a helper
    /// thread, waiting at most this long for it; `None` gathers in line.
    pub prefetch: Option<std::time::Duration>,
    /// Seconds spent in collectives and bytes sent, since the last take.
    comm_s: Cell<f64>,
    comm_bytes: Cell<usize>,
}

/// The parameter names and shapes of a unit of `kind`, in module order
/// (from shapes alone: nothing is drawn or allocated).
fn unit_layout<B: Backend>(
    cfg: &DitConfig,
    kind: UnitKind,
    device: &B::Device,
) -> Vec<(String, Vec<usize>)> {
    match kind {
        UnitKind::Embed => layout(&DitEmbed::<B>::new(cfg, device)),
        UnitKind::Block(_) => layout(&DitBlock::<B>::new(cfg, device)),
        UnitKind::Final => layout(&cfg.final_layer::<B>(device)),
    }
}

/// The name prefix of a unit's parameters in the whole model (`blocks.3`).
pub fn unit_prefix(kind: UnitKind) -> String {
    match kind {
        UnitKind::Embed => "embed".into(),
        UnitKind::Block(i) => format!("blocks.{i}"),
        UnitKind::Final => "final_layer".into(),
    }
}

impl<B: Backend> Fsdp<B> {
    /// Index of the final layer's unit.
    pub fn final_unit(&self) -> usize {
        self.units.len() - 1
    }

    /// The units of the model `cfg` describes and this rank's place in them,
    /// with no parameters yet (fill them with [`Fsdp::init_params`] or
    /// [`Fsdp::shard_file`]). Checks that the units cover the model's
    /// parameters exactly, in order (from the shapes alone: nothing is
    /// allocated).
    pub fn plan(cfg: &DitConfig, rank: usize, size: usize, device: &B::Device) -> Result<Self> {
        let mut units = Vec::new();
        for kind in unit_kinds(cfg.depth) {
            let params = unit_layout::<B>(cfg, kind, device);
            let len = params
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            units.push(Unit {
                prefix: unit_prefix(kind),
                params,
                len,
                shard: len.div_ceil(size).max(1),
            });
        }
        let whole = layout(&cfg.init::<B>(device)?);
        let mut fsdp = Fsdp {
            cfg: cfg.clone(),
            units,
            params: BTreeMap::new(),
            decay: BTreeMap::new(),
            rank,
            size,
            device: device.clone(),
            gather_bf16: false,
            compute_bf16: false,
            context: None,
            prefetch: None,
            comm_s: Cell::new(0.0),
            comm_bytes: Cell::new(0),
        };
        if fsdp.named_layout("") != whole {
            return Err(Error::Config(format!(
                "fsdp: the model's {} parameters do not split into units as expected (got {} in units); this is a bug",
                whole.len(),
                fsdp.named_layout("").len()
            )));
        }
        for u in &fsdp.units {
            let ranges = fsdp
                .pieces(u)
                .into_iter()
                .filter(|p| DitConfig::decays(&p.name, p.shape))
                .map(|p| (p.at, p.at + p.to - p.from))
                .collect();
            fsdp.decay.insert(u.prefix.clone(), ranges);
        }
        Ok(fsdp)
    }

    /// The parts of unit `u`'s parameters in this rank's window of its flat
    /// vector, [rank k, (rank + 1) k), in order (padding has none).
    pub fn pieces<'a>(&self, u: &'a Unit) -> Vec<Piece<'a>> {
        let (lo, hi) = (self.rank * u.shard, (self.rank + 1) * u.shard);
        let mut at = 0;
        let mut out = Vec::new();
        for (name, shape) in &u.params {
            let n: usize = shape.iter().product();
            let (start, end) = (at.max(lo), (at + n).min(hi));
            if start < end {
                out.push(Piece {
                    name: format!("{}.{name}", u.prefix),
                    shape,
                    from: start - at,
                    to: end - at,
                    at: start - lo,
                });
            }
            at += n;
        }
        out
    }

    /// 1 where weight decay applies in unit `prefix`'s shard, 0 elsewhere.
    ///
    /// # Shapes
    /// -> [k]
    pub fn decay_mask(&self, prefix: &str) -> Tensor<B, 1> {
        let unit = self.units.iter().find(|u| u.prefix == prefix);
        let k = unit.expect("a unit prefix").shard;
        let mut mask = vec![0.0f32; k];
        for &(start, end) in &self.decay[prefix] {
            mask[start..end].fill(1.0);
        }
        flat(mask, &self.device)
    }

    /// Unit `u` of `shards` whole on every rank (all_gather), padding included.
    ///
    /// # Shapes
    /// -> [n k]
    pub fn gather(&self, shards: &FlatMap<B>, u: usize, comm: &dyn Collective) -> Result<Vec<f32>> {
        let unit = &self.units[u];
        let local = host(shards[&unit.prefix].clone());
        let mut full = vec![0.0; unit.shard * self.size];
        let t = Instant::now();
        comm.all_gather(&local, &mut full)?;
        self.count(t, local.len());
        Ok(full)
    }

    /// Unit `u` of `shards` whole, for compute: NCCL on the device when it
    /// is installed, else through the host over `comm`. In bf16 when
    /// configured: on the device a bf16 gather, over the host two bf16
    /// values packed per f32 slot (a gather only moves bits); then widened.
    ///
    /// # Shapes
    /// -> [n k]
    pub fn gather_compute(
        &self,
        shards: &FlatMap<B>,
        u: usize,
        comm: &dyn Collective,
    ) -> Result<Tensor<B, 1>> {
        let unit = &self.units[u];
        let k = unit.shard;
        if crate::nccl::device_collectives() {
            let mut local = shards[&unit.prefix].clone();
            if self.gather_bf16 {
                local = local.cast(DType::BF16);
            }
            let t = Instant::now();
            // Err: not a CUDA tensor, so the host path below.
            if let Ok(full) = crate::nccl::all_gather_on_device(local) {
                let full = full.map_err(Error::Comm)?;
                // bf16 moves 2 bytes a value: count k / 2 f32 slots.
                self.count(t, if self.gather_bf16 { k.div_ceil(2) } else { k });
                return Ok(like(full, DType::F32));
            }
        }
        let send = self.host_send(shards, u);
        let mut all = vec![0.0; send.len() * self.size];
        let t = Instant::now();
        comm.all_gather(&send, &mut all)?;
        self.count(t, send.len());
        Ok(self.host_finish(u, all))
    }

    /// Sum a unit's whole gradient over ranks (reduce_scatter: NCCL on the
    /// device when installed, else through the host) and add this rank's
    /// block to `acc`.
    ///
    /// # Shapes
    /// grad: [L] (padded here); acc: [k]
    pub fn scatter_add(
        &self,
        u: usize,
        grad: Tensor<B, 1>,
        acc: &mut Tensor<B, 1>,
        comm: &dyn Collective,
    ) -> Result<()> {
        let (k, n) = (self.units[u].shard, self.units[u].shard * self.size);
        // Through the host: padded on the host, summed over MPI.
        let over_host = |grad: Tensor<B, 1>| -> Result<Tensor<B, 1>> {
            let mut grad = host(grad);
            grad.resize(n, 0.0);
            let mut mine = vec![0.0; k];
            comm.reduce_scatter_sum(&grad, &mut mine)?;
            Ok(flat(mine, &self.device))
        };
        let t = Instant::now();
        let mine = if crate::nccl::device_collectives() {
            let len = grad.dims()[0];
            let padded = match n - len {
                0 => grad,
                pad => Tensor::cat(vec![grad, Tensor::zeros([pad], &self.device)], 0),
            };
            match crate::nccl::reduce_scatter_on_device(padded) {
                Ok(mine) => mine.map_err(Error::Comm)?,
                Err(padded) => over_host(padded)?,
            }
        } else {
            over_host(grad)?
        };
        self.count(t, n);
        *acc = acc.clone() + mine;
        Ok(())
    }

    pub(crate) fn count(&self, since: Instant, elems: usize) {
        self.comm_s
            .set(self.comm_s.get() + since.elapsed().as_secs_f64());
        if self.size > 1 {
            self.comm_bytes.set(self.comm_bytes.get() + 4 * elems);
        }
    }

    /// Seconds in collectives and bytes sent since the last call.
    pub fn take_comm(&self) -> (f64, usize) {
        (self.comm_s.replace(0.0), self.comm_bytes.replace(0))
    }

    /// The embedder, gathered from `shards` (no autodiff).
    pub fn embed(&self, shards: &FlatMap<B>, comm: &dyn Collective) -> Result<DitEmbed<B>> {
        let full = self.gather_compute(shards, 0, comm)?;
        Ok(load_flat(
            DitEmbed::new(&self.cfg, &self.device),
            full,
            false,
        ))
    }

    /// Block `i`, gathered as [`Fsdp::embed`] is.
    pub fn block(
        &self,
        i: usize,
        shards: &FlatMap<B>,
        comm: &dyn Collective,
    ) -> Result<DitBlock<B>> {
        let full = self.gather_compute(shards, 1 + i, comm)?;
        Ok(load_flat(
            DitBlock::new(&self.cfg, &self.device),
            full,
            false,
        ))
    }

    /// The final layer, gathered as [`Fsdp::embed`] is.
    pub fn head(&self, shards: &FlatMap<B>, comm: &dyn Collective) -> Result<FinalLayer<B>> {
        let full = self.gather_compute(shards, self.final_unit(), comm)?;
        Ok(load_flat(self.cfg.final_layer(&self.device), full, false))
    }

    #[cfg(test)]
    /// The whole-model tensors of `shards` (all_gather of every unit), by
    /// parameter name with `prefix` in front. Every rank takes part; only
    /// `keep` ranks (rank 0 for a checkpoint) assemble the result.
    pub fn gather_named(
        &self,
        shards: &FlatMap<B>,
        prefix: &str,
        keep: bool,
        comm: &dyn Collective,
    ) -> Result<orrery_model::named::NamedTensors> {
        let mut out = orrery_model::named::NamedTensors::new();
        for (u, unit) in self.units.iter().enumerate() {
            let full = self.gather(shards, u, comm)?;
            if !keep {
                continue;
            }
            let mut at = 0;
            for (name, shape) in &unit.params {
                let n: usize = shape.iter().product();
                out.insert(
                    format!("{prefix}{}.{name}", unit.prefix),
                    orrery_model::named::HostTensor {
                        shape: shape.clone(),
                        data: full[at..at + n].to_vec(),
                    },
                );
                at += n;
            }
        }
        Ok(out)
    }

    /// Names (with `prefix`) and shapes of every parameter, unit by unit:
    /// the order [`Fsdp::write_gathered`] writes them in.
    pub fn named_layout(&self, prefix: &str) -> Vec<(String, Vec<usize>)> {
        self.units
            .iter()
            .flat_map(|u| {
                u.params
                    .iter()
                    .map(move |(n, s)| (format!("{prefix}{}.{n}", u.prefix), s.clone()))
            })
            .collect()
    }

    /// Stream the whole tensors of `shards` into `sink`, one gathered unit
    /// at a time: every rank takes part, the sink's rank writes.
    pub fn write_gathered(
        &self,
        shards: &FlatMap<B>,
        prefix: &str,
        sink: &mut orrery_checkpoint::TensorSink,
        comm: &dyn Collective,
    ) -> Result<()> {
        for (u, unit) in self.units.iter().enumerate() {
            let full = self.gather(shards, u, comm)?;
            if !sink.writes() {
                continue;
            }
            let mut at = 0;
            for (name, shape) in &unit.params {
                let n: usize = shape.iter().product();
                sink.put(
                    &format!("{prefix}{}.{name}", unit.prefix),
                    &full[at..at + n],
                )?;
                at += n;
            }
        }
        Ok(())
    }

    /// Bytes of this rank's training state: parameter, gradient and AdamW
    /// shards (4 per unit), and of the largest unit gathered whole (its
    /// parameters and, in backward, its gradient).
    pub fn state_bytes(&self) -> (usize, usize) {
        let shards: usize = self.params.values().map(|t| t.dims()[0]).sum();
        let unit = self
            .units
            .iter()
            .map(|u| u.shard * self.size)
            .max()
            .unwrap_or(0);
        (4 * 4 * shards, 2 * 4 * unit)
    }

    /// `unit` as it computes: cast to bf16 when training in bf16 and
    /// `train` (an autodiff op: gradients reach `unit`'s f32 parameters).
    pub fn compute<B2: Backend, M: Module<B2>>(&self, unit: M, train: bool) -> M {
        if self.compute_bf16 && train {
            cast_params(unit, DType::BF16)
        } else {
            unit
        }
    }
}

impl<B: ModelBackend> Fsdp<B> {
    /// Run the embedder and every block without autodiff, unit by unit
    /// (in bf16 when training in bf16 and `train`). Returns the stem and the
    /// input of every block followed by the final layer's input (only that
    /// last one unless `keep_all`).
    ///
    /// # Shapes
    /// -> xs: (depth + 1) x [b, g, s, d]
    pub fn trunk(
        &self,
        shards: &FlatMap<B>,
        input: DitInput<B>,
        (keep_all, train): (bool, bool),
        comm: &dyn Collective,
    ) -> Result<(Stem<B>, Vec<Tensor<B, 4>>)> {
        let mut input = Some(ContextShard::apply(self.context.as_ref(), input, &self.cfg));
        let mut stem: Option<Stem<B>> = None;
        let mut xs = Vec::new();
        let order: Vec<usize> = (0..=self.cfg.depth).collect(); // the embedder, then each block
        self.each_unit(shards, &order, comm, |u, full| {
            let Some(stem) = &stem else {
                let embed = DitEmbed::new(&self.cfg, &self.device);
                let embed = self.compute(load_flat(embed, full, false), train);
                let s = embed.forward(input.take().expect("one input"))?;
                xs.push(s.x.clone());
                stem = Some(s);
                return Ok(());
            };
            debug_assert!(u >= 1);
            let block = DitBlock::new(&self.cfg, &self.device);
            let block = self.compute(load_flat(block, full, false), train);
            let x = xs.last().expect("one").clone();
            let next = block.forward(x, stem.cond.clone(), &stem.attn);
            if !keep_all {
                xs.clear();
            }
            xs.push(next);
            Ok(())
        })?;
        Ok((stem.expect("the embedder ran"), xs))
    }

    /// A no-autodiff denoiser over `shards` (the weights or their EMA), for
    /// evaluation: every rank must call it in step with the others.
    pub fn denoiser<'a>(
        &'a self,
        shards: &'a FlatMap<B>,
        comm: &'a dyn Collective,
    ) -> ShardedDenoiser<'a, B> {
        ShardedDenoiser {
            fsdp: self,
            shards,
            comm,
        }
    }
}

/// The sharded model as a [`Denoiser`], gathering unit by unit.
pub struct ShardedDenoiser<'a, B: Backend> {
    fsdp: &'a Fsdp<B>,
    shards: &'a FlatMap<B>,
    comm: &'a dyn Collective,
}

impl<B: ModelBackend> Denoiser<B> for ShardedDenoiser<'_, B> {
    fn predict(
        &self,
        x_t: Tensor<B, 5>,
        t: Tensor<B, 2>,
        cond: Cond<B>,
    ) -> std::result::Result<Tensor<B, 5>, DiffusionError> {
        let run = || -> Result<Tensor<B, 5>> {
            let f = self.fsdp;
            let (stem, mut xs) = f.trunk(
                self.shards,
                crate::glue::dit_input(x_t, t, cond),
                (false, false),
                self.comm,
            )?;
            let head = f.head(self.shards, self.comm)?;
            let out = head.forward(xs.pop().expect("one"), stem.cond.clone());
            Ok(stem.unpatchify(out, &f.cfg))
        };
        run().map_err(|e| DiffusionError::Denoiser(e.to_string()))
    }
}

/// The gradients of a unit module's parameters in unit order, whole and
/// flat on the module's device (zeros for a parameter that got none).
///
/// # Shapes
/// -> [L]
pub fn unit_grads<I: Backend, B: AutodiffBackend<InnerBackend = I>, M: AutodiffModule<B>>(
    unit: &Unit,
    module: &M,
    grads: B::Gradients,
    device: &I::Device,
) -> Tensor<I, 1> {
    let mut params = GradientsParams::from_grads(grads, module);
    let mut named = named_grads(module, &mut params);
    let parts = unit
        .params
        .iter()
        .map(|(name, shape)| match named.remove(name) {
            Some(g) => g,
            None => Tensor::zeros([shape.iter().product::<usize>()], device),
        })
        .collect();
    let flat = Tensor::cat(parts, 0);
    debug_assert_eq!(flat.dims()[0], unit.len, "{}", unit.prefix);
    flat
}
