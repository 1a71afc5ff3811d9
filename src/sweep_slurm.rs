//! `orrery sweep slurm`: a sweep as one Slurm job array, one task per run,
//! each a (multi-rank) job through launch/slurm/train.sbatch, which resumes
//! a run from its checkpoint and requeues the task when a signal (the time
//! limit's SIGUSR1, a preemption's SIGTERM) stopped it with one.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use orrery_sweep::Plan;

use crate::shell::shell_word;

/// The template every task runs (written beside the array script).
const TRAIN_SBATCH: &str = include_str!("../launch/slurm/train.sbatch");

/// The arguments of `orrery sweep slurm`.
#[derive(Args)]
pub struct SweepSlurmArgs {
    /// The sweep file (TOML; docs/sweeps.md).
    sweep: PathBuf,
    /// Where to write the array script [default: <sweep root>/sweep.sbatch].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also submit it (`sbatch`) and print the job id.
    #[arg(long)]
    submit: bool,
    /// sbatch options for every task, after `--`, written into the script
    /// as #SBATCH lines: e.g. `-- --nodes=1 --ntasks-per-node=2 --time=4:00:00`.
    #[arg(last = true)]
    sbatch: Vec<String>,
}

pub fn run_slurm(args: SweepSlurmArgs) -> Result<()> {
    let plan = Plan::load(&args.sweep)?;
    let lines = sbatch_lines(&args.sbatch)?;
    let cwd = std::env::current_dir().context("finding the current directory")?;
    let root = cwd.join(&plan.root);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let template = root.join("train.sbatch");
    std::fs::write(&template, TRAIN_SBATCH)
        .with_context(|| format!("writing {}", template.display()))?;
    let script = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("sweep.sbatch"));
    let exe = std::env::current_exe().context("finding the orrery binary")?;
    let text = array_script(&plan, &cwd, &exe, &template, &lines);
    std::fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
    println!(
        "wrote {} ({} array tasks, one per run; each runs {})",
        script.display(),
        plan.runs.len(),
        template.display()
    );
    if !args.submit {
        println!(
            "submit it with: sbatch {}",
            shell_word(&script.display().to_string())
        );
        return Ok(());
    }
    let out = std::process::Command::new("sbatch")
        .arg("--parsable")
        .arg(&script)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run sbatch ({e}): is this a Slurm login node?"))?;
    if !out.status.success() {
        bail!(
            "sbatch refused {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let id = String::from_utf8_lossy(&out.stdout);
    let id = id.trim().split(';').next().unwrap_or_default();
    println!(
        "submitted job array {id}: `squeue -j {id}`; logs {}/slurm-{id}_<task>.out",
        root.display()
    );
    Ok(())
}

/// `--key value`, `--key=value` and `-k value` options as #SBATCH lines.
fn sbatch_lines(opts: &[String]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut i = 0;
    while i < opts.len() {
        let opt = &opts[i];
        if !opt.starts_with('-') {
            bail!("sbatch option {opt:?}: options after `--` start with - (e.g. --nodes=2)");
        }
        match opts.get(i + 1) {
            Some(value) if !opt.contains('=') && !value.starts_with('-') => {
                let joint = if opt.starts_with("--") { "=" } else { " " };
                lines.push(format!("{opt}{joint}{value}"));
                i += 2;
            }
            _ => {
                lines.push(opt.clone());
                i += 1;
            }
        }
    }
    Ok(lines)
}

/// The array script: task i trains run i of `plan` from `cwd`.
fn array_script(plan: &Plan, cwd: &Path, exe: &Path, template: &Path, sbatch: &[String]) -> String {
    let root = cwd.join(&plan.root);
    let q = |p: &Path| shell_word(&p.display().to_string());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "#!/usr/bin/env bash\n\
         # The sweep {name} ({file}) as a Slurm job array, written by\n\
         # `orrery sweep slurm`: task i trains run i through {template}\n\
         # (a copy of launch/slurm/train.sbatch), which resumes a run from its\n\
         # checkpoint and requeues the task when a signal stopped it with one.\n\
         # Submit: sbatch <this file>",
        name = plan.name,
        file = plan.file.display(),
        template = template.display(),
    );
    let _ = writeln!(s, "#SBATCH --job-name=orrery-{}", plan.name);
    let _ = writeln!(s, "#SBATCH --array=0-{}", plan.runs.len().saturating_sub(1));
    let _ = writeln!(s, "#SBATCH --output={}/slurm-%A_%a.out", root.display());
    let _ = writeln!(s, "#SBATCH --open-mode=append");
    let _ = writeln!(s, "#SBATCH --requeue");
    let _ = writeln!(s, "#SBATCH --signal=USR1@180");
    for line in sbatch {
        let _ = writeln!(s, "#SBATCH {line}");
    }
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(s, "cd {}", q(cwd));
    let _ = writeln!(s, "export ORRERY=${{ORRERY:-{}}}", q(exe));
    let _ = writeln!(
        s,
        "task=${{SLURM_ARRAY_TASK_ID:?submit this file with sbatch}}"
    );
    let _ = writeln!(s, "case $task in");
    for (i, run) in plan.runs.iter().enumerate() {
        let args: Vec<String> = plan.train_args(run)[1..]
            .iter()
            .map(|a| shell_word(a))
            .collect();
        let _ = writeln!(
            s,
            "  {i}) name={} args=({}) ;;",
            shell_word(&run.name),
            args.join(" ")
        );
    }
    let _ = writeln!(s, "  *) echo \"no run $task in this sweep\" >&2; exit 2 ;;");
    let _ = writeln!(s, "esac");
    let _ = writeln!(
        s,
        "echo \"sweep {}: task $task of {}: run $name\"",
        plan.name,
        plan.runs.len()
    );
    let _ = writeln!(s, "exec bash {} \"${{args[@]}}\"", q(template));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_options_become_lines() {
        let opts: Vec<String> = [
            "--nodes",
            "2",
            "--ntasks-per-node=4",
            "--exclusive",
            "-t",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            sbatch_lines(&opts).unwrap(),
            ["--nodes=2", "--ntasks-per-node=4", "--exclusive", "-t 10"]
        );
        assert!(sbatch_lines(&["nodes".into()]).is_err());
    }
}
