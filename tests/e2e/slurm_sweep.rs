//! On the one-host Slurm cluster that [`super::dist`]'s Slurm test starts:
//! a sweep as a job array (`orrery sweep slurm`), each task a 2-rank job;
//! and a job whose time limit is shorter than its training, which gets
//! Slurm's SIGUSR1, checkpoints, requeues itself and resumes. Each returns
//! the logs for the test to check once the cluster is stopped.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `cmd args` in `dir` against the cluster of `conf`: its stdout, or why not.
pub(super) fn slurm(dir: &Path, conf: &Path, cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .env("SLURM_CONF", conf)
        .env("ORRERY", env!("CARGO_BIN_EXE_orrery"))
        // One host: OpenMPI's shared-memory transport fails across the fake nodes.
        .env("OMPI_MCA_btl", "self,tcp")
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{cmd} {args:?} ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Poll `done` until it holds, for at most `secs` seconds.
pub(super) fn wait(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !done() {
        if start.elapsed().as_secs() > secs {
            return Err(format!("waited {secs} s for {what}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// The sweep `two.toml` (two learning rates) written as a job array by
/// `orrery sweep slurm`, each task on 1 node with 2 tasks, run to the end
/// (`sbatch --wait`). Returns the tasks' logs.
pub(super) fn sweep_array(dir: &Path, conf: &Path) -> Result<String, String> {
    let sweep = r#"
base = "tiny.toml"
name = "array"
[set]
"run.steps" = 6
[grid]
"optim.lr" = [1e-3, 3e-4]
"#;
    std::fs::write(dir.join("array.toml"), sweep).map_err(|e| e.to_string())?;
    let wrote = slurm(
        dir,
        conf,
        env!("CARGO_BIN_EXE_orrery"),
        &[
            "sweep",
            "slurm",
            "array.toml",
            "--",
            "--nodes=1",
            "--ntasks-per-node=2",
        ],
    )?;
    if !wrote.contains("2 array tasks") {
        return Err(format!("sweep slurm: {wrote}"));
    }
    slurm(
        dir,
        conf,
        "timeout",
        &["300", "sbatch", "--wait", "runs/array/sweep.sbatch"],
    )?;
    let mut logs = String::new();
    for entry in std::fs::read_dir(dir.join("runs/array")).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("slurm-"))
        {
            logs += &std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        }
    }
    Ok(logs)
}

/// The run the time limit stops: 4000 steps of tiny.toml, about a minute
/// here, with no checkpoint but the one a signal asks for.
pub(super) const LIMITED_RUN: [&str; 8] = [
    "--set",
    "run.steps=4000",
    "--set",
    "checkpoint.every=100000",
    "--set",
    "logging.eval_every=100000",
    "--set",
    "logging.every=500",
];

/// A 2-rank job of 4000 steps (about a minute here) under a time limit
/// of 1 minute, with Slurm's SIGUSR1 asked for 58 s before it (Slurm sends
/// it up to a minute early, so within the first half minute): the ranks
/// checkpoint and exit 75, the template requeues the job, and the test
/// lets it start again at once (Slurm holds requeued jobs for two minutes)
/// with a longer limit, so that the second allocation finishes. Returns
/// the job's log.
pub(super) fn time_limit_requeue(dir: &Path, conf: &Path, sbatch: &Path) -> Result<String, String> {
    let id = slurm(
        dir,
        conf,
        "sbatch",
        &[
            "--parsable",
            "--nodes=1",
            "--ntasks-per-node=2",
            "--time=1",
            "--signal=USR1@58",
            sbatch.to_str().unwrap(),
            "tiny.toml",
            "--run-dir",
            "limited",
        ]
        .iter()
        .chain(&LIMITED_RUN)
        .copied()
        .collect::<Vec<_>>(),
    )?;
    let id = id.trim().split(';').next().unwrap_or_default().to_string();
    let log_path = dir.join(format!("orrery-{id}.out"));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let state = || slurm(dir, conf, "scontrol", &["show", "job", &id]).unwrap_or_default();
    wait(
        "the job to stop on the signal and requeue itself",
        150,
        || log().contains("requeueing"),
    )?;
    let requeued = Instant::now();
    let job = format!("JobId={id}");
    // Not in the same seconds as the requeue: slurmd would refuse the new
    // credential as revoked.
    wait("the requeued job to become pending", 90, || {
        requeued.elapsed().as_secs() >= 3
            && state().contains("JobState=PENDING")
            && slurm(
                dir,
                conf,
                "scontrol",
                &["update", &job, "StartTime=now", "TimeLimit=10"],
            )
            .is_ok()
    })?;
    wait("the job to finish", 240, || {
        let s = state();
        s.contains("JobState=COMPLETED") || s.contains("JobState=FAILED")
    })?;
    if !state().contains("JobState=COMPLETED") {
        return Err(format!("the job failed:\n{}", log()));
    }
    Ok(log())
}
