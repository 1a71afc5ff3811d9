//! A new user's first hour: every class of rough edge found by trying the
//! README's commands with tiny inputs and the usual mistakes.
use std::path::Path;
use std::process::{Command, Stdio};

use super::{ok, orrery, scratch, tiny_dir, user_error, TINY};

/// No path the user names is replaced when it is not a regular file, and
/// missing parent folders are made.
#[test]
fn writes_to_special_or_missing_paths() {
    let dir = tiny_dir("paths");
    train_tiny(&dir, "run", 3);
    for dev in ["/dev/null", "/dev/full"] {
        user_error(
            orrery(&["ckpt", "export", "run", "--out", dev], &dir),
            "is a character device, not a regular file",
        );
        use std::os::unix::fs::FileTypeExt;
        let kind = std::fs::metadata(dev).unwrap().file_type();
        assert!(kind.is_char_device(), "{dev} is still a device");
    }
    std::fs::create_dir_all(dir.join("adir.gif")).unwrap();
    user_error(
        orrery(
            &["sample", "--checkpoint", "run", "--out", "adir.gif"],
            &dir,
        ),
        "is a directory",
    );
    user_error(
        orrery(&["ckpt", "export", "run", "--out", "run"], &dir),
        "is a directory",
    );
    let out = ok(orrery(
        &["ckpt", "export", "run", "--out", "exp/deep/m.safetensors"],
        &dir,
    ));
    assert!(out.contains("wrote"), "{out}");
    assert!(dir.join("exp/deep/m.safetensors").is_file());
    ok(orrery(
        &["sample", "--checkpoint", "run", "--out", "pics/a/r.png"],
        &dir,
    ));
    assert!(dir.join("pics/a/r.png").is_file());
    std::fs::write(dir.join("afile"), b"x").unwrap();
    user_error(
        orrery(
            &[
                "data", "synth", "--out", "afile", "--clips", "2", "--frames", "2",
            ],
            &dir,
        ),
        "not a folder",
    );
    user_error(
        orrery(&["train", "tiny.toml", "--run-dir", "afile"], &dir),
        "not a directory",
    );
    user_error(
        orrery(&["data", "index", "data", "--cache", "/dev/null"], &dir),
        "not a regular file",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fresh run never mixes with, or prunes, another run's checkpoints; a
/// missing `latest` falls back to the newest complete checkpoint; a resume
/// names the config keys it changes and refuses the ones it cannot take.
#[test]
fn run_directory_reuse_and_pruning() {
    let dir = tiny_dir("reuse");
    let steps = |n: u32| format!("run.steps={n}");
    // `orrery train tiny.toml --run-dir run` and more arguments.
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "tiny.toml", "--run-dir", "run"];
        args.extend_from_slice(extra);
        orrery(&args, &dir)
    };
    ok(train(&["--set", &steps(5), "--set", "checkpoint.every=1"]));
    let e = user_error(
        train(&["--resume", "never"]),
        "holds the checkpoints of another run (newest: step 5)",
    );
    assert!(e.contains("--overwrite"), "{e}");
    let listing = |p: &str| {
        let mut v: Vec<String> = std::fs::read_dir(dir.join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        listing("run/checkpoints"),
        ["latest", "step_00000004", "step_00000005"]
    );
    user_error(train(&["--overwrite"]), "use it with --resume never");
    ok(train(&[
        "--resume",
        "never",
        "--overwrite",
        "--set",
        &steps(3),
        "--set",
        "checkpoint.every=1",
    ]));
    assert_eq!(
        listing("run/checkpoints"),
        ["latest", "step_00000002", "step_00000003"]
    );
    let aside: Vec<String> = listing("run")
        .into_iter()
        .filter(|n| n.starts_with("replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", listing("run"));
    assert_eq!(
        listing(&format!("run/{}/checkpoints", aside[0])),
        ["latest", "step_00000004", "step_00000005"],
        "the old run is kept whole"
    );

    // Resuming from an earlier step: pruning keeps `keep` checkpoints up to
    // the step written and never touches later ones (here a stand-in for
    // a checkpoint of the trajectory the resume abandons).
    copy_dir(
        &dir.join("run/checkpoints/step_00000003"),
        &dir.join("run/checkpoints/step_00000007"),
    );
    ok(train(&[
        "--resume",
        "run/checkpoints/step_00000002",
        "--set",
        &steps(6),
        "--set",
        "checkpoint.keep=1",
        "--stop-after",
        "1",
    ]));
    assert_eq!(
        listing("run/checkpoints"),
        ["latest", "step_00000003", "step_00000007"]
    );
    std::fs::remove_dir_all(dir.join("run/checkpoints/step_00000007")).unwrap();

    // A fresh run in a folder whose old run stopped before any checkpoint:
    // its records start afresh (one step-0 line, this run's).
    std::fs::create_dir_all(dir.join("early")).unwrap();
    std::fs::write(
        dir.join("early/metrics.jsonl"),
        "{\"step\":0,\"heldout_loss\":9.0}\n",
    )
    .unwrap();
    train_tiny(&dir, "early", 1);
    let metrics = std::fs::read_to_string(dir.join("early/metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"step\":0,"))
            .count(),
        1,
        "{metrics}"
    );
    assert!(!metrics.contains("\"heldout_loss\":9.0"), "{metrics}");

    // Without `latest`: the newest complete checkpoint, for train, sample and export.
    std::fs::remove_file(dir.join("run/checkpoints/latest")).unwrap();
    std::fs::create_dir_all(dir.join("run/checkpoints/step_00000009.tmp")).unwrap();
    ok(orrery(
        &["ckpt", "export", "run", "--out", "m.safetensors"],
        &dir,
    ));
    let out = ok(train(&["--set", &steps(4), "--set", "optim.lr=0.0005"]));
    assert!(out.contains("has no `latest`"), "{out}");
    assert!(
        out.contains("resuming from") && out.contains("at step 3"),
        "{out}"
    );
    assert!(
        out.contains("resuming with a changed config: ") && out.contains("optim.lr: "),
        "{out}"
    );
    let e = user_error(
        train(&["--set", &steps(6), "--set", "data.global_batch=8"]),
        "a resume cannot change data.global_batch (4 -> 8",
    );
    assert!(!e.contains("optim.lr"), "{e}");
    // The refused resume left the run's config as it was.
    let cfg = std::fs::read_to_string(dir.join("run/config.toml")).unwrap();
    assert!(cfg.contains("global_batch = 4"), "{cfg}");
    // A finished run says so instead of `trained steps 4..4`.
    let out = ok(train(&["--set", &steps(4), "--set", "optim.lr=0.0005"]));
    assert!(out.contains("had already reached step 4"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A closed pipe ends a command quietly.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let dir = tiny_dir("pipe");
    for args in [
        vec!["weights", "tiny.toml", "--bins", "20000"],
        vec!["data", "inspect", "data"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orrery"))
            .args(&args)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end at once, as `| head -0` does.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let se = String::from_utf8_lossy(&out.stderr);
        assert!(
            !se.contains("panicked") && !se.contains("Broken pipe"),
            "{args:?}: {se}"
        );
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.success() || out.status.signal() == Some(13),
            "{args:?}: {:?}",
            out.status
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What training refuses, `data inspect` and `data import` refuse too, and
/// `data synth` does not mix two datasets in one folder.
#[test]
fn inspect_refuses_what_train_refuses() {
    let dir = tiny_dir("agree");
    let e = user_error(
        orrery(
            &[
                "data", "synth", "--out", "data", "--clips", "4", "--frames", "6", "--size", "16",
                "16", "--seed", "1",
            ],
            &dir,
        ),
        "already holds 3 .parquet file(s)",
    );
    assert!(e.contains("choose a new --out, or add --overwrite"), "{e}");
    user_error(
        orrery(
            &["data", "synth", "--out", "other", "--clips-per-file", "0"],
            &dir,
        ),
        "--clips-per-file 0",
    );
    // The same clip ids twice: a copy of one file under another name.
    std::fs::copy(
        dir.join("data/part-00000.parquet"),
        dir.join("data/part-00009.parquet"),
    )
    .unwrap();
    let train = user_error(
        orrery(&["train", "tiny.toml", "--run-dir", "r"], &dir),
        "appears twice",
    );
    let inspect = user_error(orrery(&["data", "inspect", "data"], &dir), "appears twice");
    assert!(
        train.contains("clip id synth-000000") && inspect.contains("clip id synth-000000"),
        "{inspect}"
    );
    user_error(
        orrery(
            &[
                "data", "import", "--from", ".", "--out", "imp", "--scale", "nan",
            ],
            &dir,
        ),
        "--scale NaN",
    );
    user_error(
        orrery(
            &[
                "data", "import", "--from", ".", "--out", "imp", "--shift", "inf",
            ],
            &dir,
        ),
        "--shift inf",
    );
    // --overwrite deletes the old files only after the new ones are written:
    // an import that fails (no clip files in --from) leaves them all.
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    user_error(
        orrery(
            &[
                "data",
                "import",
                "--from",
                "empty",
                "--out",
                "data",
                "--overwrite",
            ],
            &dir,
        ),
        "empty",
    );
    assert!(
        dir.join("data/part-00000.parquet").is_file(),
        "the old dataset is kept"
    );
    // Paths print as the user gave them: absolute stays absolute.
    std::fs::remove_file(dir.join("data/part-00009.parquet")).unwrap();
    let abs = dir.join("data");
    let out = ok(orrery(&["data", "inspect", abs.to_str().unwrap()], &dir));
    assert!(
        out.contains(&format!("{}/part-00000.parquet", abs.display())),
        "{out}"
    );
    // The missing-data hint makes data the config trains on.
    let e = user_error(
        orrery(&["train", "tiny.toml", "--set", "data.url=nothing"], &dir),
        "no .parquet files found",
    );
    assert!(
        e.contains("--size 16 16") && e.contains("--frames 16"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `orrery sample` checks its arguments before any rollout.
#[test]
fn sample_checks_its_arguments() {
    let dir = tiny_dir("samplearg");
    train_tiny(&dir, "run", 2);
    let s = |extra: &[&str]| {
        let mut a = vec!["sample", "--checkpoint", "run"];
        a.extend_from_slice(extra);
        orrery(&a, &dir)
    };
    user_error(s(&["--out", "a.mp4"]), "a .gif");
    assert!(
        !dir.join("a.png").exists(),
        "nothing written for a refused --out"
    );
    user_error(s(&["--out", "a.gif", "--frames", "0"]), "--frames 0");
    user_error(s(&["--out", "a.gif", "--steps", "0"]), "--steps 0");
    user_error(
        s(&["--out", "a.gif", "--eta", "0.5"]),
        "use it with --sampler ddim",
    );
    user_error(
        s(&["--out", "/proc/none/a.gif"]),
        "cannot create its folder",
    );
    let out = ok(s(&["--out", "b.gif", "--sampler", "ddim", "--eta", "0.5"]));
    assert!(out.contains("wrote"), "{out}");
    // A run that samples with DDIM takes --eta without --sampler.
    ok(orrery(
        &[
            "train",
            "tiny.toml",
            "--run-dir",
            "ddim",
            "--set",
            "run.steps=1",
            "--set",
            "sample.sampler=ddim",
        ],
        &dir,
    ));
    ok(orrery(
        &[
            "sample",
            "--checkpoint",
            "ddim",
            "--out",
            "c.gif",
            "--eta",
            "0.5",
        ],
        &dir,
    ));
    let help = ok(orrery(&["sample", "--help"], &dir));
    assert!(
        help.contains("[default: the run's sample.frames]"),
        "{help}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Train tiny.toml in `dir` for `steps` steps into run directory `run`.
fn train_tiny(dir: &Path, run: &str, steps: u32) {
    let steps = format!("run.steps={steps}");
    ok(orrery(
        &["train", "tiny.toml", "--run-dir", run, "--set", &steps],
        dir,
    ));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// launch/setup.sh decides by Debian package name: on an image that ships
/// libclang-cpp14 (whose libclang-cpp.so.14 fooled a file glob) but not
/// libclang-dev, it installs libclang-dev.
#[test]
fn setup_checks_packages_by_name() {
    let dir = super::scratch("setup");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = |installed: &str| {
        // dpkg-query -W -f=FORMAT NAME: "ii " for the installed names.
        let script = format!(
            "#!/bin/sh\nfor p in {installed}; do [ \"$p\" = \"$4\" ] || [ \"$p\" = \"$3\" ] && {{ printf 'ii '; exit 0; }}; done\necho \"dpkg-query: no packages found matching $3\" >&2\nexit 1\n"
        );
        let path = bin.join("dpkg-query");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("launch/setup.sh");
    let run = || {
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let out = Command::new("bash")
            .arg(&setup)
            .arg("--print")
            .env("PATH", path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let image = "build-essential pkg-config openmpi-bin libopenmpi-dev libclang-cpp14 libclang1-14";
    fake(image);
    assert_eq!(run(), "libclang-dev\n");
    fake(&format!("{image} libclang-dev"));
    assert_eq!(run(), "");
    fake("");
    assert_eq!(
        run(),
        "build-essential\npkg-config\nopenmpi-bin\nlibopenmpi-dev\nlibclang-dev\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A checkpoint that does not match the model is refused at resume, for
/// the model, EMA and optimizer files, under DDP and FSDP: a missing, an
/// extra, a reshaped or a float16 tensor. The error names the file and the
/// tensor; nothing panics and nothing is read as zeros.
#[test]
fn a_checkpoint_that_does_not_match_the_model_is_refused() {
    let dir = tiny_dir("badckpt");
    train_tiny(&dir, "good", 3);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tamper.py");
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        for case in ["missing", "extra", "shape", "dtype"] {
            let run = dir.join(format!("bad-{file}-{case}"));
            let _ = std::fs::remove_dir_all(&run);
            std::fs::create_dir_all(run.join("checkpoints")).unwrap();
            copy_dir(
                &dir.join("good/checkpoints/step_00000003"),
                &run.join("checkpoints/step_00000003"),
            );
            let target = run.join("checkpoints/step_00000003").join(file);
            let tensor = super::python(&[script.to_str().unwrap(), target.to_str().unwrap(), case]);
            let tensor = if case == "extra" {
                "not.a.parameter"
            } else {
                tensor.trim()
            };
            for strategy in ["ddp", "fsdp"] {
                let e = user_error(
                    orrery(
                        &[
                            "train",
                            "tiny.toml",
                            "--run-dir",
                            run.to_str().unwrap(),
                            "--set",
                            "run.steps=4",
                            "--set",
                            &format!("parallel.strategy={strategy}"),
                        ],
                        &dir,
                    ),
                    "does not match the model of this config",
                );
                assert!(
                    e.contains(file) && e.contains(&format!("tensor {tensor} ")),
                    "{file} {case} {strategy}: {e}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bench step --synthetic` needs no dataset (the config's data URL may not
/// exist) and reports throughput as TFLOP/s and MFU against the given peak;
/// a peak that is not a positive number is refused.
#[test]
fn bench_step_reports_mfu_on_synthetic_batches() {
    let dir = scratch("bench-step");
    std::fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let args = [
        "bench",
        "step",
        "tiny.toml",
        "--synthetic",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--set",
        "data.url=no-such-dataset",
    ];
    let out = ok(orrery(
        &[&args[..], &["--peak-tflops", "0.5"]].concat(),
        &dir,
    ));
    assert!(out.contains("(synthetic batches)"), "{out}");
    let mfu = out
        .lines()
        .find(|l| l.contains("MFU per rank (against a peak of 0.5 TFLOP/s)"))
        .unwrap_or_else(|| panic!("no MFU row: {out}"));
    let pct: f64 = mfu
        .split('|')
        .nth(2)
        .unwrap()
        .trim()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(pct > 0.0 && pct < 100.0, "{mfu}");
    user_error(
        orrery(&[&args[..], &["--peak-tflops", "0"]].concat(), &dir),
        "--peak-tflops 0",
    );
    // Two ranks as threads of this one process.
    let out = ok(orrery(&[&args[..], &["--threads", "2"]].concat(), &dir));
    assert!(out.contains("| ranks | 2 (ddp) |"), "{out}");
    user_error(
        orrery(&[&args[..], &["--threads", "3"]].concat(), &dir),
        "does not split evenly over 3 ranks",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
