//! Sweeps: a 2 x 2 grid planned, trained two at a time, skipped when
//! finished, reported; a bad key refused before anything runs; an
//! interrupted sweep resumes only its unfinished runs, to the weights of
//! an uninterrupted run.
use std::path::Path;

use super::dist::assert_same_checkpoint;
use super::{ok, orrery, tiny_dir, user_error};

const GRID: &str = r#"
base = "tiny.toml"
name = "grid"
[set]
"run.steps" = 4
"checkpoint.every" = 2
"logging.eval_every" = 2
[grid]
"optim.lr" = [1e-3, 3e-4]
"model.depth" = [1, 2]
"#;

const RUNS: [&str; 4] = [
    "lr=0.001_depth=1",
    "lr=0.001_depth=2",
    "lr=0.0003_depth=1",
    "lr=0.0003_depth=2",
];

/// The checkpoint `latest` names in a run directory.
fn latest(run_dir: &Path) -> String {
    let path = run_dir.join("checkpoints/latest");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The words of a command line as `sweep plan` prints it (single quotes).
fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '\'' => (quoted, any) = (!quoted, true),
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

#[test]
fn a_grid_is_planned_trained_skipped_and_reported() {
    let dir = tiny_dir("sweep");
    std::fs::write(dir.join("grid.toml"), GRID).unwrap();
    let plan = ok(orrery(&["sweep", "plan", "grid.toml"], &dir));
    for run in RUNS {
        assert!(
            plan.contains(&format!("runs/grid/{run}  not started")),
            "{plan}"
        );
    }
    assert_eq!(
        plan.matches("orrery train tiny.toml --set run.steps=4")
            .count(),
        4,
        "{plan}"
    );

    let out = ok(orrery(
        &["sweep", "run", "grid.toml", "--parallel", "2"],
        &dir,
    ));
    assert!(out.contains("4 ok, 0 skipped"), "{out}");
    for run in RUNS {
        assert_eq!(
            latest(&dir.join("runs/grid").join(run)),
            "step_00000004",
            "{run}"
        );
        let log =
            std::fs::read_to_string(dir.join("runs/grid").join(run).join("sweep.log")).unwrap();
        assert!(log.contains("trained steps 0..4"), "{run}: {log}");
    }

    // Again: every run is finished, nothing trains.
    let log_len = || {
        std::fs::metadata(dir.join("runs/grid").join(RUNS[0]).join("sweep.log"))
            .unwrap()
            .len()
    };
    let before = log_len();
    let again = ok(orrery(
        &["sweep", "run", "grid.toml", "--parallel", "2"],
        &dir,
    ));
    assert_eq!(again.matches("skip  ").count(), 4, "{again}");
    assert!(again.contains("nothing to train"), "{again}");
    assert_eq!(log_len(), before, "a finished run was started again");
    let plan = ok(orrery(&["sweep", "plan", "grid.toml"], &dir));
    assert_eq!(plan.matches("  finished").count(), 4, "{plan}");

    let table = ok(orrery(
        &["report", "grid.toml", "--sort", "heldout_loss_ema"],
        &dir,
    ));
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| lr=")).count(),
        4,
        "{table}"
    );
    let csv = ok(orrery(&["report", "grid.toml", "--csv"], &dir));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[0].starts_with("run,lr,depth,step,loss,heldout_loss,heldout_loss_ema"),
        "{csv}"
    );
    for (line, run) in lines[1..].iter().zip(RUNS) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!((fields[0], fields[3]), (run, "4"), "{csv}");
        assert!(
            fields[6].parse::<f64>().is_ok(),
            "no EMA held-out loss: {csv}"
        );
    }

    // An unknown config key in [grid]: exit code 2 before anything runs.
    std::fs::write(
        dir.join("typo.toml"),
        GRID.replace("name = \"grid\"", "name = \"typo\"")
            .replace("model.depth", "model.dpth"),
    )
    .unwrap();
    let e = user_error(orrery(&["sweep", "run", "typo.toml"], &dir), "model.dpth");
    assert!(
        e.contains("typo.toml: run lr=0.001_dpth=1") && e.contains("did you mean model.depth"),
        "{e}"
    );
    assert!(!dir.join("runs/typo").exists(), "a run directory was made");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_interrupted_sweep_resumes_only_its_unfinished_runs() {
    let dir = tiny_dir("sweep-resume");
    std::fs::write(dir.join("grid.toml"), GRID).unwrap();
    let plan = ok(orrery(&["sweep", "plan", "grid.toml"], &dir));
    let commands: Vec<Vec<String>> = plan
        .lines()
        .filter_map(|l| l.strip_prefix("  orrery "))
        .map(words)
        .collect();
    assert_eq!(commands.len(), 4, "{plan}");
    let train = |args: &[String], extra: &[&str]| {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(extra);
        ok(orrery(&all, &dir))
    };
    // The first run finished by hand, the second stopped half-way, and
    // the second again, uninterrupted, elsewhere.
    train(&commands[0], &[]);
    train(&commands[1], &["--stop-after", "2"]);
    let mut straight = commands[1].clone();
    *straight.last_mut().unwrap() = "straight".into();
    train(&straight, &[]);
    let plan = ok(orrery(&["sweep", "plan", "grid.toml"], &dir));
    assert!(plan.contains(&format!("{}  finished", RUNS[0])), "{plan}");
    assert!(
        plan.contains(&format!("{}  at step 2 of 4", RUNS[1])),
        "{plan}"
    );

    let out = ok(orrery(&["sweep", "run", "grid.toml"], &dir));
    assert!(
        out.contains(&format!("skip  {}: finished", RUNS[0])),
        "{out}"
    );
    assert!(
        out.contains(&format!("start {} (at step 2 of 4)", RUNS[1])),
        "{out}"
    );
    assert!(out.contains("3 ok, 1 skipped"), "{out}");
    assert!(!dir
        .join("runs/grid")
        .join(RUNS[0])
        .join("sweep.log")
        .exists());
    let log =
        std::fs::read_to_string(dir.join("runs/grid").join(RUNS[1]).join("sweep.log")).unwrap();
    assert!(
        log.contains("resuming from") && log.contains("trained steps 2..4"),
        "{log}"
    );
    for run in RUNS {
        assert_eq!(
            latest(&dir.join("runs/grid").join(run)),
            "step_00000004",
            "{run}"
        );
    }
    assert_same_checkpoint(
        &dir.join("straight/checkpoints/step_00000004"),
        &dir.join("runs/grid")
            .join(RUNS[1])
            .join("checkpoints/step_00000004"),
        "a run resumed by the sweep vs an uninterrupted one",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_stops_a_sweep_with_checkpoints_and_the_same_command_resumes_it() {
    let dir = tiny_dir("sweep-signal");
    let sweep = r#"
base = "tiny.toml"
name = "stop"
[set]
"run.steps" = 100
"checkpoint.every" = 1000
[grid]
"optim.lr" = [1e-3, 3e-4, 1e-4]
"#;
    std::fs::write(dir.join("stop.toml"), sweep).unwrap();
    let args = ["sweep", "run", "stop.toml", "--parallel", "2"];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orrery"))
        .args(args)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once both running runs have logged step 4, Ctrl-C the sweep.
    let started = std::time::Instant::now();
    let logged = |run: &str| {
        std::fs::read_to_string(dir.join("runs/stop").join(run).join("metrics.jsonl"))
            .is_ok_and(|m| m.contains("\"step\":4,"))
    };
    while !(logged("lr=0.001") && logged("lr=0.0003")) {
        assert!(
            started.elapsed().as_secs() < 120,
            "the runs never reached step 4"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sweep ended before the signal"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // Both runs wrote a checkpoint and stopped: the sweep exits as a run does.
    assert_eq!(out.status.code(), Some(75), "{so}\n{se}");
    assert!(
        se.contains("interrupted 2 (")
            && se.contains("not started 1")
            && se.contains("again to resume"),
        "{se}"
    );
    assert!(
        !dir.join("runs/stop/lr=0.0001").exists(),
        "a run started after the signal"
    );
    for run in ["lr=0.001", "lr=0.0003"] {
        let step: u64 = latest(&dir.join("runs/stop").join(run))
            .trim_start_matches("step_")
            .parse()
            .unwrap();
        assert!((4..100).contains(&step), "{run} stopped at step {step}");
        assert!(
            so.contains(&format!(
                "stopped {run} (exit status: 75) at step {step} of 100"
            )),
            "{so}"
        );
    }
    // The same command resumes the two and trains the third.
    let again = ok(orrery(&args, &dir));
    assert!(
        again.contains("start lr=0.001 (at step ") && again.contains("3 ok"),
        "{again}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The real TensorBoard server over a two-run sweep, each run on 2 ranks
/// (tests/python/
/// tensorboard_http.py reads its HTTP API, as the browser does): each
/// run's scalars, the held-out loss per noise level, the rollout image
/// that `orrery sample` adds, and the HParams tab's swept key per run.
#[test]
fn tensorboard_serves_a_sweeps_scalars_images_and_hparams() {
    let dir = tiny_dir("sweep-tb");
    let two = r#"
base = "tiny.toml"
name = "two"
[set]
"run.steps" = 4
"checkpoint.every" = 2
"logging.eval_every" = 2
[grid]
"optim.lr" = [1e-3, 3e-4]
"#;
    std::fs::write(dir.join("two.toml"), two).unwrap();
    // Each run a 2-rank `orrery launch` (the sweep's `-- LAUNCH OPTIONS`).
    let ran = ok(orrery(
        &[
            "sweep",
            "run",
            "two.toml",
            "--parallel",
            "2",
            "--",
            "-n",
            "2",
        ],
        &dir,
    ));
    assert!(ran.contains("2 ok"), "{ran}");
    for run in ["lr=0.001", "lr=0.0003"] {
        let log = std::fs::read_to_string(dir.join(format!("runs/two/{run}/sweep.log"))).unwrap();
        assert!(
            log.contains("orrery launch -n 2 -- train")
                && log.contains("data parallel over 2 ranks"),
            "{log}"
        );
    }
    for run in ["lr=0.001", "lr=0.0003"] {
        let run_dir = format!("runs/two/{run}");
        let out = format!("{run_dir}/rollout.gif");
        ok(orrery(
            &["sample", "--checkpoint", &run_dir, "--out", &out],
            &dir,
        ));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tensorboard_http.py");
    let logdir = dir.join("runs/two");
    let (low, high) = ("loss_by_t/t=0.06", "loss_by_t/t=0.94");
    let got = super::python(&[
        script.to_str().unwrap(),
        logdir.to_str().unwrap(),
        "eval/heldout_loss",
        "train/loss",
        low,
        high,
    ]);
    let tb: serde_json::Value = serde_json::from_str(got.trim()).unwrap();
    let runs = ["lr=0.001/tensorboard", "lr=0.0003/tensorboard"];
    for run in runs {
        let scalars = &tb["scalars"][run];
        let steps = |tag: &str| -> Vec<u64> {
            let points = scalars[tag]
                .as_array()
                .unwrap_or_else(|| panic!("{run} {tag}: {tb}"));
            points.iter().map(|p| p[0].as_u64().unwrap()).collect()
        };
        assert_eq!(steps("eval/heldout_loss"), [0, 2, 4], "{tb}");
        assert_eq!(steps("train/loss"), [2, 4], "{tb}");
        // The per-level loss at each evaluation. A fresh adaLN-Zero model
        // predicts 0, so at step 0 its velocity loss |eps - x_0|^2 is the
        // same at every level (and equals the held-out loss, whose noise is
        // the same); once trained, the levels differ.
        assert_eq!(steps(low), [0, 2, 4], "{tb}");
        let at = |tag: &str, i: usize| scalars[tag][i][1].as_f64().unwrap();
        let heldout_0 = at("eval/heldout_loss", 0);
        assert!(
            (at(low, 0) - heldout_0).abs() < 1e-6 && (at(high, 0) - heldout_0).abs() < 1e-6,
            "{run}: {tb}"
        );
        assert!(at(low, 2) != at(high, 2), "{run}: {tb}");
        assert!(
            tb["images"][run]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "rollout/real_above_generated")),
            "{run}: {tb}"
        );
        let session = &tb["sessions"][run];
        assert_eq!(session["status"], "STATUS_SUCCESS", "{tb}");
        let lr = session["optim.lr"].as_f64().unwrap();
        assert!(
            (lr - if run.starts_with("lr=0.001") {
                1e-3
            } else {
                3e-4
            })
            .abs()
                < 1e-12,
            "{run}: {tb}"
        );
    }
    assert_eq!(tb["hparams"], serde_json::json!(["optim.lr"]), "{tb}");
    let metrics = tb["metrics"].to_string();
    assert!(
        metrics.contains("eval/heldout_loss") && metrics.contains(low),
        "{tb}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
