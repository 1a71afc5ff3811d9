"""Recompute `orrery sample`'s frame scores from `--save-frames` with
scikit-image and numpy, and compare them with rollout.json.

    python3 check_rollout.py FRAMES.safetensors ROLLOUT.json

PSNR and SSIM come from skimage.metrics (data range 2: frames live in
[-1, 1]; SSIM with skimage's default uniform window, or the window
rollout.json names for small frames); the changed-pixel PSNR is the PSNR of
the values of pixels where some channel moved by more than 0.1 since the
last context frame. Prints "scores match" or fails."""
import json
import sys

import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

CAP = 100.0


def psnr(truth, guess):
    if np.array_equal(truth, guess):
        return CAP
    return min(CAP, peak_signal_noise_ratio(truth, guess, data_range=2.0))


def pooled_psnr(err, count):
    if count == 0:
        return None
    mse = err / count
    return CAP if mse == 0 else min(CAP, 10 * np.log10(4.0 / mse))


def close(a, b, what, tol=1e-6):
    if a is None or b is None:
        assert a is None and b is None, f"{what}: {a} vs {b}"
        return
    assert abs(a - b) <= tol * max(1.0, abs(b)), f"{what}: orrery {a}, reference {b}"


def main(frames_path, report_path):
    t = load_file(frames_path)
    with safe_open(frames_path, "np") as f:
        k = int(f.metadata()["context"])
    real = t["real"].astype(np.float64)
    gen = t["generated"].astype(np.float64)
    n, total, c, h, w = real.shape
    m = total - k
    assert np.array_equal(real[:, :k], gen[:, :k]), "the context frames are the real ones"
    assert ("action_ids" in t) or ("actions" in t), "the actions are saved"
    r = json.load(open(report_path))
    assert (r["clips"], r["context"], r["frames"]) == (n, k, m), r
    win = r["ssim_window"]
    psnr_m, psnr_c, ssim_m, ssim_c = [], [], [], []
    pooled = [0.0, 0.0, 0]
    for j in range(m):
        truth, last, guess = real[:, k + j], real[:, k - 1], gen[:, k + j]
        psnr_m.append(np.mean([psnr(truth[i], guess[i]) for i in range(n)]))
        psnr_c.append(np.mean([psnr(truth[i], last[i]) for i in range(n)]))
        ssim_m.append(np.mean([structural_similarity(truth[i], guess[i], data_range=2.0, channel_axis=0, win_size=win) for i in range(n)]))
        ssim_c.append(np.mean([structural_similarity(truth[i], last[i], data_range=2.0, channel_axis=0, win_size=win) for i in range(n)]))
        moved = (np.abs(truth.astype(np.float32) - last.astype(np.float32)) > np.float32(0.1)).any(axis=1, keepdims=True)
        mask = np.broadcast_to(moved, truth.shape)
        em, ec, count = ((truth - guess)[mask] ** 2).sum(), ((truth - last)[mask] ** 2).sum(), int(mask.sum())
        close(r["model"]["changed_psnr_by_frame"][j], pooled_psnr(em, count), f"changed PSNR, frame {j}")
        close(r["copy_last"]["changed_psnr_by_frame"][j], pooled_psnr(ec, count), f"changed PSNR of copying, frame {j}")
        pooled[0] += em
        pooled[1] += ec
        pooled[2] += count
    for j in range(m):
        close(r["model"]["psnr_by_frame"][j], psnr_m[j], f"PSNR, frame {j}")
        close(r["copy_last"]["psnr_by_frame"][j], psnr_c[j], f"PSNR of copying, frame {j}")
        close(r["model"]["ssim_by_frame"][j], ssim_m[j], f"SSIM, frame {j}")
        close(r["copy_last"]["ssim_by_frame"][j], ssim_c[j], f"SSIM of copying, frame {j}")
    close(r["psnr_db"], np.mean(psnr_m), "PSNR")
    close(r["psnr_copy_last_db"], np.mean(psnr_c), "PSNR of copying")
    close(r["ssim"], np.mean(ssim_m), "SSIM")
    close(r["ssim_copy_last"], np.mean(ssim_c), "SSIM of copying")
    close(r["changed_psnr_db"], pooled_psnr(pooled[0], pooled[2]), "changed PSNR")
    close(r["changed_psnr_copy_last_db"], pooled_psnr(pooled[1], pooled[2]), "changed PSNR of copying")
    assert r["frames_model_beats_copy"] == sum(a > b for a, b in zip(psnr_m, psnr_c))
    print(f"scores match: PSNR {r['psnr_db']:.3f} dB (copy {r['psnr_copy_last_db']:.3f}), SSIM {r['ssim']:.4f}, {pooled[2]} changed values")


if __name__ == "__main__":
    main(*sys.argv[1:])
