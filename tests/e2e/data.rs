//! Data formats end to end: `data import` from .npy / .safetensors, the
//! Python writer example, continuous actions, and bad rows (listed, refused,
//! or skipped and counted).
use std::path::Path;

use super::{ok, orrery, python, scratch, user_error, TINY};

#[test]
fn continuous_actions_train_and_roll_out() {
    let dir = scratch("continuous");
    std::fs::write(
        dir.join("tiny.toml"),
        TINY.replace("depth = 2", "depth = 2\nnum_actions = 0\naction_dim = 2"),
    )
    .unwrap();
    ok(orrery(
        &[
            "data",
            "synth",
            "--out",
            "data",
            "--clips",
            "16",
            "--frames",
            "6",
            "--size",
            "16",
            "16",
            "--continuous-actions",
        ],
        &dir,
    ));
    let inspect = ok(orrery(&["data", "inspect", "data"], &dir));
    assert!(inspect.contains("16 clips"), "{inspect}");
    let out = ok(orrery(&["train", "tiny.toml"], &dir));
    assert!(out.contains("another action"), "{out}");
    let out = ok(orrery(
        &[
            "sample",
            "--checkpoint",
            "runs/tiny",
            "--out",
            "s/r.gif",
            "--guidance",
            "2",
        ],
        &dir,
    ));
    assert!(out.contains("rollout of 2 held-out clips"), "{out}");
    // The sprite world's data: its agent scores, beside the frame scores.
    assert!(
        out.contains("agent-position error") && out.contains("PSNR (dB)"),
        "{out}"
    );
    // Discrete ids asked of continuous data, and the wrong width.
    user_error(
        orrery(&["train", "tiny.toml", "--set", "model.action_dim=0", "--set", "model.num_actions=5", "--run-dir", "r2"], &dir),
        "have no action_ids (they have continuous actions): set model.num_actions = 0 and model.action_dim = 2",
    );
    user_error(
        orrery(
            &[
                "train",
                "tiny.toml",
                "--set",
                "model.action_dim=3",
                "--run-dir",
                "r3",
            ],
            &dir,
        ),
        "continuous actions of width 2 but model.action_dim = 3",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn latents_written_by_the_python_example_train() {
    let dir = scratch("pywriter");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/write_latents.py");
    let out = python(&[script.to_str().unwrap(), dir.join("data").to_str().unwrap()]);
    assert!(out.contains("\"clips\": 24"), "{out}");
    let inspect = ok(orrery(&["data", "inspect", "data"], &dir));
    assert!(
        inspect.contains("24 clips") && inspect.contains("scale 0.18215"),
        "{inspect}"
    );
    // f16 latents of [4, 8, 8], 5 actions, 3 classes, scaled by 0.18215.
    std::fs::write(
        dir.join("vae.toml"),
        TINY.replace(
            "height = 16\nwidth = 16\npatch_size = 4",
            "channels = 4\nheight = 8\nwidth = 8\npatch_size = 2",
        )
        .replace("depth = 2", "depth = 2\nnum_classes = 3"),
    )
    .unwrap();
    let out = ok(orrery(&["train", "vae.toml"], &dir));
    assert!(out.contains("held-out loss"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_rows_are_listed_refused_or_skipped_and_counted() {
    use orrery_data::schema::write_parquet;
    use orrery_data::synth::{render_clips, SynthConfig};
    let dir = scratch("badrows");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let cfg = SynthConfig {
        clips: 24,
        frames: 6,
        height: 16,
        width: 16,
        seed: 0,
        continuous_actions: false,
    };
    let mut clips = render_clips(&cfg);
    clips[3].latents[7] = f32::NAN;
    clips[15].latents[0] = f32::INFINITY;
    let file = |c: &[orrery_data::Clip]| write_parquet(c, &cfg.metadata()).unwrap();
    std::fs::write(dir.join("data/a.parquet"), file(&clips[..12])).unwrap();
    std::fs::write(dir.join("data/b.parquet"), file(&clips[12..])).unwrap();
    std::fs::write(dir.join("tiny.toml"), TINY).unwrap();

    let out = orrery(&["data", "inspect", "data", "--validate"], &dir);
    let so = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        so.contains("a.parquet, row 3: latents hold a non-finite value (NaN)"),
        "{so}"
    );
    assert!(
        so.contains("b.parquet, row 3: latents hold a non-finite value (inf)"),
        "{so}"
    );
    user_error(out, "2 problem(s) in 2 file(s)");

    user_error(
        orrery(&["train", "tiny.toml"], &dir),
        "a.parquet, row 3: latents hold a non-finite value",
    );
    user_error(
        orrery(
            &["train", "tiny.toml", "--set", "data.max_bad_rows=1"],
            &dir,
        ),
        "2 bad rows under data, more than data.max_bad_rows = 1",
    );
    let out = ok(orrery(
        &["train", "tiny.toml", "--set", "data.max_bad_rows=2"],
        &dir,
    ));
    assert!(
        out.contains("skipped 2 bad rows") && out.contains("training"),
        "{out}"
    );

    // A truncated file is listed too, and the others are still checked.
    let whole = file(&clips[..12]);
    std::fs::write(dir.join("data/a.parquet"), &whole[..whole.len() / 2]).unwrap();
    let out = orrery(&["data", "inspect", "data", "--validate"], &dir);
    let so = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        so.contains("a.parquet: not a readable Parquet file") && so.contains("b.parquet, row 3"),
        "{so}"
    );
    user_error(out, "2 problem(s) in 2 file(s)");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_import_converts_npy_and_safetensors_clips() {
    let dir = scratch("import");
    std::fs::create_dir_all(dir.join("clips")).unwrap();
    // numpy and safetensors write the inputs; pyarrow reads the output back.
    python(&[
        "-c",
        &format!(
            r#"
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(0)
d = '{}'
for i in range(6):
    np.save(f'{{d}}/npy-{{i}}.npy', rng.standard_normal((5, 2, 4, 4)).astype('<f4'))
    np.save(f'{{d}}/npy-{{i}}.actions.npy', rng.integers(0, 4, 5).astype('<i8'))
for i in range(6):
    save_file({{'latents': rng.standard_normal((5, 2, 4, 4)).astype('<f2'),
               'action_ids': rng.integers(0, 4, 5).astype('<i8'),
               'label': np.array([i % 2], dtype='<i8')}}, f'{{d}}/st-{{i}}.safetensors')
"#,
            dir.join("clips").display()
        ),
    ]);
    // Mixed: the npy clips have no labels, so labels are refused at open;
    // import them apart.
    std::fs::create_dir_all(dir.join("npy")).unwrap();
    for i in 0..6 {
        for suffix in ["npy", "actions.npy"] {
            std::fs::rename(
                dir.join(format!("clips/npy-{i}.{suffix}")),
                dir.join(format!("npy/npy-{i}.{suffix}")),
            )
            .unwrap();
        }
    }
    let out = ok(orrery(
        &[
            "data",
            "import",
            "--from",
            "npy",
            "--out",
            "data-npy",
            "--shard-mb",
            "0.0013",
            "--scale",
            "0.5",
        ],
        &dir,
    ));
    assert!(
        out.contains("imported 6 clips into 3 file(s)") && out.contains("num_actions 4"),
        "{out}"
    );
    let out = ok(orrery(
        &["data", "import", "--from", "clips", "--out", "data-st"],
        &dir,
    ));
    assert!(
        out.contains("imported 6 clips into 1 file(s)") && out.contains("num_classes 2"),
        "{out}"
    );
    ok(orrery(&["data", "inspect", "data-st", "--validate"], &dir));
    let bench = ok(orrery(&["bench", "data", "data-st", "--repeat", "1"], &dir));
    assert!(bench.contains("| files / clips | 1 / 6 |"), "{bench}");
    // The stored latents equal the inputs (f16 widened to f32), read by pyarrow.
    let check = python(&[
        "-c",
        &format!(
            r#"
import numpy as np, pyarrow.parquet as pq
from safetensors.numpy import load_file
d = '{}'
t = pq.read_table(f'{{d}}/data-st').to_pylist()
row = [r for r in t if r['clip_id'] == 'st-3'][0]
want = load_file(f'{{d}}/clips/st-3.safetensors')
got = np.frombuffer(row['latents'], '<f4').reshape(row['latent_shape'])
assert np.array_equal(got, want['latents'].astype('<f4')), 'latents differ'
assert row['action_ids'] == want['action_ids'].tolist() and row['label'] == 1
meta = pq.read_metadata(f'{{d}}/data-npy/part-00000.parquet').metadata
assert meta[b'orrery.latent_scale'] == b'0.5'
print('same')
"#,
            dir.display()
        ),
    ]);
    assert!(check.contains("same"), "{check}");
    python(&[
        "-c",
        &format!(
            "import numpy as np; np.save('{}/fortran.npy', np.asfortranarray(np.zeros((2, 2, 4, 4), '<f4')))",
            dir.join("npy").display()
        ),
    ]);
    user_error(
        orrery(&["data", "import", "--from", "npy", "--out", "x"], &dir),
        "fortran.npy: is stored in Fortran order",
    );
    std::fs::write(dir.join("clips/bad.npy"), b"not numpy").unwrap();
    user_error(
        orrery(&["data", "import", "--from", "clips", "--out", "x"], &dir),
        "bad.npy: not a .npy file",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// On data that is not the sprite world (imported clips of a moving square
/// over a gradient, with actions): no agent scores, and the frame scores
/// (PSNR, SSIM, changed-pixel PSNR, model and copy-last) are what
/// scikit-image and numpy compute from `--save-frames`' file.
#[test]
fn rollout_scores_on_imported_clips_match_scikit_image() {
    let dir = scratch("scores");
    super::square_clips(&dir.join("npy"), 12, 1);
    ok(orrery(
        &["data", "import", "--from", "npy", "--out", "data"],
        &dir,
    ));
    std::fs::write(dir.join("tiny.toml"), super::TINY).unwrap();
    ok(orrery(
        &[
            "train",
            "tiny.toml",
            "--set",
            "run.steps=3",
            "--set",
            "model.channels=3",
        ],
        &dir,
    ));
    let out = ok(orrery(
        &[
            "sample",
            "--checkpoint",
            "runs/tiny",
            "--out",
            "s/r.gif",
            "--frames",
            "3",
            "--save-frames",
            "s/frames.safetensors",
        ],
        &dir,
    ));
    assert!(
        out.contains("PSNR (dB)") && out.contains("the model beats copying on"),
        "{out}"
    );
    assert!(
        !out.contains("agent"),
        "no agent scores off the sprite world: {out}"
    );
    let report = std::fs::read_to_string(dir.join("s/r.json")).unwrap();
    assert!(
        !report.contains("agent") && !report.contains("NaN"),
        "{report}"
    );
    let check = python(&[
        &format!(
            "{}/tests/python/check_rollout.py",
            env!("CARGO_MANIFEST_DIR")
        ),
        &dir.join("s/frames.safetensors").display().to_string(),
        &dir.join("s/r.json").display().to_string(),
    ]);
    assert!(check.contains("scores match"), "{check}");
    user_error(
        orrery(
            &[
                "sample",
                "--checkpoint",
                "runs/tiny",
                "--out",
                "t.gif",
                "--save-frames",
                "f.npz",
            ],
            &dir,
        ),
        "name the file FILE.safetensors",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `datasets/vizdoom_record.py` records clips from a real game engine
/// (ViZDoom, headless): the same seed gives the same files, `data import`
/// takes them (4 actions), and the frames are the game's, in [-1, 1].
#[test]
fn vizdoom_clips_record_and_import() {
    let dir = scratch("vizdoom");
    let script = format!("{}/datasets/vizdoom_record.py", env!("CARGO_MANIFEST_DIR"));
    for out in ["a", "b"] {
        let out = dir.join(out).display().to_string();
        let args = [
            "--out", &out, "--clips", "3", "--frames", "6", "--size", "16", "16",
        ];
        let said = python(&[[script.as_str()].as_slice(), &args].concat());
        assert!(
            said.contains("\"clips\": 3") && said.contains("\"num_actions\": 4"),
            "{said}"
        );
    }
    let check = python(&[
        "-c",
        &format!(
            r#"
import glob, os, numpy as np
d = '{}'
names = sorted(os.path.basename(p) for p in glob.glob(f'{{d}}/a/*'))
assert len(names) == 6, names
for n in names:
    assert open(f'{{d}}/a/{{n}}', 'rb').read() == open(f'{{d}}/b/{{n}}', 'rb').read(), n
x = np.load(f'{{d}}/a/{{names[1]}}')
a = np.load(f'{{d}}/a/{{names[0]}}')
assert x.shape == (6, 3, 16, 16) and x.dtype == np.float32, x.shape
assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.05, (x.min(), x.max(), x.std())
assert a.shape == (6,) and a[0] == 0 and a.min() >= 0 and a.max() <= 3, a
print('recorded', names[1])
"#,
            dir.display()
        ),
    ]);
    assert!(check.contains("recorded"), "{check}");
    let out = ok(orrery(
        &["data", "import", "--from", "a", "--out", "data"],
        &dir,
    ));
    assert!(
        out.contains("imported 3 clips") && out.contains("num_actions 4"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
