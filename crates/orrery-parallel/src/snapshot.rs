//! What an asynchronous checkpoint holds while it is written. burn's
//! tensors are immutable values (an op makes a new tensor, or reuses a
//! buffer only when nothing else holds it), so holding a clone of each
//! tensor at the step is a snapshot that costs no copy: the background
//! writer then copies one tensor at a time to the host and into the file,
//! and host memory holds at most one tensor. On a GPU the copy to host is
//! made at the step instead ([`Snapshot::to_host`]), so the writer thread
//! never reads the device (and device memory holds no second state).
use std::collections::BTreeMap;

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use orrery_checkpoint::{write_at, Pending, EMA_FILE, MODEL_FILE, OPTIM_FILE};

use crate::fsdp::Fsdp;
use crate::optim::{host, AdamW, Ema, FlatMap};
use crate::Result;

/// A flat tensor held for a checkpoint: on its device, or copied to host.
pub enum Held<B: Backend> {
    /// A clone of the tensor (no copy).
    Device(Tensor<B, 1>),
    /// Its values on the host.
    Host(Vec<f32>),
}

impl<B: Backend> Held<B> {
    /// Its values on the host (a copy when held on the device).
    pub fn values(self) -> Vec<f32> {
        match self {
            Held::Device(t) => host(t),
            Held::Host(v) => v,
        }
    }

    /// Copy it to the host now.
    pub fn to_host(&mut self) {
        if let Held::Device(t) = self {
            *self = Held::Host(host(t.clone()));
        }
    }
}

/// What a rank holds of an asynchronous checkpoint (`Replica::snapshot`).
pub enum Snapshot<B: Backend> {
    /// Every tensor (rank 0 of a whole model).
    Whole(WholeSnapshot<B>),
    /// This rank's FSDP shards.
    Shards(ShardSnapshot<B>),
}

impl<B: Backend> Snapshot<B> {
    /// Copy everything held on the device to the host now (on a GPU, at
    /// the step).
    pub fn to_host(&mut self) {
        match self {
            Snapshot::Whole(w) => w
                .files
                .values_mut()
                .flat_map(|t| t.values_mut())
                .for_each(|(_, h)| h.to_host()),
            Snapshot::Shards(s) => s.to_host(),
        }
    }
}

/// A file's tensors by name: (shape, values).
pub type HeldTensors<B> = BTreeMap<String, (Vec<usize>, Held<B>)>;

/// The tensors of a checkpoint's files, by file and name (written in name
/// order).
pub struct WholeSnapshot<B: Backend> {
    /// File -> its tensors.
    pub files: BTreeMap<&'static str, HeldTensors<B>>,
}

impl<B: Backend> WholeSnapshot<B> {
    /// Write every file into `pending`, one tensor at a time (any thread);
    /// with `parallel`, each file on a thread of its own (a save the
    /// training waits for), else one file after another (a background
    /// save, leaving the other cores to the training).
    pub fn write(self, pending: &Pending, parallel: bool) -> Result<()> {
        if !parallel {
            return self
                .files
                .into_iter()
                .try_for_each(|(file, tensors)| write_file(pending, file, tensors));
        }
        std::thread::scope(|scope| {
            let writers: Vec<_> = self
                .files
                .into_iter()
                .map(|(file, tensors)| scope.spawn(move || write_file(pending, file, tensors)))
                .collect();
            writers.into_iter().try_for_each(|w| {
                w.join().map_err(|_| {
                    crate::Error::Internal("a checkpoint file writer panicked".into())
                })?
            })
        })
    }
}

/// Write one file's tensors, in name order, one at a time.
fn write_file<B: Backend>(pending: &Pending, file: &str, tensors: HeldTensors<B>) -> Result<()> {
    let layout: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(n, (shape, _))| (n.clone(), shape.clone()))
        .collect();
    let mut sink = pending.file(file, &layout)?;
    for (name, (_, held)) in tensors {
        sink.put(&name, &held.values())?;
    }
    Ok(sink.finish()?)
}

// FSDP's asynchronous checkpoint: each rank copies only its own shards to
// host memory, and a background thread writes them in place into the
// checkpoint's files (laid out whole by rank 0), so no rank gathers a
// unit and the files are the same as a synchronous checkpoint's.
//
// A file holds the units' flat vectors one after another (unit by unit,
// each parameter of a unit in order: [`Fsdp::named_layout`]); the optimizer
// file holds the first moments, then the second. Rank r's shard of unit u
// is elements [r k, r k + k) of the unit's L (the padding past L is not
// written).

/// One file's layout and this rank's runs of values in it.
struct ShardFile<B: Backend> {
    file: &'static str,
    layout: Vec<(String, Vec<usize>)>,
    /// (element offset in the file's data, values, how many to write:
    /// the shard without its padding).
    runs: Vec<(u64, Held<B>, usize)>,
}

/// This rank's shards of the model, EMA and AdamW state.
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
