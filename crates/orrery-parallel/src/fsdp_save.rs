//! FSDP's asynchronous checkpoint: each rank copies only its own shards to
//! host memory, and a background thread writes them in place into the
//! checkpoint's files (laid out whole by rank 0), so no rank gathers a
//! unit and the files are the same as a synchronous checkpoint's.
//!
//! A file holds the units' flat vectors one after another (unit by unit,
//! each parameter of a unit in order: [`Fsdp::named_layout`]); the optimizer
//! file holds the first moments, then the second. Rank r's shard of unit u
//! is elements [r k, r k + k) of the unit's L (the padding past L is not
//! written).
use std::path::Path;

use burn::tensor::backend::Backend;
use orrery_checkpoint::{write_at, Pending, EMA_FILE, MODEL_FILE, OPTIM_FILE};

use crate::fsdp::Fsdp;
use crate::optim::{AdamW, Ema, FlatMap};
use crate::snapshot::Held;
use crate::Result;

/// One file's layout and this rank's runs of values in it.
struct ShardFile<B: Backend> {
    file: &'static str,
    layout: Vec<(String, Vec<usize>)>,
    /// (element offset in the file's data, values, how many to write:
    /// the shard without its padding).
    runs: Vec<(u64, Held<B>, usize)>,
}

/// This rank's shards of the model, EMA and AdamW state ([`crate::snapshot`]).
pub struct ShardSnapshot<B: Backend> {
    files: Vec<ShardFile<B>>,
}

impl<B: Backend> Fsdp<B> {
    /// Hold this rank's shards of everything a checkpoint holds (no copy,
    /// no collective).
    pub fn snapshot_shards(&self, optim: &AdamW<B>, ema: &Ema<B>) -> ShardSnapshot<B> {
        let mut optim_layout = self.named_layout("exp_avg.");
        optim_layout.extend(self.named_layout("exp_avg_sq."));
        ShardSnapshot {
            files: vec![
                ShardFile {
                    file: MODEL_FILE,
                    layout: self.named_layout(""),
                    runs: self.runs(&[&self.params]),
                },
                ShardFile {
                    file: EMA_FILE,
                    layout: self.named_layout(""),
                    runs: self.runs(&[&ema.weights]),
                },
                ShardFile {
                    file: OPTIM_FILE,
                    layout: optim_layout,
                    runs: self.runs(&[&optim.exp_avg, &optim.exp_avg_sq]),
                },
            ],
        }
    }

    /// This rank's runs in a file that holds `maps` one after another.
    fn runs(&self, maps: &[&FlatMap<B>]) -> Vec<(u64, Held<B>, usize)> {
        let mut runs = Vec::new();
        let mut offset = 0u64;
        for map in maps {
            for unit in &self.units {
                let start = self.rank * unit.shard;
                if start < unit.len {
                    let n = unit.shard.min(unit.len - start);
                    let held = Held::Device(map[&unit.prefix].clone());
                    runs.push((offset + start as u64, held, n));
                }
                offset += unit.len as u64;
            }
        }
        runs
    }
}

impl<B: Backend> ShardSnapshot<B> {
    /// Copy every shard to the host now.
    pub fn to_host(&mut self) {
        self.files
            .iter_mut()
            .flat_map(|f| &mut f.runs)
            .for_each(|(_, h, _)| h.to_host());
    }

    /// On the writing rank (the others do nothing): create the files whole,
    /// before any rank writes into them.
    pub fn preallocate(&self, pending: &Pending) -> Result<()> {
        for f in &self.files {
            pending.preallocate(f.file, &f.layout)?;
        }
        Ok(())
    }

    /// Write this rank's runs into the preallocated files of `pending`'s
    /// `.tmp` folder, one shard at a time, and sync them (any thread).
    pub fn write(self, pending: &Pending) -> Result<()> {
        let tmp = pending.tmp_path();
        for f in self.files {
            let start = pending.data_start(f.file, &f.layout)?;
            let path = Path::new(&tmp).join(f.file);
            let runs = f.runs.into_iter().map(|(offset, held, n)| {
                let mut values = held.values();
                values.truncate(n);
                (offset, values)
            });
            write_at(&path, start, runs)?;
        }
        Ok(())
    }
}
