//! Latent diffusion end to end: pixel clips -> `orrery vae train` (with the
//! patch discriminator switched on mid-run; resume bit for bit) ->
//! `orrery encode` on 1 and 2 ranks (the same files) and from a folder ->
//! a DiT world model on the latents -> `orrery sample` decoding its
//! rollout to frames. Python's readers (safetensors, pyarrow,
//! TensorBoard) check every file.
use super::{ok, orrery, python, scratch, user_error};

const VAE: &str = r#"
[run]
name = "vae"
steps = 4
seed = 3
[vae]
latent_channels = 4
spatial_down = 4
width = 8
width_cap = 16
groups = 4
[train]
frames = 2
disc_weight = 0.5
disc_start = 2
disc_width = 8
disc_groups = 4
strip_clips = 2
[data]
url = "pixels"
global_batch = 4
holdout_clips = 3
[optim]
lr = 2e-3
warmup_steps = 1
[checkpoint]
every = 2
keep = 3
[logging]
every = 1
eval_every = 2
"#;

const DIT: &str = r#"
[run]
name = "dit"
steps = 3
[model]
frames = 4
channels = 4
height = 4
width = 4
patch_size = 2
hidden = 32
depth = 1
heads = 2
[data]
url = "lat1"
global_batch = 4
holdout_clips = 3
vae = "runs/vae"
[checkpoint]
every = 3
[logging]
every = 1
eval_every = 3
[sample]
context = 2
frames = 3
steps = 2
clips = 2
"#;

#[test]
fn pixels_to_latents_to_a_world_model_and_back() {
    let dir = scratch("latent");
    // 15 clips of 8 frames, 16 x 16 RGB: a square moved by 4 actions over a gradient.
    super::square_clips(&dir.join("npy"), 15, 7);
    // 2 clips (24 KiB each) per file: 8 files.
    ok(orrery(
        &[
            "data",
            "import",
            "--from",
            "npy",
            "--out",
            "pixels",
            "--shard-mb",
            "0.05",
        ],
        &dir,
    ));
    std::fs::write(dir.join("vae.toml"), VAE).unwrap();

    // Stage 1, and exact resume: 2 + 2 steps equal 4 in one go, bit for bit.
    let out = ok(orrery(&["vae", "train", "vae.toml"], &dir));
    assert!(
        out.contains("held-out reconstruction (EMA weights): PSNR"),
        "{out}"
    );
    ok(orrery(
        &[
            "vae",
            "train",
            "vae.toml",
            "--run-dir",
            "runs/split",
            "--stop-after",
            "2",
        ],
        &dir,
    ));
    ok(orrery(
        &["vae", "train", "vae.toml", "--run-dir", "runs/split"],
        &dir,
    ));
    let ck = |run: &str, file: &str| {
        std::fs::read(dir.join(format!("runs/{run}/checkpoints/step_00000004/{file}"))).unwrap()
    };
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "disc.safetensors",
        "disc_optimizer.safetensors",
    ] {
        assert!(
            ck("vae", file) == ck("split", file),
            "{file} differs after a resume"
        );
    }

    // A signal stops an autoencoder run with a checkpoint and the exit code
    // a scheduler requeues on, and says how to continue.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_orrery"))
        .args([
            "vae",
            "train",
            "vae.toml",
            "--run-dir",
            "runs/sig",
            "--set",
            "run.steps=100000",
        ])
        .current_dir(&dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.join("runs/sig/metrics.jsonl");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("\"step\":2,")) {
        assert!(
            started.elapsed().as_secs() < 120,
            "the run never reached step 2"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.contains("Continue with `orrery vae train vae.toml --run-dir runs/sig`"),
        "{err}"
    );
    assert!(dir.join("runs/sig/checkpoints/latest").is_file());

    // Encode: 1 rank, 2 ranks (the same files), and the folder of clip files.
    let enc = |out: &'static str| {
        vec![
            "encode", "--vae", "runs/vae", "--from", "pixels", "--out", out, "--batch", "3",
        ]
    };
    let said = ok(orrery(&enc("lat1"), &dir));
    assert!(
        said.contains("encoded 15 clips (120 frames) into 8 files"),
        "{said}"
    );
    ok(orrery(
        &[&["launch", "-n", "2", "--"][..], &enc("lat2")].concat(),
        &dir,
    ));
    ok(orrery(
        &[
            "encode",
            "--vae",
            "runs/vae",
            "--from",
            "npy",
            "--out",
            "lat3",
            "--clips-per-file",
            "4",
        ],
        &dir,
    ));
    user_error(orrery(&enc("lat1"), &dir), "already holds 8 Parquet files");

    // Stage 2 on the latents, and a decoded rollout.
    std::fs::write(dir.join("dit.toml"), DIT).unwrap();
    ok(orrery(&["train", "dit.toml"], &dir));
    let out = ok(orrery(
        &[
            "sample",
            "--checkpoint",
            "runs/dit",
            "--out",
            "s/r.gif",
            "--save-frames",
            "s/frames.safetensors",
        ],
        &dir,
    ));
    assert!(
        out.contains("decoding the latents with the autoencoder runs/vae"),
        "{out}"
    );
    user_error(
        orrery(
            &[
                "encode", "--vae", "runs/dit", "--from", "pixels", "--out", "x",
            ],
            &dir,
        ),
        "is not an autoencoder checkpoint",
    );

    let check = python(&[
        "-c",
        &format!(
            r#"
import glob, json, os
import numpy as np, pyarrow.parquet as pq
from safetensors.numpy import load_file
d = '{d}'
# The autoencoder's checkpoint: every file read by safetensors, EMA named as the model.
ck = f'{{d}}/runs/vae/checkpoints/step_00000004'
m, e, disc = (load_file(f'{{ck}}/{{n}}.safetensors') for n in ('model', 'ema', 'disc'))
assert m.keys() == e.keys() and len(m) > 10 and len(disc) >= 4, (len(m), len(disc))
opt = load_file(f'{{ck}}/optimizer.safetensors')
assert set(opt) == {{f'{{p}}.{{k}}' for k in m for p in ('exp_avg', 'exp_avg_sq')}}
state = json.load(open(f'{{ck}}/trainer_state.json'))
assert state['kind'] == 'orrery-vae' and state['step'] == 4 and state['disc_optim_steps'] == 2, state
lines = [json.loads(l) for l in open(f'{{d}}/runs/vae/metrics.jsonl')]
assert [l['step'] for l in lines] == [1, 2, 3, 4], lines
assert lines[0]['disc_loss'] == 0 and lines[3]['disc_loss'] > 0 and lines[3]['adversarial_weight'] > 0, lines
assert 'heldout_ema' in lines[3] and lines[3]['heldout_ema']['psnr_db'] > 0, lines[3]
# TensorBoard reads the scalars and the reconstruction strips.
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(f'{{d}}/runs/vae/tensorboard', size_guidance={{'images': 0}}); acc.Reload()
tags = acc.Tags()
assert 'vae/loss' in tags['scalars'] and 'heldout/psnr_db' in tags['scalars'], tags
assert [s.step for s in acc.Images(tags['images'][0])] == [2, 4], tags
# Latent Parquet: the same files and tensors on 1 and 2 ranks.
def read(name):
    out = {{}}
    for p in sorted(glob.glob(f'{{d}}/{{name}}/*.parquet')):
        f = pq.ParquetFile(p)
        meta = {{k.decode(): v.decode() for k, v in f.metadata.metadata.items() if k.startswith(b'orrery')}}
        t = f.read().to_pydict()
        for i, cid in enumerate(t['clip_id']):
            z = np.frombuffer(t['latents'][i], '<f4').reshape(t['latent_shape'][i])
            out[cid] = (os.path.basename(p), z, t['action_ids'][i], meta)
    return out
one, two, folder = read('lat1'), read('lat2'), read('lat3')
assert len(one) == 15 and one.keys() == two.keys() == folder.keys()
for cid, (f, z, a, meta) in one.items():
    f2, z2, a2, meta2 = two[cid]
    assert f == f2 and a == a2 and meta == meta2 and np.array_equal(z, z2), cid
    assert z.shape == (8, 4, 4, 4), z.shape
    assert np.allclose(z, folder[cid][1], atol=1e-5) and a == folder[cid][2], cid
    assert meta['orrery.num_actions'] == '4', meta
# scale and shift make the latents zero-mean and unit-variance.
scale, shift = float(meta['orrery.latent_scale']), float(meta['orrery.latent_shift'])
allz = np.concatenate([(z - shift) * scale for _, z, _, _ in one.values()], None)
assert abs(allz.mean()) < 1e-3 and abs(allz.std() - 1) < 1e-3, (allz.mean(), allz.std())
# The decoded rollout: frames of 16 x 16 RGB.
fr = load_file(f'{{d}}/s/frames.safetensors')
assert fr['generated'].shape == (2, 5, 3, 16, 16) and fr['real'].shape == (2, 5, 3, 16, 16), fr['generated'].shape
assert np.array_equal(fr['real'][:, :2], fr['generated'][:, :2])
print('latent path checked')
"#,
            d = dir.display()
        ),
    ]);
    assert!(check.contains("latent path checked"), "{check}");
    let scores = python(&[
        &format!(
            "{}/tests/python/check_rollout.py",
            env!("CARGO_MANIFEST_DIR")
        ),
        &dir.join("s/frames.safetensors").display().to_string(),
        &dir.join("s/r.json").display().to_string(),
    ]);
    assert!(scores.contains("scores match"), "{scores}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Clips as folders of frame images (PNG or JPEG, actions beside the
/// folder): `data import` reads the pixels as PIL does (v / 127.5 - 1),
/// `encode` takes the folder, and a broken frame is named.
#[test]
fn frame_image_folders_import_and_encode() {
    let dir = scratch("frames");
    let said = python(&[
        "-c",
        &format!(
            r#"
import os, numpy as np
from PIL import Image
d = '{}'
rng = np.random.default_rng(3)
for i in range(3):
    os.makedirs(f'{{d}}/img/clip-{{i}}')
    for f in range(5):
        px = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        ext = 'jpg' if (i, f) == (2, 4) else 'png'
        Image.fromarray(px).save(f'{{d}}/img/clip-{{i}}/{{f:03}}.{{ext}}')
    np.save(f'{{d}}/img/clip-{{i}}.actions.npy', np.arange(5, dtype='<i8') % 3)
print('written')
"#,
            dir.display()
        ),
    ]);
    assert!(said.contains("written"), "{said}");
    ok(orrery(
        &["data", "import", "--from", "img", "--out", "px"],
        &dir,
    ));
    let check = python(&[
        "-c",
        &format!(
            r#"
import glob, numpy as np, pyarrow.parquet as pq
from PIL import Image
d = '{}'
t = pq.read_table(glob.glob(f'{{d}}/px/*.parquet')[0]).to_pydict()
assert t['clip_id'] == ['clip-0', 'clip-1', 'clip-2'], t['clip_id']
for i, cid in enumerate(t['clip_id']):
    x = np.frombuffer(t['latents'][i], '<f4').reshape(t['latent_shape'][i])
    assert x.shape == (5, 3, 16, 16), x.shape
    for f, p in enumerate(sorted(glob.glob(f'{{d}}/img/{{cid}}/*'))):
        want = np.asarray(Image.open(p).convert('RGB'), np.float32).transpose(2, 0, 1) / 127.5 - 1
        d = np.abs(x[f] - want)
        if p.endswith('.png'):
            assert d.max() < 1e-6, (cid, f)
        else:  # JPEG decoders differ in the last levels (IDCT, chroma upsampling)
            assert d.mean() < 0.03 and d.max() < 0.4, (cid, f, d.mean(), d.max())
    assert t['action_ids'][i] == [0, 1, 2, 0, 1]
print('pixels match PIL')
"#,
            dir.display()
        ),
    ]);
    assert!(check.contains("pixels match PIL"), "{check}");
    std::fs::write(dir.join("img/clip-1/002.png"), b"not a png").unwrap();
    user_error(
        orrery(&["data", "import", "--from", "img", "--out", "px2"], &dir),
        "clip-1/002.png",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
