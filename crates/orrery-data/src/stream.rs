//! The streaming loader: batches in the [`GlobalOrder`] of an index's row
//! groups, read with ranged requests as they are needed, so a dataset need
//! not fit in memory. Letters: b batch, t frames, c channels, h/w latent size.
//!
//! - Each rank reads only the row groups (blocks) holding rows of its own
//!   shares, on a tokio runtime of its own: up to `prefetch` blocks in
//!   flight, fetched ahead over the next batches while the trainer computes.
//!   Blocks started together that are consecutive row groups of one file are
//!   fetched with one request.
//! - Of a block read, only the rows of this rank's shares in this epoch are
//!   kept, and each leaves memory when its batch takes it. Rows waiting in
//!   memory are those the shuffle buffer has not emitted yet, plus the
//!   prefetched blocks': at most about (buffer + prefetch x block) / world
//!   rows, whatever the dataset's size.
//! - The state is the same [`Cursor`] (epoch, batch) as the in-memory
//!   loader's; resuming on any number of ranks continues the same global
//!   sequence.
//! - Clips shorter than the crop and (with `max_bad_rows > 0`) bad rows are
//!   left out of their batch and counted, so a batch can be a little smaller
//!   than its share; a bad row is otherwise an error naming file and row.
use std::collections::HashMap;
use std::sync::Arc;

use object_store::path::Path;
use parquet::file::metadata::ParquetMetaData;
use tokio::task::JoinHandle;

use crate::index::Index;
use crate::order::GlobalOrder;
use crate::rowgroup::read_row_groups;
use crate::store::{self, Location};
use crate::{Batch, Clip, Cursor, DataError, Result};

/// How a [`StreamLoader`] reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamConfig {
    /// Rows in the shuffle buffer of the global order.
    pub buffer: usize,
    /// Blocks (row groups) read at once.
    pub prefetch: usize,
    /// Bad rows skipped (and counted) before one is an error; 0: the first is.
    pub max_bad_rows: usize,
    /// Rows at the end of the index (last file, last rows) held out of
    /// training, for evaluation.
    pub holdout: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            buffer: 4096,
            prefetch: 8,
            max_bad_rows: 0,
            holdout: 0,
        }
    }
}

/// What a [`StreamLoader`] has done so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    /// Row groups read.
    pub blocks_read: usize,
    /// Requests made for them (a run of consecutive row groups is one;
    /// footers the index did not pass on count too).
    pub requests: usize,
    /// Bytes fetched (row groups and footers).
    pub bytes: u64,
    /// Clips left out for being shorter than the crop.
    pub skipped_short: usize,
    /// Bad rows left out, each naming file and row.
    pub bad_rows: Vec<String>,
    /// Rows in memory after the last batch (read, not yet taken).
    pub resident_rows: usize,
}

/// Batches ahead that reads are started for.
const LOOKAHEAD: u64 = 64;

type Block = Vec<std::result::Result<Clip, String>>;
/// A read of consecutive blocks of one file: each block's rows, the bytes
/// and the requests it took.
type Fetch = JoinHandle<Result<(Vec<(usize, Block)>, u64, usize)>>;
/// The rows of a block this rank still needs, by place in the block.
type Kept = HashMap<usize, std::result::Result<Clip, String>>;

/// Streams one rank's share of each global batch; see the module docs.
pub struct StreamLoader {
    loc: Arc<Location>,
    index: Arc<Index>,
    /// Block id -> (file, row group).
    blocks: Vec<(usize, usize)>,
    order: GlobalOrder,
    cfg: StreamConfig,
    seed: u64,
    global_batch: usize,
    frames: usize,
    rank: usize,
    world: usize,
    cursor: Cursor,
    /// This epoch's order (global rows), and the rows of this rank's shares.
    epoch_rows: Vec<u64>,
    mine: std::collections::HashSet<u64>,
    rt: tokio::runtime::Runtime,
    footers: Arc<tokio::sync::Mutex<HashMap<usize, Arc<ParquetMetaData>>>>,
    cache: HashMap<usize, Kept>,
    /// Blocks in flight -> their read, and the reads by id.
    pending: HashMap<usize, usize>,
    reads: HashMap<usize, Fetch>,
    next_read: usize,
    /// The batch up to which every needed block has been asked for.
    scanned: u64,
    stats: StreamStats,
}

impl StreamLoader {
    /// A loader over the files of `index` (read from `url`), for rank
    /// `rank` of `world`, at `cursor`.
    pub fn new(
        url: &str,
        index: Index,
        cfg: StreamConfig,
        (seed, global_batch, frames): (u64, usize, usize),
        (rank, world): (usize, usize),
        cursor: Cursor,
    ) -> Result<Self> {
        let blocks: Vec<(usize, usize)> = index
            .files
            .iter()
            .enumerate()
            .flat_map(|(f, file)| (0..file.row_groups.len()).map(move |rg| (f, rg)))
            .collect();
        // The held-out rows are the index's last: cut them off the blocks.
        let mut sizes: Vec<usize> = index
            .files
            .iter()
            .flat_map(|f| f.row_groups.clone())
            .collect();
        let total: usize = sizes.iter().sum();
        if cfg.holdout >= total {
            return Err(DataError::Geometry(format!(
                "{url} has {total} clips, not enough to hold out {}: lower data.holdout_clips or add clips",
                cfg.holdout
            )));
        }
        let mut cut = cfg.holdout;
        for s in sizes.iter_mut().rev() {
            let take = cut.min(*s);
            *s -= take;
            cut -= take;
        }
        let order = GlobalOrder::new(sizes, seed, cfg.buffer);
        if order.rows() < global_batch as u64 {
            return Err(DataError::Geometry(format!(
                "{url} has {} rows, fewer than one global batch of {global_batch}: lower data.global_batch",
                order.rows()
            )));
        }
        crate::loader::check_split(global_batch, world)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| DataError::Geometry(format!("cannot start the reader threads: {e}")))?;
        let mut loader = StreamLoader {
            loc: Arc::new(store::parse(url)?),
            index: Arc::new(index),
            blocks,
            order,
            cfg,
            seed,
            global_batch,
            frames,
            rank,
            world,
            cursor,
            epoch_rows: Vec::new(),
            mine: Default::default(),
            rt,
            footers: Arc::default(),
            cache: HashMap::new(),
            pending: HashMap::new(),
            reads: HashMap::new(),
            next_read: 0,
            scanned: 0,
            stats: StreamStats::default(),
        };
        loader.start_epoch();
        Ok(loader)
    }

    /// The dataset's metadata (from the first file's footer summary).
    pub fn meta(&self) -> Result<crate::DatasetMeta> {
        let first = &self.index.files[0];
        crate::schema::dataset_meta(&first.metadata, &first.path)
    }

    /// The clips of global rows `rows`, read now; a bad row is an error
    /// naming file and row.
    pub fn read_rows(&self, rows: std::ops::Range<u64>) -> Result<Vec<Clip>> {
        let all = self.order_all();
        let mut out = Vec::new();
        let mut row = rows.start;
        while row < rows.end {
            let (block, offset) = all.locate(row);
            let (mut read, _, _) = self
                .rt
                .block_on(self.spawn_read(block..block + 1))
                .map_err(|e| DataError::Geometry(format!("a reader thread failed: {e}")))??;
            let read = read.pop().expect("one block asked for").1;
            let n = (read.len() - offset).min((rows.end - row) as usize);
            for r in &read[offset..offset + n] {
                out.push(r.clone().map_err(DataError::Geometry)?);
            }
            row += n as u64;
        }
        Ok(out)
    }

    /// The held-out clips (`StreamConfig::holdout` rows at the end of the index).
    pub fn holdout_clips(&self) -> Result<Vec<Clip>> {
        let total = self.order_all().rows();
        self.read_rows(total - self.cfg.holdout as u64..total)
    }

    /// Rows of every block, held-out ones included.
    fn order_all(&self) -> GlobalOrder {
        GlobalOrder::new(
            self.index
                .files
                .iter()
                .flat_map(|f| f.row_groups.clone())
                .collect(),
            0,
            0,
        )
    }

    /// Rows in the training order (the index's, less the held-out ones).
    pub fn train_rows(&self) -> u64 {
        self.order.rows()
    }

    /// Global batches per epoch (the last partial one is dropped).
    pub fn batches_per_epoch(&self) -> u64 {
        self.order.rows() / self.global_batch as u64
    }

    /// Reuse the footers the index read (one request per file less).
    pub fn with_footers(mut self, footers: crate::index::Footers) -> Self {
        let known = Arc::get_mut(&mut self.footers)
            .expect("no read has started")
            .get_mut();
        for (file, f) in footers.into_iter().enumerate() {
            if let Some(f) = f {
                known.insert(file, f);
            }
        }
        self
    }

    /// Continue from `cursor` (a checkpoint's).
    pub fn seek(&mut self, cursor: Cursor) {
        let same_epoch = cursor.epoch == self.cursor.epoch && !self.epoch_rows.is_empty();
        self.cursor = cursor;
        self.cache.clear();
        self.stats.resident_rows = 0;
        if same_epoch {
            self.scanned = 0;
            self.pick_mine();
        } else {
            self.start_epoch();
        }
    }

    /// The position of the next batch.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// What was read and left out so far.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// The global rows of the whole global batch (every rank's share, in
    /// rank order) that the last [`StreamLoader::next_batch`] took its share
    /// of: the same on any number of ranks.
    pub fn last_global_rows(&self) -> Vec<u64> {
        let b = self.cursor.batch.saturating_sub(1);
        self.epoch_rows[GlobalOrder::share(self.global_batch, b, (0, 1))].to_vec()
    }

    fn start_epoch(&mut self) {
        self.scanned = 0;
        self.epoch_rows = self.order.epoch(self.cursor.epoch);
        self.pick_mine();
    }

    /// The rows of this rank's shares from the cursor on: a resumed loader
    /// needs none of the earlier rows.
    fn pick_mine(&mut self) {
        let (from, to) = (self.cursor.batch, self.batches_per_epoch());
        self.mine = (from..to)
            .flat_map(|b| GlobalOrder::share(self.global_batch, b, (self.rank, self.world)))
            .map(|pos| self.epoch_rows[pos])
            .collect();
    }

    /// Start reads of the blocks this rank needs next, from batch `from`
    /// on, until `prefetch` blocks are in flight or the epoch ends.
    fn prefetch(&mut self, from: u64) {
        let mut start = std::collections::BTreeSet::new();
        // Batches before `scanned` have all their blocks read or in flight.
        let mut batch = from.max(self.scanned);
        let end = self.batches_per_epoch().min(from + LOOKAHEAD);
        'scan: while batch < end {
            let share = GlobalOrder::share(self.global_batch, batch, (self.rank, self.world));
            for i in share {
                let block = self.order.locate(self.epoch_rows[i]).0;
                if self.cache.contains_key(&block)
                    || self.pending.contains_key(&block)
                    || start.contains(&block)
                {
                    continue;
                }
                if self.pending.len() + start.len() >= self.cfg.prefetch.max(1) {
                    break 'scan;
                }
                start.insert(block);
            }
            batch += 1;
            self.scanned = batch;
        }
        // Blocks are numbered file by file, row group by row group: a run of
        // consecutive ids in one file is a run of consecutive row groups.
        // Runs stay short: one task decodes a run, and its blocks wait in
        // memory until their turn (a quarter of the prefetch each keeps
        // decoding parallel and rows held within about twice the bound).
        let longest = (self.cfg.prefetch / 4).max(1);
        let mut run: Option<std::ops::Range<usize>> = None;
        for block in start {
            match run {
                Some(ref mut r)
                    if r.end == block
                        && r.len() < longest
                        && self.blocks[block].0 == self.blocks[r.start].0 =>
                {
                    r.end += 1
                }
                _ => {
                    if let Some(r) = run.replace(block..block + 1) {
                        self.start_read(r);
                    }
                }
            }
        }
        if let Some(r) = run {
            self.start_read(r);
        }
    }

    fn start_read(&mut self, blocks: std::ops::Range<usize>) {
        let id = self.next_read;
        self.next_read += 1;
        for block in blocks.clone() {
            self.pending.insert(block, id);
        }
        let handle = self.spawn_read(blocks);
        self.reads.insert(id, handle);
    }

    /// Read `blocks` (consecutive row groups of one file) with one request.
    fn spawn_read(&self, blocks: std::ops::Range<usize>) -> Fetch {
        let (file, rg) = self.blocks[blocks.start];
        let (loc, index, footers) = (self.loc.clone(), self.index.clone(), self.footers.clone());
        self.rt.spawn(async move {
            let entry = &index.files[file];
            let path = Path::from(entry.path.as_str());
            let (mut fetched, mut requests) = (0, 1);
            let footer = {
                let mut known = footers.lock().await;
                match known.get(&file) {
                    Some(f) => f.clone(),
                    None => {
                        let (f, n) = crate::index::footer(&loc, &path, entry.size).await?;
                        fetched += n;
                        requests += 1;
                        let f = Arc::new(f);
                        known.insert(file, f.clone());
                        f
                    }
                }
            };
            let rgs = rg..rg + blocks.len();
            let (reads, bytes) = read_row_groups(&loc, &path, entry.size, &footer, rgs).await?;
            let rows = blocks.zip(reads.into_iter().map(|r| r.rows)).collect();
            Ok((rows, fetched + bytes, requests))
        })
    }

    /// Take row `offset` of `block`: from memory, or by waiting for (or
    /// starting) the block's read and keeping the rows this rank will need.
    fn take(&mut self, block: usize, offset: usize) -> Result<std::result::Result<Clip, String>> {
        if !self.cache.contains_key(&block) {
            let handle = match self.pending.get(&block).copied() {
                Some(id) => {
                    // The read's other blocks arrive with it (or fail with it).
                    self.pending.retain(|_, read| *read != id);
                    self.reads.remove(&id).expect("a pending block's read")
                }
                None => self.spawn_read(block..block + 1),
            };
            let (blocks, bytes, requests) = self
                .rt
                .block_on(handle)
                .map_err(|e| DataError::Geometry(format!("a reader thread failed: {e}")))??;
            self.stats.requests += requests;
            self.stats.bytes += bytes;
            for (b, rows) in blocks {
                self.stats.blocks_read += 1;
                let start = self.order.first_row(b);
                let kept: Kept = rows
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| self.mine.contains(&(start + *i as u64)))
                    .collect();
                self.stats.resident_rows += kept.len();
                if !kept.is_empty() {
                    self.cache.insert(b, kept);
                }
            }
        }
        let bug = || {
            DataError::Geometry(format!(
                "row {offset} of block {block} was taken twice or is not this rank's (a loader bug)"
            ))
        };
        let kept = self.cache.get_mut(&block).ok_or_else(bug)?;
        let row = kept.remove(&offset).ok_or_else(bug)?;
        if kept.is_empty() {
            self.cache.remove(&block);
        }
        self.stats.resident_rows -= 1;
        Ok(row)
    }

    /// This rank's share of the next global batch.
    pub fn next_batch(&mut self) -> Result<Batch> {
        if self.cursor.batch >= self.batches_per_epoch() {
            self.cursor = Cursor {
                epoch: self.cursor.epoch + 1,
                batch: 0,
            };
            self.cache.clear();
            self.start_epoch();
        }
        let batch_no = self.cursor.batch;
        self.prefetch(batch_no);
        let share = GlobalOrder::share(self.global_batch, batch_no, (self.rank, self.world));
        let epoch_base = self.cursor.epoch * self.batches_per_epoch() * self.global_batch as u64;
        let t = self.frames;
        let mut picked: Vec<(u64, u64, Clip)> = Vec::with_capacity(share.len());
        for pos in share.clone() {
            let row = self.epoch_rows[pos];
            let (block, offset) = self.order.locate(row);
            match self.take(block, offset)? {
                Err(e) => {
                    if self.cfg.max_bad_rows == 0 {
                        return Err(DataError::Geometry(format!(
                            "{e} (set data.max_bad_rows to skip bad rows)"
                        )));
                    }
                    self.stats.bad_rows.push(e);
                    if self.stats.bad_rows.len() > self.cfg.max_bad_rows {
                        return Err(DataError::Geometry(format!(
                            "{} bad rows, more than data.max_bad_rows = {}; the first: {}",
                            self.stats.bad_rows.len(),
                            self.cfg.max_bad_rows,
                            self.stats.bad_rows[0]
                        )));
                    }
                }
                Ok(clip) if clip.shape[0] < t => self.stats.skipped_short += 1,
                Ok(clip) => picked.push((epoch_base + pos as u64, row, clip)),
            }
        }
        self.cursor.batch += 1;
        self.prefetch(self.cursor.batch);
        if picked.is_empty() {
            return Err(DataError::Geometry(format!(
                "every clip of rank {}'s share of batch {batch_no} is shorter than {t} frames or bad: lower model.frames or fix the data",
                self.rank
            )));
        }
        Ok(self.collate(picked))
    }

    /// Crop each clip to t frames at an offset drawn from (seed, epoch,
    /// global row) and stack: [b, t, c, h, w].
    fn collate(&self, picked: Vec<(u64, u64, Clip)>) -> Batch {
        let t = self.frames;
        let [_, c, h, w] = picked[0].2.shape;
        let frame_len = c * h * w;
        let first = &picked[0].2;
        let mut batch = Batch {
            dims: [picked.len(), t, c, h, w],
            latents: Vec::with_capacity(picked.len() * t * frame_len),
            actions: first.actions.as_ref().map(|_| Vec::new()),
            action_values: first.action_values.as_ref().map(|_| Vec::new()),
            labels: first.label.map(|_| Vec::new()),
            sample_ids: Vec::with_capacity(picked.len()),
            clip_ids: Vec::with_capacity(picked.len()),
        };
        for (sample, row, clip) in picked {
            let offset =
                crate::loader::crop_offset(self.seed, self.cursor.epoch, row, clip.shape[0], t);
            batch.push_crop(&clip, offset, t, sample);
        }
        batch
    }
}
