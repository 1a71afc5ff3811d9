"""Read orrery's outputs with the reference Python readers.

Usage: check_run.py RUN_DIR EXPORTED.safetensors [ROLLOUT.json]
Checks that Python's `safetensors` reads every checkpoint file and the export,
and that TensorBoard's EventAccumulator reads the scalars (matching
metrics.jsonl) and the rollout image, and (given a rollout.json of
`orrery sample` on that run) the rollout's scores. Prints a JSON summary;
exits 1 on any mismatch.
"""
import io
import json
import pathlib
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def fail(msg):
    print(f"check_run.py: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    run = pathlib.Path(sys.argv[1])
    export = pathlib.Path(sys.argv[2])
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    summary = {"checkpoint": str(ckpt)}
    model = load_file(ckpt / "model.safetensors")
    ema = load_file(ckpt / "ema.safetensors")
    optim = load_file(ckpt / "optimizer.safetensors")
    if set(model) != set(ema):
        fail("model and EMA tensor names differ")
    for name, t in model.items():
        if t.dtype != np.float32 or not np.isfinite(t).all():
            fail(f"{name}: dtype {t.dtype} or non-finite values")
        for prefix in ("exp_avg.", "exp_avg_sq."):
            if optim[prefix + name].shape != t.shape:
                fail(f"optimizer {prefix}{name} shape {optim[prefix + name].shape} != {t.shape}")
    if "blocks.0.attn.qkv.weight" not in model:
        fail(f"expected DiT tensor names, got {sorted(model)[:5]}")
    summary["tensors"] = len(model)
    summary["params"] = int(sum(t.size for t in model.values()))

    exported = load_file(export)
    with safe_open(export, framework="numpy") as f:
        meta = f.metadata()
    cfg = json.loads(meta["orrery.model_config"])
    if set(exported) != set(model) or meta["orrery.weights"] != "ema":
        fail("export does not hold the EMA weights of every tensor")
    if not all(np.array_equal(exported[n], ema[n]) for n in ema):
        fail("exported weights differ from the checkpoint's EMA")
    summary["export_hidden"] = cfg["hidden"]

    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "perf/samples_per_s", "eval/heldout_loss", "eval/context_gain", "eval/action_gain"):
        if tag not in tags["scalars"]:
            fail(f"TensorBoard has no scalar {tag}; has {tags['scalars']}")
    losses = {e.step: e.value for e in acc.Scalars("train/loss")}
    # metrics.jsonl and TensorBoard hold the same scalars at the same steps.
    group = {"loss": "train", "lr": "train", "grad_norm": "train", "skipped_steps": "train"}
    perf = ("samples_per_s", "model_tflops_per_s", "step_time_s", "data_wait_frac")
    # The held-out loss per noise level: a list of 8 in metrics.jsonl.
    levels = ["0.06", "0.19", "0.31", "0.44", "0.56", "0.69", "0.81", "0.94"]
    for m in metrics:
        for key, value in m.items():
            if key == "step":
                continue
            if key == "loss_by_t":
                if len(value) != 8:
                    fail(f"step {m['step']}: loss_by_t has {len(value)} levels, not 8")
                pairs = [(f"loss_by_t/t={t}", v) for t, v in zip(levels, value)]
            else:
                pairs = [(f"{group.get(key, 'perf' if key in perf else 'eval')}/{key}", value)]
            for tag, value in pairs:
                if tag not in tags["scalars"]:
                    fail(f"metrics.jsonl has {key} but TensorBoard has no {tag}")
                tb = {e.step: e.value for e in acc.Scalars(tag)}
                if m["step"] not in tb or abs(tb[m["step"]] - value) > 1e-5 * max(1.0, abs(value)):
                    fail(f"step {m['step']}: TensorBoard {tag} {tb.get(m['step'])} != metrics.jsonl {key} {value}")
    if set(metrics[0]) != {"step", "heldout_loss", "loss_by_t"} or metrics[0]["step"] != 0:
        fail(f"metrics.jsonl's first line is not the step-0 held-out loss: {metrics[0]}")
    if "heldout_loss_ema" not in metrics[-1]:
        fail(f"metrics.jsonl's last line lacks heldout_loss_ema: {metrics[-1]}")
    summary["scalar_steps"] = sorted(losses)
    images = tags["images"]
    if "rollout/real_above_generated" not in images:
        fail(f"no rollout image in TensorBoard; images: {images}")
    img = acc.Images("rollout/real_above_generated")[-1]
    png = img.encoded_image_string
    if png[:8] != b"\x89PNG\r\n\x1a\n" or img.width < 16 or img.height < 16:
        fail("rollout image is not a PNG of a sensible size")
    summary["image"] = [img.height, img.width]
    if len(sys.argv) > 3:
        rollout = json.loads(pathlib.Path(sys.argv[3]).read_text())
        keys = ["psnr_db", "psnr_copy_last_db", "ssim", "ssim_copy_last",
                "changed_psnr_db", "changed_psnr_copy_last_db", "agent_error_px",
                "agent_error_copy_last_px"]
        for key in keys:
            want = rollout.get(key)
            if want is None:
                continue
            tag = f"rollout/{key}"
            if tag not in tags["scalars"]:
                fail(f"rollout.json has {key} but TensorBoard has no {tag}")
            got = [e.value for e in acc.Scalars(tag)]
            if not any(abs(g - want) <= 1e-5 * max(1.0, abs(want)) for g in got):
                fail(f"TensorBoard {tag} {got} has no {want} (rollout.json's {key})")
        summary["rollout_scalars"] = sum(1 for k in keys if rollout.get(k) is not None)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
