# Score a rollout against the true pixel frames, not the autoencoder's
# reconstruction (a latent model's decoded rollout, or a pixel model's own).
#   python3 score_against_pixels.py DIR PIXEL_DATASET_DIR
# Reads DIR/frames.safetensors (`orrery sample --save-frames`) and the run's
# metrics.jsonl (gains; in DIR or the folder above it, for a rollout sampled
# into a subfolder of its run); prints the scores and writes them to
# DIR/score_pixels.json for recipe_table.py. The definitions follow
# `orrery sample`'s (crates/orrery-train/src/scores.rs): frames in [-1, 1],
# PSNR per frame averaged over clips (capped at 100 dB), scikit-image's SSIM
# (7x7 uniform window), and PSNR on the pixels of the true frame that moved
# by more than 0.1 in some channel since the last context frame.
import glob, json, os, sys
import numpy as np, pyarrow.parquet as pq
from safetensors import safe_open
from safetensors.numpy import load_file
from skimage.metrics import structural_similarity

run, pixels = sys.argv[1], sys.argv[2]
f = load_file(f'{run}/frames.safetensors')
with safe_open(f'{run}/frames.safetensors', 'np') as h:
    meta = h.metadata()
k = int(meta['context'])
ids = meta['clip_ids'].split(',')
clips = {}
for p in glob.glob(f'{pixels}/*.parquet'):
    t = pq.read_table(p, columns=['clip_id', 'latents', 'latent_shape']).to_pydict()
    for i, cid in enumerate(t['clip_id']):
        if cid in ids:
            clips[cid] = np.frombuffer(t['latents'][i], '<f4').reshape(t['latent_shape'][i])
gen = f['generated']
n, T = gen.shape[:2]
truth = np.stack([clips[c][:T] for c in ids])            # [n, T, c, h, w]
last = np.repeat(truth[:, k - 1:k], T - k, 1)            # copy-last, [n, T-k, c, h, w]
future = truth[:, k:]


def psnr(a, b):  # per clip and frame
    m = ((a - b) ** 2).mean(axis=(-3, -2, -1))
    return np.minimum(10 * np.log10(4 / np.maximum(m, 1e-30)), 100.0)


def ssim(a, b):  # per frame, mean over clips
    return np.array([[structural_similarity(x[j], y[j], data_range=2.0, channel_axis=0, win_size=7)
                      for j in range(a.shape[1])] for x, y in zip(a, b)]).mean(0)


moved = (np.abs(future - last) > 0.1).any(axis=2, keepdims=True)
moved = np.broadcast_to(moved, future.shape)


def changed_psnr(guess):
    err = ((guess - future) ** 2)[moved]
    return float(10 * np.log10(4 / err.mean())) if err.size else None


out = {'run': run, 'clips': n, 'context': k, 'frames': T - k}
guesses = [('model', gen[:, k:]), ('copy', last)]
decoded = not np.array_equal(f['real'][:, :k], truth[:, :k])
if decoded:
    # A latent model's rollout decoded as a change from the last true frame:
    # true last frame + decode(generated) - decode(last context latent). Where
    # the rollout keeps a latent, the true pixels come through unchanged.
    guesses.append(('anchored', np.clip(last + gen[:, k:] - f['real'][:, k - 1:k], -1, 1)))
for name, guess in guesses:
    p = psnr(guess, future).mean(0)
    out[name] = {'psnr_by_frame': p.tolist(), 'psnr': float(p.mean()),
                 'ssim_by_frame': ssim(guess, future).tolist(),
                 'changed_psnr': changed_psnr(guess)}
    out[name]['ssim'] = float(np.mean(out[name]['ssim_by_frame']))
out['model']['beats_copy'] = int((np.array(out['model']['psnr_by_frame']) > np.array(out['copy']['psnr_by_frame'])).sum())
out['reconstruction_psnr'] = float(psnr(f['real'][:, k:], future).mean())
out['changed_share'] = float(moved.mean())
last_eval = {}
metrics = f'{run}/metrics.jsonl'
if not os.path.exists(metrics):
    metrics = f'{run}/../metrics.jsonl'
for line in open(metrics):
    r = json.loads(line)
    if 'context_gain' in r:
        last_eval = r
for key in ('step', 'heldout_loss_ema', 'next_frame_loss', 'context_gain', 'action_gain'):
    out[key] = last_eval.get(key)
json.dump(out, open(f'{run}/score_pixels.json', 'w'), indent=1)

m, c = out['model'], out['copy']
print(f'vs true pixels ({n} clips, {T - k} generated frames): PSNR model {m["psnr"]:.2f} / copy-last {c["psnr"]:.2f} dB, '
      f'SSIM {m["ssim"]:.3f} / {c["ssim"]:.3f}, changed-pixel PSNR {m["changed_psnr"]:.2f} / {c["changed_psnr"]:.2f} dB '
      f'({out["changed_share"]:.0%} of values), model beats copy on {m["beats_copy"]} of {T - k} frames; '
      f'"real" frames vs truth {out["reconstruction_psnr"]:.2f} dB')
print('per frame PSNR model/copy:', ' '.join('%.1f/%.1f' % ab for ab in zip(m['psnr_by_frame'], c['psnr_by_frame'])))
print('per frame SSIM model/copy:', ' '.join('%.2f/%.2f' % ab for ab in zip(m['ssim_by_frame'], c['ssim_by_frame'])))
if decoded:
    a = out['anchored']
    print(f'decoded as a change from the last true frame: PSNR {a["psnr"]:.2f} dB, SSIM {a["ssim"]:.3f}, '
          f'changed-pixel PSNR {a["changed_psnr"]:.2f} dB; per frame', ' '.join('%.1f' % x for x in a['psnr_by_frame']))
if last_eval:
    print(f'step {out["step"]}: held-out loss (EMA) {out["heldout_loss_ema"]:.4f}, next-frame loss {out["next_frame_loss"]:.4f}, '
          f'context gain {out["context_gain"]:+.4f}, action gain {out["action_gain"]:+.4f} '
          f'({out["action_gain"] / out["next_frame_loss"]:.0%} of the next-frame loss)')
