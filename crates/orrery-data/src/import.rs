//! `orrery data import`: a folder of per-clip latent files to schema-v1
//! Parquet shards.
//!
//! Each clip is one file, its stem the clip id:
//! - `NAME.npy`: latents [T, C, H, W] (f32 or f16), with an optional sidecar
//!   `NAME.actions.npy`: integer [T] (action ids) or float [T, A] (vectors);
//! - `NAME.safetensors`: tensor `latents` [T, C, H, W] (F32, F16 or BF16) and
//!   optionally `action_ids` [T] (I32/I64), `actions` [T, A] (F32) and
//!   `label` [] or [1] (I32/I64);
//! - `NAME/`: a folder of frame images (`.png`, `.jpg`; sorted by name),
//!   RGB pixels [T, 3, H, W] in [-1, 1], with the sidecar
//!   `NAME.actions.npy` beside the folder (pixel clips for `orrery encode`).
//!
//! Values are stored as f32. The number of actions and classes written to the
//! metadata is the largest id + 1 unless given.
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::schema::{Clip, DatasetMeta};
use crate::{DataError, Result};

/// Settings of an import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Folder of .npy / .safetensors clip files.
    pub from: PathBuf,
    /// Output directory or URL.
    pub out: String,
    /// Target size of a shard in MiB of latents (f32).
    pub shard_mb: f64,
    /// Latent scale and shift for the metadata.
    pub scale: f64,
    /// See `scale`.
    pub shift: f64,
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// Clips imported.
    pub clips: usize,
    /// Shards written.
    pub files: Vec<String>,
    /// The metadata written.
    pub meta: DatasetMeta,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> DataError {
    DataError::Schema {
        file: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// An .npy array as f32 (floats) or i64 (integers), with its shape.
enum Npy {
    Float(Vec<f32>, Vec<usize>),
    Int(Vec<i64>, Vec<usize>),
}

fn read_npy(path: &Path) -> Result<Npy> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e))?;
    let npy =
        npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(path, format!("not a .npy file ({e})")))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(bad(
            path,
            "is stored in Fortran order: save it C-ordered (np.save(path, np.ascontiguousarray(x)))",
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = npy.dtype().descr();
    let err = |e: std::io::Error| bad(path, format!("reading {descr} values: {e}"));
    Ok(match descr.trim_matches(['\'', '"']).trim_start_matches(['<', '|', '=']) {
        "f4" => Npy::Float(npy.into_vec::<f32>().map_err(err)?, shape),
        "f8" => Npy::Float(
            npy.into_vec::<f64>()
                .map_err(err)?
                .into_iter()
                .map(|x| x as f32)
                .collect(),
            shape,
        ),
        "f2" => Npy::Float(
            npy.into_vec::<half::f16>()
                .map_err(err)?
                .into_iter()
                .map(f32::from)
                .collect(),
            shape,
        ),
        "i8" => Npy::Int(npy.into_vec::<i64>().map_err(err)?, shape),
        "i4" => Npy::Int(
            npy.into_vec::<i32>().map_err(err)?.into_iter().map(i64::from).collect(),
            shape,
        ),
        other => {
            return Err(bad(
                path,
                format!("dtype {other} is not supported: use little-endian f4/f2/f8 floats and i4/i8 action ids"),
            ))
        }
    })
}

fn shape4(path: &Path, shape: &[usize]) -> Result<[usize; 4]> {
    match shape {
        [t, c, h, w] if shape.iter().all(|&d| d > 0) => Ok([*t, *c, *h, *w]),
        _ => Err(bad(
            path,
            format!("latents have shape {shape:?}, not [T, C, H, W]"),
        )),
    }
}

/// Check actions against T and return ids or vectors.
fn actions_from(path: &Path, npy: Npy, t: usize) -> Result<(Option<Vec<i64>>, Option<Vec<f32>>)> {
    match npy {
        Npy::Int(ids, shape) if shape == [t] => Ok((Some(ids), None)),
        Npy::Float(v, shape) if shape.len() == 2 && shape[0] == t => Ok((None, Some(v))),
        Npy::Int(_, shape) | Npy::Float(_, shape) => Err(bad(
            path,
            format!("actions have shape {shape:?}: need integer [{t}] (ids) or float [{t}, A] (vectors)"),
        )),
    }
}

fn npy_clip(path: &Path, id: String) -> Result<Clip> {
    let (latents, shape) = match read_npy(path)? {
        Npy::Float(v, s) => (v, shape4(path, &s)?),
        Npy::Int(..) => return Err(bad(path, "latents must be floats (f4 or f2)")),
    };
    with_sidecar(path, id, shape, latents)
}

/// A clip of `latents` [T, ...] with the actions of the sidecar
/// `<id>.actions.npy` beside `path`, if there is one.
fn with_sidecar(path: &Path, id: String, shape: [usize; 4], latents: Vec<f32>) -> Result<Clip> {
    let sidecar = path.with_file_name(format!("{id}.actions.npy"));
    let (actions, action_values) = if sidecar.is_file() {
        actions_from(&sidecar, read_npy(&sidecar)?, shape[0])?
    } else {
        (None, None)
    };
    Ok(Clip {
        id,
        shape,
        latents,
        actions,
        action_values,
        label: None,
        agent_xy: None,
    })
}

/// Whether `name` is a frame image (`.png`, `.jpg`, `.jpeg`, any case).
fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg"].iter().any(|e| lower.ends_with(e))
}

/// A folder of frame images (sorted by name) as one clip: RGB in [-1, 1]
/// (v / 127.5 - 1; grey and alpha images become RGB), with the sidecar
/// `<folder>.actions.npy` beside the folder.
fn image_clip(dir: &Path, id: String) -> Result<Clip> {
    let mut frames: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_image))
        .collect();
    frames.sort();
    let mut latents = Vec::new();
    let mut size = None;
    for f in &frames {
        let img = image::ImageReader::open(f)
            .map_err(|e| bad(f, e))?
            .with_guessed_format()
            .map_err(|e| bad(f, e))?
            .decode()
            .map_err(|e| bad(f, format!("not a readable image ({e})")))?
            .to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        match size {
            None => size = Some((h, w)),
            Some(s) if s != (h, w) => {
                return Err(bad(
                    f,
                    format!("is {w} x {h}, but the clip's first frame is {} x {}: every frame of a clip needs the same size", s.1, s.0),
                ))
            }
            Some(_) => {}
        }
        let px = img.as_raw();
        for c in 0..3 {
            latents.extend((0..h * w).map(|i| px[i * 3 + c] as f32 / 127.5 - 1.0));
        }
    }
    let Some((h, w)) = size else {
        return Err(bad(dir, "no .png or .jpg frames in this clip folder"));
    };
    let shape = [frames.len(), 3, h, w];
    with_sidecar(dir, id, shape, latents)
}

fn safetensors_clip(path: &Path, id: String) -> Result<Clip> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a safetensors file ({e})")))?;
    let floats = |name: &str| -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let Ok(t) = st.tensor(name) else {
            return Ok(None);
        };
        let dtype = match t.dtype() {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
            other => {
                return Err(bad(
                    path,
                    format!("tensor {name} is {other:?}; use F32, F16 or BF16"),
                ))
            }
        };
        // The same decoding (and finiteness check) as Parquet latents.
        let n = t.shape().iter().product();
        let v = crate::schema::decode_latents(t.data(), dtype, n)
            .map_err(|e| bad(path, format!("tensor {name}: {e}")))?;
        Ok(Some((v, t.shape().to_vec())))
    };
    let ints = |name: &str| -> Result<Option<(Vec<i64>, Vec<usize>)>> {
        let Ok(t) = st.tensor(name) else {
            return Ok(None);
        };
        let d = t.data();
        let v: Vec<i64> = match t.dtype() {
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            other => {
                return Err(bad(
                    path,
                    format!("tensor {name} is {other:?}; use I32 or I64"),
                ))
            }
        };
        Ok(Some((v, t.shape().to_vec())))
    };
    let (latents, shape) =
        floats("latents")?.ok_or_else(|| bad(path, "no tensor named `latents`"))?;
    let shape = shape4(path, &shape)?;
    let (mut actions, mut action_values) = (None, None);
    if let Some((ids, s)) = ints("action_ids")? {
        (actions, _) = actions_from(path, Npy::Int(ids, s), shape[0])?;
    }
    if let Some((v, s)) = floats("actions")? {
        (_, action_values) = actions_from(path, Npy::Float(v, s), shape[0])?;
    }
    let label = match ints("label")? {
        None => None,
        Some((v, _)) if v.len() == 1 => Some(v[0]),
        Some((v, _)) => return Err(bad(path, format!("label has {} values, not 1", v.len()))),
    };
    Ok(Clip {
        id,
        shape,
        latents,
        actions,
        action_values,
        label,
        agent_xy: None,
    })
}

/// The clip files of folder `dir` (`.npy` but not `.actions.npy`, and
/// `.safetensors`), sorted by name; an error when there are none.
pub fn clip_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.ends_with(".npy") && !name.ends_with(".actions.npy"))
                || name.ends_with(".safetensors")
                || (p.is_dir() && has_images(p))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(bad(
            dir,
            "no .npy or .safetensors clip files, nor folders of .png / .jpg frames here",
        ));
    }
    Ok(paths)
}

/// Whether folder `dir` holds frame images.
fn has_images(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_str().is_some_and(is_image))
    })
}

/// One clip file (`.npy` with its `.actions.npy`, `.safetensors`, or a
/// folder of frame images with its `.actions.npy` beside it), its stem the
/// clip id; negative action ids and labels are refused.
pub fn read_clip_file(p: &Path) -> Result<Clip> {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if p.is_dir() {
        return image_clip(p, name.to_string());
    }
    let clip = match name.strip_suffix(".npy") {
        Some(stem) => npy_clip(p, stem.to_string()),
        None => {
            let stem = name.trim_end_matches(".safetensors");
            safetensors_clip(p, stem.to_string())
        }
    }?;
    if let Some(bad_id) = clip.actions.iter().flatten().find(|&&a| a < 0) {
        return Err(bad(p, format!("action id {bad_id} is negative")));
    }
    if let Some(l) = clip.label.filter(|&l| l < 0) {
        return Err(bad(p, format!("label {l} is negative")));
    }
    Ok(clip)
}

/// Read every clip file under `opts.from` (sorted by name) and write shards.
pub fn import(opts: &ImportOptions) -> Result<ImportReport> {
    let paths = clip_files(&opts.from)?;
    let mut clips = Vec::with_capacity(paths.len());
    for p in &paths {
        let clip = read_clip_file(p)?;
        let id = clip.id.clone();
        if clips.iter().any(|c: &Clip| c.id == clip.id) {
            return Err(bad(
                p,
                format!(
                    "clip id {id} appears twice (a .npy and a .safetensors with the same stem?)"
                ),
            ));
        }
        if let Some(first) = clips.first() {
            let first: &Clip = first;
            if first.shape[1..] != clip.shape[1..] {
                return Err(bad(
                    p,
                    format!(
                    "clip {id} has [C, H, W] = {:?} but clip {} has {:?}: all clips need the same",
                    &clip.shape[1..], first.id, &first.shape[1..]
                ),
                ));
            }
        }
        clips.push(clip);
    }
    let max_plus_one = |v: Option<i64>| v.map_or(0, |m| m as usize + 1);
    let meta = DatasetMeta {
        scale: opts.scale,
        shift: opts.shift,
        num_actions: max_plus_one(
            clips
                .iter()
                .flat_map(|c| c.actions.iter().flatten())
                .copied()
                .max(),
        ),
        num_classes: max_plus_one(clips.iter().filter_map(|c| c.label).max()),
        action_dim: clips
            .iter()
            .find_map(|c| c.action_values.as_ref().map(|v| v.len() / c.shape[0]))
            .unwrap_or(0),
        generator: None,
    };
    let clip_bytes = (clips[0].latents.len() * 4).max(1) as f64;
    let per_file = ((opts.shard_mb * 1024.0 * 1024.0 / clip_bytes).floor() as usize).max(1);
    let files = crate::store::write_dataset(&opts.out, &clips, &meta, per_file)?;
    Ok(ImportReport {
        clips: clips.len(),
        files,
        meta,
    })
}
