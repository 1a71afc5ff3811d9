"""Write latents from your own encoder as orrery schema-v1 Parquet shards.

A short pyarrow example for users who encode video with a PyTorch (or JAX)
VAE: collect each clip's latents as an array [T, C, H, W] (f32, f16 or
bf16-as-uint16), optionally its per-frame actions and a class label, and call
`write_shards`. orrery then trains on `(x - shift) * scale` with the scale and
shift stored in the file metadata (for Stable Diffusion's VAE: scale 0.18215).

    from write_latents import write_shards
    write_shards("s3-or-local-dir", clips, scale=0.18215)   # see main()

`python write_latents.py OUT_DIR` writes a small random demo dataset
(f16 latents, discrete actions, labels), the way the tests use it.
Schema: datasets/README.md.
"""
import argparse
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DTYPES = {np.dtype("<f4"): "f32", np.dtype("<f2"): "f16"}


def _dtype_name(x):
    if x.dtype == np.uint16:  # bf16 bits (e.g. tensor.view(torch.int16).numpy())
        return "bf16"
    return DTYPES[x.dtype.newbyteorder("<")]


def write_shards(out_dir, clips, scale=1.0, shift=0.0, num_actions=0, num_classes=0,
                 action_dim=0, clips_per_file=1024, row_group_size=64):
    """Write `clips` (dicts with id, latents [T, C, H, W], optional action_ids
    [T] ints, actions [T, A] floats, label int) to OUT_DIR/part-NNNNN.parquet."""
    os.makedirs(out_dir, exist_ok=True)
    meta = {
        "orrery.schema_version": "1",
        "orrery.latent_scale": repr(float(scale)),
        "orrery.latent_shift": repr(float(shift)),
        "orrery.num_actions": str(num_actions),
        "orrery.num_classes": str(num_classes),
        "orrery.action_dim": str(action_dim),
    }
    paths = []
    for start in range(0, len(clips), clips_per_file):
        part = clips[start : start + clips_per_file]
        cols = {
            "clip_id": pa.array([c["id"] for c in part]),
            "latents": pa.array(
                [np.ascontiguousarray(c["latents"]).astype(c["latents"].dtype.newbyteorder("<")).tobytes()
                 for c in part], type=pa.binary()),
            "latent_shape": pa.array([list(c["latents"].shape) for c in part], type=pa.list_(pa.int32())),
            "latent_dtype": pa.array([_dtype_name(c["latents"]) for c in part]),
        }
        if any("action_ids" in c for c in part):
            cols["action_ids"] = pa.array(
                [[int(a) for a in c["action_ids"]] for c in part], type=pa.list_(pa.int32()))
        if any("actions" in c for c in part):
            cols["actions"] = pa.array(
                [np.asarray(c["actions"], "<f4").ravel().tolist() for c in part],
                type=pa.list_(pa.float32()))
        if any("label" in c for c in part):
            cols["label"] = pa.array([int(c["label"]) for c in part], type=pa.int32())
        table = pa.table(cols).replace_schema_metadata(meta)
        path = os.path.join(out_dir, f"part-{start // clips_per_file:05d}.parquet")
        pq.write_table(table, path, row_group_size=row_group_size, compression="zstd")
        paths.append(path)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--shape", type=int, nargs=3, default=[4, 8, 8], metavar=("C", "H", "W"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    clips = []
    for i in range(args.clips):
        # Stand-in for vae.encode(video).latent_dist.sample(): unscaled latents.
        lat = (rng.standard_normal((args.frames, *args.shape)) / 0.18215).astype("<f2")
        clips.append({
            "id": f"demo-{i:05d}",
            "latents": lat,
            "action_ids": rng.integers(0, 5, args.frames),
            "label": i % 3,
        })
    paths = write_shards(args.out, clips, scale=0.18215, num_actions=5, num_classes=3,
                         clips_per_file=10)
    print(json.dumps({"files": paths, "clips": len(clips)}))


if __name__ == "__main__":
    main()
