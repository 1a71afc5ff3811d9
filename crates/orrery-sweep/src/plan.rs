//! A sweep's runs: the grid and the random draws expanded, named, and
//! checked against the base config.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::random::fnv1a;
use crate::spec::SweepSpec;
use crate::{Result, SweepError};

/// The most runs a sweep may plan.
pub const MAX_RUNS: usize = 10_000;

/// Run names longer than this (bytes) are cut and given a hash.
const MAX_NAME: usize = 100;

/// A sweep's runs, in order: the grid's cartesian product with the last
/// key varying fastest, and for each grid point its `samples` draws.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The sweep's name.
    pub name: String,
    /// The sweep file.
    pub file: PathBuf,
    /// The base config, relative to the current directory.
    pub base: PathBuf,
    /// The folder of the run directories.
    pub root: PathBuf,
    /// The swept keys and their labels in run names and report columns:
    /// the key's last segment, or the whole key where two share it.
    pub labels: Vec<(String, String)>,
    /// The runs.
    pub runs: Vec<PlannedRun>,
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    /// Derived from the swept values alone (`lr=0.001_depth=2`).
    pub name: String,
    /// `<root>/<name>`.
    pub run_dir: PathBuf,
    /// `key=value` for `orrery train --set`: the [set] ones, the swept
    /// ones, and `run.name = "<sweep>/<run>"` unless the sweep sets it.
    pub overrides: Vec<String>,
    /// The swept keys and their values as text (strings unquoted).
    pub swept: Vec<(String, String)>,
    /// `run.steps` of the run's config (0 in a plan not checked against
    /// its base config, [`Plan::expand`]).
    pub steps: u64,
}

impl Plan {
    /// Read a sweep file, expand it and load every run's config.
    pub fn load(file: &Path) -> Result<Plan> {
        Self::from_spec(&SweepSpec::load(file)?)
    }

    /// Expand a sweep and load every run's config from its base config, so
    /// an unknown key or a bad value is the config loader's own message.
    pub fn from_spec(spec: &SweepSpec) -> Result<Plan> {
        let mut plan = Self::expand(spec)?;
        let text = std::fs::read_to_string(&spec.base).map_err(|e| {
            spec.error(
                "base",
                format!("cannot read the base config {}: {e}", spec.base.display()),
            )
        })?;
        let origin = spec.base.display().to_string();
        for run in &mut plan.runs {
            let cfg = orrery_config::TrainConfig::from_toml(&text, &origin, &run.overrides)
                .map_err(|e| SweepError::Run {
                    file: spec.file.clone(),
                    run: run.name.clone(),
                    message: e.to_string(),
                })?;
            run.steps = cfg.run.steps;
        }
        Ok(plan)
    }

    /// The runs of a sweep, named, without loading their configs.
    pub fn expand(spec: &SweepSpec) -> Result<Plan> {
        let samples = spec.samples.unwrap_or(1);
        let count = spec
            .grid
            .iter()
            .try_fold(samples, |n, (_, values)| n.checked_mul(values.len()))
            .filter(|&n| n <= MAX_RUNS)
            .ok_or_else(|| {
                spec.error(
                    "grid",
                    format!("the sweep plans more than {MAX_RUNS} runs: shorten the [grid] lists or lower samples"),
                )
            })?;
        let keys: Vec<&str> = spec
            .grid
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(spec.random.iter().map(|(k, _)| k.as_str()))
            .collect();
        let labels: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.to_string(), label(k, &keys)))
            .collect();
        let names_run = keys.contains(&"run.name") || spec.set.iter().any(|(k, _)| k == "run.name");
        let mut runs = Vec::with_capacity(count);
        for index in 0..count {
            let values = run_values(spec, index, samples);
            let overrides: Vec<String> = spec
                .set
                .iter()
                .chain(&values)
                .map(|(k, v)| format!("{k}={}", set_text(v)))
                .collect();
            let name = labels
                .iter()
                .zip(&values)
                .map(|((_, l), (_, v))| format!("{l}={}", name_text(v)))
                .collect::<Vec<_>>()
                .join("_");
            runs.push(PlannedRun {
                name: safe_name(&name),
                run_dir: PathBuf::new(),
                overrides,
                swept: values.iter().map(|(k, v)| (k.clone(), shown(v))).collect(),
                steps: 0,
            });
        }
        unique_names(spec, &mut runs)?;
        for run in &mut runs {
            run.run_dir = spec.root.join(&run.name);
            if !names_run {
                let full = toml::Value::String(format!("{}/{}", spec.name, run.name));
                run.overrides.push(format!("run.name={full}"));
            }
        }
        Ok(Plan {
            name: spec.name.clone(),
            file: spec.file.clone(),
            base: spec.base.clone(),
            root: spec.root.clone(),
            labels,
            runs,
        })
    }

    /// The arguments of `orrery` that train `run`: `train BASE --set ...
    /// --run-dir DIR`.
    pub fn train_args(&self, run: &PlannedRun) -> Vec<String> {
        let mut args = vec!["train".to_string(), self.base.display().to_string()];
        for o in &run.overrides {
            args.extend(["--set".to_string(), o.clone()]);
        }
        // The swept keys are the columns of TensorBoard's HParams tab.
        for (key, _) in &run.swept {
            args.extend(["--hparam".to_string(), key.clone()]);
        }
        args.extend(["--run-dir".to_string(), run.run_dir.display().to_string()]);
        args
    }
}

/// The swept (key, value) pairs of run `index`: its grid point (the last
/// key fastest), then its random draws.
fn run_values(spec: &SweepSpec, index: usize, samples: usize) -> Vec<(String, toml::Value)> {
    let mut point = index / samples;
    let mut grid: Vec<(String, toml::Value)> = spec
        .grid
        .iter()
        .rev()
        .map(|(k, values)| {
            let v = values[point % values.len()].clone();
            point /= values.len();
            (k.clone(), v)
        })
        .collect();
    grid.reverse();
    let drawn = spec
        .random
        .iter()
        .map(|(k, d)| (k.clone(), d.draw(spec.seed, index, k)));
    grid.into_iter().chain(drawn).collect()
}

/// Give runs that would share a name a hash of their overrides; refuse
/// runs that are the same run twice.
fn unique_names(spec: &SweepSpec, runs: &mut [PlannedRun]) -> Result<()> {
    let mut seen: BTreeMap<&[String], usize> = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        if let Some(j) = seen.insert(&run.overrides, i) {
            return Err(spec.error(
                "samples",
                format!(
                    "runs {j} and {i} draw the same values ({}): widen the [random] ranges or lower samples",
                    run.overrides.join(", ")
                ),
            ));
        }
    }
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for run in runs.iter() {
        *count.entry(run.name.clone()).or_default() += 1;
    }
    for run in runs.iter_mut() {
        if count[&run.name] > 1 || run.name.len() > MAX_NAME {
            let mut cut = run.name.len().min(MAX_NAME - 10);
            while !run.name.is_char_boundary(cut) {
                cut -= 1;
            }
            let hash = fnv1a(run.overrides.join("\n").as_bytes());
            run.name = format!("{}-{:08x}", &run.name[..cut], hash >> 32);
        }
    }
    Ok(())
}

/// A key's label: its last segment unless another swept key ends the same.
fn label(key: &str, keys: &[&str]) -> String {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let shared = keys.iter().filter(|k| last(k) == last(key)).count() > 1;
    if shared {
        key.to_string()
    } else {
        last(key)
    }
}

/// A value as `--set` takes it (TOML; strings in quotes).
fn set_text(v: &toml::Value) -> String {
    v.to_string()
}

/// A value as a report shows it (strings bare).
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A value in a run name: numbers with at most 4 significant digits.
fn name_text(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(f) => compact_number(*f),
        other => shown(other),
    }
}

/// A number with at most 4 significant digits, in decimal between 1e-4
/// and 1e6 (`0.0003`, `0.995`, `1234`), else in exponent form (`1e-5`).
pub fn compact_number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let r: f64 = format!("{x:.3e}").parse().unwrap_or(x);
    if (1e-4..1e6).contains(&r.abs()) {
        format!("{r}")
    } else {
        format!("{r:e}")
    }
}

/// Characters a folder name (and a shell word) may hold; others become '-'.
fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=+-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
