//! [`BatchQueue`]: a [`StreamLoader`] on a thread of its own, reading,
//! decoding and collating batches ahead of the trainer behind a bounded
//! queue.
use crate::stream::{StreamLoader, StreamStats};
use crate::{Batch, Cursor, DataError, Result};

/// One batch from the loader thread, with where the loader stood after it.
struct Produced {
    batch: Batch,
    cursor: Cursor,
    rows: Vec<u64>,
    stats: StreamStats,
}

/// A [`StreamLoader`] on a thread of its own, collating up to `depth`
/// batches ahead of the trainer behind a bounded queue. What it reports
/// (cursor, rows, stats) is as of the last batch taken, so a checkpoint
/// saves the position of the batches trained on, not of those queued.
pub struct BatchQueue {
    rx: std::sync::mpsc::Receiver<Result<Produced>>,
    cursor: Cursor,
    rows: Vec<u64>,
    stats: StreamStats,
    batches_per_epoch: u64,
    train_rows: u64,
}

impl BatchQueue {
    /// Move `loader` to its own thread; `depth` batches wait in the queue.
    pub fn start(mut loader: StreamLoader, depth: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        let (cursor, batches_per_epoch, train_rows) = (
            loader.cursor(),
            loader.batches_per_epoch(),
            loader.train_rows(),
        );
        std::thread::Builder::new()
            .name("orrery-loader".into())
            .spawn(move || loop {
                let item = loader.next_batch().map(|batch| Produced {
                    batch,
                    cursor: loader.cursor(),
                    rows: loader.last_global_rows(),
                    stats: loader.stats().clone(),
                });
                let failed = item.is_err();
                // The trainer hung up (it ended), or the loader failed: stop.
                if tx.send(item).is_err() || failed {
                    break;
                }
            })
            .expect("start the loader thread");
        BatchQueue {
            rx,
            cursor,
            rows: Vec::new(),
            stats: StreamStats::default(),
            batches_per_epoch,
            train_rows,
        }
    }

    /// The next batch (waiting for the loader thread if it is behind).
    pub fn next_batch(&mut self) -> Result<Batch> {
        match self.rx.recv() {
            Ok(Ok(p)) => {
                self.cursor = p.cursor;
                self.rows = p.rows;
                self.stats = p.stats;
                Ok(p.batch)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DataError::Geometry(
                "the loader thread stopped after an earlier error".into(),
            )),
        }
    }

    /// The position after the last batch taken.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// [`StreamLoader::last_global_rows`] of the last batch taken.
    pub fn last_global_rows(&self) -> Vec<u64> {
        self.rows.clone()
    }

    /// [`StreamLoader::stats`] as of the last batch taken.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// [`StreamLoader::batches_per_epoch`].
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }

    /// [`StreamLoader::train_rows`].
    pub fn train_rows(&self) -> u64 {
        self.train_rows
    }
}
