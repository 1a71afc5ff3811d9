//! orrery-sweep: many runs of one base config.
//!
//! A sweep file ([`SweepSpec`], `configs/sweeps/*.toml`) names a base
//! config, fixed overrides (`[set]`), a grid of values (`[grid]`) and a
//! random search (`[random]`, drawn `samples` times per grid point from
//! `seed`). [`Plan::load`] expands it into [`PlannedRun`]s, each with a
//! name derived from its swept values, a run directory and the `--set`
//! overrides of `orrery train`, and loads every run's config so a bad key
//! or value is reported before anything runs. [`run_state`] tells a
//! finished run from an interrupted one ([`RunState`]); [`Report`] reads
//! runs' `metrics.jsonl` into a table sorted by a column, as Markdown or
//! CSV. The same seed always gives the same plan.
//!
//! ```
//! use orrery_sweep::{Plan, SweepSpec};
//! let text = r#"
//! base = "base.toml"
//! name = "grid"
//! [set]
//! "run.steps" = 60
//! [grid]
//! "optim.lr" = [1e-3, 3e-4]
//! "model.depth" = [2, 4]
//! "#;
//! let spec = SweepSpec::parse(text, "sweeps/grid.toml".as_ref()).unwrap();
//! let plan = Plan::expand(&spec).unwrap();
//! assert_eq!(plan.runs.len(), 4);
//! assert_eq!(plan.runs[1].name, "lr=0.001_depth=4");
//! assert_eq!(plan.runs[1].run_dir, std::path::Path::new("runs/grid/lr=0.001_depth=4"));
//! ```
#![deny(missing_docs)]
use std::path::PathBuf;

mod plan;
mod random;
mod report;
mod spec;
mod state;

pub use plan::{compact_number, Plan, PlannedRun, MAX_RUNS};
pub use random::Distribution;
pub use report::{Cell, Report, ReportInput};
pub use spec::SweepSpec;
pub use state::{checkpoint_step, run_state, RunState};

/// What is wrong with a sweep file, a planned run or a report's input,
/// where, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The sweep file cannot be read.
    #[error("cannot read sweep file {}: {source}", .file.display())]
    Read {
        /// The sweep file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The sweep file is not valid TOML.
    #[error("sweep file {} is not valid TOML: {message}", .file.display())]
    Toml {
        /// The sweep file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key of the sweep file is wrong.
    #[error("{}: {key}: {message}", .file.display())]
    Key {
        /// The sweep file.
        file: PathBuf,
        /// The key, with its table (`[grid] "optim.lr"`).
        key: String,
        /// What is wrong and what to change.
        message: String,
    },
    /// A planned run's config does not load.
    #[error("{}: run {run}: {message}", .file.display())]
    Run {
        /// The sweep file.
        file: PathBuf,
        /// The run's name.
        run: String,
        /// The config loader's message.
        message: String,
    },
    /// A report input is not a run directory.
    #[error("{}: {message}", .path.display())]
    Report {
        /// The path given.
        path: PathBuf,
        /// What is wrong and what to change.
        message: String,
    },
    /// A report sorted by a column it does not have.
    #[error("--sort {column}: the report has no such column; sort by one of: {valid}")]
    UnknownColumn {
        /// The column asked for.
        column: String,
        /// The report's columns, comma-separated.
        valid: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, SweepError>;
