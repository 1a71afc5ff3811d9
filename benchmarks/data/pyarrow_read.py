"""pyarrow's time to read and decode the same Parquet dataset as
`orrery bench data`: read every file, then turn each row's latents into a
float32 array (f16/bf16 widened) and check it is finite, as orrery does.

usage: python pyarrow_read.py DIR_OR_S3_URL [--repeat N]
S3: s3://bucket/prefix with AWS_ENDPOINT (e.g. http://127.0.0.1:9000),
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION in the environment.
"""
import argparse
import os
import time

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def filesystem(url):
    if url.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT", "")
        scheme = "http" if endpoint.startswith("http://") else "https"
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint.split("://", 1)[-1] or None,
            scheme=scheme,
            region=os.environ.get("AWS_REGION", "us-east-1"),
        )
        return fs, url[len("s3://"):]
    return pafs.LocalFileSystem(), os.path.abspath(url)


def one_pass(fs, root):
    t0 = time.perf_counter()
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    paths = sorted(i.path for i in infos if i.path.endswith(".parquet"))
    tables = [pq.read_table(p, filesystem=fs) for p in paths]
    fetch = time.perf_counter() - t0
    t1 = time.perf_counter()
    clips = values = 0
    for t in tables:
        for lat, dtype in zip(t.column("latents").to_pylist(), t.column("latent_dtype").to_pylist()):
            if dtype == "bf16":
                x = (np.frombuffer(lat, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                x = np.frombuffer(lat, {"f32": "<f4", "f16": "<f2"}[dtype]).astype(np.float32)
            assert np.isfinite(x).all()
            clips += 1
            values += x.size
    decode = time.perf_counter() - t1
    size = sum(i.size for i in infos if i.path.endswith(".parquet"))
    return fetch, decode, clips, values, size, len(paths)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    fs, root = filesystem(args.url)
    runs = sorted((one_pass(fs, root) for _ in range(args.repeat)), key=lambda r: r[0] + r[1])
    fetch, decode, clips, values, size, files = runs[len(runs) // 2]
    total = fetch + decode
    print(f"| {args.url} (pyarrow) | median of {args.repeat} |")
    print("|---|---|")
    print(f"| files / clips | {files} / {clips} |")
    print(f"| read (s) | {fetch:.3f} ({size / 1e6 / fetch:.1f} MB/s) |")
    print(f"| to float32 + check (s) | {decode:.3f} |")
    print(f"| total (s) | {total:.3f} |")
    print(f"| clips/s | {clips / total:.0f} |")


if __name__ == "__main__":
    main()
