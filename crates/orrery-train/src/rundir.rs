//! Where a run starts: which checkpoint to resume from, what to do with a
//! run directory that holds another run, and which config changes a resume
//! may carry.
use std::path::{Path, PathBuf};

use orrery_dist::Collective;

use crate::checkpoint;
use crate::config::TrainConfig;
use crate::{Result, TrainError};

/// Where to resume from.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// The run directory's latest checkpoint, if any.
    Auto,
    /// Start fresh.
    Never,
    /// A checkpoint, checkpoints/ or run directory.
    From(PathBuf),
}

/// Run-time options that are not part of the experiment.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where everything is written.
    pub run_dir: PathBuf,
    /// Resume policy.
    pub resume: Resume,
    /// Stop (with a checkpoint) after this many steps in this invocation,
    /// e.g. to fit a scheduler's time limit; `run.steps` still sets the schedule.
    pub stop_after: Option<u64>,
    /// Start afresh even where the run directory holds another run's
    /// checkpoints, moving them aside (`replaced-<time>/`).
    pub overwrite: bool,
    /// Set (from a signal handler) to stop after the current step with a
    /// checkpoint.
    pub stop: crate::stop::StopRequest,
    /// Tests: kill this process (SIGKILL) when a checkpoint write reaches
    /// this point.
    pub kill_at: Option<orrery_checkpoint::SavePoint>,
    /// Config keys recorded as hyperparameters for TensorBoard's HParams
    /// tab (dotted, as `--set` takes them).
    pub hparams: Vec<String>,
}

/// The checkpoint to resume from (None: start fresh), after applying the
/// run directory rules. A fresh start (or a resume from a checkpoint of
/// another run directory) in a directory that already holds complete
/// checkpoints is refused unless `overwrite`, which moves the old run
/// aside on the `main` rank; nothing is deleted.
pub(crate) fn start_checkpoint(
    opts: &RunOptions,
    main: bool,
    comm: &dyn Collective,
) -> Result<Option<PathBuf>> {
    let run_dir = &opts.run_dir;
    if main && run_dir.exists() && !run_dir.is_dir() {
        return Err(TrainError::Config(format!(
            "--run-dir {} exists and is not a directory: name a folder",
            run_dir.display()
        )));
    }
    let ckpt_dir = run_dir.join("checkpoints");
    let from = match &opts.resume {
        Resume::Never => None,
        Resume::Auto => newest_intact(&ckpt_dir, main, comm)?,
        Resume::From(p) => {
            let dir = checkpoint::resolve(p)?;
            if main {
                checkpoint::verify(&dir).map_err(|e| {
                    TrainError::Checkpoint(format!(
                        "--resume {}: checkpoint {} is damaged ({e}); resume from another one (`ls {}`)",
                        p.display(),
                        dir.display(),
                        dir.parent().unwrap_or(&dir).display()
                    ))
                })?;
            }
            Some(dir)
        }
    };
    let own = |p: &Path| {
        let parent = std::fs::canonicalize(p)
            .ok()
            .and_then(|c| c.parent().map(Path::to_path_buf));
        parent.is_some() && parent == std::fs::canonicalize(&ckpt_dir).ok()
    };
    // Rank 0 alone judges the directory (the others would only repeat its
    // message, interleaved) and moves an old run aside; its error ends the job.
    if !main || from.as_deref().is_some_and(own) {
        return Ok(from);
    }
    let Some((step, _)) = checkpoint::complete_checkpoints(&ckpt_dir).pop() else {
        return Ok(from);
    };
    if !opts.overwrite {
        return Err(TrainError::Config(format!(
            "run directory {} holds the checkpoints of another run (newest: step {step}), which a new run here would mix with its own: continue that run with --resume auto, choose another --run-dir, or add --overwrite to move the old run aside into {}/replaced-<time>/",
            run_dir.display(),
            run_dir.display()
        )));
    }
    if main {
        move_aside(run_dir)?;
    }
    Ok(from)
}

/// `--resume auto`'s checkpoint: the newest intact one of `ckpt_dir`,
/// chosen by the `main` rank (which reads every file once to check its
/// checksum) and sent to the others. A damaged newer checkpoint is named
/// in a warning and renamed to `<name>.damaged` (never deleted, and never
/// replaced when the run reaches its step again); `latest` then names the
/// one resumed from.
fn newest_intact(ckpt_dir: &Path, main: bool, comm: &dyn Collective) -> Result<Option<PathBuf>> {
    const NONE: u64 = u64::MAX;
    let mut step = [NONE];
    if main {
        let intact = checkpoint::newest_intact(ckpt_dir);
        if let (Some(found), false) = (&intact.found, ckpt_dir.join("latest").is_file()) {
            eprintln!(
                "{} has no `latest`: resuming from the newest complete checkpoint, {}",
                ckpt_dir.display(),
                found.display()
            );
        }
        if !intact.damaged.is_empty() {
            let named = |p: &Option<PathBuf>| {
                p.as_ref()
                    .map_or("a fresh start (none is intact)".into(), |p| {
                        format!("{}", p.display())
                    })
            };
            for (dir, why) in &intact.damaged {
                let aside = dir.with_extension("damaged");
                eprintln!(
                    "warning: checkpoint {} is damaged ({why}); resuming from {} instead. It is kept, renamed to {}",
                    dir.display(),
                    named(&intact.found),
                    aside.display()
                );
                std::fs::rename(dir, &aside).map_err(io(&aside))?;
            }
            if let Some(found) = &intact.found {
                let name = found
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                checkpoint::point_latest(ckpt_dir, name)?;
            } else {
                return Err(TrainError::Checkpoint(format!(
                    "every checkpoint in {} is damaged (renamed to step_*.damaged, see above): start afresh with --resume never --overwrite, or resume from a copy with --resume PATH",
                    ckpt_dir.display()
                )));
            }
        }
        if let Some(found) = &intact.found {
            // Only the step: a DiT's or an autoencoder's state file.
            #[derive(serde::Deserialize)]
            struct Step {
                step: u64,
            }
            step[0] = orrery_checkpoint::read_state::<Step>(found)?.step;
        }
    }
    if comm.size() > 1 {
        comm.broadcast_u64(&mut step, 0)?;
    }
    Ok((step[0] != NONE).then(|| ckpt_dir.join(checkpoint::step_dir_name(step[0]))))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io(format!("{}: {e}", path.display()))
}

/// Move a run's checkpoints and records into `<run_dir>/replaced-<unix time>/`.
fn move_aside(run_dir: &Path) -> Result<()> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = run_dir.join(format!("replaced-{secs}"));
    let mut n = 1;
    while aside.exists() {
        aside = run_dir.join(format!("replaced-{secs}-{n}"));
        n += 1;
    }
    std::fs::create_dir_all(&aside).map_err(io(&aside))?;
    for name in [
        "checkpoints",
        "metrics.jsonl",
        "samples.jsonl",
        "tensorboard",
        "config.toml",
        "fsdp_memory.json",
    ] {
        let from = run_dir.join(name);
        if from.exists() {
            let to = aside.join(name);
            std::fs::rename(&from, &to).map_err(io(&to))?;
        }
    }
    eprintln!(
        "--overwrite: moved the old run's checkpoints and records to {}",
        aside.display()
    );
    Ok(())
}

/// Keys whose change breaks a resume: the data order and the data cursor
/// are defined by them, so the resumed run would not continue the same
/// sequence of batches. (A changed [model] is refused before this.)
const FIXED: [(&str, &str); 5] = [
    ("run.seed", "it seeds the data order"),
    ("data.global_batch", "the data cursor counts global batches"),
    (
        "data.holdout_clips",
        "it decides which clips are trained on",
    ),
    ("data.streaming", "it changes the data order"),
    ("data.shuffle_buffer", "it changes the streaming data order"),
];

/// The keys that differ between the checkpoint's config and this run's,
/// as `key: old -> new` lines; an error naming the keys a resume cannot
/// change.
pub(crate) fn config_changes(old: &TrainConfig, new: &TrainConfig) -> Result<Vec<String>> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    flatten("", &toml::Value::try_from(old).expect("config"), &mut a);
    flatten("", &toml::Value::try_from(new).expect("config"), &mut b);
    let a: std::collections::BTreeMap<_, _> = a.into_iter().collect();
    let b: std::collections::BTreeMap<_, _> = b.into_iter().collect();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = "(unset)".to_string();
    let mut changed = Vec::new();
    let mut refused = Vec::new();
    for k in keys {
        let (x, y) = (a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none));
        if x == y {
            continue;
        }
        // The shuffle buffer only orders a streaming run's data.
        let matters = k != "data.shuffle_buffer" || new.data.streaming || old.data.streaming;
        match FIXED.iter().find(|(f, _)| f == k).filter(|_| matters) {
            Some((_, why)) => refused.push(format!("{k} ({x} -> {y}: {why})")),
            None => changed.push(format!("{k}: {x} -> {y}")),
        }
    }
    if !refused.is_empty() {
        return Err(TrainError::Config(format!(
            "a resume cannot change {}: set it back to the checkpoint's value, or start a new run (--resume never in another --run-dir)",
            refused.join(", ")
        )));
    }
    Ok(changed)
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_changes_are_listed_and_cursor_changes_refused() {
        let old = TrainConfig::default();
        let mut new = old.clone();
        assert!(config_changes(&old, &new).unwrap().is_empty());
        new.optim.lr *= 0.5;
        new.run.steps += 10;
        let changed = config_changes(&old, &new).unwrap();
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert!(
            changed.iter().any(|c| c.starts_with("optim.lr: ")),
            "{changed:?}"
        );
        // The shuffle buffer matters only when streaming.
        new.data.shuffle_buffer += 1;
        assert_eq!(config_changes(&old, &new).unwrap().len(), 3);
        new.data.streaming = true;
        let err = config_changes(&old, &new).unwrap_err().to_string();
        assert!(err.contains("data.shuffle_buffer"), "{err}");
        new.data.streaming = false;
        new.data.shuffle_buffer -= 1;
        new.data.global_batch *= 2;
        let err = config_changes(&old, &new).unwrap_err().to_string();
        assert!(err.contains("data.global_batch (16 -> 32"), "{err}");
        assert!(!err.contains("optim.lr"), "{err}");
    }
}
