//! orrery-checkpoint: a run's checkpoints as safetensors files.
//!
//! A checkpoint is a folder `checkpoints/step_XXXXXXXX/` of tensor files
//! (model, EMA, optimizer) and a JSON state file, written into a `.tmp`
//! folder ([`Pending`]) and renamed into place when complete; `latest`
//! names the newest and is replaced atomically; the newest `keep` are kept.
//! Tensors are streamed into their files ([`StreamWriter`]): the header
//! comes first from names and shapes, then each tensor as it arrives, so
//! FSDP's rank 0 holds one gathered unit at a time, not the whole model.
//! [`TensorFile`] reads one tensor, or the part a shard needs, at a time.
//! The state is any serde type: the trainer's lives in orrery-train.
//!
//! ```no_run
//! use orrery_checkpoint::{Pending, TensorFile, MODEL_FILE};
//! let pending = Pending::begin("runs/x/checkpoints".as_ref(), 10, true).unwrap();
//! // ... pending.file(MODEL_FILE, &layout) and put each tensor ...
//! let dir = pending.commit(&serde_json::json!({"step": 10}), 10, 2).unwrap();
//! let weights = TensorFile::open(&dir.join(MODEL_FILE)).unwrap();
//! ```
#![deny(missing_docs)]
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use orrery_model::named::NamedTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde::{de::DeserializeOwned, Serialize};

mod integrity;
mod shared_file;
mod stream;
mod tensor_file;

use crate::integrity::{checksums_json, sum_of, Sums};
pub use crate::integrity::{newest_intact, sum_file, verify, FileSum, Intact, CHECKSUMS_FILE};
pub use crate::shared_file::{evict_from_page_cache, write_at};
pub use crate::stream::{SaveHook, SavePoint, StreamWriter, TensorSink};
pub(crate) use crate::tensor_file::io_err;
pub use crate::tensor_file::{read_safetensors, TensorFile};

/// A checkpoint problem: the path and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckpointError(pub String);

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, CheckpointError>;

/// File of the model weights.
pub const MODEL_FILE: &str = "model.safetensors";
/// File of the EMA weights.
pub const EMA_FILE: &str = "ema.safetensors";
/// File of the optimizer moments.
pub const OPTIM_FILE: &str = "optimizer.safetensors";
/// File of the trainer state.
pub const STATE_FILE: &str = "trainer_state.json";

/// Encode named tensors as safetensors bytes, with string metadata.
pub fn to_safetensors(
    tensors: &NamedTensors,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.shape.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| CheckpointError(format!("encoding tensors: {e}")))?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| CheckpointError(format!("encoding tensors: {e}")))
}

/// A checkpoint being written: tensors go into a `.tmp` directory, and
/// [`Pending::commit`] renames it into place.
pub struct Pending {
    pub(crate) dir: PathBuf,
    pub(crate) name: String,
    /// The `.tmp` directory, on the rank that writes.
    pub(crate) tmp: Option<PathBuf>,
    /// The checksums of the files written so far.
    pub(crate) sums: Sums,
    hook: Option<SaveHook>,
}

impl Pending {
    /// Start step `step`'s checkpoint under `dir` (the run's checkpoints/);
    /// only `writes` ranks (rank 0) touch the file system.
    pub fn begin(dir: &Path, step: u64, writes: bool) -> Result<Self> {
        let name = step_dir_name(step);
        let tmp = if writes {
            fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            let tmp = dir.join(format!("{name}.tmp"));
            if tmp.exists() {
                fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
            }
            fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
            Some(tmp)
        } else {
            None
        };
        Ok(Pending {
            dir: dir.to_path_buf(),
            name,
            tmp,
            sums: Sums::default(),
            hook: None,
        })
    }

    /// Call `hook` at each [`SavePoint`] of this checkpoint's writing.
    pub fn with_hook(mut self, hook: Option<SaveHook>) -> Self {
        self.hook = hook;
        self
    }

    fn reached(&self, point: SavePoint) {
        if let Some(hook) = &self.hook {
            hook(point);
        }
    }

    /// A sink for tensors file `file` (MODEL_FILE, ...) of `layout`.
    pub fn file(&self, file: &str, layout: &[(String, Vec<usize>)]) -> Result<TensorSink> {
        let meta = file_metadata();
        Ok(TensorSink(
            match &self.tmp {
                Some(tmp) => Some((
                    StreamWriter::create(&tmp.join(file), layout, meta)?,
                    file.to_string(),
                    self.sums.clone(),
                )),
                None => None,
            },
            self.hook.clone(),
        ))
    }

    /// Write the checksums of every file, then the state file (`state` as
    /// JSON, which marks the checkpoint complete), move the checkpoint into
    /// place, point `latest` at it and prune old ones, keeping `keep` up to
    /// `step`, the step of this checkpoint (rank 0). Returns its directory.
    pub fn commit(self, state: &impl Serialize, step: u64, keep: usize) -> Result<PathBuf> {
        let done = self.dir.join(&self.name);
        let Some(tmp) = self.tmp.clone() else {
            return Ok(done);
        };
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        let mut sums = std::mem::take(&mut *self.sums.lock().expect("checksums lock"));
        sums.insert(STATE_FILE.to_string(), sum_of(&bytes));
        write_synced(&tmp.join(CHECKSUMS_FILE), &checksums_json(sums))?;
        write_synced(&tmp.join(STATE_FILE), &bytes)?;
        // A checkpoint of this step already there (a rerun step) is moved
        // aside, not deleted first: the step's directory is missing only
        // between two renames, and removed once the new one is in place.
        let old = self.dir.join(format!("{}.old", self.name));
        if done.exists() {
            if old.exists() {
                fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
            }
            fs::rename(&done, &old).map_err(|e| io_err(&old, e))?;
        }
        self.reached(SavePoint::Rename);
        fs::rename(&tmp, &done).map_err(|e| io_err(&done, e))?;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
        }
        self.reached(SavePoint::Latest);
        point_latest(&self.dir, &self.name)?;
        prune(&self.dir, keep, step)?;
        Ok(done)
    }
}

/// Point checkpoints/ directory `dir`'s `latest` at its checkpoint folder
/// `name`, atomically (a new file renamed over the old).
pub fn point_latest(dir: &Path, name: &str) -> Result<()> {
    let latest_tmp = dir.join("latest.tmp");
    write_synced(&latest_tmp, format!("{name}\n").as_bytes())?;
    fs::rename(&latest_tmp, dir.join("latest")).map_err(|e| io_err(&dir.join("latest"), e))
}

/// f32 values as safetensors stores them (little-endian): the values'
/// own bytes on a little-endian machine, no copy.
pub(crate) fn le_bytes(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// The metadata of every tensor file: one key, so that checkpoints are
/// byte-for-byte reproducible (the step is in the state file).
pub(crate) fn file_metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "orrery".to_string())])
}

/// Write named tensors (in name order) into a pending checkpoint's `file`.
pub fn write_named(pending: &Pending, file: &str, tensors: &NamedTensors) -> Result<()> {
    let layout: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone()))
        .collect();
    let mut sink = pending.file(file, &layout)?;
    for (name, t) in tensors {
        sink.put(name, &t.data)?;
    }
    sink.finish()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| io_err(path, e))?;
    f.write_all(bytes).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

/// Check an optimizer file against the model's parameters: the AdamW
/// moments `exp_avg.<name>` and `exp_avg_sq.<name>` of each, with its
/// shape. A parameter may lack both (it has had no gradient yet: its
/// moments start at zero, as on a fresh start), not one of the two.
pub fn expect_optimizer_layout(
    file: &TensorFile,
    shapes: &std::collections::BTreeMap<String, Vec<usize>>,
) -> Result<()> {
    let layout: std::collections::BTreeMap<String, Vec<usize>> = shapes
        .iter()
        .flat_map(|(n, s)| {
            [
                (format!("exp_avg.{n}"), s.clone()),
                (format!("exp_avg_sq.{n}"), s.clone()),
            ]
        })
        .collect();
    let pair = |key: &str| {
        let name = key
            .strip_prefix("exp_avg_sq.")
            .or_else(|| key.strip_prefix("exp_avg."))
            .unwrap_or(key);
        !file.contains(&format!("exp_avg.{name}")) && !file.contains(&format!("exp_avg_sq.{name}"))
    };
    file.expect_layout(&layout, pair)
}

/// Name of a step's directory.
pub fn step_dir_name(step: u64) -> String {
    format!("step_{step:08}")
}

/// The step of a finished checkpoint folder's name (`step_00000042`), or
/// None for anything else (`.tmp` and `.old` folders, other files).
fn step_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step_")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The complete checkpoints (with a state file) under a checkpoints/
/// directory, by step, oldest first. Empty when the directory is missing.
pub fn complete_checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let step = step_of(p.file_name()?.to_str()?)?;
            p.join(STATE_FILE).is_file().then_some((step, p))
        })
        .collect();
    found.sort();
    found
}

/// Remove the oldest checkpoints at or before `step` (the one just
/// written) beyond `keep`. Checkpoints of later steps (left by a run that
/// this one resumed from an earlier step) are never pruned: they are not
/// this run's to delete, and this run replaces them as it reaches them.
fn prune(dir: &Path, keep: usize, step: u64) -> Result<()> {
    let mine: Vec<PathBuf> = complete_checkpoints(dir)
        .into_iter()
        .filter(|(s, _)| *s <= step)
        .map(|(_, p)| p)
        .collect();
    let excess = mine.len().saturating_sub(keep);
    for old in &mine[..excess] {
        fs::remove_dir_all(old).map_err(|e| io_err(old, e))?;
    }
    Ok(())
}

/// Find the checkpoint a path names: a checkpoint directory, a run's
/// checkpoints/ directory or a run directory (both via `latest`, or, when
/// `latest` is missing, the newest complete `step_*` folder).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    for dir in [path.join("checkpoints"), path.to_path_buf()] {
        if let Some(found) = newest(&dir)? {
            return Ok(found);
        }
    }
    Err(CheckpointError(format!(
        "{} is not a checkpoint, a checkpoints/ directory or a run directory with checkpoints",
        path.display()
    )))
}

/// The newest checkpoint of a checkpoints/ directory: the one `latest`
/// names, or without `latest` the complete `step_*` folder of the highest
/// step (a crash between the rename of a checkpoint and the write of
/// `latest`, or a `latest` removed by hand). None when it holds none.
pub fn newest(dir: &Path) -> Result<Option<PathBuf>> {
    let latest = dir.join("latest");
    if latest.is_file() {
        let name = fs::read_to_string(&latest).map_err(|e| io_err(&latest, e))?;
        let ckpt = dir.join(name.trim());
        if ckpt.join(STATE_FILE).is_file() {
            return Ok(Some(ckpt));
        }
        return Err(io_err(
            &latest,
            format!(
                "points at {}, which holds no checkpoint; remove {} to use the newest complete step_* folder",
                ckpt.display(),
                latest.display()
            ),
        ));
    }
    Ok(complete_checkpoints(dir).pop().map(|(_, p)| p))
}

/// Read only the state file of a checkpoint directory.
pub fn read_state<S: DeserializeOwned>(dir: &Path) -> Result<S> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| io_err(&path, format!("not a valid trainer state ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_model::named::HostTensor;

    fn tensors() -> NamedTensors {
        [("b.w", vec![2, 3]), ("a", vec![5]), ("b.bias", vec![0])]
            .into_iter()
            .enumerate()
            .map(|(i, (n, shape))| {
                let len: usize = shape.iter().product();
                let data = (0..len).map(|j| (i * 10 + j) as f32 - 0.5).collect();
                (n.to_string(), HostTensor { shape, data })
            })
            .collect()
    }

    /// A streamed file is the safetensors crate's own encoding, byte for
    /// byte, when the tensors come in name order (and reads back); in
    /// another order it is still a valid file of the same tensors.
    #[test]
    fn streamed_files_are_the_crates_encoding_and_read_back() {
        let dir = std::env::temp_dir().join(format!("orrery-ckpt-stream-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pending = Pending::begin(&dir, 7, true).unwrap();
        let t = tensors();
        write_named(&pending, MODEL_FILE, &t).unwrap();
        // The FSDP order: unit by unit, not by name.
        let order = ["b.w", "b.bias", "a"];
        let layout: Vec<_> = order
            .iter()
            .map(|n| (n.to_string(), t[*n].shape.clone()))
            .collect();
        let mut sink = pending.file(EMA_FILE, &layout).unwrap();
        for n in order {
            sink.put(n, &t[n].data).unwrap();
        }
        sink.finish().unwrap();
        let mut bad = pending.file(OPTIM_FILE, &layout).unwrap();
        let err = bad.put("a", &t["a"].data).unwrap_err().to_string();
        assert!(err.contains("tensor a") && err.contains("b.w"), "{err}");
        let err = pending
            .file(OPTIM_FILE, &layout)
            .unwrap()
            .finish()
            .unwrap_err()
            .to_string();
        assert!(err.contains("0 of 3 tensors"), "{err}");
        write_named(&pending, OPTIM_FILE, &t).unwrap();
        let state = serde_json::json!({"step": 7});
        let done = pending.commit(&state, 7, 2).unwrap();
        // The same step again replaces it, leaving nothing aside.
        let again = Pending::begin(&dir, 7, true).unwrap();
        for file in [MODEL_FILE, EMA_FILE, OPTIM_FILE] {
            write_named(&again, file, &t).unwrap();
        }
        assert_eq!(again.commit(&state, 7, 2).unwrap(), done);
        assert!(!dir.join("step_00000007.old").exists());
        let meta = HashMap::from([("format".to_string(), "orrery".to_string())]);
        let want = to_safetensors(&t, meta).unwrap();
        assert_eq!(fs::read(done.join(MODEL_FILE)).unwrap(), want);
        // Read back one tensor at a time (resuming), from either order.
        for file in [MODEL_FILE, EMA_FILE] {
            let f = TensorFile::open(&done.join(file)).unwrap();
            let mut names = f.names();
            names.sort();
            assert_eq!(names, ["a", "b.bias", "b.w"]);
            assert_eq!(f.get("b.w").unwrap().as_ref(), Some(&t["b.w"]));
            assert!(f.get("nope").unwrap().is_none());
            // A shard's part of a tensor: only those values.
            let w = &t["b.w"].data;
            assert_eq!(f.numel("b.w"), Some(w.len()));
            assert_eq!(
                f.range("b.w", 1, w.len() - 1).unwrap().unwrap(),
                w[1..w.len() - 1]
            );
            assert_eq!(f.range("b.w", 2, 2).unwrap().unwrap(), Vec::<f32>::new());
            assert!(f.range("nope", 0, 1).unwrap().is_none());
            let err = f.range("b.w", 0, w.len() + 1).unwrap_err().to_string();
            assert!(
                err.contains("tensor b.w") && err.contains(&format!("0..{}", w.len() + 1)),
                "{err}"
            );
        }
        let cut = dir.join("cut.safetensors");
        fs::write(&cut, &want[..want.len() - 3]).unwrap();
        let err = TensorFile::open(&cut).err().unwrap().to_string();
        assert!(
            err.contains("cut.safetensors") && err.contains("not a valid"),
            "{err}"
        );
        let found = resolve(&dir).unwrap();
        assert_eq!(read_state::<serde_json::Value>(&found).unwrap()["step"], 7);
        for file in [MODEL_FILE, EMA_FILE] {
            assert_eq!(read_safetensors(&found.join(file)).unwrap(), t);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Ranks that do not write touch nothing.
    #[test]
    fn other_ranks_write_nothing() {
        let dir = std::env::temp_dir().join(format!("orrery-ckpt-none-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pending = Pending::begin(&dir, 3, false).unwrap();
        let mut sink = pending.file(MODEL_FILE, &[("a".into(), vec![2])]).unwrap();
        assert!(!sink.writes());
        sink.put("a", &[1.0, 2.0]).unwrap();
        sink.finish().unwrap();
        assert!(!dir.exists());
    }
}
