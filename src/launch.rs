//! `orrery launch` (ranks on this machine through mpirun) and `orrery dist`.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct LaunchArgs {
    /// Number of ranks.
    #[arg(short = 'n', long = "ranks")]
    ranks: usize,
    /// An OpenMPI hostfile for several machines (default: this machine only).
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Print the mpirun command instead of running it.
    #[arg(long)]
    dry_run: bool,
    /// The orrery command each rank runs, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
pub enum DistCommand {
    /// Check every collective across the ranks of a launch
    /// (`orrery launch -n 4 -- dist selftest`).
    Selftest,
}

pub fn run_launch(args: LaunchArgs) -> Result<()> {
    if args.ranks == 0 {
        bail!("-n must be at least 1");
    }
    let exe = std::env::current_exe().context("finding the orrery binary")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cmd = std::process::Command::new("mpirun");
    cmd.arg("-n").arg(args.ranks.to_string());
    if let Some(h) = &args.hostfile {
        cmd.arg("--hostfile").arg(h);
    } else if args.ranks > 1 {
        // One machine: OpenMPI counts physical cores as slots, so more ranks
        // than that (hyper-threads, tests) needs --oversubscribe.
        cmd.arg("--oversubscribe");
    }
    if is_root() {
        cmd.arg("--allow-run-as-root");
    }
    // Each rank's thread pool gets its share of the cores (unless set).
    let threads = std::env::var("RAYON_NUM_THREADS")
        .unwrap_or_else(|_| (cores / args.ranks).max(1).to_string());
    cmd.args([
        "--bind-to",
        "none",
        "-x",
        &format!("RAYON_NUM_THREADS={threads}"),
    ]);
    cmd.arg(&exe).args(&args.command);
    let shown = format!("{cmd:?}").replace('"', "");
    if args.dry_run {
        println!("{shown}");
        return Ok(());
    }
    eprintln!("launching: {shown}");
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!(
            "cannot run mpirun ({e}): install OpenMPI (launch/setup.sh does) or put mpirun on PATH"
        )
    })?;
    if !status.success() {
        bail!(
            "the job failed: mpirun exited with {} (the failing rank's message is above)",
            status
        );
    }
    Ok(())
}

/// Whether this process runs as root (OpenMPI refuses that unless told).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn run_dist(cmd: DistCommand) -> Result<()> {
    let DistCommand::Selftest = cmd;
    let world = orrery_dist::World::from_env()?;
    let comm = orrery_dist::connect(&world, std::time::Duration::from_secs(60), None)?;
    println!("{}", orrery_dist::self_test(comm.as_ref())?);
    Ok(())
}
