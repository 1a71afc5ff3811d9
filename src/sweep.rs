//! `orrery sweep plan|run` (many runs of one base config, from a sweep
//! file) and `orrery report` (their results side by side).
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use orrery_sweep::{run_state, Plan, PlannedRun, Report, ReportInput, RunState};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

use crate::shell::{command_line, shell_word};

#[derive(Subcommand)]
pub enum SweepCommand {
    /// List a sweep file's runs: name, run directory, state and the
    /// `orrery train` command of each.
    Plan {
        /// The sweep file (TOML; docs/sweeps.md).
        sweep: PathBuf,
    },
    /// Train a sweep's runs on this machine, K at a time: finished runs
    /// are skipped, interrupted ones resumed; each run's output goes to
    /// <run dir>/sweep.log.
    Run(SweepRunArgs),
    /// Write (and with --submit, submit) a Slurm job array with one task
    /// per run, each through launch/slurm/train.sbatch.
    Slurm(crate::sweep_slurm::SweepSlurmArgs),
}

/// The arguments of `orrery sweep run`.
#[derive(Args)]
pub struct SweepRunArgs {
    /// The sweep file (TOML; docs/sweeps.md).
    sweep: PathBuf,
    /// Runs at a time.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// `orrery launch` options for every run, after `--` (e.g. `-- -n 2`):
    /// each run is then `orrery launch OPTIONS -- train ...`.
    #[arg(last = true)]
    launch: Vec<String>,
}

/// The arguments of `orrery report`.
#[derive(Args)]
pub struct ReportArgs {
    /// Run directories, or one sweep file (its runs, with their swept values).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print CSV instead of a Markdown table.
    #[arg(long)]
    csv: bool,
    /// Sort by this column, ascending, blanks last (e.g. heldout_loss_ema).
    #[arg(long)]
    sort: Option<String>,
}

pub fn run_sweep(cmd: SweepCommand) -> Result<()> {
    match cmd {
        SweepCommand::Plan { sweep } => print_plan(&sweep),
        SweepCommand::Run(args) => run(args),
        SweepCommand::Slurm(args) => crate::sweep_slurm::run_slurm(args),
    }
}

fn print_plan(file: &Path) -> Result<()> {
    let plan = Plan::load(file)?;
    println!(
        "sweep {}: {} runs of {} in {}",
        plan.name,
        plan.runs.len(),
        plan.base.display(),
        plan.root.display()
    );
    for run in &plan.runs {
        println!(
            "\n{}  {}  {}",
            run.name,
            run.run_dir.display(),
            state_text(run)
        );
        println!("  {}", command_line("orrery", &plan.train_args(run)));
    }
    Ok(())
}

/// A run's state for people: "not started", "at step 40 of 100", "finished".
fn state_text(run: &PlannedRun) -> String {
    match run_state(&run.run_dir, run.steps) {
        RunState::Partial(step) => format!("at step {step} of {}", run.steps),
        state => state.to_string(),
    }
}

/// A run's child process.
struct Running<'a> {
    run: &'a PlannedRun,
    child: Child,
    started: Instant,
    log: PathBuf,
}

fn run(args: SweepRunArgs) -> Result<()> {
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    // Every run's config is loaded here, before anything starts.
    let plan = Plan::load(&args.sweep)?;
    let exe = std::env::current_exe().context("finding the orrery binary")?;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .context("installing the signal handler")?;
    let mut queue = VecDeque::new();
    let mut skipped = 0;
    for run in &plan.runs {
        if run_state(&run.run_dir, run.steps) == RunState::Finished {
            println!("skip  {}: finished (step {})", run.name, run.steps);
            skipped += 1;
        } else {
            queue.push_back(run);
        }
    }
    if queue.is_empty() {
        println!(
            "sweep {}: all {} runs are finished: nothing to train",
            plan.name,
            plan.runs.len()
        );
        return Ok(());
    }
    println!(
        "sweep {}: {} runs, {skipped} finished, {} to train, {} at a time; each run's output goes to <run dir>/sweep.log",
        plan.name,
        plan.runs.len(),
        queue.len(),
        args.parallel.min(queue.len())
    );
    let threads = (std::thread::available_parallelism().map_or(1, |n| n.get()) / args.parallel)
        .max(1)
        .to_string();
    let mut running: Vec<Running> = Vec::new();
    let mut tally = Tally::default();
    let mut stopped_by = None;
    loop {
        for sig in signals.pending() {
            if stopped_by.is_none() {
                eprintln!(
                    "sweep: {} received: passing it to the {} running run(s) and starting no more; Ctrl-C again to stop them at once",
                    crate::signals::name(sig),
                    running.len()
                );
            }
            stopped_by.get_or_insert(sig);
            for r in &running {
                // SAFETY: kill(2) with a child's pid and a valid signal number.
                unsafe {
                    libc::kill(r.child.id() as libc::pid_t, sig);
                }
            }
        }
        while stopped_by.is_none() && running.len() < args.parallel {
            let Some(run) = queue.pop_front() else { break };
            match start(&exe, &plan, run, &args.launch, &threads) {
                Ok(r) => running.push(r),
                Err(e) => {
                    println!("failed {}: could not start: {e:#}", run.name);
                    tally.failed.push(run.name.clone());
                }
            }
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].child.try_wait().context("waiting for a run")? {
                Some(status) => tally.ended(running.swap_remove(i), status, stopped_by.is_some()),
                None => i += 1,
            }
        }
        if running.is_empty() && (queue.is_empty() || stopped_by.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tally.conclude(&plan, skipped, stopped_by, queue.len())
}

/// How a sweep's runs ended.
#[derive(Default)]
struct Tally {
    ok: usize,
    failed: Vec<String>,
    /// Stopped by a signal passed on by the sweep: name and exit code.
    interrupted: Vec<(String, Option<i32>)>,
}

impl Tally {
    /// Say how `r` ended (`stopping`: after a signal was passed on).
    fn ended(&mut self, r: Running, status: std::process::ExitStatus, stopping: bool) {
        let secs = r.started.elapsed().as_secs_f64();
        if status.success() {
            println!("ok    {} ({secs:.1} s)", r.run.name);
            self.ok += 1;
        } else if stopping {
            println!(
                "stopped {} ({status}) {}; log: {}",
                r.run.name,
                state_text(r.run),
                r.log.display()
            );
            self.interrupted.push((r.run.name.clone(), status.code()));
        } else {
            println!(
                "failed {} ({status}, after {secs:.1} s); the end of {}:",
                r.run.name,
                r.log.display()
            );
            for line in log_tail(&r.log, 6) {
                println!("    {line}");
            }
            self.failed.push(r.run.name.clone());
        }
    }

    /// The summary, and the sweep's error if a run failed or was stopped.
    fn conclude(
        self,
        plan: &Plan,
        skipped: usize,
        stopped_by: Option<i32>,
        not_started: usize,
    ) -> Result<()> {
        let failed = self.failed.join(", ");
        println!(
            "sweep {}: {} ok, {skipped} skipped (finished before), {} failed{}",
            plan.name,
            self.ok,
            self.failed.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(": {failed}")
            }
        );
        let again = std::env::args()
            .map(|a| shell_word(&a))
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(sig) = stopped_by {
            let names: Vec<&str> = self.interrupted.iter().map(|(n, _)| n.as_str()).collect();
            let message = format!(
                "the sweep was stopped by {}: interrupted {} ({}), not started {not_started}; run `{again}` again to resume the interrupted runs from their checkpoints and train the rest",
                crate::signals::name(sig),
                names.len(),
                names.join(", "),
            );
            // Every interrupted run wrote a checkpoint and stopped: the code
            // a scheduler requeues on, as for one run.
            let preempted = Some(i32::from(orrery_train::PREEMPTED_EXIT_CODE));
            if self.failed.is_empty() && self.interrupted.iter().all(|(_, code)| *code == preempted)
            {
                return Err(crate::signals::Preempted(message).into());
            }
            bail!(message);
        }
        if !self.failed.is_empty() {
            bail!(
                "{} of the sweep's {} runs failed: {failed} (each run's output is in <run dir>/sweep.log); after a fix, run `{again}` again: it retries them and skips the finished ones",
                self.failed.len(),
                plan.runs.len(),
            );
        }
        Ok(())
    }
}

/// Start `orrery train` (or `orrery launch ... -- train`) for `run`, its
/// output appended to `<run dir>/sweep.log`.
fn start<'a>(
    exe: &Path,
    plan: &Plan,
    run: &'a PlannedRun,
    launch: &[String],
    threads: &str,
) -> Result<Running<'a>> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&run.run_dir)
        .with_context(|| format!("creating {}", run.run_dir.display()))?;
    let log = run.run_dir.join("sweep.log");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut args = plan.train_args(run);
    if !launch.is_empty() {
        args = ["launch".to_string()]
            .into_iter()
            .chain(launch.iter().cloned())
            .chain(["--".to_string()])
            .chain(args)
            .collect();
    }
    let shown = command_line("orrery", &args);
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(
        file,
        "\n=== sweep {} (unix time {when}): {shown}",
        plan.name
    )
    .with_context(|| format!("writing {}", log.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().context("sharing the log file")?)
        .stderr(file);
    if launch.is_empty() && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Runs side by side share the cores (`orrery launch` shares its own).
        cmd.env("RAYON_NUM_THREADS", threads);
    }
    // Its own process group: the terminal's Ctrl-C reaches the run only
    // through this process, once.
    cmd.process_group(0);
    let child = cmd.spawn().with_context(|| format!("running {shown}"))?;
    println!(
        "start {} ({}): {}",
        run.name,
        state_text(run),
        log.display()
    );
    Ok(Running {
        run,
        child,
        started: Instant::now(),
        log,
    })
}

/// The last `n` non-empty lines of a log.
fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

pub fn run_report(args: ReportArgs) -> Result<()> {
    let inputs = match &args.paths[..] {
        [file] if file.is_file() => {
            let plan = Plan::load(file)?;
            plan.runs
                .iter()
                .map(|run| {
                    let swept = plan
                        .labels
                        .iter()
                        .zip(&run.swept)
                        .map(|((_, label), (_, value))| (label.clone(), value.clone()))
                        .collect();
                    let state = run_state(&run.run_dir, run.steps);
                    ReportInput {
                        name: run.name.clone(),
                        dir: run.run_dir.clone(),
                        swept,
                        note: (state != RunState::Finished).then(|| state_text(run)),
                    }
                })
                .collect::<Vec<_>>()
        }
        paths => paths
            .iter()
            .map(|p| {
                if !p.is_dir() {
                    bail!(
                        "{} is not a run directory: give run directories, or one sweep file alone",
                        p.display()
                    );
                }
                Ok(ReportInput {
                    name: p.display().to_string(),
                    dir: p.clone(),
                    swept: vec![],
                    note: None,
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let mut report = Report::collect(&inputs)?;
    if let Some(column) = &args.sort {
        report.sort_by(column)?;
    }
    if args.csv {
        print!("{}", report.to_csv());
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(())
}
