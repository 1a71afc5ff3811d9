//! End-to-end tests of the `orrery` binary: data, training, resume, sampling,
//! export, the Python readers, and clear errors on bad input; multi-rank
//! runs in [`dist`] and [`fsdp`], data formats in [`data`], object storage in [`s3`].
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Multi-rank training: mpirun, Slurm, failures.
#[path = "e2e/dist.rs"]
mod dist;

/// Slurm job arrays of sweeps, and time limits that requeue a job.
#[path = "e2e/slurm_sweep.rs"]
mod slurm_sweep;

/// FSDP: sharded state over mpirun.
#[path = "e2e/fsdp.rs"]
mod fsdp;

/// Context parallelism: one clip's frames over several ranks.
#[path = "e2e/context.rs"]
mod context;

/// Data formats: import, the Python writer, continuous actions, bad rows.
#[path = "e2e/data.rs"]
mod data;

/// Object storage against a real S3-compatible server.
#[path = "e2e/s3.rs"]
mod s3;

/// What a new user runs into: output paths, run-directory reuse, closed
/// pipes, inspect/train agreement, sample's and bench step's arguments.
#[path = "e2e/front_door.rs"]
mod front_door;

/// Runs left alone: non-finite steps, signals that checkpoint and stop.
#[path = "e2e/unattended.rs"]
mod unattended;

/// Sweeps: plan, run side by side, skip finished runs, resume interrupted
/// ones, report; bad keys refused before anything runs.
#[path = "e2e/sweep.rs"]
mod sweep;

/// Latent diffusion: autoencoder, encode, a DiT on latents, decoded rollouts.
#[path = "e2e/latent.rs"]
mod latent;

fn orrery(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orrery"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run orrery")
}

fn ok(out: Output) -> String {
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "orrery failed ({}):\nstdout:\n{so}\nstderr:\n{se}",
        out.status
    );
    format!("{so}{se}")
}

/// A user error: exit code 2, a message containing `needle`, no panic trace.
fn user_error(out: Output, needle: &str) -> String {
    let se = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a user error, got {}: {se}",
        out.status
    );
    assert!(se.contains(needle), "stderr lacks {needle:?}:\n{se}");
    assert!(
        !se.contains("panicked") && !se.contains("RUST_BACKTRACE"),
        "panic on user input:\n{se}"
    );
    se
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orrery-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const TINY: &str = r#"
[run]
name = "tiny"
steps = 6
[model]
frames = 4
height = 16
width = 16
patch_size = 4
hidden = 64
depth = 2
heads = 2
[data]
url = "data"
global_batch = 4
holdout_clips = 4
[optim]
warmup_steps = 2
[checkpoint]
every = 3
keep = 2
[logging]
every = 2
eval_every = 3
[sample]
context = 2
frames = 3
steps = 2
clips = 2
"#;

fn tiny_dir(name: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::write(dir.join("tiny.toml"), TINY).unwrap();
    ok(orrery(
        &[
            "data",
            "synth",
            "--out",
            "data",
            "--clips",
            "24",
            "--frames",
            "6",
            "--size",
            "16",
            "16",
            "--clips-per-file",
            "10",
        ],
        &dir,
    ));
    dir
}

/// `n` pixel clips as `.npy` pairs under `dir` (made here): 8 frames of
/// 16 x 16 RGB, a square moved by 4 actions over a gradient, from numpy's
/// generator seeded with `seed`.
fn square_clips(dir: &Path, n: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    python(&[
        "-c",
        &format!(
            r#"
import numpy as np
rng = np.random.default_rng({seed})
d = '{}'
yy, xx = np.mgrid[0:16, 0:16] / 15.0
for i in range({n}):
    frames = np.zeros((8, 3, 16, 16), '<f4')
    x, y = rng.integers(2, 10, 2)
    acts = rng.integers(0, 4, 8)
    for f in range(8):
        dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1)][acts[f]]
        x, y = np.clip(x + dx, 0, 12), np.clip(y + dy, 0, 12)
        frames[f] = 0.6 * (xx - 0.5) + 0.3 * (yy - 0.5) - 0.2
        frames[f, :, y:y + 4, x:x + 4] = np.array([0.9, -0.8, 0.4])[:, None, None]
    np.save(f'{{d}}/clip-{{i:02}}.npy', frames)
    np.save(f'{{d}}/clip-{{i:02}}.actions.npy', acts.astype('<i8'))
"#,
            dir.display()
        ),
    ]);
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 runs");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "python check failed (install the readers with `bash launch/test.sh` or `pip install -r tests/python/requirements.txt`):\n{so}\n{se}"
    );
    so.to_string()
}

#[test]
fn train_sample_export_and_python_reads_everything() {
    let dir = tiny_dir("full");
    let inspect = ok(orrery(&["data", "inspect", "data"], &dir));
    assert!(
        inspect.contains("3 file(s), 24 clips") && inspect.contains("[6, 3, 16, 16]"),
        "{inspect}"
    );

    let log = ok(orrery(&["train", "tiny.toml", "--run-dir", "run"], &dir));
    assert!(
        log.contains("held-out loss:") && log.contains("at step 6"),
        "{log}"
    );
    let run = dir.join("run");
    assert!(run.join("config.toml").is_file());
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        resolved.contains("hidden = 64") && resolved.contains("[objective.timesteps]"),
        "{resolved}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/latest"))
            .unwrap()
            .trim(),
        "step_00000006"
    );
    assert!(run
        .join("checkpoints/step_00000003/trainer_state.json")
        .is_file());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    // Steps 0 (held-out loss before training), 2, 3 (evaluation), 4, 6.
    assert_eq!(metrics.lines().count(), 5, "{metrics}");
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        3,
        "{metrics}"
    );

    let sample = ok(orrery(
        &["sample", "--checkpoint", "run", "--out", "out/rollout.gif"],
        &dir,
    ));
    assert!(sample.contains("copy last context"), "{sample}");
    for f in ["out/rollout.gif", "out/rollout.png", "out/rollout.json"] {
        assert!(
            dir.join(f).metadata().unwrap().len() > 100,
            "{f} missing or empty"
        );
    }
    let gif = std::fs::read(dir.join("out/rollout.gif")).unwrap();
    assert_eq!(&gif[..6], b"GIF89a");
    // Another sampler with guidance on the actions.
    let heun = ok(orrery(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--out",
            "out/heun.png",
            "--sampler",
            "heun",
            "--guidance",
            "2",
        ],
        &dir,
    ));
    assert!(heun.contains("copy last context"), "{heun}");
    // The weight table of a VP / epsilon / min-SNR objective.
    let table = ok(orrery(
        &[
            "weights",
            "tiny.toml",
            "--bins",
            "4",
            "--set",
            r#"objective.interpolant={ kind = "vp_linear" }"#,
            "--set",
            "objective.prediction=epsilon",
            "--set",
            "objective.weighting={ kind = \"min_snr\", gamma = 5.0 }",
        ],
        &dir,
    ));
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| 0.")).count(),
        4,
        "{table}"
    );

    ok(orrery(
        &["ckpt", "export", "run", "--ema", "--out", "ema.safetensors"],
        &dir,
    ));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_run.py");
    let summary = python(&[
        script.to_str().unwrap(),
        run.to_str().unwrap(),
        dir.join("ema.safetensors").to_str().unwrap(),
        dir.join("out/rollout.json").to_str().unwrap(),
    ]);
    // Six frame scores and the sprite world's two agent errors.
    assert!(
        summary.contains("\"scalar_steps\": [2, 4, 6]")
            && summary.contains("\"export_hidden\": 64")
            && summary.contains("\"rollout_scalars\": 8"),
        "{summary}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_continues_with_identical_state() {
    let dir = tiny_dir("resume");
    ok(orrery(
        &["train", "tiny.toml", "--run-dir", "straight"],
        &dir,
    ));
    let first = ok(orrery(
        &[
            "train",
            "tiny.toml",
            "--run-dir",
            "split",
            "--stop-after",
            "4",
        ],
        &dir,
    ));
    assert!(first.contains("trained steps 0..4"), "{first}");
    let second = ok(orrery(&["train", "tiny.toml", "--run-dir", "split"], &dir));
    assert!(
        second.contains("resuming from") && second.contains("trained steps 4..6"),
        "{second}"
    );
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let a = std::fs::read(dir.join("straight/checkpoints/step_00000006").join(file)).unwrap();
        let b = std::fs::read(dir.join("split/checkpoints/step_00000006").join(file)).unwrap();
        assert!(
            a == b,
            "{file} differs between the straight and the resumed run"
        );
    }
    let state = |run: &str| {
        std::fs::read_to_string(
            dir.join(run)
                .join("checkpoints/step_00000006/trainer_state.json"),
        )
        .unwrap()
    };
    assert_eq!(state("straight"), state("split"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tiny_dir("errors");
    std::fs::write(
        dir.join("typo.toml"),
        TINY.replace("warmup_steps = 2", "warmup_step = 2"),
    )
    .unwrap();
    let e = user_error(
        orrery(&["train", "typo.toml"], &dir),
        "unknown config key optim.warmup_step",
    );
    assert!(e.contains("did you mean optim.warmup_steps"), "{e}");

    let e = user_error(
        orrery(&["train", "tiny.toml", "--set", "optim.lr_max=1"], &dir),
        "no config key optim.lr_max",
    );
    assert!(e.contains("did you mean optim.lr"), "{e}");
    user_error(
        orrery(
            &["train", "tiny.toml", "--set", "objective.timesteps.s=0"],
            &dir,
        ),
        "s > 0",
    );
    user_error(
        orrery(&["train", "tiny.toml", "--set", "model.heads=3"], &dir),
        "model.heads",
    );
    user_error(
        orrery(&["train", "tiny.toml", "--set", "data.url=nowhere"], &dir),
        "no .parquet files found",
    );
    user_error(
        orrery(&["train", "missing.toml"], &dir),
        "cannot read config file missing.toml",
    );
    user_error(
        orrery(&["train", "tiny.toml", "--set", "model.height=32"], &dir),
        "set model.channels=3, model.height=16",
    );

    // A Parquet file with the wrong columns.
    std::fs::create_dir_all(dir.join("wrong")).unwrap();
    {
        use std::sync::Arc;
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("pixels", arrow::datatypes::DataType::Int32, false),
        ]));
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int32Array::from(vec![1]))],
        )
        .unwrap();
        let file = std::fs::File::create(dir.join("wrong/part-0.parquet")).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let e = user_error(
        orrery(&["train", "tiny.toml", "--set", "data.url=wrong"], &dir),
        "missing column `clip_id`",
    );
    assert!(e.contains("part-0.parquet"), "{e}");
    user_error(
        orrery(&["data", "inspect", "wrong"], &dir),
        "missing column `clip_id`",
    );
    // A truncated file.
    let good = std::fs::read(dir.join("data/part-00000.parquet")).unwrap();
    std::fs::create_dir_all(dir.join("cut")).unwrap();
    std::fs::write(dir.join("cut/part-0.parquet"), &good[..good.len() / 2]).unwrap();
    user_error(
        orrery(&["data", "inspect", "cut"], &dir),
        "not a readable Parquet file",
    );
    user_error(
        orrery(
            &["sample", "--checkpoint", "nothing", "--out", "x.gif"],
            &dir,
        ),
        "is not a checkpoint",
    );
    user_error(
        orrery(
            &[
                "train",
                "tiny.toml",
                "--set",
                "objective.prediction=epsilon",
                "--set",
                r#"objective.interpolant={ kind = "vp_cosine" }"#,
            ],
            &dir,
        ),
        "alpha = 0",
    );
    user_error(
        orrery(
            &[
                "train",
                "tiny.toml",
                "--set",
                "sample.guidance=3",
                "--set",
                "objective.action_dropout=0",
            ],
            &dir,
        ),
        "objective.action_dropout",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn class_conditional_images_train_and_sample_per_class() {
    use orrery_data::schema::{write_parquet, Clip, DatasetMeta};
    let dir = scratch("classes");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    // 1-frame 8x8 images: class k is a bright column pair at x = 2k.
    let clips: Vec<Clip> = (0..40)
        .map(|i| {
            let k = i % 4;
            let latents = (0..64)
                .map(|p| if (p % 8) / 2 == k { 1.0 } else { -1.0 })
                .collect();
            Clip {
                id: format!("img-{i:03}"),
                shape: [1, 1, 8, 8],
                latents,
                actions: None,
                action_values: None,
                label: Some(k as i64),
                agent_xy: None,
            }
        })
        .collect();
    let meta = DatasetMeta {
        scale: 1.0,
        num_classes: 4,
        ..Default::default()
    };
    std::fs::write(
        dir.join("data/images.parquet"),
        write_parquet(&clips, &meta).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("img.toml"),
        r#"
[run]
name = "img"
steps = 8
[model]
channels = 1
frames = 1
height = 8
width = 8
patch_size = 2
hidden = 32
depth = 1
heads = 2
num_actions = 0
num_classes = 4
attention = "full"
pos_embed = "rope"
qk_norm = "rms"
mlp = "swiglu"
[data]
url = "data"
global_batch = 8
holdout_clips = 4
[logging]
every = 4
eval_every = 4
[sample]
steps = 4
guidance = 2.0
"#,
    )
    .unwrap();
    let out = ok(orrery(&["train", "img.toml"], &dir));
    assert!(
        !out.contains("next-frame"),
        "image models have no next frame:\n{out}"
    );
    let out = ok(orrery(
        &[
            "sample",
            "--checkpoint",
            "runs/img",
            "--out",
            "s/g.png",
            "--per-class",
            "3",
        ],
        &dir,
    ));
    assert!(
        out.contains("generated 12 samples (3 per class, 4 classes)"),
        "{out}"
    );
    let labels = python(&[
        "-c",
        &format!(
            "from safetensors.numpy import load_file; d = load_file('{}'); print(d['samples'].shape, d['labels'].astype(int).tolist())",
            dir.join("s/g.safetensors").display()
        ),
    ]);
    assert!(
        labels.contains("(12, 1, 1, 8, 8) [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]"),
        "{labels}"
    );
    assert!(dir.join("s/g.png").is_file());
    // The data has 4 classes; a model with 2 cannot hold them.
    user_error(
        orrery(
            &[
                "train",
                "img.toml",
                "--set",
                "model.num_classes=2",
                "--run-dir",
                "r2",
            ],
            &dir,
        ),
        "has 4 classes but model.num_classes = 2",
    );
    // A world model's flag on an image model, and the reverse.
    user_error(
        orrery(
            &[
                "train",
                "img.toml",
                "--set",
                "model.num_actions=5",
                "--run-dir",
                "r3",
            ],
            &dir,
        ),
        "world model needs model.frames >= 2",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
