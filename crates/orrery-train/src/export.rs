//! `orrery ckpt export`: one standalone safetensors file of the model weights.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, read_safetensors, to_safetensors, EMA_FILE, MODEL_FILE};
use crate::Result;

/// Write the (EMA or online) weights of the checkpoint at `from` to `out`, with
/// the model config as JSON in the file's metadata (`orrery.model_config`).
pub fn export(from: &Path, ema: bool, out: &Path) -> Result<(PathBuf, usize)> {
    crate::paths::output_file(out, "--out")?;
    let dir = checkpoint::resolve(from)?;
    let state = checkpoint::load_state(&dir)?;
    let tensors = read_safetensors(&dir.join(if ema { EMA_FILE } else { MODEL_FILE }))?;
    let meta = HashMap::from([
        ("format".to_string(), "orrery".to_string()),
        ("orrery.step".to_string(), state.step.to_string()),
        (
            "orrery.weights".to_string(),
            if ema { "ema" } else { "online" }.to_string(),
        ),
        (
            "orrery.model_config".to_string(),
            serde_json::to_string(&state.config.model).expect("json"),
        ),
    ]);
    let bytes = to_safetensors(&tensors, meta)?;
    let tmp = out.with_extension("safetensors.tmp");
    std::fs::write(&tmp, &bytes).map_err(crate::io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(crate::io(out))?;
    Ok((dir, tensors.len()))
}
