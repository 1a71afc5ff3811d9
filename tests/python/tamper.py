"""Make a checkpoint file not match its model, one way at a time.

Usage: python3 tamper.py FILE CASE, CASE one of:
  missing  drop the first tensor (by name)
  extra    add a tensor the model does not have
  shape    give the first tensor another shape (same values, flattened)
  dtype    store the first tensor as float16

The checkpoint's checksums.json goes too, as a checkpoint edited by hand or
from another tool would have none: what is checked is the layout, not the
checksum (that is tested on its own).
"""
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

path, case = sys.argv[1], sys.argv[2]
tensors = load_file(path)
first = sorted(tensors)[0]
if case == "missing":
    del tensors[first]
elif case == "extra":
    tensors["not.a.parameter"] = np.zeros(3, dtype=np.float32)
elif case == "shape":
    tensors[first] = tensors[first].reshape(-1)[None, :].copy() if tensors[first].ndim == 1 else tensors[first].reshape(-1).copy()
elif case == "dtype":
    tensors[first] = tensors[first].astype(np.float16)
else:
    sys.exit(f"unknown case {case}")
save_file(tensors, path, metadata={"format": "orrery"})
sums = os.path.join(os.path.dirname(path), "checksums.json")
if os.path.exists(sums):
    os.remove(sums)
print(first)
