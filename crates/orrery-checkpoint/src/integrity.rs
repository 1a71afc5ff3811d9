//! Whether a checkpoint is intact: each file's size and XXH3-64 checksum,
//! recorded at save time in `checksums.json`, checked before a resume; and
//! the newest intact checkpoint of a run, for `--resume auto` to fall back
//! on when the latest is damaged (a disk fault, a truncated copy).
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::{complete_checkpoints, io_err, Result, TensorFile, STATE_FILE};

/// File of the checksums of a checkpoint's other files.
pub const CHECKSUMS_FILE: &str = "checksums.json";

/// One file's size and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Its size in bytes.
    pub bytes: u64,
    /// XXH3-64 of its bytes, as 16 hex digits in the file.
    #[serde(with = "hex64")]
    pub xxh3: u64,
}

/// The checksums file: every file of the checkpoint but itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Checksums {
    /// Always "xxh3-64".
    pub algorithm: String,
    /// By file name.
    pub files: BTreeMap<String, FileSum>,
}

/// The checksums of a checkpoint's files as they are written, shared by
/// the writers (which may run on another thread).
pub(crate) type Sums = Arc<Mutex<BTreeMap<String, FileSum>>>;

/// A running checksum of bytes written in order.
#[derive(Default)]
pub(crate) struct Summer {
    hasher: Xxh3,
    bytes: u64,
}

impl Summer {
    pub fn add(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
    }

    pub fn sum(&self) -> FileSum {
        FileSum {
            bytes: self.bytes,
            xxh3: self.hasher.digest(),
        }
    }
}

/// The checksum of bytes in memory.
pub(crate) fn sum_of(bytes: &[u8]) -> FileSum {
    let mut s = Summer::default();
    s.add(bytes);
    s.sum()
}

/// The checksums file's bytes for `files`.
pub(crate) fn checksums_json(files: BTreeMap<String, FileSum>) -> Vec<u8> {
    let c = Checksums {
        algorithm: "xxh3-64".into(),
        files,
    };
    serde_json::to_vec_pretty(&c).expect("checksums serialize")
}

/// Check checkpoint `dir`: its state file parses as JSON, its tensor files
/// are valid safetensors, and every file listed in `checksums.json` has the
/// recorded size and checksum. A checkpoint written before checksums
/// existed (no `checksums.json`) gets the first two checks only. The error
/// says which file is wrong and how.
pub fn verify(dir: &Path) -> Result<()> {
    let state = dir.join(STATE_FILE);
    let text = fs::read(&state).map_err(|e| io_err(&state, e))?;
    serde_json::from_slice::<serde_json::Value>(&text)
        .map_err(|e| io_err(&state, format!("not valid JSON ({e})")))?;
    let listed = dir.join(CHECKSUMS_FILE);
    let sums: Option<Checksums> = match fs::read(&listed) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| io_err(&listed, format!("not a valid checksums file ({e})")))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&listed, e)),
    };
    if let Some(sums) = &sums {
        for (name, want) in &sums.files {
            let path = dir.join(name);
            let got = sum_file(&path)?;
            if got.bytes != want.bytes {
                return Err(io_err(
                    &path,
                    format!("{} bytes, {} when it was saved", got.bytes, want.bytes),
                ));
            }
            if got.xxh3 != want.xxh3 {
                return Err(io_err(
                    &path,
                    format!(
                        "checksum {:016x}, {:016x} when it was saved: its bytes changed",
                        got.xxh3, want.xxh3
                    ),
                ));
            }
        }
    }
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "safetensors") {
            TensorFile::open(&path)?;
        }
    }
    Ok(())
}

/// The checksum of a file on disk, read in 4 MiB pieces.
pub fn sum_file(path: &Path) -> Result<FileSum> {
    let mut f = fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut s = Summer::default();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            return Ok(s.sum());
        }
        s.add(&buf[..n]);
    }
}

/// What [`newest_intact`] found.
#[derive(Debug, Default)]
pub struct Intact {
    /// The newest checkpoint that passed [`verify`], if any.
    pub found: Option<PathBuf>,
    /// Newer checkpoints that did not, with the reason, newest first.
    pub damaged: Vec<(PathBuf, String)>,
}

/// The newest intact checkpoint of a checkpoints/ directory: the one
/// `latest` names if it verifies, else the complete `step_*` folders from
/// the highest step down; the damaged ones passed over come with it.
pub fn newest_intact(dir: &Path) -> Intact {
    let mut candidates: Vec<PathBuf> = complete_checkpoints(dir)
        .into_iter()
        .rev()
        .map(|(_, p)| p)
        .collect();
    if let Ok(name) = fs::read_to_string(dir.join("latest")) {
        let named = dir.join(name.trim());
        if let Some(i) = candidates.iter().position(|p| *p == named) {
            let latest = candidates.remove(i);
            candidates.insert(0, latest);
        }
    }
    let mut out = Intact::default();
    for c in candidates {
        match verify(&c) {
            Ok(()) => {
                out.found = Some(c);
                break;
            }
            Err(e) => out.damaged.push((c, e.0)),
        }
    }
    out
}

/// Serde of a u64 as 16 hex digits (JSON numbers lose bits past 2^53).
mod hex64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{write_named, Pending, EMA_FILE, MODEL_FILE};
    use orrery_model::named::{HostTensor, NamedTensors};

    fn save(dir: &Path, step: u64) -> PathBuf {
        let t: NamedTensors = [(
            "w".to_string(),
            HostTensor {
                shape: vec![3, 4],
                data: (0..12).map(|i| i as f32 * step as f32).collect(),
            },
        )]
        .into_iter()
        .collect();
        let pending = Pending::begin(dir, step, true).unwrap();
        write_named(&pending, MODEL_FILE, &t).unwrap();
        write_named(&pending, EMA_FILE, &t).unwrap();
        pending
            .commit(&serde_json::json!({ "step": step }), step, 5)
            .unwrap()
    }

    /// The recorded checksums are those of the files on disk; a flipped
    /// byte, a cut file or a broken state file is found and named, and the
    /// newest intact checkpoint is the one before.
    #[test]
    fn damage_is_found_and_the_newest_intact_checkpoint_chosen() {
        let dir = std::env::temp_dir().join(format!("orrery-ckpt-sums-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (a, b) = (save(&dir, 1), save(&dir, 2));
        let sums: Checksums =
            serde_json::from_slice(&fs::read(b.join(CHECKSUMS_FILE)).unwrap()).unwrap();
        assert_eq!(
            sums.files.keys().collect::<Vec<_>>(),
            [EMA_FILE, MODEL_FILE, STATE_FILE]
        );
        for (name, sum) in &sums.files {
            assert_eq!(sum_file(&b.join(name)).unwrap(), *sum, "{name}");
        }
        verify(&b).unwrap();
        let intact = newest_intact(&dir);
        assert_eq!((intact.found.as_ref(), intact.damaged.len()), (Some(&b), 0));

        // One flipped bit in the EMA's values: still a valid safetensors file.
        let ema = b.join(EMA_FILE);
        let mut bytes = fs::read(&ema).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&ema, &bytes).unwrap();
        let err = verify(&b).unwrap_err().0;
        assert!(
            err.contains("ema.safetensors") && err.contains("its bytes changed"),
            "{err}"
        );
        let intact = newest_intact(&dir);
        assert_eq!(intact.found.as_ref(), Some(&a));
        assert_eq!(intact.damaged.len(), 1);
        assert_eq!(intact.damaged[0].0, b);

        // A cut file, and a state file that is not JSON.
        fs::write(&ema, &bytes[..bytes.len() - 8]).unwrap();
        assert!(verify(&b).unwrap_err().0.contains("bytes, "), "cut");
        fs::write(a.join(STATE_FILE), b"{\"step\": ").unwrap();
        assert!(verify(&a).unwrap_err().0.contains("not valid JSON"));
        let intact = newest_intact(&dir);
        assert!(intact.found.is_none() && intact.damaged.len() == 2);

        // A checkpoint from before checksums: its files are still checked.
        let c = save(&dir, 3);
        fs::remove_file(c.join(CHECKSUMS_FILE)).unwrap();
        verify(&c).unwrap();
        fs::write(c.join(MODEL_FILE), b"not a tensor file").unwrap();
        assert!(verify(&c).unwrap_err().0.contains("model.safetensors"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
