//! What an asynchronous checkpoint holds while it is written. burn's
//! tensors are immutable values (an op makes a new tensor, or reuses a
//! buffer only when nothing else holds it), so holding a clone of each
//! tensor at the step is a snapshot that costs no copy: the background
//! writer then copies one tensor at a time to the host and into the file,
//! and host memory holds at most one tensor. On a GPU the copy to host is
//! made at the step instead ([`Snapshot::to_host`]), so the writer thread
//! never reads the device (and device memory holds no second state).
use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use orrery_checkpoint::Pending;

use crate::fsdp_save::ShardSnapshot;
use crate::optim::host;
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

/// What a rank holds of an asynchronous checkpoint
/// ([`crate::replica::Replica::snapshot`]).
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

/// The tensors of a checkpoint's files, by file and name (written in name
/// order).
pub struct WholeSnapshot<B: Backend> {
    /// File -> name -> (shape, values).
    pub files: BTreeMap<&'static str, BTreeMap<String, (Vec<usize>, Held<B>)>>,
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
fn write_file<B: Backend>(
    pending: &Pending,
    file: &str,
    tensors: BTreeMap<String, (Vec<usize>, Held<B>)>,
) -> Result<()> {
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
