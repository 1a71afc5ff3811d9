"""Largest element-wise difference between two checkpoints' tensors.

usage: compare_ckpt.py CKPT_DIR_A CKPT_DIR_B
Prints JSON: {"model": d, "ema": d, "optimizer": d, "scale": max |value| of the model}.
Fails if the two hold different tensor names or shapes.
"""
import json
import sys

import numpy as np
from safetensors.numpy import load_file

a, b = sys.argv[1], sys.argv[2]
out = {}
for part in ("model", "ema", "optimizer"):
    x = load_file(f"{a}/{part}.safetensors")
    y = load_file(f"{b}/{part}.safetensors")
    if x.keys() != y.keys():
        sys.exit(f"{part}: tensor names differ: {sorted(set(x) ^ set(y))}")
    for k in x:
        if x[k].shape != y[k].shape:
            sys.exit(f"{part}.{k}: shapes {x[k].shape} vs {y[k].shape}")
    out[part] = max(float(np.abs(x[k].astype(np.float64) - y[k]).max()) for k in x)
    if part == "model":
        out["scale"] = max(float(np.abs(x[k]).max()) for k in x)
print(json.dumps(out))
