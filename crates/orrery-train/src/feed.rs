//! Where a run's batches come from: every clip read at start
//! ([`Loader`]), or row groups streamed as needed behind a queue
//! ([`BatchQueue`]), and the held-out clips either way.
use orrery_data::queue::BatchQueue;
use orrery_data::stream::{StreamConfig, StreamLoader};
use orrery_data::{Batch, Cursor, Dataset, Loader};
use orrery_dist::World;

use crate::config::TrainConfig;
use crate::{Result, TrainError};

/// Where batches come from: the clips in memory, or streamed row groups.
pub(crate) enum Feed<'a> {
    Memory(Loader<'a>),
    Stream(Box<BatchQueue>),
}

impl<'a> Feed<'a> {
    /// The feed at `cursor`: `stream` (from [`open_data`]) behind a queue
    /// that reads and collates 2 batches ahead on its own thread, or the
    /// in-memory loader over `data`.
    pub(crate) fn start(
        stream: Option<StreamLoader>,
        data: &'a Dataset,
        cfg: &TrainConfig,
        world: &World,
        cursor: Cursor,
    ) -> Result<Self> {
        Ok(match stream {
            Some(mut s) => {
                s.seek(cursor);
                Feed::Stream(Box::new(BatchQueue::start(s, 2)))
            }
            None => Feed::Memory(Loader::new(
                &data.train,
                cfg.run.seed,
                cfg.data.global_batch,
                cfg.model.frames,
                data_share(cfg, world),
                cursor,
            )?),
        })
    }

    pub(crate) fn next_batch(&mut self) -> Result<Batch> {
        Ok(match self {
            Feed::Memory(l) => l.next_batch(),
            Feed::Stream(l) => l.next_batch()?,
        })
    }

    pub(crate) fn cursor(&self) -> Cursor {
        match self {
            Feed::Memory(l) => l.cursor(),
            Feed::Stream(l) => l.cursor(),
        }
    }

    pub(crate) fn skipped_short(&self) -> usize {
        match self {
            Feed::Memory(l) => l.skipped_short,
            Feed::Stream(l) => l.stats().skipped_short,
        }
    }

    /// Training clips: all of them in memory, or the index's rows.
    pub(crate) fn clips(&self, data: &Dataset) -> usize {
        match self {
            Feed::Memory(_) => data.train.len(),
            Feed::Stream(l) => l.train_rows() as usize,
        }
    }
}

/// Up to this many files, the footers the index reads are handed to the
/// streaming loader instead of being read again.
const KEEP_FOOTERS: usize = 4096;

/// The dataset: read whole (`data.train` holds every training clip), or,
/// with `data.streaming`, its index and a [`StreamLoader`]; then
/// `data.train` holds only the first clips (for the geometry checks) and
/// `data.holdout` the held-out ones, read now.
pub(crate) fn open_data(
    cfg: &TrainConfig,
    world: &World,
) -> Result<(Dataset, Option<StreamLoader>)> {
    let d = &cfg.data;
    if !d.streaming {
        return Ok((
            Dataset::open_with(&d.url, d.holdout_clips, d.max_bad_rows)
                .map_err(|e| no_data_hint(cfg, e))?,
            None,
        ));
    }
    let (index, _, footers) =
        orrery_data::index::load_or_build_keeping_footers(&d.url, None, KEEP_FOOTERS)
            .map_err(|e| no_data_hint(cfg, e))?;
    let files = index.files.len();
    let stream_cfg = StreamConfig {
        buffer: d.shuffle_buffer,
        prefetch: d.prefetch_blocks,
        max_bad_rows: d.max_bad_rows,
        holdout: d.holdout_clips,
    };
    let stream = StreamLoader::new(
        &d.url,
        index,
        stream_cfg,
        (cfg.run.seed, d.global_batch, cfg.model.frames),
        data_share(cfg, world),
        Cursor::default(),
    )?
    .with_footers(footers);
    let data = Dataset {
        train: stream.read_rows(0..stream.train_rows().min(16))?,
        holdout: stream.holdout_clips()?,
        meta: stream.meta()?,
        files,
        bad_rows: Vec::new(),
    };
    Ok((data, Some(stream)))
}

/// An empty dataset location: say how to make data this config trains on,
/// with the model's frame size (the synthetic world's frames are its
/// latents) and clips longer than model.frames for the random crops.
fn no_data_hint(cfg: &TrainConfig, e: orrery_data::DataError) -> TrainError {
    let url = match &e {
        orrery_data::DataError::Empty { url } => url.clone(),
        _ => return e.into(),
    };
    let m = &cfg.model;
    let clips = 512.max(cfg.data.global_batch + cfg.data.holdout_clips);
    let frames = 16.max(m.frames.max(cfg.sample.context + cfg.sample.frames));
    let synth = if m.channels == 3 {
        format!(
            "; to try orrery on the embedded synthetic world, make it with `orrery data synth --out {url} --clips {clips} --frames {frames} --size {} {}`",
            m.height, m.width
        )
    } else {
        String::new()
    };
    TrainError::Config(format!(
        "no .parquet files found under {url} (data.url): check data.url{synth}"
    ))
}

/// This rank's place among the data-parallel ranks: (data rank, data
/// ranks). The ranks of a context group (`parallel.context`) read the same
/// clips, so they share one place.
pub(crate) fn data_share(cfg: &TrainConfig, world: &World) -> (usize, usize) {
    let c = cfg.parallel.context.max(1);
    (world.rank / c, world.size / c)
}
