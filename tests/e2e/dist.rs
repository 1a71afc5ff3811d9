//! Multi-rank runs: DDP over mpirun equals one process (also with
//! micro-batches and elastic resume; FSDP in [`super::fsdp`]), Slurm across
//! two node names, a killed or hung rank ends the job, a lone failing rank
//! aborts it.
use std::path::Path;
use std::process::{Command, Output};

use super::{ok, orrery, python, tiny_dir, user_error};

/// Assert two checkpoint directories hold the same model, EMA and AdamW
/// state up to float reduction order (measured: 1.2e-7 for weights of ~3).
pub(super) fn assert_same_checkpoint(a: &Path, b: &Path, what: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/compare_ckpt.py");
    let diff = python(&[
        script.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let d: serde_json::Value = serde_json::from_str(diff.trim()).unwrap();
    for part in ["model", "ema", "optimizer"] {
        let v = d[part].as_f64().unwrap();
        assert!(v < 1e-5, "{what}: {part} differs by {v}: {diff}");
    }
}

/// Assert two checkpoint directories hold bitwise the same model, EMA and
/// AdamW state: the same run on the same number of ranks, interrupted or
/// not, takes the same arithmetic.
pub(super) fn assert_bitwise_checkpoint(a: &Path, b: &Path, what: &str) {
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let read = |d: &Path| {
            std::fs::read(d.join(file)).unwrap_or_else(|e| panic!("{what}: {}: {e}", d.display()))
        };
        assert!(read(a) == read(b), "{what}: {file} differs");
    }
}

/// `orrery launch -n N -- train tiny.toml --run-dir RUN EXTRA...` in `dir`,
/// which must succeed; returns its output.
pub(super) fn launch_train(dir: &Path, n: &str, run: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "launch",
        "-n",
        n,
        "--",
        "train",
        "tiny.toml",
        "--run-dir",
        run,
    ];
    args.extend(extra);
    ok(orrery(&args, dir))
}

/// The logged training losses of run directory `run` under `dir`.
pub(super) fn losses(dir: &Path, run: &str) -> Vec<f64> {
    std::fs::read_to_string(dir.join(run).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect()
}

/// The launched ranks' processes of a run, by rank (read from their environment).
fn rank_pids(rank: &str, run: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let is_train = String::from_utf8_lossy(&cmdline).contains(run);
        let is_rank = env
            .split(|&b| b == 0)
            .any(|kv| kv == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes());
        if is_train && is_rank {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn ddp_over_mpi_matches_one_process_and_a_lost_rank_ends_the_job() {
    let dir = tiny_dir("ddp");
    let selftest = ok(orrery(
        &["launch", "-n", "4", "--", "dist", "selftest"],
        &dir,
    ));
    // OpenMPI gives MPI_THREAD_MULTIPLE, so every rank checks the gather
    // lane (FSDP's prefetch) on a helper thread beside an all_reduce.
    assert_eq!(
        selftest
            .matches("barrier and the gather lane beside an all_reduce ok")
            .count(),
        4,
        "{selftest}"
    );
    assert_eq!(selftest.matches("all_to_all").count(), 4, "{selftest}");
    let bench = ok(orrery(
        &[
            "launch",
            "-n",
            "2",
            "--",
            "bench",
            "comm",
            "--sizes-mb",
            "0.01",
            "--iters",
            "2",
        ],
        &dir,
    ));
    assert_eq!(bench.matches("| all_reduce |").count(), 1, "{bench}");
    user_error(orrery(&["bench", "comm"], &dir), "orrery launch -n 2");

    ok(orrery(&["train", "tiny.toml", "--run-dir", "one"], &dir));
    let single = dir.join("one/checkpoints/step_00000006");
    // 2 and 4 ranks, and 2 with gradient accumulation over 1-clip micro-batches.
    for (n, micro) in [("2", "0"), ("4", "0"), ("2", "1")] {
        let run = format!("ranks{n}micro{micro}");
        let set = format!("data.micro_batch={micro}");
        let out = launch_train(&dir, n, &run, &["--set", &set]);
        // Only rank 0 prints the summary and writes the run directory.
        assert_eq!(out.matches("trained steps").count(), 1, "{out}");
        assert_same_checkpoint(
            &single,
            &dir.join(&run).join("checkpoints/step_00000006"),
            &format!("{n} ranks vs one process"),
        );
        assert_eq!(losses(&dir, "one").len(), losses(&dir, &run).len());
        for (a, b) in losses(&dir, "one").iter().zip(losses(&dir, &run)) {
            assert!((a - b).abs() < 1e-5, "{n} ranks: loss {b} vs {a}");
        }
    }

    // Elastic resume: stop after 3 steps on 4 ranks and finish on 2, and
    // from 1 rank to 4; both end where the uninterrupted single run ends.
    for (first, second, run) in [("4", "2", "elastic42"), ("1", "4", "elastic14")] {
        for (n, extra) in [(first, &["--stop-after", "3"][..]), (second, &[][..])] {
            launch_train(&dir, n, run, extra);
        }
        assert_same_checkpoint(
            &single,
            &dir.join(run).join("checkpoints/step_00000006"),
            &format!("{run} vs one process"),
        );
    }

    // The data order (clip ids per step) is the same on any number of
    // ranks and across elastic resumes; an epoch uses every training clip
    // once.
    let order = |run: &str| std::fs::read_to_string(dir.join(run).join("samples.jsonl")).unwrap();
    let one = order("one");
    assert_eq!(one.lines().count(), 6, "{one}");
    for run in ["ranks2micro0", "ranks4micro0", "elastic42", "elastic14"] {
        assert_eq!(order(run), one, "data order of {run}");
    }
    let mut epoch0: Vec<String> = one
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["epoch"] == 0)
        .flat_map(|v| {
            v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(epoch0.len(), 20, "5 batches of 4 from 20 training clips");
    epoch0.sort();
    epoch0.dedup();
    assert_eq!(epoch0.len(), 20, "an id repeats within epoch 0");

    // Streaming (row groups read as needed, block + shuffle-buffer order):
    // 4 ranks stopped after 3 steps and finished on 2 take the same global
    // rows, and end with the same weights, as one process streaming alone.
    let stream = [
        "--set",
        "data.streaming=true",
        "--set",
        "data.shuffle_buffer=8",
    ];
    ok(orrery(
        &[
            &["train", "tiny.toml", "--run-dir", "stream1"][..],
            &stream[..],
        ]
        .concat(),
        &dir,
    ));
    launch_train(
        &dir,
        "4",
        "stream42",
        &[&stream[..], &["--stop-after", "3"]].concat(),
    );
    launch_train(&dir, "2", "stream42", &stream);
    assert_same_checkpoint(
        &dir.join("stream1/checkpoints/step_00000006"),
        &dir.join("stream42/checkpoints/step_00000006"),
        "streaming 4 -> 2 ranks vs one process",
    );
    let streamed = order("stream1");
    assert_eq!(
        order("stream42"),
        streamed,
        "streamed data order, 4 -> 2 ranks"
    );
    let rows: Vec<u64> = streamed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["epoch"] == 0)
        .flat_map(|v| {
            v["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_u64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut unique = rows.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        (rows.len(), unique.len()),
        (20, 20),
        "5 batches of 4 rows, none twice: {rows:?}"
    );
    assert!(
        rows.iter().all(|&r| r < 20),
        "held-out rows (the last 4) never trained on: {rows:?}"
    );
    // A streamed run rolls out from the held-out rows read alone.
    let rolled = ok(orrery(
        &["sample", "--checkpoint", "stream1", "--out", "stream.gif"],
        &dir,
    ));
    assert!(rolled.contains("rollout of 2 held-out clips"), "{rolled}");

    user_error(
        orrery(&["train", "tiny.toml", "--set", "data.micro_batch=3"], &dir),
        "data.micro_batch = 3 does not divide",
    );
    // A rank that fails alone (rank 0 cannot create the run directory: a
    // file is in the way) ends the job at once instead of leaving rank 1
    // waiting in a collective until the 600 s deadline.
    std::fs::write(dir.join("in_the_way"), "x").unwrap();
    let t0 = std::time::Instant::now();
    let err = user_error(
        orrery(
            &[
                "launch",
                "-n",
                "2",
                "--",
                "train",
                "tiny.toml",
                "--run-dir",
                "in_the_way",
            ],
            &dir,
        ),
        "[rank 0 of 2] error:",
    );
    assert!(
        t0.elapsed().as_secs() < 60,
        "took {:?}: {err}",
        t0.elapsed()
    );
    assert!(err.contains("in_the_way"), "{err}");

    // A batch that does not split over the ranks is refused by every rank.
    let err = user_error(
        orrery(&["launch", "-n", "3", "--", "train", "tiny.toml"], &dir),
        "does not split evenly over 3 ranks",
    );
    // mpirun ends the job at the first failing rank: at least one rank says it.
    assert!(err.contains(" of 3] error:"), "{err}");

    // Kill rank 1 of a long run: the job must end, non-zero, naming rank 1.
    let (out, waited) = stop_rank_one(&dir, "killme", "KILL", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job survived a lost rank");
    assert!(waited < 60.0, "the job took {waited} s to end");
    assert!(stderr.contains("rank 1"), "{stderr}");

    // Stop (hang) rank 1: rank 0's collective deadline ends the job.
    let (out, waited) = stop_rank_one(
        &dir,
        "hangme",
        "SIGSTOP",
        &["--set", "parallel.timeout_s=5"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job survived a hung rank");
    assert!(
        waited < 60.0,
        "the job took {waited} s to end after the hang"
    );
    // Rank 0 names the stopped peer from the heartbeats in the run directory.
    assert!(
        stderr.contains("[rank 0 of 2]") && stderr.contains("rank 1 has been silent for"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Start `orrery launch -n 2 -- train tiny.toml --run-dir RUN EXTRA...` in
/// `dir` without waiting for it, its output piped.
pub(super) fn spawn_launch_train(dir: &Path, run: &str, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_orrery"))
        .args([
            "launch",
            "-n",
            "2",
            "--",
            "train",
            "tiny.toml",
            "--run-dir",
            run,
        ])
        .args(extra)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Start a 2-rank run in `run`, send `signal` to rank 1 once it trains, and
/// return the job's output and the seconds it took to end after the signal.
fn stop_rank_one(dir: &Path, run: &str, signal: &str, extra: &[&str]) -> (Output, f64) {
    let child = spawn_launch_train(dir, run, &[&["--set", "run.steps=100000"], extra].concat());
    let started = std::time::Instant::now();
    while !dir.join(run).join("metrics.jsonl").is_file() {
        assert!(
            started.elapsed().as_secs() < 120,
            "the 2-rank run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let victims = rank_pids("1", run);
    assert_eq!(victims.len(), 1, "rank 1's process: {victims:?}");
    Command::new("kill")
        .args([&format!("-{signal}"), &victims[0].to_string()])
        .status()
        .unwrap();
    let at = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    (out, at.elapsed().as_secs_f64())
}

/// A real one-host Slurm cluster with two node names (tests/slurm/cluster.sh):
/// launch/slurm/train.sbatch runs 2 tasks on each node and must end with the
/// same weights as a 4-rank mpirun of the same config.
#[test]
fn slurm_sbatch_across_two_nodes_matches_mpirun() {
    let dir = tiny_dir("slurm");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let state = dir.join("cluster");
    let cluster = root.join("tests/slurm/cluster.sh");
    let start = Command::new("bash")
        .arg(&cluster)
        .arg("start")
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "cluster did not start:\n{}{}",
        String::from_utf8_lossy(&start.stdout),
        String::from_utf8_lossy(&start.stderr)
    );
    let conf = state.join("slurm.conf");
    let job = Command::new("timeout")
        .args([
            "300",
            "sbatch",
            "--wait",
            "--nodes",
            "2",
            "--ntasks-per-node",
            "2",
        ])
        .arg(root.join("launch/slurm/train.sbatch"))
        .args(["tiny.toml", "--run-dir", "slurm"])
        .current_dir(&dir)
        .env("SLURM_CONF", &conf)
        .env("ORRERY", env!("CARGO_BIN_EXE_orrery"))
        // One host: OpenMPI's shared-memory transport fails across the fake nodes.
        .env("OMPI_MCA_btl", "self,tcp")
        .output()
        .unwrap();
    let log: String = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("orrery-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let requeued = requeue_mid_run(&dir, &root.join("launch/slurm/train.sbatch"), &conf);
    let array = super::slurm_sweep::sweep_array(&dir, &conf);
    let limited = super::slurm_sweep::time_limit_requeue(
        &dir,
        &conf,
        &root.join("launch/slurm/train.sbatch"),
    );
    let stop = Command::new("bash")
        .arg(&cluster)
        .arg("stop")
        .arg(&state)
        .status();
    assert!(
        job.status.success(),
        "sbatch failed ({}): {}{}\njob log:\n{log}",
        job.status,
        String::from_utf8_lossy(&job.stdout),
        String::from_utf8_lossy(&job.stderr)
    );
    assert!(stop.unwrap().success());
    assert!(log.contains("2 nodes") && log.contains("4 tasks"), "{log}");
    assert_eq!(log.matches("trained steps 0..6").count(), 1, "{log}");

    launch_train(&dir, "4", "mpirun", &[]);
    assert_same_checkpoint(
        &dir.join("mpirun/checkpoints/step_00000006"),
        &dir.join("slurm/checkpoints/step_00000006"),
        "slurm vs mpirun",
    );

    // The requeued job ran twice, resumed from a checkpoint the second
    // time, and ends where an uninterrupted run ends.
    let log = requeued.unwrap_or_else(|e| panic!("requeue: {e}"));
    assert!(
        log.contains("restart 0") && log.contains("restart 1"),
        "{log}"
    );
    assert!(
        log.contains("resuming from requeued/checkpoints/step_"),
        "{log}"
    );
    assert_eq!(
        log.matches("trained steps").count(),
        1,
        "one run finished: {log}"
    );
    launch_train(&dir, "4", "straight", &["--set", "run.steps=30"]);
    assert_same_checkpoint(
        &dir.join("straight/checkpoints/step_00000030"),
        &dir.join("requeued/checkpoints/step_00000030"),
        "requeued slurm job vs an uninterrupted mpirun",
    );

    // `orrery sweep slurm`: one array task per run, each a 2-rank job,
    // ending with the weights of the same run under `orrery launch -n 2`.
    let logs = array.unwrap_or_else(|e| panic!("sweep array: {e}"));
    for task in ["task 0 of 2: run lr=0.001", "task 1 of 2: run lr=0.0003"] {
        assert!(logs.contains(&format!("sweep array: {task}")), "{logs}");
    }
    assert_eq!(
        logs.matches("data parallel over 2 ranks").count(),
        2,
        "{logs}"
    );
    assert_eq!(logs.matches("trained steps 0..6").count(), 2, "{logs}");
    for lr in ["0.001", "0.0003"] {
        let run = format!("launched-{lr}");
        let set_lr = format!("optim.lr={lr}");
        launch_train(&dir, "2", &run, &["--set", "run.steps=6", "--set", &set_lr]);
        assert_bitwise_checkpoint(
            &dir.join(&run).join("checkpoints/step_00000006"),
            &dir.join(format!("runs/array/lr={lr}/checkpoints/step_00000006")),
            "a sweep's array task vs orrery launch",
        );
    }

    // A time limit shorter than the training: Slurm's SIGUSR1, a
    // checkpoint, exit 75, a requeue, a resume, and the weights of an
    // uninterrupted run.
    let log = limited.unwrap_or_else(|e| panic!("time limit: {e}"));
    assert!(
        log.contains("SIGUSR1 received: finishing this step")
            && log.contains("stopped with a checkpoint (exit 75); requeueing")
            && log.contains("restart 1")
            && log.contains("resuming from limited/checkpoints/step_"),
        "{log}"
    );
    let at = log
        .split(" after step ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no stop step in {log}"));
    assert!((1..4000).contains(&at), "stopped at {at}: {log}");
    assert_eq!(log.matches("trained steps").count(), 1, "{log}");
    launch_train(&dir, "2", "unlimited", &super::slurm_sweep::LIMITED_RUN);
    assert_bitwise_checkpoint(
        &dir.join("unlimited/checkpoints/step_00004000"),
        &dir.join("limited/checkpoints/step_00004000"),
        "a job stopped by its time limit and requeued vs an uninterrupted run",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Submit a 30-step job, requeue it (`scontrol requeue`, as a preemption
/// or node failure would) once it has written a checkpoint, let it start
/// again at once (Slurm holds requeued jobs for two minutes), and return
/// the job's log when it completes.
fn requeue_mid_run(dir: &Path, sbatch: &Path, conf: &Path) -> Result<String, String> {
    use super::slurm_sweep::{slurm, wait};
    let run = |cmd: &str, args: &[&str]| slurm(dir, conf, cmd, args);
    let id = run(
        "sbatch",
        &[
            "--parsable",
            "--nodes",
            "2",
            "--ntasks-per-node",
            "2",
            sbatch.to_str().unwrap(),
            "tiny.toml",
            "--run-dir",
            "requeued",
            "--set",
            "run.steps=30",
        ],
    )?;
    let id = id.trim().split(';').next().unwrap_or("").to_string();
    let latest = dir.join("requeued/checkpoints/latest");
    wait("a first checkpoint", 120, || latest.is_file())?;
    run("scontrol", &["requeue", &id])?;
    let requeued_at = std::time::Instant::now();
    let job = format!("JobId={id}");
    let state = || run("scontrol", &["show", "job", &id]).unwrap_or_default();
    // Not in the same seconds as the requeue: slurmd refuses a credential
    // issued then as revoked ("Job credential revoked", the job fails),
    // which is what Slurm's two-minute hold of requeued jobs avoids.
    wait("the requeued job to become pending", 60, || {
        requeued_at.elapsed().as_secs() >= 3
            && state().contains("JobState=PENDING")
            && run("scontrol", &["update", &job, "StartTime=now"]).is_ok()
    })?;
    wait("the job to finish", 180, || {
        let s = state();
        s.contains("JobState=COMPLETED") || s.contains("JobState=FAILED")
    })?;
    let log = std::fs::read_to_string(dir.join(format!("orrery-{id}.out")))
        .map_err(|e| format!("the job's log: {e}"))?;
    if !state().contains("JobState=COMPLETED") {
        return Err(format!("the job failed:\n{log}"));
    }
    Ok(log)
}
