//! Reading a checkpoint's safetensors files: one tensor, or the part of one
//! that a rank's shard needs, at a time.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use orrery_model::named::{HostTensor, NamedTensors};
use safetensors::tensor::{Dtype, TensorInfo};

use crate::{CheckpointError, Result};

/// A checkpoint error that names the file.
pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError(format!("{}: {e}", path.display()))
}

/// Every tensor of a safetensors file of f32 tensors.
pub fn read_safetensors(path: &Path) -> Result<NamedTensors> {
    TensorFile::open(path)?.read_all()
}

/// A checkpoint's tensor file opened for reading one tensor (or part of
/// one) at a time, header parsed once: for resuming, where reading every
/// tensor whole on every rank would cost several times the model. Values
/// are read with positioned reads, not through a mapping, so what was read
/// does not stay in the process's memory.
pub struct TensorFile {
    path: PathBuf,
    file: fs::File,
    /// Where the tensor data starts (after the header).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

impl TensorFile {
    /// Open `path` and check it (header and sizes).
    pub fn open(path: &Path) -> Result<Self> {
        let file = fs::File::open(path).map_err(|e| io_err(path, e))?;
        // The safetensors crate checks the header against the whole file's
        // size, so it gets a mapping (dropped here; only the header's pages
        // are read). SAFETY: checkpoints are written to a .tmp directory and
        // renamed into place, never changed afterwards.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        let bad = |e: safetensors::SafeTensorError| {
            io_err(path, format!("not a valid safetensors file ({e})"))
        };
        safetensors::SafeTensors::deserialize(&map).map_err(bad)?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(bad)?;
        drop(map);
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        Ok(TensorFile {
            path: path.to_path_buf(),
            file,
            data_start: 8 + n,
            tensors,
        })
    }

    /// Check that the file holds exactly the tensors of `layout` (name ->
    /// shape), as f32: none missing (unless `optional` says it may be),
    /// none extra, no other shape or dtype. The error names the file and
    /// the first tensors that differ, so a foreign or mismatched checkpoint
    /// is refused at resume instead of panicking or reading zeros later.
    pub fn expect_layout(
        &self,
        layout: &BTreeMap<String, Vec<usize>>,
        optional: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let mut problems = Vec::new();
        for (name, shape) in layout {
            match self.tensors.get(name) {
                None if optional(name) => {}
                None => problems.push(format!("tensor {name} is missing")),
                Some(info) if info.dtype != Dtype::F32 => {
                    problems.push(format!("tensor {name} is {:?}, expected F32", info.dtype))
                }
                Some(info) if &info.shape != shape => problems.push(format!(
                    "tensor {name} has shape {:?}, the model expects {shape:?}",
                    info.shape
                )),
                Some(_) => {}
            }
        }
        let mut extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|n| !layout.contains_key(*n))
            .collect();
        extra.sort();
        problems.extend(
            extra
                .into_iter()
                .map(|n| format!("tensor {n} is not in this model")),
        );
        if problems.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = problems.iter().take(6).cloned().collect();
        Err(CheckpointError(format!(
            "{} does not match the model of this config ({} problem(s): {}{}): resume from a checkpoint of this model, or start afresh with --resume never",
            self.path.display(),
            problems.len(),
            shown.join("; "),
            if problems.len() > shown.len() { "; ..." } else { "" }
        )))
    }

    /// The tensor names in the file.
    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    /// Whether the file holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// How many values tensor `name` holds, if the file has it.
    pub fn numel(&self, name: &str) -> Option<usize> {
        self.tensors.get(name).map(|i| i.shape.iter().product())
    }

    /// Every tensor, whole, by name.
    pub fn read_all(&self) -> Result<NamedTensors> {
        let mut out = NamedTensors::new();
        for name in self.names() {
            let t = self.get(&name)?.expect("a listed tensor");
            out.insert(name, t);
        }
        Ok(out)
    }

    /// Tensor `name` (f32), if the file has it.
    pub fn get(&self, name: &str) -> Result<Option<HostTensor>> {
        let (Some(info), Some(n)) = (self.tensors.get(name), self.numel(name)) else {
            return Ok(None);
        };
        Ok(self.range(name, 0, n)?.map(|data| HostTensor {
            shape: info.shape.clone(),
            data,
        }))
    }

    /// Values [start, end) of f32 tensor `name` (flat, row-major), if the
    /// file has it: only those bytes are read, so a rank that needs a shard
    /// reads only the shard.
    ///
    /// # Shapes
    /// -> [end - start]
    pub fn range(&self, name: &str, start: usize, end: usize) -> Result<Option<Vec<f32>>> {
        let Some(info) = self.tensors.get(name) else {
            return Ok(None);
        };
        if info.dtype != Dtype::F32 {
            return Err(io_err(
                &self.path,
                format!("tensor {name} is {:?}, expected F32", info.dtype),
            ));
        }
        let numel: usize = info.shape.iter().product();
        if start > end || end > numel {
            return Err(io_err(
                &self.path,
                format!("tensor {name} has {numel} values; values {start}..{end} were asked for"),
            ));
        }
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; 4 * (end - start)];
        let at = self.data_start + info.data_offsets.0 + 4 * start;
        self.file
            .read_exact_at(&mut bytes, at as u64)
            .map_err(|e| io_err(&self.path, e))?;
        Ok(Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    }
}
