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
    // mpirun answers SIGTERM and Ctrl-C by killing the ranks a second
    // later, but forwards SIGUSR1 to them: in its own process group (out of
    // reach of the terminal's Ctrl-C), it gets a SIGUSR1 for any of the
    // three, so that the ranks finish their step and write a checkpoint.
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        anyhow::anyhow!(
            "cannot run mpirun ({e}): install OpenMPI (launch/setup.sh does) or put mpirun on PATH"
        )
    })?;
    forward_stop_signals(child.id());
    let status = child.wait().context("waiting for mpirun")?;
    if status.code() == Some(i32::from(orrery_train::PREEMPTED_EXIT_CODE)) {
        return Err(crate::signals::Preempted(format!(
            "the job stopped on a signal after writing a checkpoint (exit code {}); run the same command again to resume",
            orrery_train::PREEMPTED_EXIT_CODE
        ))
        .into());
    }
    if !status.success() {
        bail!(
            "the job failed: mpirun exited with {} (the failing rank's message is above)",
            status
        );
    }
    Ok(())
}

/// Turn SIGTERM, SIGUSR1 and the first Ctrl-C to this process into a
/// SIGUSR1 to mpirun (`pid`), which forwards it to every rank; a second
/// Ctrl-C ends the job at once (SIGTERM to mpirun).
fn forward_stop_signals(pid: u32) {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1]) else {
        return;
    };
    std::thread::spawn(move || {
        let mut interrupts = 0;
        for sig in signals.forever() {
            interrupts += usize::from(sig == SIGINT);
            let forward = if interrupts >= 2 { SIGTERM } else { SIGUSR1 };
            // SAFETY: kill(2) with a child's pid and a valid signal number.
            unsafe {
                libc::kill(pid as libc::pid_t, forward);
            }
        }
    });
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
