//! A tensor file that several ranks write at once: rank 0 lays it out (the
//! header, and the file at its full size), then each rank writes the byte
//! ranges of its own shards at their places with positioned writes. FSDP's
//! asynchronous checkpoints use it: no rank gathers anything, and the file
//! is the same safetensors file a single writer makes.
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use crate::{file_metadata, io_err, le_bytes, sum_file, Pending, Result, STATE_FILE};

/// The safetensors header of f32 tensors `layout`, in this order, padded
/// with spaces to a multiple of 8 bytes as the safetensors crate does.
pub(crate) fn header(
    path: &Path,
    layout: &[(String, Vec<usize>)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut at = 0;
    let infos = layout
        .iter()
        .map(|(name, shape)| {
            let bytes = 4 * shape.iter().product::<usize>();
            at += bytes;
            let info = TensorInfo {
                dtype: Dtype::F32,
                shape: shape.clone(),
                data_offsets: (at - bytes, at),
            };
            (name.clone(), info)
        })
        .collect();
    let header = Metadata::new(Some(metadata), infos)
        .and_then(|m| Ok(serde_json::to_string(&m)?))
        .map_err(|e| io_err(path, format!("encoding the header: {e}")))?;
    let mut header = header.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    Ok(header)
}

impl Pending {
    /// The `.tmp` folder this checkpoint is written into (every rank knows
    /// it; only the writing rank creates it).
    pub fn tmp_path(&self) -> PathBuf {
        self.dir.join(format!("{}.tmp", self.name))
    }

    /// Where tensor data starts in file `file` of `layout`: every rank
    /// computes the same offset from the layout alone.
    pub fn data_start(&self, file: &str, layout: &[(String, Vec<usize>)]) -> Result<u64> {
        let path = self.tmp_path().join(file);
        Ok(8 + header(&path, layout, file_metadata())?.len() as u64)
    }

    /// On the writing rank: create `file` with its header and at its full
    /// size (zeros until the ranks write their parts with [`write_at`]).
    pub fn preallocate(&self, file: &str, layout: &[(String, Vec<usize>)]) -> Result<()> {
        let Some(tmp) = &self.tmp else {
            return Ok(());
        };
        let path = tmp.join(file);
        let header = header(&path, layout, file_metadata())?;
        let data: u64 = layout
            .iter()
            .map(|(_, s)| 4 * s.iter().product::<usize>() as u64)
            .sum();
        let mut f = fs::File::create(&path).map_err(|e| io_err(&path, e))?;
        f.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|_| f.write_all(&header))
            .and_then(|_| f.set_len(8 + header.len() as u64 + data))
            .map_err(|e| io_err(&path, e))
    }

    /// On the writing rank, once every rank's [`write_at`] is done: record
    /// the checksum of every file in the `.tmp` folder, read back whole.
    pub fn sum_written_files(&self) -> Result<()> {
        let Some(tmp) = &self.tmp else {
            return Ok(());
        };
        for entry in fs::read_dir(tmp).map_err(|e| io_err(tmp, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name != STATE_FILE && name.ends_with(".safetensors") {
                let sum = sum_file(&entry.path())?;
                self.sums.lock().expect("checksums lock").insert(name, sum);
            }
        }
        Ok(())
    }
}

/// Write f32 runs `runs` (element offset into the file's data, values;
/// each made when its turn comes, so that one run at a time is in memory)
/// into the preallocated tensor file `path`, whose data starts at byte
/// `data_start`, and sync them to disk.
pub fn write_at(
    path: &Path,
    data_start: u64,
    runs: impl IntoIterator<Item = (u64, Vec<f32>)>,
) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    for (offset, values) in runs {
        f.write_all_at(&le_bytes(&values), data_start + 4 * offset)
            .map_err(|e| io_err(path, e))?;
    }
    f.sync_data().map_err(|e| io_err(path, e))
}

/// Drop file `path`'s pages from the operating system's page cache (after
/// syncing it), so that the next read comes from the disk: for measuring
/// cold reads. Linux's POSIX_FADV_DONTNEED; elsewhere nothing.
pub fn evict_from_page_cache(path: &Path) -> Result<()> {
    let f = fs::File::open(path).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise on a file descriptor this function owns.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(io_err(path, std::io::Error::from_raw_os_error(rc)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{write_named, MODEL_FILE};
    use orrery_model::named::{HostTensor, NamedTensors};

    /// Two "ranks" writing interleaved halves of a preallocated file give
    /// byte for byte the file one streaming writer makes.
    #[test]
    fn shards_written_in_place_make_the_streamed_file() {
        let base = std::env::temp_dir().join(format!("orrery-shared-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let t: NamedTensors = [("a", vec![3usize]), ("b.w", vec![2, 5])]
            .into_iter()
            .map(|(n, shape)| {
                let len: usize = shape.iter().product();
                let data = (0..len).map(|j| j as f32 * 0.5 - n.len() as f32).collect();
                (n.to_string(), HostTensor { shape, data })
            })
            .collect();
        let streamed = Pending::begin(&base.join("one"), 1, true).unwrap();
        write_named(&streamed, MODEL_FILE, &t).unwrap();
        let layout: Vec<_> = t
            .iter()
            .map(|(n, h)| (n.clone(), h.shape.clone()))
            .collect();
        let shared = Pending::begin(&base.join("two"), 1, true).unwrap();
        shared.preallocate(MODEL_FILE, &layout).unwrap();
        let start = shared.data_start(MODEL_FILE, &layout).unwrap();
        let flat: Vec<f32> = t.values().flat_map(|h| h.data.clone()).collect();
        let path = shared.tmp_path().join(MODEL_FILE);
        // Rank 1 first, then rank 0: elements 7.. and 0..7.
        write_at(&path, start, [(7, flat[7..].to_vec())]).unwrap();
        write_at(&path, start, [(0, flat[..7].to_vec())]).unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            fs::read(streamed.tmp_path().join(MODEL_FILE)).unwrap()
        );
        shared.sum_written_files().unwrap();
        let sums = shared.sums.lock().unwrap().clone();
        assert_eq!(sums[MODEL_FILE], sum_file(&path).unwrap());
        fs::remove_dir_all(&base).unwrap();
    }
}
