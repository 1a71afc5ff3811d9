//! The dataset and its deterministic, resumable batch order.
//! Letters: b batch, t frames, c channels, h/w latent size.
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::schema::{Clip, DatasetMeta};
use crate::{store, DataError, Result};

/// Every clip under a URL, split into training and held-out clips.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training clips, sorted by id.
    pub train: Vec<Clip>,
    /// Held-out clips: the last ones by id.
    pub holdout: Vec<Clip>,
    /// Metadata of the first file.
    pub meta: DatasetMeta,
    /// How many files were read.
    pub files: usize,
    /// Rows skipped as bad (with `max_bad_rows > 0`), each naming its file
    /// and row.
    pub bad_rows: Vec<String>,
}

impl Dataset {
    /// Read every Parquet file under `url`, check that the clips agree on
    /// [C, H, W], and hold out the last `holdout` clips (by clip id). A bad
    /// row is an error naming its file and row.
    pub fn open(url: &str, holdout: usize) -> Result<Self> {
        Self::open_with(url, holdout, 0)
    }

    /// As [`Dataset::open`], but skip and count up to `max_bad_rows` bad
    /// rows (NaN latents, wrong byte counts, out-of-range ids, ...); one
    /// more is an error listing the first ones.
    pub fn open_with(url: &str, holdout: usize, max_bad_rows: usize) -> Result<Self> {
        let loc = store::parse(url)?;
        let rt = store::runtime();
        let (mut clips, meta, files, bad) = rt.block_on(async {
            let files = loc.list_parquet().await?;
            let mut clips = Vec::new();
            let mut meta = None;
            let mut bad = Vec::new();
            for read in store::read_files(&loc, &files).await {
                let (part, errors) = read.part?;
                if max_bad_rows == 0 {
                    if let Some(e) = errors.into_iter().next() {
                        return Err(e);
                    }
                } else {
                    bad.extend(errors.iter().map(|e| e.to_string()));
                    if bad.len() > max_bad_rows {
                        return Err(DataError::Geometry(format!(
                            "{} bad rows under {url}, more than data.max_bad_rows = {max_bad_rows}; the first: {}",
                            bad.len(),
                            bad.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
                        )));
                    }
                }
                meta.get_or_insert(part.meta);
                clips.extend(part.clips);
            }
            Ok::<_, DataError>((clips, meta.unwrap_or_default(), files.len(), bad))
        })?;
        clips.sort_by(|a, b| a.id.cmp(&b.id));
        crate::agree::check(
            &mut clips
                .iter()
                .map(crate::agree::Summary::of)
                .collect::<Vec<_>>(),
            url,
        )?;
        if holdout >= clips.len() {
            return Err(DataError::Geometry(format!(
                "{url} has {} clips, not enough to hold out {holdout}: lower data.holdout_clips or add clips",
                clips.len()
            )));
        }
        let holdout = clips.split_off(clips.len() - holdout);
        Ok(Dataset {
            train: clips,
            holdout,
            meta,
            files,
            bad_rows: bad,
        })
    }

    /// [C, H, W] of the clips.
    pub fn frame_shape(&self) -> [usize; 3] {
        let s = self.train[0].shape;
        [s[1], s[2], s[3]]
    }
}

/// Where the loader stands: saved in checkpoints, so a resumed run continues
/// the same global sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// Epoch.
    pub epoch: u64,
    /// Global batch within the epoch.
    pub batch: u64,
}

/// One rank's share of one global batch, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// [b, t, c, h, w].
    pub dims: [usize; 5],
    /// Latents, row-major in `dims`.
    pub latents: Vec<f32>,
    /// Actions [b, t], if the clips have them.
    pub actions: Option<Vec<i64>>,
    /// Continuous actions [b, t, A], if the clips have them.
    pub action_values: Option<Vec<f32>>,
    /// Class labels [b], if the clips have them.
    pub labels: Option<Vec<i64>>,
    /// Global sample index of each row (keys per-sample randomness): [b].
    pub sample_ids: Vec<u64>,
    /// Clip id of each row: [b].
    pub clip_ids: Vec<String>,
}

/// Walks the training clips in a global order that is a pure function of
/// (seed, epoch): each epoch is a seeded permutation cut into global batches
/// (the last partial batch is dropped); rank r of w takes rows
/// [r b / w, (r + 1) b / w) of each global batch; each clip is cropped to t
/// frames at an offset drawn from (seed, epoch, clip).
#[derive(Debug)]
pub struct Loader<'a> {
    clips: Vec<&'a Clip>,
    seed: u64,
    global_batch: usize,
    frames: usize,
    rank: usize,
    world: usize,
    cursor: Cursor,
    order: Vec<usize>,
    /// Clips skipped because they are shorter than `frames`.
    pub skipped_short: usize,
}

impl<'a> Loader<'a> {
    /// A loader at `cursor`.
    pub fn new(
        clips: &'a [Clip],
        seed: u64,
        global_batch: usize,
        frames: usize,
        (rank, world): (usize, usize),
        cursor: Cursor,
    ) -> Result<Self> {
        let usable: Vec<&Clip> = clips.iter().filter(|c| c.shape[0] >= frames).collect();
        let skipped_short = clips.len() - usable.len();
        if usable.len() < global_batch {
            return Err(DataError::Geometry(format!(
                "only {} clips have at least {frames} frames ({skipped_short} are shorter), fewer than one global batch of {global_batch}: lower data.global_batch or model.frames",
                usable.len()
            )));
        }
        check_split(global_batch, world)?;
        let mut loader = Loader {
            clips: usable,
            seed,
            global_batch,
            frames,
            rank,
            world,
            cursor,
            order: Vec::new(),
            skipped_short,
        };
        loader.shuffle();
        Ok(loader)
    }

    fn shuffle(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ self.cursor.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        self.order = (0..self.clips.len()).collect();
        self.order.shuffle(&mut rng);
    }

    /// Global batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        (self.clips.len() / self.global_batch) as u64
    }

    /// The position of the next batch.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The clip ids of the whole global batch (every rank's rows, in rank
    /// order) that the last [`Loader::next_batch`] call took its share of:
    /// the same on any number of ranks.
    pub fn last_global_ids(&self) -> Vec<String> {
        let b = (self.cursor.batch as usize).saturating_sub(1);
        (b * self.global_batch..(b + 1) * self.global_batch)
            .map(|pos| self.clips[self.order[pos]].id.clone())
            .collect()
    }

    /// This rank's share of the next global batch.
    pub fn next_batch(&mut self) -> Batch {
        if self.cursor.batch >= self.batches_per_epoch() {
            self.cursor = Cursor {
                epoch: self.cursor.epoch + 1,
                batch: 0,
            };
            self.shuffle();
        }
        let local = self.global_batch / self.world;
        let first = self.cursor.batch as usize * self.global_batch + self.rank * local;
        let epoch_base = self.cursor.epoch * self.batches_per_epoch() * self.global_batch as u64;
        let [_, c, h, w] = self.clips[0].shape;
        let (t, frame_len) = (self.frames, c * h * w);
        let mut batch = Batch {
            dims: [local, t, c, h, w],
            latents: Vec::with_capacity(local * t * frame_len),
            actions: self.clips[0]
                .actions
                .as_ref()
                .map(|_| Vec::with_capacity(local * t)),
            action_values: self.clips[0].action_values.as_ref().map(|_| Vec::new()),
            labels: self.clips[0].label.map(|_| Vec::with_capacity(local)),
            sample_ids: Vec::with_capacity(local),
            clip_ids: Vec::with_capacity(local),
        };
        for pos in first..first + local {
            let index = self.order[pos];
            let clip = self.clips[index];
            let offset = crop_offset(self.seed, self.cursor.epoch, index as u64, clip.shape[0], t);
            batch.push_crop(clip, offset, t, epoch_base + pos as u64);
        }
        self.cursor.batch += 1;
        batch
    }
}

/// A global batch splits evenly over the ranks, or an error says what to set.
pub(crate) fn check_split(global_batch: usize, world: usize) -> Result<()> {
    if global_batch % world != 0 {
        return Err(DataError::Geometry(format!(
            "global batch {global_batch} is not divisible by world size {world}: set data.global_batch to a multiple of {world}"
        )));
    }
    Ok(())
}

/// Where a clip of `len` frames is cropped to `t`: drawn from (seed, epoch, key).
pub(crate) fn crop_offset(seed: u64, epoch: u64, key: u64, len: usize, t: usize) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed.wrapping_add(0x5851_F42D_4C95_7F2D)
            ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ key.wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    rng.random_range(0..=len - t)
}

impl Batch {
    /// Append frames [offset, offset + t) of `clip` as a row, with its actions and label.
    pub(crate) fn push_crop(&mut self, clip: &Clip, offset: usize, t: usize, sample: u64) {
        let frame_len = clip.shape[1] * clip.shape[2] * clip.shape[3];
        self.latents
            .extend_from_slice(&clip.latents[offset * frame_len..(offset + t) * frame_len]);
        if let (Some(out), Some(a)) = (self.actions.as_mut(), clip.actions.as_ref()) {
            out.extend_from_slice(&a[offset..offset + t]);
        }
        if let (Some(out), Some(a)) = (self.action_values.as_mut(), clip.action_values.as_ref()) {
            let width = a.len() / clip.shape[0];
            out.extend_from_slice(&a[offset * width..(offset + t) * width]);
        }
        if let Some(out) = self.labels.as_mut() {
            out.push(clip.label.unwrap_or(0));
        }
        self.sample_ids.push(sample);
        self.clip_ids.push(clip.id.clone());
    }
}
