//! Writing a tensor file as its tensors arrive ([`StreamWriter`]), the
//! per-rank sink a checkpoint hands out for it ([`TensorSink`]: a file on
//! rank 0, nothing elsewhere), and the points of a save where a test may
//! stop the process ([`SavePoint`]).
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::integrity::{Summer, Sums};
use crate::{io_err, le_bytes, shared_file, FileSum, Result};

/// A safetensors file of f32 tensors written one tensor at a time: the
/// header (the safetensors crate's own `Metadata`, so readers agree with
/// it) from the names and shapes given up front, then each tensor's values
/// in that order as they arrive. `finish` checks every tensor came, and
/// returns the file's size and checksum, summed as it was written.
pub struct StreamWriter {
    file: std::io::BufWriter<fs::File>,
    path: PathBuf,
    layout: Vec<(String, usize)>,
    next: usize,
    sum: Summer,
}

impl StreamWriter {
    /// Create `path` for tensors `layout` (name, shape), in this order.
    pub fn create(
        path: &Path,
        layout: &[(String, Vec<usize>)],
        metadata: HashMap<String, String>,
    ) -> Result<Self> {
        let header = shared_file::header(path, layout, metadata)?;
        let f = fs::File::create(path).map_err(|e| io_err(path, e))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, f);
        let len = (header.len() as u64).to_le_bytes();
        file.write_all(&len)
            .and_then(|_| file.write_all(&header))
            .map_err(|e| io_err(path, e))?;
        let mut sum = Summer::default();
        sum.add(&len);
        sum.add(&header);
        Ok(StreamWriter {
            file,
            path: path.to_path_buf(),
            layout: layout
                .iter()
                .map(|(n, s)| (n.clone(), s.iter().product()))
                .collect(),
            next: 0,
            sum,
        })
    }

    /// Append tensor `name`, which must be the next of the layout.
    pub fn put(&mut self, name: &str, values: &[f32]) -> Result<()> {
        match self.layout.get(self.next) {
            Some((want, n)) if want == name && *n == values.len() => {}
            other => {
                return Err(io_err(
                    &self.path,
                    format!(
                        "tensor {name} ({} values) arrived where {other:?} was due (a bug)",
                        values.len()
                    ),
                ))
            }
        }
        self.next += 1;
        let bytes = le_bytes(values);
        self.sum.add(&bytes);
        self.file
            .write_all(&bytes)
            .map_err(|e| io_err(&self.path, e))?;
        Ok(())
    }

    /// Check every tensor was written, flush and sync; the file's size and
    /// checksum.
    pub fn finish(self) -> Result<FileSum> {
        if self.next != self.layout.len() {
            return Err(io_err(
                &self.path,
                format!(
                    "{} of {} tensors written (a bug)",
                    self.next,
                    self.layout.len()
                ),
            ));
        }
        let f = self
            .file
            .into_inner()
            .map_err(|e| io_err(&self.path, e.error()))?;
        f.sync_all().map_err(|e| io_err(&self.path, e))?;
        Ok(self.sum.sum())
    }
}

/// A point in the writing of a checkpoint, where a test may stop the
/// process (as `kill -9` would) to check that nothing is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavePoint {
    /// After a tensor went into a file (the first comes early in the
    /// model file).
    Tensors,
    /// Every file and the state written, before the `.tmp` folder is
    /// renamed into place.
    Rename,
    /// Renamed into place, before `latest` names it.
    Latest,
}

/// Called at each [`SavePoint`] (tests stop the process there).
pub type SaveHook = std::sync::Arc<dyn Fn(SavePoint) + Send + Sync>;

/// Where a checkpoint's tensors go as they are made: a file on rank 0, and
/// nowhere on the other ranks (which still take part in FSDP's gathers).
/// Its checksum joins the checkpoint's when it is finished.
pub struct TensorSink(
    pub(crate) Option<(StreamWriter, String, Sums)>,
    pub(crate) Option<SaveHook>,
);

impl TensorSink {
    /// Whether this rank writes (rank 0).
    pub fn writes(&self) -> bool {
        self.0.is_some()
    }

    /// [`StreamWriter::put`] on rank 0; nothing elsewhere.
    pub fn put(&mut self, name: &str, values: &[f32]) -> Result<()> {
        match &mut self.0 {
            Some((w, _, _)) => {
                w.put(name, values)?;
                if let Some(hook) = &self.1 {
                    w.file.flush().map_err(|e| io_err(&w.path, e))?;
                    hook(SavePoint::Tensors);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// [`StreamWriter::finish`] on rank 0.
    pub fn finish(self) -> Result<()> {
        if let Some((w, file, sums)) = self.0 {
            let sum = w.finish()?;
            sums.lock().expect("checksums lock").insert(file, sum);
        }
        Ok(())
    }
}
