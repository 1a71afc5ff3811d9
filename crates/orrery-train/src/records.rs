//! What a run records as it goes: metrics.jsonl and TensorBoard (the same
//! scalars, from one [`MetricsLine`]) and samples.jsonl (the data order).
//! Only rank 0 records; the other ranks hold an empty `Records`.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::feed::Feed;
use crate::io;
use crate::metrics::MetricsLine;
use crate::runlog::keep_lines;
use crate::tensorboard::{EventWriter, HParam};
use crate::{Result, TrainError};

/// The open record files of a run (rank 0), or none (other ranks).
pub(crate) struct Records {
    run_dir: PathBuf,
    tb: Option<EventWriter>,
    metrics: Option<File>,
    samples: Option<File>,
}

impl Records {
    /// Open the records of `run_dir` for a run starting at `step`: lines of
    /// later steps are dropped (a run that died after them takes those
    /// steps again; a fresh run starts both files afresh). Nothing is
    /// opened unless `main`.
    pub(crate) fn open(
        run_dir: &Path,
        main: bool,
        step: u64,
        hparams: &[(String, HParam)],
    ) -> Result<Self> {
        let mut r = Records {
            run_dir: run_dir.to_path_buf(),
            tb: None,
            metrics: None,
            samples: None,
        };
        if main {
            let mut tb = EventWriter::create(&run_dir.join("tensorboard")).map_err(io(run_dir))?;
            if !hparams.is_empty() {
                tb.hparams_start(hparams, "").map_err(io(run_dir))?;
            }
            r.tb = Some(tb);
            // A fresh start keeps nothing, not even an old step-0 line.
            let keep = |s: u64| step > 0 && s <= step;
            r.metrics = Some(keep_lines(&run_dir.join("metrics.jsonl"), keep)?);
            // samples.jsonl: per step k (1-based, as metrics.jsonl counts),
            // the clips of the global batch that step k trained on.
            r.samples = Some(keep_lines(&run_dir.join("samples.jsonl"), keep)?);
        }
        Ok(r)
    }

    /// Record in TensorBoard that the run reached its last step.
    pub(crate) fn finished(&mut self) -> Result<()> {
        match self.tb.as_mut() {
            Some(tb) => tb.hparams_end(true).map_err(io(&self.run_dir)),
            None => Ok(()),
        }
    }

    /// One line to metrics.jsonl and the same scalars to TensorBoard.
    pub(crate) fn log(&mut self, line: &MetricsLine) -> Result<()> {
        if let Some(tb) = self.tb.as_mut() {
            for (tag, value) in line.scalars() {
                tb.scalar(tag, line.step, value)
                    .map_err(io(&self.run_dir))?;
            }
            tb.flush().map_err(io(&self.run_dir))?;
        }
        if let Some(m) = self.metrics.as_mut() {
            let json = serde_json::to_string(line).expect("metrics serialize");
            let path = self.run_dir.join("metrics.jsonl");
            writeln!(m, "{json}").map_err(io(&path))?;
        }
        Ok(())
    }

    /// The samples.jsonl line of step `step` (1-based): the epoch and the
    /// global batch `loader` has just given.
    pub(crate) fn batch(&mut self, step: u64, loader: &Feed) -> Result<()> {
        let Some(f) = self.samples.as_mut() else {
            return Ok(());
        };
        let mut line = serde_json::json!({
            "step": step,
            "epoch": loader.cursor().epoch,
        });
        match loader {
            Feed::Memory(l) => line["ids"] = l.last_global_ids().into(),
            Feed::Stream(l) => line["rows"] = l.last_global_rows().into(),
        }
        let path = self.run_dir.join("samples.jsonl");
        writeln!(f, "{line}").map_err(io(&path))
    }
}

/// The values of config keys `keys` (dotted, as `--set` takes them) in
/// `cfg`, for TensorBoard's HParams tab; an unknown key is an error.
pub(crate) fn hparam_values(cfg: &TrainConfig, keys: &[String]) -> Result<Vec<(String, HParam)>> {
    let tree = toml::Value::try_from(cfg).expect("config serializes");
    keys.iter()
        .map(|key| {
            let mut at = &tree;
            for part in key.split('.') {
                at = at.get(part).ok_or_else(|| {
                    TrainError::Config(format!(
                        "--hparam {key}: the config has no key {key} (name a dotted key of docs/config.md, as --set takes)"
                    ))
                })?;
            }
            let value = match at {
                toml::Value::Integer(i) => HParam::Number(*i as f64),
                toml::Value::Float(x) => HParam::Number(*x),
                toml::Value::Boolean(b) => HParam::Bool(*b),
                toml::Value::String(t) => HParam::Text(t.clone()),
                other => HParam::Text(other.to_string()),
            };
            Ok((key.clone(), value))
        })
        .collect()
}
