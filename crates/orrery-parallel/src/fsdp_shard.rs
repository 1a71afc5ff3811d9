//! Where an FSDP rank's shards come from: drawn unit by unit from the
//! seeded RNG (a fresh run or `bench step`), or read from a checkpoint's
//! file (a resumed run); tests also cut them from a whole model
//! (`Fsdp::new`).
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use orrery_dist::Collective;
use orrery_model::named::visit_named;
use orrery_model::{DitBlock, DitConfig, DitEmbed};

use crate::fsdp::{unit_kinds, Fsdp, UnitKind};
use crate::optim::{flat, host, FlatMap};
use crate::{Error, Result};
use orrery_checkpoint::TensorFile;

/// A fresh unit of `kind`, flattened in module order: its parameters are
/// drawn from the backend's RNG as they are read here.
///
/// # Shapes
/// -> [L]
fn unit_values<B: Backend>(cfg: &DitConfig, kind: UnitKind, device: &B::Device) -> Vec<f32> {
    let mut values = Vec::new();
    let mut push = |_: &str, _, _, t: Tensor<B, 1>| values.extend(host(t));
    match kind {
        UnitKind::Embed => visit_named(&DitEmbed::<B>::new(cfg, device), &mut push),
        UnitKind::Block(_) => visit_named(&DitBlock::<B>::new(cfg, device), &mut push),
        UnitKind::Final => visit_named(&cfg.final_layer::<B>(device), &mut push),
    }
    values
}

#[cfg(test)]
impl<B: Backend> Fsdp<B> {
    /// Shard `model` (identical on every rank) for `rank` of `size`: the
    /// tests' way to compare with a whole model (training never holds one).
    pub fn new(
        model: &orrery_model::Dit<B>,
        rank: usize,
        size: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let mut fsdp = Self::plan(model.config(), rank, size, device)?;
        let mut values = std::collections::BTreeMap::new();
        visit_named(model, |name, _, _, t| {
            values.insert(name.to_string(), t);
        });
        fsdp.params = fsdp.shard(|name| values.get(name).cloned())?;
        Ok(fsdp)
    }
}

impl<B: Backend> Fsdp<B> {
    /// Initialise the parameters unit by unit, as [`DitConfig::init`] would
    /// the whole model from the same seed (the backend's RNG draws in module
    /// order either way), keeping only this rank's shard: one unit is whole
    /// at a time. Each unit is broadcast from rank 0, so the ranks agree
    /// whatever their RNGs did.
    pub fn init_params(&mut self, comm: &dyn Collective) -> Result<()> {
        for (kind, u) in unit_kinds(self.cfg.depth).zip(&self.units) {
            let mut whole = unit_values::<B>(&self.cfg, kind, &self.device);
            if comm.size() > 1 {
                comm.broadcast(&mut whole, 0)?;
            }
            whole.resize(u.shard * self.size, 0.0);
            let mine = whole[self.rank * u.shard..(self.rank + 1) * u.shard].to_vec();
            self.params
                .insert(u.prefix.clone(), flat(mine, &self.device));
        }
        Ok(())
    }

    /// This rank's shard of every unit of a whole-model map (`full`: flat
    /// tensors by parameter name; missing ones count as zeros).
    ///
    /// # Shapes
    /// full(name) -> [numel]; returns prefix -> [k]
    pub fn shard(&self, full: impl Fn(&str) -> Option<Tensor<B, 1>>) -> Result<FlatMap<B>> {
        self.shard_with(|name, n, lo, hi| {
            Ok(full(name).map(|t| {
                debug_assert_eq!(t.dims()[0], n);
                host(t.narrow(0, lo, hi - lo))
            }))
        })
    }

    /// This rank's shard of every unit, read from a checkpoint's tensor file
    /// (tensor names: `prefix` and the parameter's name): only the shard's
    /// values are read. Missing tensors count as zeros; a tensor of the wrong
    /// size (a checkpoint of another model) is an error naming it.
    ///
    /// # Shapes
    /// returns prefix -> [k]
    pub fn shard_file(&self, file: &TensorFile, prefix: &str) -> Result<FlatMap<B>> {
        // Every rank checks every size (from the header), not only those of
        // the tensors its shards reach.
        for (name, shape) in self.named_layout(prefix) {
            let n: usize = shape.iter().product();
            match file.numel(&name) {
                Some(m) if m != n => return Err(Error::Checkpoint(format!(
                    "{name} has {m} values but the model's parameter {shape:?} has {n}: the checkpoint does not fit this model; resume with the config it was trained with, or --resume never"
                ))),
                _ => {}
            }
        }
        self.shard_with(|name, _, lo, hi| Ok(file.range(&format!("{prefix}{name}"), lo, hi)?))
    }

    /// This rank's shard of every unit from `part(name, n, from, to)`:
    /// values [from, to) of the n-value parameter `name` (None: zeros).
    ///
    /// # Shapes
    /// returns prefix -> [k]
    fn shard_with(
        &self,
        part: impl Fn(&str, usize, usize, usize) -> Result<Option<Vec<f32>>>,
    ) -> Result<FlatMap<B>> {
        let mut out = FlatMap::new();
        for u in &self.units {
            let mut mine = vec![0f32; u.shard];
            for p in self.pieces(u) {
                let n = p.shape.iter().product();
                if let Some(v) = part(&p.name, n, p.from, p.to)? {
                    mine[p.at..p.at + v.len()].copy_from_slice(&v);
                }
            }
            out.insert(u.prefix.clone(), flat(mine, &self.device));
        }
        Ok(out)
    }
}
